"""The topic attribution CSV (docs/confluent-cloud.md §9 "CSV columns"): one file per date, or per month with
`aggregation: monthly`, rewritten atomically like the chargeback CSV (docs/outputs.md §1)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from chargeback_dagster.money import format_units
from chargeback_dagster.outputs.csv import (
    first_of_month,
    first_of_next_month,
    neutralise,
    render_rows,
    write_rendered,
)

if TYPE_CHECKING:
    from chargeback_dagster.config import TenantConfig
    from chargeback_dagster.config.models import EmitterConfig
    from chargeback_dagster.store.topic_attribution import TopicCsvRow

COLUMNS = (
    "ecosystem",
    "tenant_id",
    "timestamp",
    "env_id",
    "cluster_resource_id",
    "topic_name",
    "product_category",
    "product_type",
    "attribution_method",
    "amount",
)


@dataclass(frozen=True)
class TopicAttributionResult:
    """What a `topic_attribution` run computed: its dates, and a reader of the stored rows of
    start ≤ date < end."""

    tenant: TenantConfig
    dates: tuple[date, ...]
    read_rows: Callable[[date, date], list[TopicCsvRow]]


def _lines(tenant: TenantConfig, rows: list[TopicCsvRow], month: date | None) -> list[str]:
    """Rows as CSV lines; with `month`, one line per key stamped at the month start, amounts summed."""
    if month is not None:
        totals: dict[tuple[str, ...], int] = defaultdict(int)
        for _, *key, units in rows:
            totals[tuple(key)] += units
        rows = [(month, *key, units) for key, units in sorted(totals.items())]
    head = (tenant.ecosystem, tenant.tenant_id)
    return render_rows(
        [
            *(neutralise(x) for x in head),
            datetime(d.year, d.month, d.day, tzinfo=UTC).isoformat(),
            *(neutralise(x) for x in key),
            format_units(units),
        ]
        for d, *key, units in rows
    )


def write_topic_csv(result: TopicAttributionResult, emitter: EmitterConfig) -> dict[str, int]:
    """The files of one topic emitter for the result's dates; path -> rows written."""
    tenant, read = result.tenant, result.read_rows
    swept: set[Path] = set()
    written: dict[str, int] = {}

    def path(file_date: date) -> Path:
        name = emitter.params.filename_template.format(
            tenant_id=tenant.tenant_id, tenant_name=tenant.name, date=file_date.isoformat()
        )
        return emitter.params.output_dir / name

    if emitter.aggregation == "monthly":
        for start in sorted({first_of_month(d) for d in result.dates}):
            rows = read(start, first_of_next_month(start))
            p = path(start)
            written[str(p)] = write_rendered(p, COLUMNS, lambda r=rows, s=start: _lines(tenant, r, s), swept)
    else:
        for d in sorted(result.dates):
            rows = read(d, d + timedelta(days=1))
            p = path(d)
            written[str(p)] = write_rendered(p, COLUMNS, lambda r=rows: _lines(tenant, r, None), swept)
    return written
