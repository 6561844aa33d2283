"""Tenant operating state, free of Dagster (docs/operations.md §4, §6, §7): suspension, the tenant run lock,
the run's deadline and the run audit.

The state lives in the tenant database, so it survives restarts and redeploys. This module is the one writer
of each record: `tenant_status` (suspension), `tenant_run_lock` and `pipeline_runs` (run audit). What only the
orchestrator knows — whether a run is still in progress — comes in as a `RunLookup`; a refusal comes out as
a `StopStep` whose message is the step's failure description.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from chargeback_dagster.domain import now_utc
from chargeback_dagster.store import RunLock, TenantStore

log = logging.getLogger("chargeback_dagster.tenant_ops")

GATHER_KINDS = ("billing", "inventory")
ORPHANED = "Orphaned — run ended without completing"

# Tenant lock heartbeat (docs/operations.md §4): the holder refreshes it every HEARTBEAT seconds; a lock
# whose heartbeat is older than TAKEOVER seconds is taken over. Environment overrides exist for tests.
HEARTBEAT_ENV = "CHARGEBACK_LOCK_HEARTBEAT_SECONDS"
TAKEOVER_ENV = "CHARGEBACK_LOCK_TAKEOVER_SECONDS"
DEFAULT_HEARTBEAT_SECONDS = 10
DEFAULT_TAKEOVER_SECONDS = 60

# The clock of deadlines (epoch seconds); tests replace it to make time pass.
clock: Callable[[], float] = time.time


class StopStep(Exception):
    """The step must not go on; the message is its failure description, `metadata` goes with it."""

    def __init__(self, message: str, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.metadata = metadata or {}


class ExecutionTimeout(StopStep):
    """Past `tenant_execution_timeout_seconds`; never a gather failure."""


@dataclass(frozen=True)
class RunFacts:
    """A run as its orchestrator reports it."""

    in_progress: bool
    succeeded: bool = False
    ended_at: datetime | None = None


# A run's facts by run id; None when the orchestrator does not know the run (another instance, a CLI run).
RunLookup = Callable[[str], RunFacts | None]


# --- suspension (docs/operations.md §7, decision D8) -----------------------------------------------------
def suspension_reason(tenant: str, count: int, threshold: int, error: str) -> str:
    return (
        f"Tenant {tenant} gather failed {count} consecutive times (threshold: {threshold}). "
        f"Last error: {error}"
    )


def alert_line(tenant: str, count: int, threshold: int, error: str) -> str:
    return (
        f"ALERT: Tenant {tenant} has been permanently suspended after {count} consecutive gather failures "
        f"(threshold: {threshold}). Last error: {error}. Resume with: chargeback-dagster resume {tenant}"
    )


def suspended_message(tenant: str, status: dict) -> str:
    since = status["suspended_at"].isoformat() if status.get("suspended_at") else "unknown"
    return (
        f"Tenant {tenant} is suspended since {since}: {status.get('suspended_reason') or ''}. "
        f"Resume with 'chargeback-dagster resume {tenant}' or the resume_tenant job."
    )


def is_suspended(store: TenantStore, threshold: int | None = None) -> bool:
    """Suspended flag set, or (when `threshold` is given) the counter already at the threshold."""
    status = store.state.status()
    if status is None:
        return False
    if status["suspended"]:
        return True
    return threshold is not None and status["consecutive_gather_failures"] >= threshold


def check_not_suspended(store: TenantStore, threshold: int) -> None:
    """The guard's suspension check: suspends a tenant whose counter reached the threshold (a backstop for
    the run-failure sensor), then refuses a suspended tenant."""
    suspend_if_due(store, threshold)  # no-op when not due
    status = store.state.status()
    if status and status["suspended"]:
        raise StopStep(suspended_message(store.tenant_name, status))


def record_failure(store: TenantStore, run_id: str, error: str) -> int:
    """A gather failure of run `run_id`; counted at most once per run. Returns the counter."""
    count = store.state.record_gather_failure(run_id, error)
    log.warning(f"tenant={store.tenant_name} run_id={run_id} | Gather failure {count}: {error}")
    return count


def record_success(store: TenantStore, run_id: str, kinds_in_run: Iterable[str]) -> bool:
    """A gather step of run `run_id` succeeded (its gather_log row is already `ok`).

    The counter resets once every gather kind the run executes has succeeded, and never when this run
    already counted a failure: a run whose billing succeeds but whose inventory fails is a failing run.
    """
    wanted = set(kinds_in_run) & set(GATHER_KINDS)
    if not wanted <= store.state.gathers_ok(run_id):
        return False
    return store.state.reset_gather_failures(run_id)


def suspend_if_due(store: TenantStore, threshold: int, at: datetime | None = None) -> dict | None:
    """Set the flag when the counter reached `threshold`; the caller that set it logs the ALERT once.

    Returns the new status row when this call suspended the tenant, else None.
    """
    tenant = store.tenant_name

    def reason(count: int, error: str) -> str:
        return suspension_reason(tenant, count, threshold, error)

    row = store.state.suspend_if_due(threshold, at or now_utc(), reason)
    if row is not None:
        log.critical(suspension_alert(tenant, threshold, row))
    return row


def suspension_alert(tenant: str, threshold: int, row: dict) -> str:
    """The ALERT line for the status row `suspend_if_due` returned."""
    return alert_line(tenant, row["consecutive_gather_failures"], threshold, row["last_gather_error"] or "")


def alert_if_all_suspended(stores: Iterable[TenantStore]) -> str | None:
    """Log the all-suspended ALERT when no unsuspended tenant remains; returns it (None when not due)."""
    stores = list(stores)
    if stores and all(is_suspended(s) for s in stores):
        line = f"ALERT: All {len(stores)} tenants are suspended; no chargeback is being calculated"
        log.critical(line)
        return line
    return None


@dataclass
class ResumeResult:
    resumed: bool
    message: str


def resume(store: TenantStore) -> ResumeResult:
    """Clear the suspension (flag false, counter 0) and log what happened."""
    tenant = store.tenant_name
    before = store.state.clear_suspension()
    if before is None:
        message = f"Tenant {tenant} is not suspended"
        log.info(message)
        return ResumeResult(False, message)
    since = before["suspended_at"].isoformat() if before.get("suspended_at") else "unknown"
    message = f"Tenant {tenant} resumed (was suspended since {since})"
    log.warning(message)
    return ResumeResult(True, message)


def run_state_line(
    store: TenantStore,
    run: dict,
    takeover_seconds: float,
    lookup: RunLookup | None = None,
    now: datetime | None = None,
) -> str:
    """The `last run` line. An audit row still `running` is only closed by a run-status sensor or a later
    run's guard, so a run executed without a daemon (the CLI, the demo, a stopped daemon) keeps that status
    after it ended: judge it by its Dagster instance when there is one and it knows the run, else by the
    tenant lock (docs/operations.md §4) — a live run holds it with a heartbeat younger than the takeover time;
    a finished run released it (or its killed process stopped refreshing it)."""
    run_id = run["dagster_run_id"]
    head = f"  last run: {run_id}"
    if run["status"] != "running":
        return f"{head} {run['status']} ({run['trigger']})"
    facts = lookup(run_id) if lookup is not None else None
    if facts is not None:
        if facts.in_progress:
            return f"{head} running ({run['trigger']}; per Dagster)"
        outcome = "completed" if facts.succeeded else "failed"
        at = f" at {facts.ended_at.replace(microsecond=0).isoformat()}" if facts.ended_at else ""
        return f"{head} {outcome} ({run['trigger']}; ended{at} per Dagster, audit row not closed)"
    holder = store.state.run_lock_holder()
    if holder is not None and holder.run_id == run_id:
        age = ((now or now_utc()) - holder.heartbeat_at).total_seconds()
        if age <= takeover_seconds:
            return f"{head} running ({run['trigger']}; lock heartbeat {age:.0f}s ago)"
        return (
            f"{head} ended ({run['trigger']}; its process stopped: lock heartbeat {age:.0f}s old, "
            f"takeover after {takeover_seconds:g}s; outcome unknown, audit row not closed)"
        )
    return (
        f"{head} ended ({run['trigger']}; it no longer holds the tenant lock; outcome unknown without its "
        "Dagster instance (DAGSTER_HOME), audit row not closed)"
    )


def status_lines(
    store: TenantStore,
    takeover_seconds: float,
    lookup: RunLookup | None = None,
    now: datetime | None = None,
) -> list[str]:
    """`chargeback-dagster status` lines of one tenant."""
    status = store.state.status() or {}
    gather = store.state.last_gather()
    runs = store.state.runs()
    last_date = store.state.last_calculated_date()
    lines = [f"tenant {store.tenant_name}:"]
    if status.get("suspended"):
        lines.append(f"  suspended: yes, since {status['suspended_at'].isoformat()}")
        lines.append(f"  reason: {status.get('suspended_reason') or ''}")
    else:
        lines.append("  suspended: no")
    lines.append(f"  consecutive gather failures: {status.get('consecutive_gather_failures', 0)}")
    if status.get("last_gather_error"):
        lines.append(f"  last gather error: {status['last_gather_error']}")
    if gather:
        started = gather["started_at"].isoformat()
        lines.append(f"  last gather: {gather['kind']} started {started} status {gather['status']}")
    else:
        lines.append("  last gather: never")
    lines.append(f"  last calculated date: {last_date.isoformat() if last_date else 'none'}")
    if runs:
        lines.append(run_state_line(store, runs[0], takeover_seconds, lookup, now))
    else:
        lines.append("  last run: none")
    return lines


# --- the deadline (docs/operations.md §6) ----------------------------------------------------------------
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


# --- the tenant run lock (docs/operations.md §4) ---------------------------------------------------------
def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise StopStep(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


def heartbeat_seconds() -> float:
    return _env_seconds(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_SECONDS)


def takeover_seconds() -> float:
    return _env_seconds(TAKEOVER_ENV, DEFAULT_TAKEOVER_SECONDS)


@dataclass
class _Beat:
    """A lock this process holds for one of its runs, kept alive by a heartbeat thread."""

    store: TenantStore
    lookup: RunLookup
    stop: threading.Event


# The locks this process keeps alive, by (tenant, run id).
_beats: dict[tuple[str, str], _Beat] = {}
_beats_guard = threading.Lock()
# Runs of this process whose lock another run took over (their heartbeat had expired, e.g. a frozen host).
_lost: set[tuple[str, str]] = set()


def lock_holder_dead(
    tenant_name: str, holder: RunLock, now: datetime, lookup: RunLookup
) -> tuple[str, datetime | None] | None:
    """None while the lock's holder may be alive; else why it is dead and, when that was judged by its
    heartbeat, the time the heartbeat must still be older than for a takeover. A run unknown to `lookup`
    (another DAGSTER_HOME, a CLI run) is alive while its heartbeat is fresh."""
    facts = lookup(holder.run_id) or _facts_in_this_process(tenant_name, holder.run_id)
    if facts is not None and not facts.in_progress:
        return "which is no longer in progress", None
    takeover = takeover_seconds()
    age = (now - holder.heartbeat_at).total_seconds()
    if age <= takeover:
        return None
    why = f"whose heartbeat is {age:.0f}s old (takeover after {takeover:g}s)"
    return why, now - timedelta(seconds=takeover)


def _facts_in_this_process(tenant_name: str, run_id: str) -> RunFacts | None:
    """A run this process executes under another lookup (e.g. successive in-process runs, each in its own
    temporary Dagster instance), as that lookup reports it."""
    with _beats_guard:
        beat = _beats.get((tenant_name, run_id))
    if beat is None:
        return None
    try:
        return beat.lookup(run_id)
    except Exception:  # that orchestrator is gone: judge by the heartbeat
        return None


def lock_held_by_live_run(store: TenantStore, lookup: RunLookup) -> bool:
    holder = store.state.run_lock_holder()
    return holder is not None and lock_holder_dead(store.tenant_name, holder, now_utc(), lookup) is None


def take_lock(store: TenantStore, run_id: str, lookup: RunLookup) -> str | None:
    """Take or keep the tenant lock for `run_id` and keep its heartbeat fresh; returns the id of a dead
    holder this run took the lock over from."""
    busy = f"Pipeline is already running for tenant {store.tenant_name}"
    heartbeat_seconds(), takeover_seconds()  # a bad override fails the step here, not the heartbeat thread
    for _ in range(3):  # lost races retry with the new holder
        now = now_utc()
        holder = store.state.run_lock_holder()
        if holder is None:
            if store.state.try_take_run_lock(run_id, now):
                _keep_alive(store, run_id, lookup)
                return None
            continue
        if holder.run_id == run_id:
            if store.state.touch_run_lock(run_id, now):
                _lost.discard((store.tenant_name, run_id))
                _keep_alive(store, run_id, lookup)
                return None
            continue
        dead = lock_holder_dead(store.tenant_name, holder, now, lookup)
        if dead is None:
            raise StopStep(busy, metadata={"holding_run_id": holder.run_id})
        why, stale_before = dead
        if store.state.try_take_run_lock(run_id, now, replacing=holder.run_id, stale_before=stale_before):
            log.info(
                f"tenant={store.tenant_name} run_id={run_id} | took over the tenant lock of run "
                f"{holder.run_id}, {why}"
            )
            _keep_alive(store, run_id, lookup)
            return holder.run_id
    raise StopStep(busy)


def check_lock_kept(tenant_name: str, run_id: str) -> None:
    """Stop a run whose lock was taken over while it still ran, before it writes next to the taker."""
    if (tenant_name, run_id) in _lost:
        raise StopStep(
            f"The tenant lock of tenant {tenant_name} was taken over by another run after this run's "
            "heartbeat expired"
        )


def _keep_alive(store: TenantStore, run_id: str, lookup: RunLookup) -> None:
    """Start the heartbeat thread of `run_id`'s tenant lock in this process unless it runs already."""
    key = (store.tenant_name, run_id)
    with _beats_guard:
        if key in _beats:
            return
        beat = _beats[key] = _Beat(store, lookup, threading.Event())
        threading.Thread(
            target=_heartbeat,
            args=(beat, run_id),
            name=f"chargeback-lock-{store.tenant_name}",
            daemon=True,  # dies with the process: a killed run stops beating
        ).start()


def _heartbeat(beat: _Beat, run_id: str) -> None:
    """Refresh the heartbeat until the lock is no longer this run's, or the run has ended (`end_run`, or
    `lookup` no longer reports it in progress: then release the lock). Database errors are retried until
    the heartbeat could have expired; a lock lost either way stops the run at its next check
    (`check_lock_kept`)."""
    store = beat.store
    key = (store.tenant_name, run_id)
    last_beat = time.monotonic()
    try:
        while time.monotonic() - last_beat <= takeover_seconds():
            if beat.stop.wait(heartbeat_seconds()):
                return  # the run ended in this process; end_run released the lock
            try:
                facts = beat.lookup(run_id)
                if facts is None or not facts.in_progress:
                    with contextlib.suppress(Exception):  # else the heartbeat expires
                        store.state.release_run_lock(run_id)
                    return
                if not store.state.touch_run_lock(run_id, now_utc()):
                    _lost.add(key)
                    return
                last_beat = time.monotonic()
            except Exception as exc:
                log.warning(
                    f"tenant={store.tenant_name} run_id={run_id} | tenant lock heartbeat failed: {exc}"
                )
        _lost.add(key)  # no beat for the takeover time: another run may take over
    finally:
        with _beats_guard:
            if _beats.get(key) is beat:
                del _beats[key]


def release_lock(store: TenantStore, run_id: str) -> None:
    """Free the tenant lock if run `run_id` holds it (the run-status sensors, once the run has ended)."""
    store.state.release_run_lock(run_id)


def end_run(run_id: str) -> None:
    """Run `run_id` ended in this process: stop its heartbeats and release its tenant locks now."""
    with _beats_guard:
        ended = [(key, _beats.pop(key)) for key in list(_beats) if key[1] == run_id]
    for _, beat in ended:
        beat.stop.set()
        with contextlib.suppress(Exception):  # else the heartbeat expires
            beat.store.state.release_run_lock(run_id)


@atexit.register
def _release_on_exit() -> None:
    """A process exiting normally has ended its runs: free their locks now rather than after the takeover
    time, for runs no status sensor sees (CLI runs)."""
    with _beats_guard:
        held = list(_beats)
    for _, run_id in held:
        end_run(run_id)


# --- the run audit (docs/operations.md §4) ---------------------------------------------------------------
def audit_run(
    store: TenantStore,
    run_id: str,
    *,
    trigger: str,
    started_at: datetime,
    range_start: date | None,
    range_end: date | None,
    stage: str | None = None,
) -> None:
    """Create the audit row of `run_id` when it has none (status `running`); set its stage when given."""
    stage_field = {"stage": stage} if stage else {}
    if store.state.get_run(run_id) is None:
        store.state.upsert_run(
            run_id,
            trigger=trigger,
            range_start=range_start,
            range_end=range_end,
            started_at=started_at,
            **stage_field,
        )
    elif stage_field:
        store.state.upsert_run(run_id, **stage_field)


def audit_progress(store: TenantStore, run_id: str, **fields) -> None:
    """Stage and counters of a running run (`dates_gathered`, `rows_written`, …)."""
    store.state.upsert_run(run_id, **fields)


def audit_run_ended(store: TenantStore, run_id: str, status: str, error: str | None) -> None:
    """The final status of `run_id`. The run-status sensors are authoritative: this overwrites what a later
    run's guard wrote for an "orphan"."""
    store.state.end_runs([run_id], status=status, at=now_utc(), error=error, only_running=False)


def close_orphans(store: TenantStore, run_id: str, lookup: RunLookup, dead_holder: str | None = None) -> None:
    """`running` audit rows of runs no longer in progress, or of the dead lock holder run `run_id` took over
    from: a run that succeeded (its status sensor has not ticked yet) becomes `completed`; any other becomes
    `failed` with the orphan message."""
    for row in store.state.runs("running"):
        other = row["dagster_run_id"]
        if other == run_id:
            continue
        facts = lookup(other)
        if facts is not None and facts.in_progress and other != dead_holder:
            continue
        ended = facts.ended_at if facts is not None and facts.ended_at else now_utc()
        if facts is not None and facts.succeeded:
            store.state.end_runs([other], status="completed", at=ended, error=None)
        else:
            store.state.end_runs([other], status="failed", at=ended, error=ORPHANED)
