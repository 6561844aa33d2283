"""Billing quantities measured in Prometheus, per UTC day (decision D6), as exact Decimals.

Sample values are floats; each is turned into a Decimal through its shortest text (`Decimal(str(v))`) so
that the sums below are exact and do not depend on summation order.
"""

from __future__ import annotations

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
HOURS_PER_DAY = Decimal(24)


def fetch_days(
    client: PrometheusClient, queries: Mapping[str, str], dates: Iterable[date], step_seconds: int
) -> dict[str, dict[date, list[Series] | MetricsQueryError]]:
    """Each named query over each UTC day, sent together (the client bounds concurrency).

    Queried per day so that a failure of one day never hides the others.
    """
    requests = {
        (name, d): RangeQuery(query, *day_window(d), step_seconds)
        for name, query in queries.items()
        for d in dates
    }
    results = client.query_range_many(requests.values())
    out: dict[str, dict[date, list[Series] | MetricsQueryError]] = {name: {} for name in queries}
    for (name, d), q in requests.items():
        out[name][d] = results[q]
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


def storage_gib_hours(series: list[Series]) -> Decimal:
    """mean(bytes) / 2^30 × 24; 0 without samples."""
    values = points(series)
    if not values:
        return Decimal(0)
    return sum(values, Decimal(0)) / len(values) / GIB * HOURS_PER_DAY


def network_gib(series: list[Series]) -> Decimal:
    """Σ bytes / 2^30 (no hours factor)."""
    return sum(points(series), Decimal(0)) / GIB
