"""The run guard (docs/operations.md §4) and the step deadline (§6).

`enter()` is the first action of every step of every tenant run or job except `resume_tenant`:
1. the tenant exists in the config, else `Unknown tenant '<t>'`;
2. it is not suspended (the guard also suspends a tenant whose counter reached the threshold, as a
   backstop for the run-failure sensor), else the suspension message;
3. the tenant lock is free, held by this run, or held by a run that is provably dead (taken over): one its
   Dagster instance reports as finished, or one whose heartbeat is older than the takeover time (a run
   killed with SIGKILL, or one of another Dagster instance that stopped). Held by a live run →
   `Pipeline is already running for tenant <t>`. The holder's process refreshes the heartbeat in a
   background thread, so one long provider request never makes a live run look dead;
4. the store is open (migrated, `UNALLOCATED` present), orphaned `running` audit rows are closed, and this
   run's audit row exists.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import dagster as dg

from chargeback_dagster import suspension
from chargeback_dagster.config import TenantConfig
from chargeback_dagster.store import RunLock, TenantStore

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

# Tenant lock heartbeat (docs/operations.md §4): the holder refreshes it every HEARTBEAT seconds; a lock
# whose heartbeat is older than TAKEOVER seconds is taken over. Environment overrides exist for tests.
HEARTBEAT_ENV = "CHARGEBACK_LOCK_HEARTBEAT_SECONDS"
TAKEOVER_ENV = "CHARGEBACK_LOCK_TAKEOVER_SECONDS"
DEFAULT_HEARTBEAT_SECONDS = 10
DEFAULT_TAKEOVER_SECONDS = 60

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


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise dg.Failure(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


def heartbeat_seconds() -> float:
    return _env_seconds(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_SECONDS)


def takeover_seconds() -> float:
    return _env_seconds(TAKEOVER_ENV, DEFAULT_TAKEOVER_SECONDS)


def lock_holder_dead(
    instance: dg.DagsterInstance, tenant_name: str, holder: RunLock, now: datetime
) -> tuple[str, datetime | None] | None:
    """None while the lock's holder may be alive; else why it is dead and, when that was judged by its
    heartbeat, the time the heartbeat must still be older than for a takeover. A run unknown to this
    instance (another DAGSTER_HOME, a CLI run) is alive while its heartbeat is fresh."""
    run = instance.get_run_by_id(holder.run_id) or _run_of_this_process(tenant_name, holder.run_id)
    if run is not None and run.status not in IN_PROGRESS:
        return "which is no longer in progress", None
    takeover = takeover_seconds()
    age = (now - holder.heartbeat_at).total_seconds()
    if age <= takeover:
        return None
    why = f"whose heartbeat is {age:.0f}s old (takeover after {takeover:g}s)"
    return why, now - timedelta(seconds=takeover)


def _run_of_this_process(tenant_name: str, run_id: str) -> dg.DagsterRun | None:
    """A run this process executes in another instance (e.g. successive in-process runs, each in its own
    temporary instance), as that instance reports it."""
    with _heartbeats_guard:
        beating = _heartbeats.get((tenant_name, run_id))
    if beating is None:
        return None
    try:
        return beating[1].get_run_by_id(run_id)
    except Exception:  # that instance is gone: judge by the heartbeat
        return None


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
    dead_holder = take_lock(store, instance, run_id)
    close_orphans(store, instance, run_id, dead_holder)

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


def take_lock(store: TenantStore, instance: dg.DagsterInstance, run_id: str) -> str | None:
    """Take or keep the tenant lock for `run_id` and keep its heartbeat fresh; returns the id of a dead
    holder this run took the lock over from."""
    busy = f"Pipeline is already running for tenant {store.tenant_name}"
    heartbeat_seconds(), takeover_seconds()  # a bad override fails the step here, not the heartbeat thread
    for _ in range(3):  # lost races retry with the new holder
        now = utc_now()
        holder = store.state.run_lock_holder()
        if holder is None:
            if store.state.try_take_run_lock(run_id, now):
                keep_lock_alive(store, instance, run_id)
                return None
            continue
        if holder.run_id == run_id:
            if store.state.touch_run_lock(run_id, now):
                _lost.discard((store.tenant_name, run_id))
                keep_lock_alive(store, instance, run_id)
                return None
            continue
        dead = lock_holder_dead(instance, store.tenant_name, holder, now)
        if dead is None:
            raise dg.Failure(busy, metadata={"holding_run_id": holder.run_id})
        why, stale_before = dead
        if store.state.try_take_run_lock(run_id, now, replacing=holder.run_id, stale_before=stale_before):
            log.info(
                f"tenant={store.tenant_name} run_id={run_id} | took over the tenant lock of run "
                f"{holder.run_id}, {why}"
            )
            keep_lock_alive(store, instance, run_id)
            return holder.run_id
    raise dg.Failure(busy)


# The tenant store and Dagster instance of each lock this process keeps alive, by (tenant, run id).
_heartbeats: dict[tuple[str, str], tuple[TenantStore, dg.DagsterInstance]] = {}
_heartbeats_guard = threading.Lock()
# Runs of this process whose lock another run took over (their heartbeat had expired, e.g. a frozen host).
_lost: set[tuple[str, str]] = set()


def check_lock_kept(tenant_name: str, run_id: str) -> None:
    """Stop a run whose lock was taken over while it still ran, before it writes next to the taker."""
    if (tenant_name, run_id) in _lost:
        raise dg.Failure(
            f"The tenant lock of tenant {tenant_name} was taken over by another run after this run's "
            "heartbeat expired"
        )


def keep_lock_alive(store: TenantStore, instance: dg.DagsterInstance, run_id: str) -> None:
    """Start the heartbeat thread of `run_id`'s tenant lock in this process unless it runs already."""
    key = (store.tenant_name, run_id)
    with _heartbeats_guard:
        if key in _heartbeats:
            return
        _heartbeats[key] = (store, instance)
        threading.Thread(
            target=_heartbeat,
            args=(store, instance, run_id),
            name=f"chargeback-lock-{store.tenant_name}",
            daemon=True,  # dies with the process: a killed run stops beating
        ).start()


def _heartbeat(store: TenantStore, instance: dg.DagsterInstance, run_id: str) -> None:
    """Refresh the heartbeat until the lock is no longer this run's, or the run has ended (then release the
    lock, which frees it for runs the status sensors never see, e.g. CLI runs in a temporary instance).
    Database errors are retried until the heartbeat could have expired; a lock lost either way stops the run
    at its next deadline check (`check_lock_kept`)."""
    last_beat = time.monotonic()
    try:
        while time.monotonic() - last_beat <= takeover_seconds():
            time.sleep(heartbeat_seconds())
            try:
                if not run_in_progress(instance, run_id):
                    with contextlib.suppress(Exception):  # else the heartbeat expires
                        store.state.release_run_lock(run_id)
                    return
                if not store.state.touch_run_lock(run_id, utc_now()):
                    _lost.add((store.tenant_name, run_id))
                    return
                last_beat = time.monotonic()
            except Exception as exc:
                log.warning(
                    f"tenant={store.tenant_name} run_id={run_id} | tenant lock heartbeat failed: {exc}"
                )
        _lost.add((store.tenant_name, run_id))  # no beat for the takeover time: another run may take over
    finally:
        with _heartbeats_guard:
            _heartbeats.pop((store.tenant_name, run_id), None)


@atexit.register
def _release_on_exit() -> None:
    """A process exiting normally has ended its runs (the in-process executor runs them in this process):
    free their locks now rather than after the takeover time, for runs no status sensor sees (CLI runs)."""
    with _heartbeats_guard:
        held = list(_heartbeats.items())
    for (_, run_id), (store, _) in held:
        with contextlib.suppress(Exception):  # else the heartbeat expires
            store.state.release_run_lock(run_id)


def close_orphans(
    store: TenantStore, instance: dg.DagsterInstance, run_id: str, dead_holder: str | None = None
) -> None:
    """`running` audit rows of runs no longer in progress, or of the dead lock holder this run took over
    from: a run that succeeded (its status sensor has not ticked yet) becomes `completed`; any other
    becomes `failed` with the orphan message."""
    for row in store.state.runs("running"):
        other = row["dagster_run_id"]
        if other == run_id:
            continue
        run = instance.get_run_by_id(other)
        if run is not None and run.status in IN_PROGRESS and other != dead_holder:
            continue
        record = instance.get_run_record_by_id(other) if run is not None else None
        ended = datetime.fromtimestamp(record.end_time, UTC) if record and record.end_time else utc_now()
        if run is not None and run.status == dg.DagsterRunStatus.SUCCESS:
            store.state.end_runs([other], status="completed", at=ended, error=None)
        else:
            store.state.end_runs([other], status="failed", at=ended, error=ORPHANED)
