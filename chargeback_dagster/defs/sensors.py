"""Sensors (docs/operations.md §1, §3, §7): the per-tenant refresh sensor and the run-status sensors.

* `<t>_refresh` requests one run of `<t>_pipeline` over the whole refresh window, at most every
  `features.refresh_interval` seconds, honouring suspension, runs in progress and `min_refresh_gap_seconds`.
* `tenant_run_failure_sensor` closes the run's audit row, releases the tenant lock and is the suspension
  writer (ALERT lines); `tenant_run_success_sensor` closes the audit row and releases the lock.
Both use the config the code location loaded; a code-location reload picks up config edits.
"""

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import httpx

from chargeback_dagster import tenant_ops
from chargeback_dagster.config import AppConfig, FeaturesConfig, TenantConfig
from chargeback_dagster.defs import guard
from chargeback_dagster.defs.resources import TenantStoreResource
from chargeback_dagster.defs.tags import (
    PIPELINE_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    TENANT_TAG,
    TRIGGER_TAG,
)
from chargeback_dagster.domain import now_utc

STATUS_SENSOR_INTERVAL_SECONDS = 10
WEBHOOK_TIMEOUT_SECONDS = 5  # the sensor tick must not hang on a slow receiver


# --- refresh ---------------------------------------------------------------------------------------
def refresh_window(tenant: TenantConfig, today: date) -> tuple[date, date] | None:
    """W = max(today − lookback, partitions_start) ≤ d < today − cutoff, as an inclusive (first, last) pair,
    never beyond yesterday (the newest partition). None when empty."""
    first = max(today - timedelta(days=tenant.lookback_days), tenant.partitions_start_date)
    last = min(today - timedelta(days=tenant.cutoff_days + 1), today - timedelta(days=1))
    return (first, last) if first <= last else None


def tenant_busy(instance: dg.DagsterInstance, store, tenant_name: str) -> bool:
    """A run tagged with the tenant is queued/in progress, or a live run holds the tenant lock."""
    records = instance.get_run_records(
        dg.RunsFilter(tags={TENANT_TAG: tenant_name}, statuses=list(guard.IN_PROGRESS)), limit=1
    )
    if records:
        return True
    return tenant_ops.lock_held_by_live_run(store, guard.run_lookup(instance))


def evaluate_refresh(
    context: dg.SensorEvaluationContext, tenant: TenantConfig, store, tick: datetime
) -> dg.SkipReason | dg.SensorResult:
    t = tenant.name
    if tenant_ops.is_suspended(store, tenant.gather_failure_threshold):
        return dg.SkipReason(f"Tenant {t} is suspended")
    if tenant_busy(context.instance, store, t):
        return dg.SkipReason(f"Pipeline is already running for tenant {t}")

    gap = tenant.plugin_settings.min_refresh_gap_seconds
    previous = [datetime.fromisoformat(context.cursor)] if context.cursor else []
    other = store.state.latest_gather_start(exclude_trigger="refresh")  # explicit runs' gathers
    if other is not None:
        previous.append(other)
    if previous:
        last = max(previous)
        if int((tick - last).total_seconds()) < gap:
            return dg.SkipReason(
                f"min_refresh_gap_seconds ({gap}) not elapsed since last gather at {last.isoformat()}"
            )

    window = refresh_window(tenant, tick.date())
    if window is None:
        return dg.SkipReason("Refresh window is empty")
    first, last_date = window
    tags = {
        RANGE_START_TAG: first.isoformat(),
        RANGE_END_TAG: last_date.isoformat(),
        TENANT_TAG: t,
        PIPELINE_TAG: "tenant",
        TRIGGER_TAG: "refresh",
        **guard.max_runtime_tags(tenant),
    }
    request = dg.RunRequest(run_key=f"{t}:{tick.isoformat()}", job_name=f"{t}_pipeline", tags=tags)
    return dg.SensorResult(run_requests=[request], cursor=tick.isoformat())


def build_refresh_sensor(
    tenant: TenantConfig, features: FeaturesConfig, clock: Callable[[], datetime] = now_utc
) -> dg.SensorDefinition:
    t = tenant.name

    @dg.sensor(
        name=f"{t}_refresh",
        job_name=f"{t}_pipeline",
        minimum_interval_seconds=features.refresh_interval,
        default_status=(
            dg.DefaultSensorStatus.RUNNING
            if features.enable_periodic_refresh
            else dg.DefaultSensorStatus.STOPPED
        ),
        description=f"Re-materializes the refresh window of tenant {t} as one run (docs/operations.md §3)",
    )
    def refresh(context: dg.SensorEvaluationContext, tenant_store: TenantStoreResource):
        return evaluate_refresh(context, tenant, tenant_store.open(tenant), clock().astimezone(UTC))

    return refresh


# --- run status: audit, lock release, suspension ----------------------------------------------------
def failure_text(context: dg.RunFailureSensorContext) -> str:
    errors = []
    for event in context.get_step_failure_events():
        data = event.step_failure_data
        user = data.user_failure_data
        text = user.description if user is not None and user.description else None
        if not text and data.error is not None:
            text = data.error.message.strip()
        errors.append(f"{event.step_key}: {text or event.message}")
    if not errors and context.failure_event is not None:
        errors.append(context.failure_event.message or "run failed")
    return "; ".join(errors)[:2000]


def close_run(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    status: str,
    error: str | None,
    config: AppConfig,
    tenant_store: TenantStoreResource,
) -> list[str]:
    """Write the final audit status, release the lock; after a failure, suspend when due.

    Returns the ALERT lines of a suspension this call made (none otherwise)."""
    tenant_name = guard.run_tenant(run)
    if tenant_name is None or tenant_name not in config.tenants:
        return []
    tenant = config.tenants[tenant_name]
    store = tenant_store.open(tenant)
    tenant_ops.audit_run(
        store,
        run.run_id,
        trigger=guard.run_trigger(dict(run.tags)),
        started_at=datetime.fromtimestamp(guard.run_start(instance, run.run_id), UTC),
        range_start=_tag_date(run.tags.get(RANGE_START_TAG)),
        range_end=_tag_date(run.tags.get(RANGE_END_TAG)),
    )
    tenant_ops.audit_run_ended(store, run.run_id, status, error)
    tenant_ops.release_lock(store, run.run_id)
    if status != "failed":
        return []
    row = tenant_ops.suspend_if_due(store, tenant.gather_failure_threshold)
    if row is None:
        return []
    alerts = [tenant_ops.suspension_alert(tenant_name, tenant.gather_failure_threshold, row)]
    everyone = tenant_ops.alert_if_all_suspended(tenant_store.open(o) for o in config.tenants.values())
    return alerts + ([everyone] if everyone else [])


def publish_alerts(context: dg.RunFailureSensorContext, alerts: list[str], webhook_url: str | None) -> None:
    """Put ALERT lines where an operator looks (docs/operations.md §7): the sensor's tick log, an
    observation on the tenant's `chargeback` asset (its Events tab in the UI) and, when configured, a POST
    to `features.alert_webhook_url`."""
    tenant_name = str(guard.run_tenant(context.dagster_run))
    for line in alerts:
        context.log.critical(line)
        if webhook_url:
            post_alert(context, webhook_url, tenant_name, line)
        context.instance.report_runless_asset_event(
            dg.AssetObservation(
                asset_key=dg.AssetKey([tenant_name, "chargeback"]),
                description=line,
                metadata={"alert": line, "run_id": context.dagster_run.run_id},
            )
        )


def post_alert(context: dg.RunFailureSensorContext, url: str, tenant_name: str, line: str) -> None:
    """POST `{tenant, reason, time}` as JSON; a failed POST is logged and never fails the sensor."""
    body = {"tenant": tenant_name, "reason": line, "time": now_utc().isoformat()}
    try:
        httpx.post(url, json=body, timeout=WEBHOOK_TIMEOUT_SECONDS).raise_for_status()
    except httpx.HTTPError as exc:
        context.log.warning(f"Alert webhook POST to {url} failed: {type(exc).__name__}: {exc}")


def _tag_date(value: str | None) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


def build_run_status_sensors(config: AppConfig) -> list[dg.SensorDefinition]:
    """The run audit and suspension writers for every run of the code location (§7)."""

    @dg.run_failure_sensor(
        name="tenant_run_failure_sensor",
        minimum_interval_seconds=STATUS_SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Run audit and suspension writer for every failed run of the code location (§7)",
    )
    def tenant_run_failure_sensor(context: dg.RunFailureSensorContext, tenant_store: TenantStoreResource):
        error = failure_text(context)
        alerts = close_run(context.instance, context.dagster_run, "failed", error, config, tenant_store)
        publish_alerts(context, alerts, config.features.alert_webhook_url)

    @dg.run_status_sensor(
        name="tenant_run_success_sensor",
        run_status=dg.DagsterRunStatus.SUCCESS,
        minimum_interval_seconds=STATUS_SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Run audit for every successful run of the code location",
    )
    def tenant_run_success_sensor(context: dg.RunStatusSensorContext, tenant_store: TenantStoreResource):
        close_run(context.instance, context.dagster_run, "completed", None, config, tenant_store)

    return [tenant_run_failure_sensor, tenant_run_success_sensor]
