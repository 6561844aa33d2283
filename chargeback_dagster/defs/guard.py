"""The run guard (docs/operations.md §4) and the step deadline (§6).

`enter()` is the first action of every step of every tenant run or job except `resume_tenant`:
1. the tenant exists in the config, else `Unknown tenant '<t>'`;
2. it is not suspended (the guard also suspends a tenant whose counter reached the threshold, as a
   backstop for the run-failure sensor), else the suspension message;
3. the tenant lock is free, held by this run, or held by a run that is no longer in progress (taken over);
   held by another in-progress run → `Pipeline is already running for tenant <t>`;
4. the store is open (migrated, `UNALLOCATED` present), orphaned `running` audit rows are closed, and this
   run's audit row exists.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

import dagster as dg

from chargeback_dagster import suspension
from chargeback_dagster.config import TenantConfig
from chargeback_dagster.store import TenantStore

log = logging.getLogger("chargeback_dagster.guard")

TENANT_TAG = "chargeback/tenant"
PIPELINE_TAG = "chargeback/pipeline"
TRIGGER_TAG = "chargeback/trigger"
MAX_RUNTIME_TAG = "dagster/max_runtime"
RUN_MONITORING_GRACE_SECONDS = 300
ORPHANED = "Orphaned — run ended without completing"
IN_PROGRESS = frozenset(
    {
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.CANCELING,
    }
)

# The clock of deadlines (epoch seconds); tests replace it to make time pass.
clock: Callable[[], float] = time.time


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# --- run facts -------------------------------------------------------------------------------------
def run_tenant(run: dg.DagsterRun) -> str | None:
    """A run's tenant: its `chargeback/tenant` tag, else the first component of its selected asset keys."""
    tenant = run.tags.get(TENANT_TAG)
    if tenant:
        return tenant
    keys = sorted(run.asset_selection or [], key=lambda k: k.to_user_string())
    return keys[0].path[0] if keys else None


def run_trigger(tags: dict[str, str]) -> str:
    return "refresh" if tags.get(TRIGGER_TAG) == "refresh" else "manual"


def run_in_progress(instance: dg.DagsterInstance, run_id: str) -> bool:
    run = instance.get_run_by_id(run_id)
    return run is not None and run.status in IN_PROGRESS


def max_runtime_tags(tenant: TenantConfig) -> dict[str, str]:
    """`dagster/max_runtime = T + 300` when the tenant has a timeout T > 0 (run monitoring's hard stop)."""
    seconds = tenant.tenant_execution_timeout_seconds
    return {MAX_RUNTIME_TAG: str(seconds + RUN_MONITORING_GRACE_SECONDS)} if seconds > 0 else {}


# --- deadline --------------------------------------------------------------------------------------
class ExecutionTimeout(dg.Failure):
    """Past `tenant_execution_timeout_seconds`; never a gather failure."""


@dataclass
class Deadline:
    """deadline = run start + T (T = 0: none). Checked before each date, provider request and retry wait; an
    in-flight provider request is cut off when it passes (`seconds_left`)."""

    seconds: int
    started: float

    @property
    def message(self) -> str:
        return f"Execution timed out after {self.seconds}s"

    def expired(self) -> bool:
        return self.seconds > 0 and clock() >= self.started + self.seconds

    def seconds_left(self) -> float | None:
        """Seconds until the deadline (≤ 0 once passed); None without one. Caps in-flight requests."""
        return self.started + self.seconds - clock() if self.seconds > 0 else None

    def check(self) -> None:
        if self.expired():
            raise ExecutionTimeout(self.message)

    def wrap_sleep(self, sleep: Callable[[float], None]) -> Callable[[float], None]:
        """A retry wait that never sleeps past the deadline and fails once it has passed."""

        def bounded(seconds: float) -> None:
            self.check()
            if self.seconds > 0:
                seconds = min(seconds, max(0.0, self.started + self.seconds - clock()))
            sleep(seconds)
            self.check()

        return bounded


def run_start(instance: dg.DagsterInstance, run_id: str) -> float:
    record = instance.get_run_record_by_id(run_id)
    if record is not None and record.start_time:
        return float(record.start_time)
    return clock()


# --- the guard -------------------------------------------------------------------------------------
@dataclass
class Guarded:
    tenant: TenantConfig
    store: TenantStore
    deadline: Deadline
    trigger: str


def enter(
    context,
    tenant_name: str,
    stage: str,
    app_config,
    tenant_store,
    dates: list[date] | None = None,
) -> Guarded:
    """Run the guard for a step of run `context.run_id`; raises dg.Failure when the run must not go on."""
    config = app_config.load()
    if tenant_name not in config.tenants:
        raise dg.Failure(f"Unknown tenant '{tenant_name}'")
    tenant = config.tenants[tenant_name]
    instance, run_id = context.instance, context.run_id
    store = tenant_store.open(tenant_name)  # migrations + UNALLOCATED (once per process)

    check_not_suspended(store, tenant)
    take_lock(store, instance, run_id)
    close_orphans(store, instance, run_id)

    tags = dict(context.run.tags)
    trigger = run_trigger(tags)
    if store.state.get_run(run_id) is None:
        store.state.upsert_run(
            run_id,
            trigger=trigger,
            range_start=min(dates) if dates else None,
            range_end=max(dates) if dates else None,
            started_at=datetime.fromtimestamp(run_start(instance, run_id), UTC),
            stage=stage,
        )
    else:
        store.state.upsert_run(run_id, stage=stage)
    deadline = Deadline(tenant.tenant_execution_timeout_seconds, run_start(instance, run_id))
    deadline.check()
    return Guarded(tenant, store, deadline, trigger)


def check_not_suspended(store: TenantStore, tenant: TenantConfig) -> None:
    suspension.suspend_if_due(store, tenant.gather_failure_threshold)  # backstop; no-op when not due
    status = store.state.status()
    if status and status["suspended"]:
        raise dg.Failure(suspension.suspended_message(tenant.name, status))


def take_lock(store: TenantStore, instance: dg.DagsterInstance, run_id: str) -> None:
    busy = f"Pipeline is already running for tenant {store.tenant_name}"
    for _ in range(3):  # lost races retry with the new holder
        holder = store.state.run_lock_holder()
        if holder is None:
            if store.state.try_take_run_lock(run_id, utc_now()):
                return
            continue
        holder_id = holder[0]
        if holder_id == run_id:
            return
        if run_in_progress(instance, holder_id):
            raise dg.Failure(busy, metadata={"holding_run_id": holder_id})
        if store.state.try_take_run_lock(run_id, utc_now(), replacing=holder_id):
            log.info(
                f"tenant={store.tenant_name} run_id={run_id} | took over the tenant lock of run {holder_id}, "
                "which is no longer in progress"
            )
            return
    raise dg.Failure(busy)


def close_orphans(store: TenantStore, instance: dg.DagsterInstance, run_id: str) -> None:
    """`running` audit rows of runs no longer in progress: a run that succeeded (its status sensor has not
    ticked yet) becomes `completed`; any other becomes `failed` with the orphan message."""
    for row in store.state.runs("running"):
        other = row["dagster_run_id"]
        if other == run_id:
            continue
        run = instance.get_run_by_id(other)
        if run is not None and run.status in IN_PROGRESS:
            continue
        record = instance.get_run_record_by_id(other) if run is not None else None
        ended = datetime.fromtimestamp(record.end_time, UTC) if record and record.end_time else utc_now()
        if run is not None and run.status == dg.DagsterRunStatus.SUCCESS:
            store.state.end_runs([other], status="completed", at=ended, error=None)
        else:
            store.state.end_runs([other], status="failed", at=ended, error=ORPHANED)
