"""Run a tenant's pipeline for a date range, or its monthly reports, in this process: one run, like a
single-run backfill."""

from __future__ import annotations

from datetime import date

import dagster as dg

from chargeback_dagster.defs.monthly_assets import MONTH_FORMAT, report_key
from chargeback_dagster.defs.tags import RANGE_END_TAG, RANGE_START_TAG


def materialize_range(
    defs: dg.Definitions,
    tenant_name: str,
    start: date,
    end: date,
    *,
    instance: dg.DagsterInstance | None = None,
    tags: dict[str, str] | None = None,
    raise_on_error: bool = False,
    log_level: str = "DEBUG",
) -> dg.ExecuteInProcessResult:
    """Materialize every asset of `tenant_name` for the dates start..end (inclusive) in one run."""
    job = defs.resolve_job_def(f"{tenant_name}_pipeline")
    run_tags = {RANGE_START_TAG: start.isoformat(), RANGE_END_TAG: end.isoformat(), **(tags or {})}
    return job.execute_in_process(
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        instance=instance or dg.DagsterInstance.ephemeral(),
        tags=run_tags,
        raise_on_error=raise_on_error,
    )


def materialize_monthly_reports(
    defs: dg.Definitions,
    tenant_name: str,
    start: date,
    end: date,
    *,
    instance: dg.DagsterInstance | None = None,
    log_level: str = "DEBUG",
) -> dg.ExecuteInProcessResult:
    """Materialize the monthly report of `tenant_name` for the months of start..end in one run (what the
    automation sensor requests after the days are materialized, docs/outputs.md §6)."""
    key = report_key(tenant_name)
    job = defs.resolve_implicit_job_def_def_for_assets([key])
    return job.execute_in_process(
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        instance=instance or dg.DagsterInstance.ephemeral(),
        asset_selection=[key],
        tags={RANGE_START_TAG: start.strftime(MONTH_FORMAT), RANGE_END_TAG: end.strftime(MONTH_FORMAT)},
    )
