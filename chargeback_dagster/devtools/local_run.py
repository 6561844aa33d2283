"""Run a tenant's pipeline for a date range in this process: one run, like a single-run backfill."""

from __future__ import annotations

from datetime import date

import dagster as dg

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
