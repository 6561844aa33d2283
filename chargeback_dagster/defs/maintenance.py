"""Maintenance jobs (docs/operations.md §7, §9): `<t>_retention` + its daily schedule, and `resume_tenant`."""

import logging
from datetime import datetime, timedelta

import dagster as dg

from chargeback_dagster import suspension
from chargeback_dagster.config import TenantConfig
from chargeback_dagster.defs import guard
from chargeback_dagster.defs.resources import AppConfigResource, TenantStoreResource
from chargeback_dagster.logging_setup import apply_logging
from chargeback_dagster.store import TenantStore

log = logging.getLogger("chargeback_dagster.retention")

RETENTION_CRON = "30 2 * * *"


def purge(
    store: TenantStore, retention_days: int, now: datetime, run_id: str | None = None
) -> dict[str, int]:
    """Delete what is older than `retention_days` (docs/operations.md §9); logs the total at INFO when > 0."""
    cutoff_date = now.date() - timedelta(days=retention_days)
    exact_cutoff = now - timedelta(days=retention_days)
    deleted = store.retention.purge(cutoff_date, exact_cutoff)
    total = sum(deleted.values())
    if total:
        details = ", ".join(f"{table} {n}" for table, n in sorted(deleted.items()) if n)
        log.info(
            f"tenant={store.tenant_name} run_id={run_id} stage=retention | "
            f"Retention deleted {total} rows older than {cutoff_date} ({details})"
        )
    return deleted


def build_retention(tenant: TenantConfig) -> tuple[dg.JobDefinition, dg.ScheduleDefinition]:
    t = tenant.name

    @dg.op(name=f"{t}_purge", description=f"Deletes tenant {t}'s data older than retention_days")
    def purge_op(
        context: dg.OpExecutionContext, app_config: AppConfigResource, tenant_store: TenantStoreResource
    ):
        apply_logging(app_config.load().logging)
        guarded = guard.enter(context, t, "retention", app_config, tenant_store)
        deleted = purge(guarded.store, guarded.tenant.retention_days, guard.utc_now(), context.run_id)
        context.add_output_metadata({"rows_deleted": sum(deleted.values()), **deleted})
        return sum(deleted.values())

    @dg.job(
        name=f"{t}_retention",
        tags={guard.TENANT_TAG: t, guard.PIPELINE_TAG: "maintenance", **guard.max_runtime_tags(tenant)},
        description=f"Retention of tenant {t} (docs/operations.md §9)",
    )
    def retention_job():
        purge_op()

    @dg.schedule(
        name=f"{t}_retention_schedule",
        cron_schedule=RETENTION_CRON,
        execution_timezone="UTC",
        job=retention_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Daily retention of tenant {t}; skipped while the tenant is suspended",
    )
    def retention_schedule(
        context: dg.ScheduleEvaluationContext,
        app_config: AppConfigResource,
        tenant_store: TenantStoreResource,
    ):
        current = app_config.tenant(t)
        if suspension.is_suspended(tenant_store.open(t), current.gather_failure_threshold):
            return dg.SkipReason(f"Tenant {t} is suspended")
        return dg.RunRequest(tags=guard.max_runtime_tags(current))

    return retention_job, retention_schedule


class ResumeTenantConfig(dg.Config):
    tenant_name: str


@dg.op(name="resume_tenant_op", description="Clears a tenant's suspension (docs/operations.md §7)")
def resume_tenant_op(
    context: dg.OpExecutionContext,
    config: ResumeTenantConfig,
    app_config: AppConfigResource,
    tenant_store: TenantStoreResource,
) -> bool:
    apply_logging(app_config.load().logging)
    if config.tenant_name not in app_config.load().tenants:
        raise dg.Failure(f"Unknown tenant '{config.tenant_name}'")
    result = suspension.resume(tenant_store.open(config.tenant_name))
    context.add_output_metadata({"message": result.message})
    return result.resumed


@dg.job(name="resume_tenant", description="Resume a suspended tenant: ops.resume_tenant.config.tenant_name")
def resume_tenant_job():
    # node name `resume_tenant` (run config ops.resume_tenant); the op definition needs its own name
    resume_tenant_op.alias("resume_tenant")()
