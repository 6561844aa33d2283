"""`self_managed_kafka`: a Kafka cluster run by the platform team (docs/self-managed-kafka.md).

Billing lines are constructed per UTC day (decision D6) from the YAML cost model × quantities measured in
Prometheus; brokers and topics come from Prometheus labels or the Kafka Admin API; identities are Kafka
principals from Prometheus labels and/or a static list.
"""

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
from chargeback_dagster.ecosystems.quantities import (
    HOURS_PER_DAY,
    fetch_days,
    has_samples,
    network_gib,
    skip_reason,
    storage_gib_hours,
)
from chargeback_dagster.ecosystems.self_managed_kafka.allocators import (
    SELF_KAFKA_BYTES_IN,
    SELF_KAFKA_BYTES_OUT,
    self_managed_allocators,
    self_managed_unknown_allocator,
)
from chargeback_dagster.ecosystems.self_managed_kafka.config import SelfManagedKafkaSettings
from chargeback_dagster.sources.prometheus import MetricsQueryError, RangeQuery

SERVICE_TYPE = "kafka"
PRODUCT_CATEGORY = "kafka"
RESOURCE_TYPES = frozenset({"cluster", "broker", "topic"})
DISCOVERY_STEP_SECONDS = 300
ADMIN_TIMEOUT_SECONDS = 30.0
PRINCIPAL_LABEL = "principal"

COMPUTE = "SELF_KAFKA_COMPUTE"
STORAGE = "SELF_KAFKA_STORAGE"
INGRESS = "SELF_KAFKA_NETWORK_INGRESS"
EGRESS = "SELF_KAFKA_NETWORK_EGRESS"

# §2 cluster-wide quantity queries; `{step}` becomes `<metrics_step_seconds>s`
BILLING_QUERIES = {
    "cluster_bytes_in": "sum(increase(kafka_server_brokertopicmetrics_bytesin_total[{step}]))",
    "cluster_bytes_out": "sum(increase(kafka_server_brokertopicmetrics_bytesout_total[{step}]))",
    "cluster_storage_bytes": "sum(kafka_log_log_size)",
}
# §3 discovery over [now − discovery_window_hours, now)
DISCOVERY_QUERY = "group by (broker, topic, principal) (kafka_server_brokertopicmetrics_bytesin_total)"
# §5 per-line usage queries (key = weight name of docs/allocation.md §9.2)
USAGE_QUERIES = {
    SELF_KAFKA_BYTES_IN: (
        "sum by (principal) (increase(kafka_server_brokertopicmetrics_bytesin_total[{step}]))"
    ),
    SELF_KAFKA_BYTES_OUT: (
        "sum by (principal) (increase(kafka_server_brokertopicmetrics_bytesout_total[{step}]))"
    ),
}


class SelfManagedKafkaEcosystem(Ecosystem):
    name = "self_managed_kafka"
    settings: SelfManagedKafkaSettings

    # --- billing: cost model × Prometheus quantities -------------------------------------------------
    def gather_billing(self, dates: list[date], ctx: GatherContext) -> BillingGather:
        if not dates:
            return BillingGather(lines=[])
        ctx.check_deadline()
        quantities = fetch_days(ctx.prometheus(), BILLING_QUERIES, dates, self.settings.metrics_step_seconds)

        lines: list[BillingLine] = []
        failed: dict[date, str] = {}
        for d in dates:
            results = {key: per_day[d] for key, per_day in quantities.items()}
            errors = [str(r) for r in results.values() if isinstance(r, MetricsQueryError)]
            if errors:
                failed[d] = errors[0]
                continue
            if not any(has_samples(series) for series in results.values()):
                continue  # no data at all that day: no lines, keep whatever is stored
            lines.extend(self._lines(d, results, ctx))

        if len(failed) == len(dates):
            first = failed[dates[0]]
            raise GatherError(f"Billing construction failed for all {len(dates)} dates: {first}")
        return BillingGather(lines=lines, failed_dates=failed)

    def _lines(self, d: date, results, ctx: GatherContext) -> list[BillingLine]:
        """The day's four lines; a line that cannot be billed (`skip_reason`) is skipped, with a warning."""
        rates = self.settings.effective_rates()
        quantities = (
            (COMPUTE, Decimal(self.settings.broker_count) * HOURS_PER_DAY, rates.compute_hourly_rate),
            (STORAGE, storage_gib_hours(results["cluster_storage_bytes"]), rates.storage_per_gib_hourly),
            (INGRESS, network_gib(results["cluster_bytes_in"]), rates.network_ingress_per_gib),
            (EGRESS, network_gib(results["cluster_bytes_out"]), rates.network_egress_per_gib),
        )
        lines = []
        for product_type, quantity, unit_price in quantities:
            reason = skip_reason(quantity, unit_price)
            if reason is not None:
                ctx.logger.warning(f"Billing line {product_type} for {d} skipped: {reason}")
                continue
            lines.append(
                BillingLine(
                    ecosystem=self.name,
                    tenant_id=self.tenant.tenant_id,
                    date=d,
                    resource_id=self.settings.cluster_id,
                    product_category=PRODUCT_CATEGORY,
                    product_type=product_type,
                    quantity=quantity,
                    unit_price=unit_price,
                    total_cost=quantity * unit_price,
                    metadata={"hours": 24},
                )
            )
        return lines

    # --- inventory: cluster, brokers, topics; principals ----------------------------------------------
    def gather_inventory(self, ctx: GatherContext) -> InventoryGather:
        settings = self.settings
        source = settings.identity_source
        from_admin = settings.resource_source.source == "admin_api"
        cluster_id = settings.cluster_id
        resources = [
            Resource(
                resource_id=cluster_id,
                resource_type="cluster",
                display_name=cluster_id,
                region=settings.region,
                metadata={"broker_count": settings.broker_count, "region": settings.region},
            )
        ]

        brokers: set[str] = set()
        topics: set[str] = set()
        principals: set[str] = set()
        if not from_admin or source.includes_prometheus:
            brokers, topics, principals = self._discover(ctx)

        handler_errors: dict[str, str] = {}
        if from_admin:
            try:
                resources.extend(self._admin_resources(ctx))
            except Exception as exc:  # KafkaAdminError, or anything the client raised
                ctx.check_deadline()  # cut short by the run's deadline: a timeout, not a handler error
                handler_errors[SERVICE_TYPE] = f"Failed to gather brokers/topics from Kafka Admin API: {exc}"
        else:
            resources.extend(self._resource(f"broker:{b}", "broker", b) for b in sorted(brokers))
            resources.extend(self._resource(f"topic:{t}", "topic", t) for t in sorted(topics))

        discovered = []
        if source.includes_prometheus:
            discovered = ids.principal_identities(principals, source)
            if not discovered:
                ctx.logger.warning(f"No principals found in Prometheus for cluster {cluster_id}")
        static = ids.static_identities(source) if source.includes_static else []
        return InventoryGather(
            resources=resources,
            identities=ids.merge_identities(discovered, static),
            owned_types={SERVICE_TYPE: RESOURCE_TYPES},
            handler_errors=handler_errors,
        )

    def _discover(self, ctx: GatherContext) -> tuple[set[str], set[str], set[str]]:
        """Non-empty broker, topic and principal label values with traffic in the discovery window."""
        ctx.check_deadline()
        window = timedelta(hours=self.settings.discovery_window_hours)
        query = RangeQuery(DISCOVERY_QUERY, ctx.now - window, ctx.now, DISCOVERY_STEP_SECONDS)
        try:
            series = ctx.prometheus().query_range(query)
        except MetricsQueryError as exc:
            raise GatherError(
                f"Prometheus discovery failed for cluster {self.settings.cluster_id}: {exc}"
            ) from exc
        found: tuple[set[str], set[str], set[str]] = (set(), set(), set())
        for s in series:
            if not s.samples:
                continue
            for values, label in zip(found, ("broker", "topic", PRINCIPAL_LABEL), strict=True):
                value = s.labels.get(label, "")
                if value:
                    values.add(value)
        return found

    def _admin_resources(self, ctx: GatherContext) -> list[Resource]:
        from chargeback_dagster.ecosystems.self_managed_kafka.kafka_admin import fetch_cluster_metadata

        ctx.check_deadline()
        left = ctx.deadline_left()  # the metadata wait ends at the run's deadline at the latest
        timeout = ADMIN_TIMEOUT_SECONDS if left is None else max(min(ADMIN_TIMEOUT_SECONDS, left), 0.0)
        metadata = fetch_cluster_metadata(self.settings.resource_source, timeout)
        resources = [self._resource(f"broker:{b.node_id}", "broker", b.address) for b in metadata.brokers]
        resources.extend(self._resource(f"topic:{t}", "topic", t) for t in metadata.topics)
        return resources

    def _resource(self, suffix: str, resource_type: str, display_name: str) -> Resource:
        cluster_id = self.settings.cluster_id
        return Resource(
            resource_id=f"{cluster_id}:{suffix}",
            resource_type=resource_type,
            display_name=display_name,
            parent_id=cluster_id,
        )

    # --- allocation ------------------------------------------------------------------------------------
    def handlers(self) -> list[Handler]:
        source = self.settings.identity_source
        static_active = ids.static_ids(source)
        queries = dict(USAGE_QUERIES) if source.includes_prometheus else {}

        def metric_queries(line: BillingLine) -> dict[str, str]:
            return dict(queries)

        # A cluster's lines of one date share their metric rows: their weights are summed once. Sharing the
        # weights dict also lets UsageRatio reuse its prepared weights.
        memo: dict[int, tuple[list[MetricRow], dict[str, Decimal]]] = {}

        def weights_of(rows: list[MetricRow]) -> dict[str, Decimal]:
            hit = memo.get(id(rows))
            if hit is not None and hit[0] is rows:
                return hit[1]
            if len(memo) >= 16:
                memo.clear()
            result = usage_weights(rows, PRINCIPAL_LABEL)
            memo[id(rows)] = (rows, result)
            return result

        def resolve(
            line: BillingLine, inputs: DateInputs, metrics: Mapping[str, list[MetricRow]]
        ) -> Resolution:
            weights = {key: weights_of(metrics.get(key, [])) if queries else {} for key in USAGE_QUERIES}
            derived = sorted({p for per_key in weights.values() for p, w in per_key.items() if w > 0})
            return Resolution(
                resource_active=static_active,
                metrics_derived=derived,
                context={"usage": weights},
            )

        allocators: dict[str, Allocator] = dict(self_managed_allocators())
        return [
            Handler(
                service_type=SERVICE_TYPE,
                allocators=allocators,
                resolve=resolve,
                metric_queries=metric_queries,
                billing_resource_types=RESOURCE_TYPES,
            )
        ]

    def batched_query(self, key: str) -> tuple[str, str | None] | None:
        """The usage queries are cluster-wide already (one resource): fetched once per key for several days
        and sliced by day (pipeline.BATCH_DAYS); every series belongs to the cluster (label None)."""
        if key in USAGE_QUERIES and self.settings.identity_source.includes_prometheus:
            return USAGE_QUERIES[key], None
        return None

    def unknown_allocator(self) -> Allocator:
        return self_managed_unknown_allocator
