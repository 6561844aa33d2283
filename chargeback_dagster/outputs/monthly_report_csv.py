"""The monthly report's CSV file (docs/outputs.md §6): one per tenant and month, in each folder the tenant's
`csv` emitters write to, rewritten atomically on every materialization of `monthly_report/<t>`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from chargeback_dagster.money import format_units
from chargeback_dagster.outputs.csv import neutralise, render_rows, write_rendered

if TYPE_CHECKING:
    from chargeback_dagster.config import TenantConfig
    from chargeback_dagster.monthly_report import MonthReport

COLUMNS = (
    "tenant_id",
    "month",
    "days_covered",
    "days_in_month",
    "line",
    "key",
    "name",
    "team",
    "amount",
    "previous_amount",
    "change",
    "change_percent",
)
FOLDER = "monthly_report"


def report_paths(tenant: TenantConfig, month_label: str) -> list[Path]:
    """`<output_dir>/monthly_report/<tenant_id>_<YYYY-MM>.csv` for each distinct output_dir of the tenant's
    `csv` emitters, in config order (none without a `csv` emitter)."""
    dirs = dict.fromkeys(e.params.output_dir for e in tenant.plugin_settings.emitters if e.type == "csv")
    return [d / FOLDER / f"{tenant.tenant_id}_{month_label}.csv" for d in dirs]


def report_rows(report: MonthReport) -> list[tuple[str, ...]]:
    def amount(units: int | None) -> str:
        return "" if units is None else format_units(units)

    head = (report.tenant_id, report.label, str(report.days_covered), str(report.days_in_month))
    return [
        (
            *map(neutralise, head),
            x.line,
            neutralise(x.key),
            neutralise(x.name),
            neutralise(x.team),
            format_units(x.amount),
            amount(x.previous),
            amount(x.change),
            x.change_percent,
        )
        for x in report.lines
    ]


def write_report_csv(tenant: TenantConfig, month_label: str, rows: list[tuple[str, ...]]) -> dict[str, int]:
    """Write a month's report rows (`report_rows`) to its file(s); path -> data rows."""
    swept: set[Path] = set()
    return {
        str(p): write_rendered(p, COLUMNS, lambda: render_rows(rows), swept)
        for p in report_paths(tenant, month_label)
    }
