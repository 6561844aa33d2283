"""The four steps of a tenant run, free of Dagster so they read (and test) as plain Python.

The Dagster assets in defs/assets.py call these with the run's dates, in ascending order.
Data passes between steps through the tenant store, never in memory.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from bisect import bisect_left
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from chargeback_dagster.allocation.engine import DateCalculationError, allocate_date
from chargeback_dagster.allocation.types import DateInputs, Handler
from chargeback_dagster.config import TenantConfig
from chargeback_dagster.config.overrides import load_callable
from chargeback_dagster.domain import UNALLOCATED, BlockKey, MetricRow, now_utc
from chargeback_dagster.ecosystems.base import Ecosystem, GatherContext, InventoryGather
from chargeback_dagster.ecosystems.confluent_cloud import topics
from chargeback_dagster.money import round4_units
from chargeback_dagster.sources.prometheus import (
    MetricsQueryError,
    PrometheusClient,
    RangeQuery,
    Series,
    day_window,
    overflow_message,
    reduce_series,
    sample_sum,
)
from chargeback_dagster.store import TenantStore
from chargeback_dagster.teams import with_teams

log = logging.getLogger("chargeback_dagster.pipeline")

SETTLED_AFTER = timedelta(hours=24)  # metrics fetched this long after their day ends are final


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
    started = time.monotonic()
    gathered = ecosystem.gather_billing(dates, ctx)
    report = store.billing.replace(gathered.lines, dates, ctx.now)
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
    store.state.set_dates(with_lines, billing_gathered_at=ctx.now)
    ctx.logger.info(
        f"billing: {len(with_lines)} dates gathered, {len(gathered.lines):,} lines, "
        f"{time.monotonic() - started:.1f} s"
    )
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
    """Gather, resolve teams (docs/configuration.md §5.1), upsert, then detect deletions
    (docs/operations.md §8)."""
    started = time.monotonic()
    gathered = ecosystem.gather_inventory(ctx)
    identities, resources = with_teams(gathered.identities, gathered.resources, ctx.tenant.teams)
    store.inventory.upsert_resources(resources, ctx.now)
    store.inventory.upsert_identities(identities, ctx.now)
    summary = InventorySummary(len(gathered.resources), len(gathered.identities))
    summary.handler_errors = dict(gathered.handler_errors)
    _detect_deletions(store, gathered, ctx, zero_gather_threshold, summary)
    store.state.set_dates(dates, inventory_gathered_at=ctx.now)
    ctx.logger.info(
        f"inventory: {summary.resources:,} resources, {summary.identities:,} identities, "
        f"{time.monotonic() - started:.1f} s"
    )
    return summary


def _detect_deletions(
    store: TenantStore,
    gathered: InventoryGather,
    ctx: GatherContext,
    threshold: int,
    summary: InventorySummary,
) -> None:
    active = [r for r in store.inventory.resources() if r.status == "active"]
    for service_type, types in gathered.owned_types.items():
        if service_type in gathered.handler_errors:
            continue
        for resource_type in sorted(types):
            seen = {r.resource_id for r in gathered.resources if r.resource_type == resource_type}
            has_active = any(r.resource_type == resource_type for r in active)
            if _deletion_allowed(store, f"resources:{resource_type}", seen, has_active, threshold, ctx):
                summary.deleted_resources += store.inventory.mark_resources_deleted(
                    resource_type, seen, ctx.now
                )
    if gathered.handler_errors:
        return
    seen_ids = {i.identity_id for i in gathered.identities}
    has_active = any(
        i.deleted_at is None and i.identity_id != UNALLOCATED for i in store.inventory.identities()
    )
    if _deletion_allowed(store, "identities", seen_ids, has_active, threshold, ctx):
        summary.deleted_identities = store.inventory.mark_identities_deleted(seen_ids, ctx.now)


def _deletion_allowed(
    store: TenantStore, key: str, seen: set[str], has_active: bool, threshold: int, ctx: GatherContext
) -> bool:
    """Zero-gather guard: an empty scan deletes nothing until it has repeated `threshold` times."""
    if seen or not has_active:
        store.state.set_zero_gathers(key, 0)
        return True
    count = store.state.zero_gathers(key) + 1
    if threshold != -1 and count >= threshold:
        store.state.set_zero_gathers(key, 0)
        return True
    store.state.set_zero_gathers(key, count)
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


# Consecutive dates covered by one batched (all-resources) query. Results are reduced and stored per such
# chunk, so memory stays bounded whatever the length of the run.
BATCH_DAYS = 7


def fetch_usage_metrics(
    store: TenantStore,
    ecosystem: Ecosystem,
    dates: list[date],
    client_factory: Callable[[], PrometheusClient],
    step_seconds: int,
    now: datetime,
    refetch: bool = False,
    logger: logging.Logger | logging.LoggerAdapter = log,
) -> MetricsSummary:
    """Fetch every metric query the lines of `dates` need, once per (date, resource, query key).

    Batchable keys (Ecosystem.batched_query) are fetched with one query per key for every resource and
    up to BATCH_DAYS consecutive dates (when the step divides a day, the long query evaluates exactly the
    per-day grids), split by sample timestamp into days and by the resource label into groups. A failed
    multi-day query is retried per day; a failed query fails every group it serves. Dates are processed
    in chunks: the next chunk's queries run while the current chunk is reduced and stored. Each chunk logs
    one progress line.
    """
    by_type = route(ecosystem.handlers())
    summary = MetricsSummary()
    batch_specs: dict[str, tuple[str, str | None] | None] = {}
    plan: dict[date, dict[tuple[str, str], str]] = {}  # date -> (resource, key) -> PromQL, to fetch
    for d in dates:
        if d in plan:
            continue
        status = store.metrics.fetch_status(d)
        settled_at = day_window(d)[1] + SETTLED_AFTER
        groups = plan.setdefault(d, {})
        seen: set[tuple[str, str]] = set()
        for line in store.billing.lines(d):
            handler = by_type.get(line.product_type)
            queries = handler.metric_queries(line) if handler is not None else {}
            for key, promql in {**queries, **ecosystem.extra_metric_queries(line)}.items():
                group = (line.resource_id, key)
                if group in seen:
                    continue
                seen.add(group)
                summary.requested += 1
                previous = status.get(group)
                if not refetch and previous and previous[0] == "ok" and previous[2] >= settled_at:
                    summary.skipped_settled += 1
                    continue
                if key not in batch_specs:
                    batch_specs[key] = ecosystem.batched_query(key)
                groups[group] = promql
    todo = sorted(d for d, groups in plan.items() if groups)
    if not todo:
        logger.info(f"metrics: nothing to fetch for {len(plan)} dates ({summary.skipped_settled} settled)")
        return summary

    client = client_factory()
    span = BATCH_DAYS if step_seconds > 0 and 86400 % step_seconds == 0 else 1
    chunks = _date_chunks(todo, span)
    done = 0
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-prefetch") as prefetch:
        pending = prefetch.submit(_run_chunk_queries, client, plan, batch_specs, chunks[0], step_seconds)
        for i, chunk in enumerate(chunks):
            queries, results = pending.result()
            _retry_failed_spans_per_day(client, queries, results, step_seconds)
            if i + 1 < len(chunks):  # the next chunk's requests start only after this chunk's retries
                pending = prefetch.submit(
                    _run_chunk_queries, client, plan, batch_specs, chunks[i + 1], step_seconds
                )
            fetches = _chunk_fetches(plan, batch_specs, chunk, queries, results, summary)
            del queries, results
            store.metrics.save_fetches(fetches, now)
            summary.fetched += len(fetches)
            store.state.set_dates(sorted({f[0] for f in fetches}), metrics_fetched_at=now)
            done += len(chunk)
            span_text = str(chunk[0]) if len(chunk) == 1 else f"{chunk[0]}..{chunk[-1]}"
            logger.info(
                f"metrics {span_text}: {len(fetches)} queries, {time.monotonic() - started:.1f} s "
                f"({done}/{len(todo)} dates)"
            )
            started = time.monotonic()
    return summary


def _date_chunks(dates: list[date], span: int) -> list[list[date]]:
    """Ascending dates cut into runs of consecutive dates of at most `span` dates."""
    chunks: list[list[date]] = []
    for d in dates:
        if chunks and len(chunks[-1]) < span and (d - chunks[-1][-1]).days == 1:
            chunks[-1].append(d)
        else:
            chunks.append([d])
    return chunks


@dataclass
class _BatchQuery:
    query: RangeQuery
    days: list[date]
    label: str | None


def _run_chunk_queries(
    client: PrometheusClient,
    plan: dict[date, dict[tuple[str, str], str]],
    batch_specs: dict[str, tuple[str, str | None] | None],
    chunk: list[date],
    step_seconds: int,
) -> tuple[dict, dict]:
    """The chunk's queries: `(date, resource, key)` or `key` (batched) → query, and their results."""
    queries: dict = {}
    key_days: dict[str, list[date]] = {}
    for d in chunk:
        for (resource_id, key), promql in plan[d].items():
            spec = batch_specs[key]
            if spec is None:
                queries[(d, resource_id, key)] = RangeQuery(promql, *day_window(d), step_seconds)
            elif not key_days.setdefault(key, []) or key_days[key][-1] != d:
                key_days[key].append(d)
    for key, days in key_days.items():
        spec = batch_specs[key]
        assert spec is not None
        window = (day_window(days[0])[0], day_window(days[-1])[1])
        queries[key] = _BatchQuery(RangeQuery(spec[0], *window, step_seconds), days, spec[1])
    wanted = [q.query if isinstance(q, _BatchQuery) else q for q in queries.values()]
    return queries, client.query_range_many(wanted)


def _retry_failed_spans_per_day(client: PrometheusClient, queries: dict, results: dict, step: int) -> None:
    """A failed batched query over several days: query each of its days separately (results added)."""
    retry = {}
    for q in queries.values():
        if isinstance(q, _BatchQuery) and len(q.days) > 1 and isinstance(results[q.query], MetricsQueryError):
            for d in q.days:
                retry[RangeQuery(q.query.query, *day_window(d), step)] = q
    if retry:
        results.update(client.query_range_many(retry))


def _chunk_fetches(
    plan: dict[date, dict[tuple[str, str], str]],
    batch_specs: dict[str, tuple[str, str | None] | None],
    chunk: list[date],
    queries: dict,
    results: dict,
    summary: MetricsSummary,
) -> list[tuple]:
    # batched results reduced per day and resource label: (date, key) -> resource -> rows | error
    split: dict[tuple[date, str], dict[str | None, list[MetricRow]] | MetricsQueryError] = {}
    for key, q in queries.items():
        if not isinstance(q, _BatchQuery):
            continue
        result = results[q.query]
        if isinstance(result, MetricsQueryError) and len(q.days) > 1:
            for d in q.days:  # retried per day
                day_query = RangeQuery(q.query.query, *day_window(d), q.query.step_seconds)
                day_result = results.get(day_query, result)
                split[(d, key)] = (
                    day_result
                    if isinstance(day_result, MetricsQueryError)
                    else _reduce_by_day_and_resource(day_result, [d], q.label)[d]
                )
            continue
        if isinstance(result, MetricsQueryError):
            for d in q.days:
                split[(d, key)] = result
            continue
        for d, per_resource in _reduce_by_day_and_resource(result, q.days, q.label).items():
            split[(d, key)] = per_resource
    fetches = []
    for d in chunk:
        for resource_id, key in plan[d]:
            spec = batch_specs[key]
            if spec is not None:
                reduced = split[(d, key)]
                if not isinstance(reduced, MetricsQueryError):
                    # no series for the resource: ok, empty; label None: all series are the resource's
                    # (a copy: with label None every resource of the day gets these rows)
                    reduced = list(reduced.get(resource_id if spec[1] is not None else None, []))
            else:
                result = results[queries[(d, resource_id, key)]]
                reduced = (
                    result
                    if isinstance(result, MetricsQueryError)
                    else [MetricRow(labels, s, m, n) for labels, s, m, n in reduce_series(result, d)]
                )
            if isinstance(reduced, MetricsQueryError):
                summary.failures.append(f"{d} {resource_id} {key}: {reduced}")
                fetches.append((d, resource_id, key, None, str(reduced)))
                continue
            fetches.append((d, resource_id, key, reduced, None))
    return fetches


def _reduce_by_day_and_resource(
    series: list[Series], days: list[date], label: str | None
) -> dict[date, dict[str | None, list[MetricRow]]]:
    """`reduce_series` of each (day, resource) part of a batched result, as MetricRows, without building
    per-day Series.

    Samples are cut into the UTC days of `days` (d ≤ ts < d+1; a single day takes every sample: the query
    window was that day) and grouped by the resource label (None: one group); series with equal label
    sets are combined as reduce_series does (a part whose samples sum beyond the float range is left out,
    with a warning). A label set's day parts are reduced as soon as they are cut,
    so no per-row list outlives its label set."""
    by_key: dict[tuple[tuple[str, str], ...], list[tuple[list[float], list[float]]]] = {}
    for s in series:
        by_key.setdefault(tuple(sorted(s.labels.items())), []).append(s.columns())  # ascending timestamps
    out: dict[date, dict[str | None, list[MetricRow]]] = {d: {} for d in days}
    day_rows = list(out.values())  # in the order of `days`, as _split_by_day's parts
    split = _split_by_day(days)
    for key in sorted(by_key):
        labels = dict(key)  # one dict for the label set's rows of every day (rows are read only)
        resource = labels.get(label, "") if label is not None else None
        columns = by_key[key]
        if len(columns) == 1:  # the usual case: the day parts are slices of the series' own values
            parts = split(*columns[0])
        else:
            parts = [[] for _ in days]
            for column in columns:
                for part, more in zip(parts, split(*column), strict=True):
                    part += more
        for d, rows_by_resource, values in zip(days, day_rows, parts, strict=True):
            if values:
                total = sample_sum(values)
                if total is None:  # bad data like a NaN sample: skipped and reported, the run goes on
                    log.warning(overflow_message(labels, len(values), d))
                    continue
                row = MetricRow(labels, total, max(values), len(values))
                rows_by_resource.setdefault(resource, []).append(row)
    return out


def _split_by_day(days: list[date]) -> Callable[[list[float], list[float]], list[list[float]]]:
    """``split(timestamps, values)``: per day of `days` the values whose (ascending) timestamps fall in it;
    with a single day, all of them (the values list itself, not to be modified).

    The series of one response mostly share one timestamps list (see prometheus._columns), so the cut
    positions of the last list seen are kept and reused while the same list object comes again."""
    if len(days) == 1:
        return lambda timestamps, values: [values]
    edges = [w.timestamp() for d in days for w in day_window(d)]  # start, end of each day
    seen: list[float] | None = None
    cuts: list[slice] = []

    def split(timestamps: list[float], values: list[float]) -> list[list[float]]:
        nonlocal seen, cuts
        if timestamps is not seen:  # identity: comparing the floats would cost more than the bisections
            at = [bisect_left(timestamps, edge) for edge in edges]
            seen, cuts = timestamps, list(map(slice, at[::2], at[1::2]))  # [start, end) per day
        return [values[cut] for cut in cuts]

    return split


# --- chargeback ------------------------------------------------------------------------------------
@dataclass
class CalculationSummary:
    calculated: list[date] = field(default_factory=list)
    errors: dict[date, str] = field(default_factory=dict)
    rows_written: int = 0


def calculate_chargeback(
    store: TenantStore,
    tenant: TenantConfig,
    ecosystem: Ecosystem,
    dates: list[date],
    run_id: str | None,
    logger: logging.Logger | logging.LoggerAdapter = log,
    check_deadline: Callable[[], None] = lambda: None,
    on_calculated: Callable[[date, Mapping[BlockKey, Mapping[str, int]]], None] | None = None,
) -> CalculationSummary:
    """Allocate each date in its own transaction; a failing date keeps its previous rows. `on_calculated`
    sees each committed date's allocation while it is in memory (the per-date money metadata)."""
    settings = tenant.plugin_settings
    handlers = ecosystem.handlers()
    allocator_overrides = {pt: load_callable(p) for pt, p in settings.allocator_overrides.items()}
    resolver_overrides = {st: load_callable(p) for st, p in settings.identity_resolution_overrides.items()}
    resources = {r.resource_id: r for r in store.inventory.resources()}
    identities = {i.identity_id: i for i in store.inventory.identities() if i.identity_id != UNALLOCATED}
    warned: set[str] = set()
    summary = CalculationSummary()
    ordered = sorted(dates)
    for i, d in enumerate(ordered, start=1):
        check_deadline()
        started = time.monotonic()
        statuses = store.metrics.fetch_status(d)
        inputs = DateInputs(
            date=d,
            lines=store.billing.lines(d),
            resources=resources,
            identities=identities,
            metrics=store.metrics.rows(d),
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
                credit_policy=tenant.credit_policy,
                record_failure=store.billing.increment_attempts,
                logger=logger,
                warned=warned,
            )
        except DateCalculationError as exc:
            summary.errors[d] = str(exc)
            store.state.set_dates([d], last_error=str(exc))
            logger.error(str(exc))
            continue
        rows = store.chargeback.write(
            d,
            result.blocks,
            calculation_id=str(uuid.uuid4()),
            run_id=run_id,
            succeeded_lines=result.succeeded_lines,
            calculated_at=now_utc(),
        )
        summary.rows_written += rows
        summary.calculated.append(d)
        if on_calculated is not None:
            on_calculated(d, result.blocks)
        logger.info(f"calculated {d} ({i}/{len(ordered)}): {rows:,} rows, {time.monotonic() - started:.2f} s")
    return summary


def reconciliation_gaps(store: TenantStore, dates: list[date]) -> dict[date, int]:
    """Dates whose stored chargeback total differs from the billed total, with the difference in units."""
    if not dates:
        return {}
    start, end = min(dates), max(dates) + timedelta(days=1)
    allocated = store.chargeback.totals(start, end)
    billed = store.billing.billed_units(start, end)
    gaps = {d: allocated.get(d, 0) - billed.get(d, 0) for d in dates}
    return {d: gap for d, gap in gaps.items() if gap}


# --- topic attribution (Confluent Cloud, docs/confluent-cloud.md §9) ---------------------------------
@dataclass
class TopicAttributionSummary:
    dates: list[date] = field(default_factory=list)
    rows_written: int = 0
    pending: dict[date, list[str]] = field(default_factory=dict)  # clusters still below the retry limit


def attribute_topics(
    store: TenantStore,
    tenant: TenantConfig,
    dates: list[date],
    logger: logging.Logger | logging.LoggerAdapter = log,
    check_deadline: Callable[[], None] = lambda: None,
) -> TopicAttributionSummary:
    """Attribute each date's Kafka cluster lines to topics and replace the date's stored rows (pending
    clusters keep theirs). Reads the lines, the inventory topics and the per-topic metrics from the store."""
    config = tenant.plugin_settings.topic_attribution
    stored_topics = [
        r
        for r in store.inventory.resources()
        if r.resource_type == topics.TOPIC_RESOURCE_TYPE and r.parent_id
    ]
    summary = TopicAttributionSummary()
    for d in sorted(dates):
        check_deadline()
        start, end = day_window(d)
        existing: dict[str, set[str]] = {}
        for r in stored_topics:
            if (r.created_at is None or r.created_at < end) and (
                r.deleted_at is None or r.deleted_at > start
            ):
                existing.setdefault(r.parent_id or "", set()).add(r.resource_id.split(":topic:", 1)[-1])
        failed = [key for key, (status, _, _) in store.metrics.fetch_status(d).items() if status == "failed"]
        result = topics.attribute_date(
            d,
            store.billing.lines(d),
            existing,
            store.metrics.rows(d),
            failed,
            config,
            tenant.topic_attribution_retry_limit,
            functools.partial(store.billing.increment_attempts, counter="topic_attribution_attempts"),
            logger,
        )
        summary.rows_written += store.topic_attribution.replace(
            d, result.rows, result.pending_clusters, result.succeeded_lines
        )
        summary.dates.append(d)
        if result.pending_clusters:
            summary.pending[d] = result.pending_clusters
    return summary


def topic_reconciliation_gaps(store: TenantStore, dates: list[date]) -> list[str]:
    """Per date, every (env, cluster, category, product type) with topic rows whose sum differs from its
    lines' rounded total: "<date> <cluster> <product type>: <difference> units"."""
    gaps = []
    for d in sorted(dates):
        billed: dict[tuple[str, str, str, str], int] = {}
        for line in store.billing.lines(d):
            key = (line.env_id or "", line.resource_id, line.product_category, line.product_type)
            billed[key] = billed.get(key, 0) + round4_units(line.total_cost)
        for key, units in sorted(store.topic_attribution.totals(d).items()):
            if units != billed.get(key, 0):
                gaps.append(f"{d} {key[1]} {key[3]}: {units - billed.get(key, 0):+d} units")
    return gaps
