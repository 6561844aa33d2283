"""Gather-failure counting, suspension and resume (docs/operations.md §7, decision D8), free of Dagster.

The state lives in the tenant database (`tenant_status`), so it survives restarts and redeploys. The guard,
the run-failure sensor, the refresh sensor, the retention schedule and the CLI all go through this module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from chargeback_dagster.store import TenantStore

log = logging.getLogger("chargeback_dagster.suspension")

GATHER_KINDS = ("billing", "inventory")


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


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
        log.critical(
            alert_line(tenant, row["consecutive_gather_failures"], threshold, row["last_gather_error"] or "")
        )
    return row


def alert_if_all_suspended(stores: Iterable[TenantStore]) -> bool:
    """Log the all-suspended ALERT when no unsuspended tenant remains."""
    stores = list(stores)
    if stores and all(is_suspended(s) for s in stores):
        log.critical(f"ALERT: All {len(stores)} tenants are suspended; no chargeback is being calculated")
        return True
    return False


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


# What a Dagster instance says about a run: its status name (e.g. "SUCCESS") and end time, or None when the
# instance does not know the run.
DagsterRunState = Callable[[str], tuple[str, datetime | None] | None]
DAGSTER_OUTCOMES = {"SUCCESS": "completed", "FAILURE": "failed", "CANCELED": "canceled"}


def run_state_line(
    store: TenantStore,
    run: dict,
    takeover_seconds: float,
    dagster_run_state: DagsterRunState | None = None,
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
    state = dagster_run_state(run_id) if dagster_run_state is not None else None
    if state is not None:
        dagster_status, ended = state
        outcome = DAGSTER_OUTCOMES.get(dagster_status)
        if outcome is None:  # queued, starting, started, canceling
            return f"{head} running ({run['trigger']}; Dagster status {dagster_status})"
        at = f" at {ended.isoformat()}" if ended else ""
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
    dagster_run_state: DagsterRunState | None = None,
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
        lines.append(run_state_line(store, runs[0], takeover_seconds, dagster_run_state, now))
    else:
        lines.append("  last run: none")
    return lines
