"""`monthly_report/<tenant>` (docs/outputs.md §6): one partition per month, downstream of the days of that
month of `<tenant>/chargeback`, recomputed by declarative automation whenever one of those days is
materialized again.

Its key and group (`monthly_reports`) are outside the tenant's `<tenant>/` prefix and group on purpose: a
selection of a tenant's daily assets (`key:"<tenant>/*"`, `group:<tenant>`, the `<tenant>_pipeline` job)
stays one daily partitions definition, which partition ranges and single-run backfills require."""

from datetime import date

import dagster as dg

from chargeback_dagster.config import AppConfig, TenantConfig
from chargeback_dagster.config.models import MONTHLY_REPORT_KEY_PREFIX
from chargeback_dagster.defs.assets import store_kind
from chargeback_dagster.defs.resources import TenantStoreResource
from chargeback_dagster.money import format_units
from chargeback_dagster.monthly_report import TOTAL_LINES, MonthReport, build_report, markdown
from chargeback_dagster.outputs.monthly_report_csv import COLUMNS, report_rows, write_report_csv

MONTH_FORMAT = "%Y-%m"
AUTOMATION_SENSOR = "monthly_report_automation"
GROUP = "monthly_reports"
TABLE_IDENTITIES = 100  # identity lines shown in the UI table; the CSV has all of them

# A day of the month was materialized after the month's report was last requested, and none of the month's
# days nor the report is in progress. Unlike AutomationCondition.eager() it is not limited to the latest
# month (re-running a January day in March redoes January) and not blocked by days not yet materialized (a
# partial month is reported as partial). Its two parts carry Dagster's timing metadata (a day's
# materialization time, the request's tick), so a day materialized while the report is requested or running
# is compared by time and requests the report again; `since_last_handled()` (an OR, which drops that
# metadata) would let the request win and lose the day's update.
_DAY_MATERIALIZED = dg.AutomationCondition.any_deps_match(dg.AutomationCondition.newly_updated()).with_label(
    "a day of the month was materialized"
)
MONTHLY_REPORT_CONDITION = (
    _DAY_MATERIALIZED.since(dg.AutomationCondition.newly_requested()).with_label(
        "since the report was requested"
    )
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("monthly report out of date")


def monthly_partitions(tenant: TenantConfig) -> dg.MonthlyPartitionsDefinition:
    """From the month of the tenant's first daily partition; the current month is a partition too
    (end_offset=1), so a month in progress has its (partial) report."""
    start = tenant.partitions_start_date.replace(day=1)
    return dg.MonthlyPartitionsDefinition(
        start_date=start.strftime(MONTH_FORMAT), timezone="UTC", fmt=MONTH_FORMAT, end_offset=1
    )


def report_key(tenant_name: str) -> dg.AssetKey:
    return dg.AssetKey([MONTHLY_REPORT_KEY_PREFIX, tenant_name])


def build_monthly_report_assets(config: AppConfig) -> list[dg.AssetsDefinition]:
    """Every tenant's `monthly_report/<t>`, as one multi-asset per first month: the tenants whose daily
    partitions start in the same month share one partitions definition, so their reports can share one op.
    Each report stays its own asset (lineage, partitions, metadata, selection); a run computes the selected
    ones. Built this way, 500 reports cost one op instead of 500 (≈ 0.3 s of every process start,
    benchmarks/README.md "Fleet scale")."""
    by_month: dict[date, list[TenantConfig]] = {}
    for tenant in config.tenants.values():
        by_month.setdefault(tenant.partitions_start_date.replace(day=1), []).append(tenant)
    return [_reports_asset(month, tenants) for month, tenants in sorted(by_month.items())]


def _report_spec(tenant: TenantConfig) -> dg.AssetSpec:
    t = tenant.name
    return dg.AssetSpec(
        report_key(t),
        group_name=GROUP,
        # a month depends on each of its days (TimeWindowPartitionMapping's default between daily and monthly)
        deps=[dg.AssetDep(dg.AssetKey([t, "chargeback"]), partition_mapping=dg.TimeWindowPartitionMapping())],
        automation_condition=MONTHLY_REPORT_CONDITION,
        kinds={"python", "csv", store_kind(tenant)},
        tags={"tenant": t, "ecosystem": tenant.ecosystem},
        description=f"Monthly totals of tenant {t} per team and identity, and the change from last month",
    )


def _reports_asset(first_month: date, tenants: list[TenantConfig]) -> dg.AssetsDefinition:
    tenant_by_key = {report_key(t.name): t for t in tenants}

    @dg.multi_asset(
        name=f"monthly_reports_from_{first_month.strftime('%Y_%m')}",
        specs=[_report_spec(t) for t in tenants],
        partitions_def=monthly_partitions(tenants[0]),
        can_subset=True,
        backfill_policy=dg.BackfillPolicy.single_run(),
    )
    def monthly_reports(context: dg.AssetExecutionContext, tenant_store: TenantStoreResource):
        # Reads stored facts only: no tenant lock, so it never competes with the tenants' pipeline runs.
        for key in sorted(context.selected_asset_keys, key=lambda k: k.to_user_string()):
            tenant = tenant_by_key[key]
            store = tenant_store.open(tenant)
            for partition in context.partition_keys:
                report = build_report(store, tenant, date.fromisoformat(f"{partition}-01"))
                rows = report_rows(report)  # rendered once: the CSV and the UI table show the same rows
                files = write_report_csv(tenant, report.label, rows)
                metadata = report_metadata(tenant, report, rows, files)
                context.add_asset_metadata(metadata, asset_key=key, partition_key=partition)
            yield dg.MaterializeResult(asset_key=key)

    return monthly_reports


def build_monthly_automation_sensor(config: AppConfig) -> list[dg.SensorDefinition]:
    """One sensor for every tenant's report, running from the start (the default sensor Dagster would add
    for automation conditions starts stopped)."""
    if not config.tenants:
        return []
    return [
        dg.AutomationConditionSensorDefinition(
            AUTOMATION_SENSOR,
            target=dg.AssetSelection.assets(*(report_key(t) for t in config.tenants)),
            default_status=dg.DefaultSensorStatus.RUNNING,
            description="Requests a tenant's monthly report when a day of its month was materialized",
        )
    ]


TABLE_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn(c, "string", description=d)
        for c, d in (
            ("line", "billed, allocated, unallocated, fallback, credits, team or identity"),
            ("key", "team or identity_id"),
            ("name", "identity display name"),
            ("team", "the identity's own team"),
            ("amount", "exact, currency units"),
            ("previous_amount", "the previous month's; empty when it has no calculated day"),
            ("change", "amount − previous_amount"),
            ("change_percent", "of previous_amount; empty when that is zero or missing"),
        )
    ]
)
_TABLE_COLUMNS = [c.name for c in TABLE_SCHEMA.columns]


def report_metadata(
    tenant: TenantConfig, report: MonthReport, rows: list[tuple[str, ...]], files: dict[str, int]
) -> dict[str, object]:
    start = COLUMNS.index("line")
    identities = 0
    table = []
    for row in rows:
        identities += row[start] == "identity"
        if identities <= TABLE_IDENTITIES:
            table.append(dg.TableRecord(dict(zip(_TABLE_COLUMNS, row[start:], strict=True))))
    missing = report.missing_dates(tenant.partitions_start_date)
    total = report.line("allocated")
    return {
        "month": report.label,
        "days_covered": report.days_covered,
        "days_in_month": report.days_in_month,
        "complete": report.complete,
        "missing_dates": ", ".join(d.isoformat() for d in missing)[:2000] or "none",
        "allocated_total": dg.MetadataValue.float(float(format_units(total.amount))),
        **{f"{n}_exact": format_units(report.line(n).amount) for n in TOTAL_LINES},
        "previous_allocated_exact": "none" if total.previous is None else format_units(total.previous),
        "change_percent": total.change_percent or "none",
        "report": dg.MetadataValue.table(table, schema=TABLE_SCHEMA),
        "summary": dg.MetadataValue.md(markdown(report, tenant.partitions_start_date)),
        "dagster/row_count": len(rows),
        **{f"csv_path_{i}": dg.MetadataValue.path(p) for i, p in enumerate(files)},
    }
