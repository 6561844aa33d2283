"""Gather-failure counting, suspension and resume (docs/operations.md §7, decision D8), free of Dagster.

The state lives in the tenant database (`tenant_status`), so it survives restarts and redeploys. The guard,
the run-failure sensor, the refresh sensor, the retention schedule and the CLI all go through this module.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
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


def status_lines(store: TenantStore) -> list[str]:
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
        run = runs[0]
        lines.append(f"  last run: {run['dagster_run_id']} {run['status']} ({run['trigger']})")
    else:
        lines.append("  last run: none")
    return lines
