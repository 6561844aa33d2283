"""The four steps of a tenant run, free of Dagster so they read (and test) as plain Python.

The Dagster assets in defs/assets.py call these with the run's dates, in ascending order.
Data passes between steps through the tenant store, never in memory.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from chargeback_dagster.allocation.engine import DateCalculationError, allocate_date
from chargeback_dagster.allocation.types import DateInputs, Handler
from chargeback_dagster.config import TenantConfig
from chargeback_dagster.config.overrides import load_callable
from chargeback_dagster.domain import UNALLOCATED, BillingLine, MetricRow
from chargeback_dagster.ecosystems.base import Ecosystem, GatherContext, InventoryGather
from chargeback_dagster.money import round4, to_units
from chargeback_dagster.sources.prometheus import (
    MetricsQueryError,
    PrometheusClient,
    RangeQuery,
    day_window,
    reduce_series,
)
from chargeback_dagster.store import TenantStore

log = logging.getLogger("chargeback_dagster.pipeline")

SETTLED_AFTER = timedelta(hours=24)  # metrics fetched this long after their day ends are final


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# --- billing ---------------------------------------------------------------------------------------
@dataclass
class BillingSummary:
    lines_stored: int
    dates_with_lines: list[date]
    failed_dates: dict[date, str]


def gather_billing(
    store: TenantStore, ecosystem: Ecosystem, dates: list[date], ctx: GatherContext
) -> BillingSummary:
    """Fetch or construct the lines of `dates` and store them with per-date replacement."""
    gathered = ecosystem.gather_billing(dates, ctx)
    report = store.replace_billing(gathered.lines, dates, ctx.now)
    for d, resource_id, product_type, old, new in report.get("revised", []):
        ctx.logger.info(f"Billing revision {d} {resource_id} {product_type}: {old} -> {new}")
    for d, resource_id, product_type in report.get("removed", []):
        ctx.logger.info(f"Billing line removed by provider: {d} {resource_id} {product_type}")
    for d, kept in report.get("kept_dates", {}).items():
        if kept:
            ctx.logger.warning(f"Provider returned no billing lines for {d}; keeping {kept} stored lines")
    for d, error in gathered.failed_dates.items():
        ctx.logger.warning(f"Billing for {d} not gathered: {error}")
    with_lines = sorted({line.date for line in gathered.lines})
    store.set_states(with_lines, billing_gathered_at=ctx.now)
    return BillingSummary(len(gathered.lines), with_lines, gathered.failed_dates)


# --- inventory -------------------------------------------------------------------------------------
@dataclass
class InventorySummary:
    resources: int
    identities: int
    deleted_resources: int = 0
    deleted_identities: int = 0
    handler_errors: dict[str, str] = field(default_factory=dict)


def gather_inventory(
    store: TenantStore,
    ecosystem: Ecosystem,
    dates: list[date],
    ctx: GatherContext,
    zero_gather_threshold: int,
) -> InventorySummary:
    """Gather, upsert, then detect deletions (operations.md §8)."""
    gathered = ecosystem.gather_inventory(ctx)
    store.upsert_resources(gathered.resources, ctx.now)
    store.upsert_identities(gathered.identities, ctx.now)
    summary = InventorySummary(len(gathered.resources), len(gathered.identities))
    summary.handler_errors = dict(gathered.handler_errors)
    _detect_deletions(store, gathered, ctx, zero_gather_threshold, summary)
    store.set_states(dates, inventory_gathered_at=ctx.now)
    return summary


def _detect_deletions(
    store: TenantStore,
    gathered: InventoryGather,
    ctx: GatherContext,
    threshold: int,
    summary: InventorySummary,
) -> None:
    active = [r for r in store.resources() if r.status == "active"]
    for service_type, types in gathered.owned_types.items():
        if service_type in gathered.handler_errors:
            continue
        for resource_type in sorted(types):
            seen = {r.resource_id for r in gathered.resources if r.resource_type == resource_type}
            has_active = any(r.resource_type == resource_type for r in active)
            if _deletion_allowed(store, f"resources:{resource_type}", seen, has_active, threshold, ctx):
                summary.deleted_resources += store.mark_resources_deleted(resource_type, seen, ctx.now)
    if gathered.handler_errors:
        return
    seen_ids = {i.identity_id for i in gathered.identities}
    has_active = any(i.deleted_at is None and i.identity_id != UNALLOCATED for i in store.identities())
    if _deletion_allowed(store, "identities", seen_ids, has_active, threshold, ctx):
        summary.deleted_identities = store.mark_identities_deleted(seen_ids, ctx.now)


def _deletion_allowed(
    store: TenantStore, key: str, seen: set[str], has_active: bool, threshold: int, ctx: GatherContext
) -> bool:
    """Zero-gather guard: an empty scan deletes nothing until it has repeated `threshold` times."""
    if seen or not has_active:
        store.set_gather_counter(key, 0)
        return True
    count = store.get_gather_counter(key) + 1
    if threshold != -1 and count >= threshold:
        store.set_gather_counter(key, 0)
        return True
    store.set_gather_counter(key, count)
    ctx.logger.warning(
        f"Gathered zero ids for {key} while active rows exist ({count} in a row); deleting none"
    )
    return False


# --- usage metrics ---------------------------------------------------------------------------------
@dataclass
class MetricsSummary:
    requested: int = 0
    fetched: int = 0
    skipped_settled: int = 0
    failures: list[str] = field(default_factory=list)


def route(handlers: list[Handler]) -> dict[str, Handler]:
    return {pt: h for h in handlers for pt in h.product_types}


def fetch_usage_metrics(
    store: TenantStore,
    ecosystem: Ecosystem,
    dates: list[date],
    client_factory: Callable[[], PrometheusClient],
    step_seconds: int,
    now: datetime,
    refetch: bool = False,
) -> MetricsSummary:
    """Fetch every metric query the lines of `dates` need, once per (date, resource, query key)."""
    by_type = route(ecosystem.handlers())
    summary = MetricsSummary()
    wanted: dict[tuple[date, str, str], RangeQuery] = {}
    # Batchable keys (Ecosystem.batched_query): one query per (date, key) for every resource of that day.
    batch_specs: dict[str, tuple[str, str] | None] = {}
    batched: dict[tuple[date, str], RangeQuery] = {}
    batch_label: dict[tuple[date, str], str] = {}
    seen: set[tuple[date, str, str]] = set()
    for d in dates:
        status = store.metric_fetch_status(d)
        settled_at = day_window(d)[1] + SETTLED_AFTER
        for line in store.billing_lines(d):
            handler = by_type.get(line.product_type)
            if handler is None:
                continue
            for key, promql in handler.metric_queries(line).items():
                group = (d, line.resource_id, key)
                if group in seen:
                    continue
                seen.add(group)
                summary.requested += 1
                previous = status.get((line.resource_id, key))
                if not refetch and previous and previous[0] == "ok" and previous[2] >= settled_at:
                    summary.skipped_settled += 1
                    continue
                if key not in batch_specs:
                    batch_specs[key] = ecosystem.batched_query(key)
                spec = batch_specs[key]
                if spec is not None and (d, key) not in batched:
                    batched[(d, key)] = RangeQuery(spec[0], *day_window(d), step_seconds)
                    batch_label[(d, key)] = spec[1]
                wanted[group] = (
                    batched[(d, key)]
                    if spec is not None
                    else RangeQuery(promql, *day_window(d), step_seconds)
                )
    if not wanted:
        return summary

    results = client_factory().query_range_many(set(wanted.values()))
    # Batched results split by the resource label: (date, key) -> resource -> series
    split: dict[tuple[date, str], dict[str, list]] = {}
    for (d, key), query in batched.items():
        result = results[query]
        if not isinstance(result, MetricsQueryError):
            per_resource: dict[str, list] = {}
            for series in result:
                per_resource.setdefault(series.labels.get(batch_label[(d, key)], ""), []).append(series)
            split[(d, key)] = per_resource
    fetches = []
    for (d, resource_id, key), query in wanted.items():
        result = results[query]
        if isinstance(result, MetricsQueryError):
            summary.failures.append(f"{d} {resource_id} {key}: {result}")
            fetches.append((d, resource_id, key, None, str(result)))
            continue
        if (d, key) in split and batched.get((d, key)) == query:
            result = split[(d, key)].get(resource_id, [])  # no series for the resource: ok, empty
        rows = [MetricRow(labels, s, m, n) for labels, s, m, n in reduce_series(result)]
        fetches.append((d, resource_id, key, rows, None))
    store.store_metric_fetches(fetches, now)
    summary.fetched = len(fetches)
    store.set_states(sorted({f[0] for f in fetches}), metrics_fetched_at=now)
    return summary


# --- chargeback ------------------------------------------------------------------------------------
@dataclass
class CalculationSummary:
    calculated: list[date] = field(default_factory=list)
    errors: dict[date, str] = field(default_factory=dict)
    rows_written: int = 0
    billed_units: dict[date, int] = field(default_factory=dict)


def calculate_chargeback(
    store: TenantStore,
    tenant: TenantConfig,
    ecosystem: Ecosystem,
    dates: list[date],
    run_id: str | None,
    logger: logging.Logger | logging.LoggerAdapter = log,
    check_deadline: Callable[[], None] = lambda: None,
) -> CalculationSummary:
    """Allocate each date in its own transaction; a failing date keeps its previous rows."""
    settings = tenant.plugin_settings
    handlers = ecosystem.handlers()
    allocator_overrides = {pt: load_callable(p) for pt, p in settings.allocator_overrides.items()}
    resolver_overrides = {st: load_callable(p) for st, p in settings.identity_resolution_overrides.items()}
    resources = {r.resource_id: r for r in store.resources()}
    identities = {i.identity_id: i for i in store.identities() if i.identity_id != UNALLOCATED}
    warned: set[str] = set()
    summary = CalculationSummary()
    for d in sorted(dates):
        check_deadline()
        statuses = store.metric_fetch_status(d)
        inputs = DateInputs(
            date=d,
            lines=store.billing_lines(d),
            resources=resources,
            identities=identities,
            metrics=store.metric_rows(d),
            failed_metrics={k: err or "" for k, (status, err, _) in statuses.items() if status == "failed"},
        )
        try:
            result = allocate_date(
                inputs,
                tenant_id=tenant.tenant_id,
                ecosystem=tenant.ecosystem,
                handlers=handlers,
                unknown_allocator=ecosystem.unknown_allocator(),
                params=settings.allocator_params,
                allocator_overrides=allocator_overrides,
                resolver_overrides=resolver_overrides,
                retry_limit=tenant.allocation_retry_limit,
                record_failure=store.increment_allocation_attempts,
                logger=logger,
                warned=warned,
            )
        except DateCalculationError as exc:
            summary.errors[d] = str(exc)
            store.set_state(d, last_error=str(exc))
            logger.error(str(exc))
            continue
        summary.rows_written += store.write_chargeback(
            d,
            result.rows,
            calculation_id=str(uuid.uuid4()),
            run_id=run_id,
            succeeded_lines=result.succeeded_lines,
            calculated_at=now_utc(),
        )
        summary.calculated.append(d)
        summary.billed_units[d] = result.billed_units
    return summary


def billed_units(lines: list[BillingLine]) -> int:
    """Σ T of a date's lines: what its chargeback rows must add up to (decision D1)."""
    return sum(to_units(round4(line.total_cost)) for line in lines)


def reconciliation_gaps(store: TenantStore, dates: list[date]) -> dict[date, int]:
    """Dates whose stored chargeback total differs from the billed total, with the difference in units."""
    gaps = {}
    for d in dates:
        difference = store.chargeback_total_units(d) - billed_units(store.billing_lines(d))
        if difference:
            gaps[d] = difference
    return gaps
