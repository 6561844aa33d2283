"""`generic_metrics_only`: any system Prometheus measures, priced by YAML cost types
(docs/generic-metrics.md)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, timedelta
from decimal import Decimal

from chargeback_dagster.allocation.models import usage_weights
from chargeback_dagster.allocation.types import Allocator, DateInputs, Handler, Resolution
from chargeback_dagster.domain import BillingLine, MetricRow, Resource
from chargeback_dagster.ecosystems import identity_sources as ids
from chargeback_dagster.ecosystems.base import (
    BillingGather,
    Ecosystem,
    GatherContext,
    GatherError,
    InventoryGather,
)
from chargeback_dagster.ecosystems.generic_metrics.allocators import (
    generic_allocator,
    generic_unknown_allocator,
)
from chargeback_dagster.ecosystems.generic_metrics.config import GenericMetricsSettings
from chargeback_dagster.ecosystems.quantities import (
    HOURS_PER_DAY,
    fetch_days,
    has_samples,
    network_gib,
    skip_reason,
    storage_gib_hours,
)
from chargeback_dagster.sources.prometheus import MetricsQueryError, RangeQuery

SERVICE_TYPE = "generic"
USAGE_WEIGHT = "alloc"
DISCOVERY_STEP_SECONDS = 300


class GenericMetricsEcosystem(Ecosystem):
    name = "generic_metrics_only"
    settings: GenericMetricsSettings

    # --- billing: cost types × Prometheus quantities -------------------------------------------------
    def gather_billing(self, dates: list[date], ctx: GatherContext) -> BillingGather:
        measured = [ct for ct in self.settings.cost_types if ct.cost_quantity.type != "fixed"]
        queries = {ct.name: ct.cost_quantity.query for ct in measured}
        quantities = (
            fetch_days(ctx.prometheus(), queries, dates, self.settings.metrics_step_seconds)
            if measured
            else {}
        )

        lines: list[BillingLine] = []
        failed: dict[date, str] = {}
        for d in dates:
            results = {name: per_day[d] for name, per_day in quantities.items()}
            errors = [str(r) for r in results.values() if isinstance(r, MetricsQueryError)]
            if errors:
                failed[d] = errors[0]
                continue
            if measured and not any(has_samples(series) for series in results.values()):
                continue  # no data at all that day: keep whatever is stored
            for ct in self.settings.cost_types:
                quantity = self._quantity(ct, results.get(ct.name))
                reason = skip_reason(quantity, ct.rate)
                if reason is not None:
                    ctx.logger.warning(f"Billing line {ct.name} for {d} skipped: {reason}")
                    continue
                lines.append(self._line(ct, d, quantity))

        if dates and len(failed) == len(dates):
            first = failed[dates[0]]
            raise GatherError(f"Billing construction failed for all {len(dates)} dates: {first}")
        return BillingGather(lines=lines, failed_dates=failed)

    @staticmethod
    def _quantity(ct, series) -> Decimal | None:
        kind = ct.cost_quantity.type
        if kind == "fixed":
            return Decimal(ct.cost_quantity.count) * HOURS_PER_DAY
        if kind == "storage_gib":
            return storage_gib_hours(series)
        return network_gib(series)

    def _line(self, ct, d: date, quantity: Decimal) -> BillingLine:
        return BillingLine(
            ecosystem=self.name,
            tenant_id=self.tenant.tenant_id,
            date=d,
            resource_id=self.settings.cluster_id,
            product_category=ct.product_category,
            product_type=ct.name,
            quantity=quantity,
            unit_price=ct.rate,
            total_cost=quantity * ct.rate,
            metadata={"hours": 24, "cost_quantity_type": ct.cost_quantity.type},
        )

    # --- inventory: one cluster, identities from a label and/or a static list ----------------------
    def gather_inventory(self, ctx: GatherContext) -> InventoryGather:
        source = self.settings.identity_source
        cluster = Resource(
            resource_id=self.settings.cluster_id,
            resource_type="cluster",
            display_name=self.settings.display_name or self.settings.cluster_id,
        )
        discovered = []
        if source.includes_prometheus:
            window = timedelta(hours=self.settings.discovery_window_hours)
            query = RangeQuery(source.discovery_query, ctx.now - window, ctx.now, DISCOVERY_STEP_SECONDS)
            try:
                series = ctx.prometheus().query_range(query)
            except MetricsQueryError as exc:
                raise GatherError(f"Identity discovery query failed: {exc}") from exc
            found = [s.labels for s in series if s.samples]
            principals = [labels.get(source.label, "") for labels in found]
            label_teams = {
                labels.get(source.label, ""): labels[source.team_label]
                for labels in found
                if source.team_label and labels.get(source.team_label)
            }
            discovered = ids.principal_identities(principals, source, label_teams)
            if not discovered:
                ctx.logger.warning(
                    "No identities found in Prometheus for cluster %s (label %r)",
                    self.settings.cluster_id,
                    source.label,
                )
        static = ids.static_identities(source) if source.includes_static else []
        return InventoryGather(
            resources=[cluster],
            identities=ids.merge_identities(discovered, static),
            owned_types={SERVICE_TYPE: frozenset({"cluster"})},
        )

    # --- allocation --------------------------------------------------------------------------------
    def handlers(self) -> list[Handler]:
        cost_types = {ct.name: ct for ct in self.settings.cost_types}
        source = self.settings.identity_source
        static_active = ids.static_ids(source)

        def metric_queries(line: BillingLine) -> dict[str, str]:
            ct = cost_types[line.product_type]
            if ct.allocation_strategy == "usage_ratio":
                return {f"alloc_{ct.name}": ct.allocation_query}
            if source.includes_prometheus:
                return {"discovery": source.discovery_query}
            return {}

        def resolve(
            line: BillingLine, inputs: DateInputs, metrics: Mapping[str, list[MetricRow]]
        ) -> Resolution:
            ct = cost_types[line.product_type]
            if ct.allocation_strategy == "usage_ratio":
                weights = usage_weights(metrics.get(f"alloc_{ct.name}", []), ct.allocation_label)
            else:
                weights = usage_weights(metrics.get("discovery", []), source.label)
            derived = [identity for identity, w in weights.items() if w > 0]
            return Resolution(
                resource_active=static_active,
                metrics_derived=derived,
                context={"usage": {USAGE_WEIGHT: weights}},
            )

        allocators: dict[str, Allocator] = {
            name: generic_allocator(ct.allocation_strategy, USAGE_WEIGHT) for name, ct in cost_types.items()
        }
        return [
            Handler(
                service_type=SERVICE_TYPE,
                allocators=allocators,
                resolve=resolve,
                metric_queries=metric_queries,
                billing_resource_types=frozenset({"cluster"}),
            )
        ]

    def unknown_allocator(self) -> Allocator:
        return generic_unknown_allocator
