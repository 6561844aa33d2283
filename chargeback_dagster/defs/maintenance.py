"""Maintenance jobs (docs/operations.md §7, §9): `<t>_retention` + its daily schedule, and `resume_tenant`."""

import logging
from datetime import datetime, timedelta

import dagster as dg

from chargeback_dagster import tenant_ops
from chargeback_dagster.config import AppConfig, TenantConfig
from chargeback_dagster.defs import guard
from chargeback_dagster.defs.resources import TenantStoreResource
from chargeback_dagster.defs.tags import PIPELINE_TAG, TENANT_TAG
from chargeback_dagster.domain import now_utc
from chargeback_dagster.store import TenantStore

log = logging.getLogger("chargeback_dagster.retention")

RETENTION_CRON = "30 2 * * *"


def purge(
    store: TenantStore,
    retention_days: int,
    now: datetime,
    run_id: str | None = None,
    topic_retention_days: int | None = None,
) -> dict[str, int]:
    """Delete what is older than `retention_days` (docs/operations.md §9), and topic attribution rows older
    than `topic_retention_days` (their own window, docs/confluent-cloud.md §9); logs the total at INFO when
    > 0."""
    cutoff_date = now.date() - timedelta(days=retention_days)
    exact_cutoff = now - timedelta(days=retention_days)
    deleted = store.retention.purge(cutoff_date, exact_cutoff)
    if topic_retention_days is not None:
        deleted.update(store.topic_attribution.purge(now.date() - timedelta(days=topic_retention_days)))
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
    @guard.stops_step
    def purge_op(context: dg.OpExecutionContext, tenant_store: TenantStoreResource):
        store = tenant_store.open(tenant)
        guard.enter(context, tenant, store, "retention")
        attribution = getattr(tenant.plugin_settings, "topic_attribution", None)
        deleted = purge(
            store,
            tenant.retention_days,
            now_utc(),
            context.run_id,
            topic_retention_days=attribution.retention_days if attribution is not None else None,
        )
        context.add_output_metadata({"rows_deleted": sum(deleted.values()), **deleted})
        return sum(deleted.values())

    @dg.job(
        name=f"{t}_retention",
        tags={TENANT_TAG: t, PIPELINE_TAG: "maintenance", **guard.max_runtime_tags(tenant)},
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
    def retention_schedule(context: dg.ScheduleEvaluationContext, tenant_store: TenantStoreResource):
        if tenant_ops.is_suspended(tenant_store.open(tenant), tenant.gather_failure_threshold):
            return dg.SkipReason(f"Tenant {t} is suspended")
        return dg.RunRequest(tags=guard.max_runtime_tags(tenant))

    return retention_job, retention_schedule


class ResumeTenantConfig(dg.Config):
    tenant_name: str


def build_resume_tenant_job(app_config: AppConfig) -> dg.JobDefinition:
    @dg.op(name="resume_tenant_op", description="Clears a tenant's suspension (docs/operations.md §7)")
    def resume_tenant_op(
        context: dg.OpExecutionContext, config: ResumeTenantConfig, tenant_store: TenantStoreResource
    ) -> bool:
        tenant = app_config.tenants.get(config.tenant_name)
        if tenant is None:
            raise dg.Failure(f"Unknown tenant '{config.tenant_name}'")
        result = tenant_ops.resume(tenant_store.open(tenant))
        context.add_output_metadata({"message": result.message})
        return result.resumed

    @dg.job(
        name="resume_tenant", description="Resume a suspended tenant: ops.resume_tenant.config.tenant_name"
    )
    def resume_tenant_job():
        # node name `resume_tenant` (run config ops.resume_tenant); the op definition needs its own name
        resume_tenant_op.alias("resume_tenant")()

    return resume_tenant_job
