"""Billing quantities measured in Prometheus, per UTC day (decision D6), as exact Decimals.

Sample values are floats; each is turned into a Decimal through its shortest text (`Decimal(str(v))`) so
that the sums below are exact and do not depend on summation order.
"""

from __future__ import annotations

import sys
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import date
from decimal import Decimal

from chargeback_dagster.sources.prometheus import (
    MetricsQueryError,
    PrometheusClient,
    RangeQuery,
    Series,
    day_window,
)

GIB = Decimal(2**30)
FLOAT_MAX = Decimal(sys.float_info.max)
# Amounts are stored as signed 64-bit integers of 0.0001
MAX_AMOUNT = Decimal(2**63 - 1).scaleb(-4)
HOURS_PER_DAY = Decimal(24)


def fetch_days(
    client: PrometheusClient, queries: Mapping[str, str], dates: Iterable[date], step_seconds: int
) -> dict[str, dict[date, list[Series] | MetricsQueryError]]:
    """Each named query over each UTC day (decision D6).

    docs/self-managed-kafka.md §2: a query may be sent once for the whole run range and sliced by sample
    timestamp; if that fails, each day is queried separately (so a failure of one day never hides the
    others). The whole-range form is used for each run of consecutive dates when the step divides a day
    (then the evaluation grid of the long query is exactly the union of the per-day grids).
    """
    dates = sorted(set(dates))
    out: dict[str, dict[date, list[Series] | MetricsQueryError]] = {name: {} for name in queries}
    if not dates:
        return out
    spans = _consecutive_spans(dates) if step_seconds > 0 and DAY_SECONDS % step_seconds == 0 else []
    if any(len(span) > 1 for span in spans):
        ranged = {
            (name, span[0]): RangeQuery(query, day_window(span[0])[0], day_window(span[-1])[1], step_seconds)
            for name, query in queries.items()
            for span in spans
        }
        results = client.query_range_many(ranged.values())
        per_day_needed: list[tuple[str, date]] = []
        for name in queries:
            for span in spans:
                result = results[ranged[(name, span[0])]]
                if isinstance(result, MetricsQueryError):
                    per_day_needed.extend((name, d) for d in span)
                else:
                    out[name].update(_slice_by_day(result, span))
    else:
        per_day_needed = [(name, d) for name in queries for d in dates]
    if per_day_needed:
        requests = {
            (name, d): RangeQuery(queries[name], *day_window(d), step_seconds) for name, d in per_day_needed
        }
        results = client.query_range_many(requests.values())
        for (name, d), q in requests.items():
            out[name][d] = results[q]
    return out


DAY_SECONDS = 86400


def _consecutive_spans(dates: list[date]) -> list[list[date]]:
    spans: list[list[date]] = []
    for d in dates:
        if spans and (d - spans[-1][-1]).days == 1:
            spans[-1].append(d)
        else:
            spans.append([d])
    return spans


def _slice_by_day(series: list[Series], span: list[date]) -> dict[date, list[Series]]:
    """Per day of `span`: the series restricted to samples with d ≤ ts < d+1 (series without any dropped)."""
    bounds = [(d, *(w.timestamp() for w in day_window(d))) for d in span]
    out: dict[date, list[Series]] = {d: [] for d in span}
    for s in series:
        stamps, values = s.columns()  # ascending by timestamp
        for d, lo, hi in bounds:
            i, j = bisect_left(stamps, lo), bisect_left(stamps, hi)
            if i < j:
                day = list(zip(stamps[i:j], values[i:j], strict=True))
                out[d].append(Series(labels=dict(s.labels), samples=day))
    return out


def points(series: list[Series]) -> list[Decimal]:
    """Cluster-wide value per timestamp: series are added up at each timestamp."""
    per_ts: dict[float, Decimal] = defaultdict(Decimal)
    for s in series:
        for ts, value in s.samples:
            per_ts[ts] += Decimal(str(value))
    return [per_ts[ts] for ts in sorted(per_ts)]


def has_samples(series: list[Series]) -> bool:
    return any(s.samples for s in series)


def storage_gib_hours(series: list[Series]) -> Decimal | None:
    """mean(bytes) / 2^30 × 24; 0 without samples; None when the samples overflow (see `_sum`)."""
    values = points(series)
    if not values:
        return Decimal(0)
    total = _sum(values)
    return None if total is None else total / len(values) / GIB * HOURS_PER_DAY


def network_gib(series: list[Series]) -> Decimal | None:
    """Σ bytes / 2^30 (no hours factor); None when the samples overflow (see `_sum`)."""
    total = _sum(points(series))
    return None if total is None else total / GIB


def _sum(values: list[Decimal]) -> Decimal | None:
    """Σ values, or None beyond the float range (Prometheus itself could not hold such a total)."""
    total = sum(values, Decimal(0))
    return None if abs(total) > FLOAT_MAX else total


def skip_reason(quantity: Decimal | None, rate: Decimal) -> str | None:
    """Why a measured line is skipped and reported instead of billed, or None.

    A quantity whose samples sum beyond the float range (None) is bad data, as a usage sum that overflows
    is; a cost beyond the largest storable amount would fail the chargeback step mid-run."""
    if quantity is None:
        return "its Prometheus samples sum beyond the float range"
    cost = quantity * rate
    if abs(cost) > MAX_AMOUNT:
        return f"its cost {cost:.4E} is beyond the largest storable amount {MAX_AMOUNT}"
    return None
