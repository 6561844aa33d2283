"""Operating state of a tenant (docs/operations.md §4, §7): per-date pipeline state, the tenant status
with its gather-failure counter and suspension, the gather log and counters, the run lock and the run
audit."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, delete, func, or_, select, update

from chargeback_dagster.store import tables as t
from chargeback_dagster.store.database import Repository, StoreError, utc

STATE_FIELDS = (
    "billing_gathered_at",
    "inventory_gathered_at",
    "metrics_fetched_at",
    "chargeback_calculated_at",
    "calculation_id",
    "calculation_run_id",
    "last_error",
)


class RunLock(NamedTuple):
    """The tenant run lock's row (docs/operations.md §4)."""

    run_id: str
    acquired_at: datetime
    heartbeat_at: datetime


class TenantStateRepository(Repository):
    """Tables `pipeline_state`, `tenant_status`, `gather_log`, `gather_counters`, `tenant_run_lock` and
    `pipeline_runs`."""

    # ------------------------------------------------------------------ per-date pipeline state

    def upsert_dates(self, conn: Connection, dates: Sequence[date], fields: dict[str, Any]) -> None:
        unknown = set(fields) - set(STATE_FIELDS)
        if unknown:
            raise StoreError(f"Unknown pipeline_state fields: {sorted(unknown)}")
        if not dates:
            return
        values = {k: (utc(v) if isinstance(v, datetime) else v) for k, v in fields.items()}
        stmt = self.db.insert(t.pipeline_state)
        if values:
            stmt = stmt.on_conflict_do_update(
                index_elements=["ecosystem", "tenant_id", "date"],
                set_={k: stmt.excluded[k] for k in values},
            )
        else:
            stmt = stmt.on_conflict_do_nothing()
        conn.execute(stmt, [{**self._tenant(), "date": d, **values} for d in dates])

    def set_dates(self, dates: Iterable[date], **fields: Any) -> None:
        """Upsert the pipeline_state rows of `dates`; fields among STATE_FIELDS (others untouched)."""
        dates = sorted(set(dates))
        with self.db.write() as conn:
            self.upsert_dates(conn, dates, fields)

    def date_row(self, d: date) -> dict | None:
        """{'date': d, <STATE_FIELDS>...} or None."""
        ps = t.pipeline_state
        with self.db.read() as conn:
            r = conn.execute(
                select(ps.c.date, *(ps.c[c] for c in STATE_FIELDS)).where(self._mine(ps), ps.c.date == d)
            ).first()
        return None if r is None else dict(r._mapping)

    def calculated_dates(self, start: date, end: date) -> list[date]:
        """Dates start ≤ d < end with chargeback_calculated_at set, ascending."""
        ps = t.pipeline_state
        with self.db.read() as conn:
            return sorted(
                conn.execute(
                    select(ps.c.date).where(
                        self._mine(ps),
                        ps.c.date >= start,
                        ps.c.date < end,
                        ps.c.chargeback_calculated_at.is_not(None),
                    )
                ).scalars()
            )

    def last_calculated_date(self) -> date | None:
        ps = t.pipeline_state
        with self.db.read() as conn:
            return conn.execute(
                select(func.max(ps.c.date)).where(self._mine(ps), ps.c.chargeback_calculated_at.is_not(None))
            ).scalar_one_or_none()

    # ------------------------------------------------------------------ consecutive zero gathers per key

    def zero_gathers(self, key: str) -> int:
        tab = t.gather_counters
        with self.db.read() as conn:
            v = conn.execute(
                select(tab.c.consecutive_zero_gathers).where(self._mine(tab), tab.c.key == key)
            ).scalar()
        return int(v or 0)

    def set_zero_gathers(self, key: str, value: int) -> None:
        stmt = self.db.insert(t.gather_counters)
        stmt = stmt.on_conflict_do_update(
            index_elements=["key"],
            set_={
                "consecutive_zero_gathers": stmt.excluded.consecutive_zero_gathers,
                "ecosystem": stmt.excluded.ecosystem,
                "tenant_id": stmt.excluded.tenant_id,
            },
        )
        with self.db.write() as conn:
            conn.execute(stmt, [{**self._tenant(), "key": key, "consecutive_zero_gathers": int(value)}])

    # ------------------------------------------------------------------ gather log

    def log_gather(self, **fields: Any) -> int:
        """Insert one gather_log row (kind, run_id, trigger, started_at, finished_at, range_start,
        range_end, status, error); returns its id."""
        with self.db.write() as conn:
            res = conn.execute(t.gather_log.insert().values(**self._tenant(), **fields))
            return int(res.inserted_primary_key[0])

    def finish_gather(self, log_id: int, *, finished_at: datetime, status: str, error: str | None = None):
        gl = t.gather_log
        with self.db.write() as conn:
            conn.execute(
                update(gl)
                .where(self._mine(gl), gl.c.id == log_id)
                .values(finished_at=finished_at, status=status, error=error)
            )

    def gathers_ok(self, run_id: str) -> set[str]:
        """Kinds (`billing`, `inventory`) whose gather succeeded in run `run_id`."""
        gl = t.gather_log
        with self.db.read() as conn:
            rows = conn.execute(
                select(gl.c.kind).where(self._mine(gl), gl.c.run_id == run_id, gl.c.status == "ok")
            ).scalars()
            return set(rows)

    def latest_gather_start(self, exclude_trigger: str | None = None) -> datetime | None:
        """Start of the latest gather (optionally ignoring gathers of runs with trigger `exclude_trigger`)."""
        gl = t.gather_log
        q = select(func.max(gl.c.started_at)).where(self._mine(gl))
        if exclude_trigger is not None:
            q = q.where(or_(gl.c.trigger.is_(None), gl.c.trigger != exclude_trigger))
        with self.db.read() as conn:
            value = conn.execute(q).scalar_one_or_none()
        return utc(value) if isinstance(value, datetime) else value

    def last_gather(self) -> dict | None:
        """The latest gather_log row (by start), as a dict."""
        gl = t.gather_log
        with self.db.read() as conn:
            r = conn.execute(
                select(gl).where(self._mine(gl)).order_by(gl.c.started_at.desc(), gl.c.id.desc()).limit(1)
            ).first()
        return None if r is None else dict(r._mapping)

    # --------------------------------------------------------------- tenant status (docs/operations.md §7)

    def status(self) -> dict | None:
        """The tenant_status row (counter, last gather error, suspension), None before the first write."""
        ts = t.tenant_status
        with self.db.read() as conn:
            r = conn.execute(select(ts).where(ts.c.tenant_name == self.tenant_name)).first()
        return None if r is None else dict(r._mapping)

    def _ensure_status(self, conn: Connection) -> None:
        stmt = self.db.insert(t.tenant_status).on_conflict_do_nothing(index_elements=["tenant_name"])
        conn.execute(stmt, [{**self._tenant(), "tenant_name": self.tenant_name}])

    def _status_row(self, conn: Connection) -> dict:
        ts = t.tenant_status
        return dict(conn.execute(select(ts).where(ts.c.tenant_name == self.tenant_name)).one()._mapping)

    def record_gather_failure(self, run_id: str, error: str) -> int:
        """Count a gather failure of run `run_id` (at most once per run); returns the counter."""
        ts = t.tenant_status
        with self.db.write() as conn:
            self._ensure_status(conn)
            mine = ts.c.tenant_name == self.tenant_name
            conn.execute(
                update(ts)
                .where(mine, or_(ts.c.last_increment_run_id.is_(None), ts.c.last_increment_run_id != run_id))
                .values(
                    consecutive_gather_failures=ts.c.consecutive_gather_failures + 1,
                    last_increment_run_id=run_id,
                )
            )
            conn.execute(update(ts).where(mine).values(last_gather_error=error))
            return int(self._status_row(conn)["consecutive_gather_failures"])

    def reset_gather_failures(self, run_id: str) -> bool:
        """Counter to 0 unless run `run_id` already incremented it; True when it was reset."""
        ts = t.tenant_status
        with self.db.write() as conn:
            self._ensure_status(conn)
            res = conn.execute(
                update(ts)
                .where(
                    ts.c.tenant_name == self.tenant_name,
                    ts.c.consecutive_gather_failures != 0,
                    or_(ts.c.last_increment_run_id.is_(None), ts.c.last_increment_run_id != run_id),
                )
                .values(consecutive_gather_failures=0)
            )
            return res.rowcount > 0

    def suspend_if_due(self, threshold: int, at: datetime, reason: Callable[[int, str], str]) -> dict | None:
        """Conditional suspension: when not suspended and the counter ≥ `threshold`, set the flag with
        `reason(count, last_error)`. Returns the updated status row only to the caller that suspended."""
        ts = t.tenant_status
        with self.db.write() as conn:
            self._ensure_status(conn)
            row = self._status_row(conn)
            count = int(row["consecutive_gather_failures"])
            if row["suspended"] or count < threshold:
                return None
            res = conn.execute(
                update(ts)
                .where(
                    ts.c.tenant_name == self.tenant_name,
                    ts.c.suspended.is_(False),
                    ts.c.consecutive_gather_failures == count,
                )
                .values(
                    suspended=True,
                    suspended_at=utc(at),
                    suspended_reason=reason(count, row["last_gather_error"] or ""),
                )
            )
            return self._status_row(conn) if res.rowcount == 1 else None

    def clear_suspension(self) -> dict | None:
        """Resume: suspended false, counter 0. Returns the status row as it was when it was suspended,
        None when the tenant was not suspended."""
        ts = t.tenant_status
        with self.db.write() as conn:
            self._ensure_status(conn)
            before = self._status_row(conn)
            res = conn.execute(
                update(ts)
                .where(ts.c.tenant_name == self.tenant_name, ts.c.suspended.is_(True))
                .values(
                    suspended=False,
                    suspended_at=None,
                    suspended_reason=None,
                    consecutive_gather_failures=0,
                    last_increment_run_id=None,
                )
            )
            return before if res.rowcount == 1 else None

    # ------------------------------------------------------------- tenant run lock (docs/operations.md §4)

    def run_lock_holder(self) -> RunLock | None:
        lk = t.tenant_run_lock
        with self.db.read() as conn:
            r = conn.execute(
                select(lk.c.run_id, lk.c.acquired_at, lk.c.heartbeat_at).where(
                    lk.c.tenant_name == self.tenant_name
                )
            ).first()
        return None if r is None else RunLock(r.run_id, r.acquired_at, r.heartbeat_at or r.acquired_at)

    def try_take_run_lock(
        self,
        run_id: str,
        at: datetime,
        *,
        replacing: str | None = None,
        stale_before: datetime | None = None,
    ) -> bool:
        """Take the lock when it is free (`replacing` None) or still held by run `replacing` — and, with
        `stale_before`, only while that holder's heartbeat is not newer than it. One statement: atomic."""
        lk = t.tenant_run_lock
        with self.db.write() as conn:
            if replacing is None:
                stmt = self.db.insert(lk).on_conflict_do_nothing(index_elements=["tenant_name"])
                res = conn.execute(
                    stmt,
                    [
                        {
                            **self._tenant(),
                            "tenant_name": self.tenant_name,
                            "run_id": run_id,
                            "acquired_at": at,
                            "heartbeat_at": at,
                        }
                    ],
                )
            else:
                held = [lk.c.tenant_name == self.tenant_name, lk.c.run_id == replacing]
                if stale_before is not None:
                    held.append(func.coalesce(lk.c.heartbeat_at, lk.c.acquired_at) <= utc(stale_before))
                res = conn.execute(
                    update(lk).where(*held).values(run_id=run_id, acquired_at=utc(at), heartbeat_at=utc(at))
                )
            return res.rowcount == 1

    def touch_run_lock(self, run_id: str, at: datetime) -> bool:
        """Refresh the heartbeat of the lock held by `run_id`; False when that run no longer holds it."""
        lk = t.tenant_run_lock
        with self.db.write() as conn:
            res = conn.execute(
                update(lk)
                .where(lk.c.tenant_name == self.tenant_name, lk.c.run_id == run_id)
                .values(heartbeat_at=utc(at))
            )
            return res.rowcount == 1

    def release_run_lock(self, run_id: str) -> bool:
        lk = t.tenant_run_lock
        with self.db.write() as conn:
            res = conn.execute(delete(lk).where(lk.c.tenant_name == self.tenant_name, lk.c.run_id == run_id))
            return res.rowcount == 1

    # ------------------------------------------------------------------- run audit (docs/operations.md §4)

    def upsert_run(self, run_id: str, **fields: Any) -> None:
        """Create the audit row of `run_id` (with `fields`) or update the given fields of it."""
        pr = t.pipeline_runs
        unknown = set(fields) - set(pr.c.keys())
        if unknown:
            raise StoreError(f"Unknown pipeline_runs fields: {sorted(unknown)}")
        values = {k: (utc(v) if isinstance(v, datetime) else v) for k, v in fields.items()}
        row = {
            **self._tenant(),
            "dagster_run_id": run_id,
            "tenant_name": self.tenant_name,
            "trigger": "manual",
            "status": "running",
            **values,
        }
        row.setdefault("started_at", utc(datetime.now(UTC)))
        stmt = self.db.insert(pr)
        stmt = (
            stmt.on_conflict_do_update(
                index_elements=["dagster_run_id"], set_={k: stmt.excluded[k] for k in values}
            )
            if values
            else stmt.on_conflict_do_nothing(index_elements=["dagster_run_id"])
        )
        with self.db.write() as conn:
            conn.execute(stmt, [row])

    def get_run(self, run_id: str) -> dict | None:
        """The audit row of `run_id`, None when there is none."""
        pr = t.pipeline_runs
        with self.db.read() as conn:
            r = conn.execute(select(pr).where(self._mine(pr), pr.c.dagster_run_id == run_id)).first()
        return None if r is None else dict(r._mapping)

    def runs(self, status: str | None = None) -> list[dict]:
        """Audit rows (optionally of one status), newest first."""
        pr = t.pipeline_runs
        q = select(pr).where(self._mine(pr))
        if status is not None:
            q = q.where(pr.c.status == status)
        with self.db.read() as conn:
            rows = conn.execute(q.order_by(pr.c.started_at.desc())).all()
        return [dict(r._mapping) for r in rows]

    def end_runs(
        self,
        run_ids: Iterable[str],
        *,
        status: str,
        at: datetime,
        error: str | None,
        only_running: bool = True,
    ) -> int:
        """Close audit rows (only `running` ones unless `only_running` is False): ended_at, final status and
        error (≤ 2000 chars)."""
        pr = t.pipeline_runs
        ids = list(run_ids)
        if not ids:
            return 0
        values: dict[str, Any] = {"status": status, "ended_at": utc(at)}
        if error is not None:
            values["error_message"] = error[:2000]
        with self.db.write() as conn:
            res = conn.execute(
                update(pr)
                .where(
                    self._mine(pr),
                    pr.c.dagster_run_id.in_(ids),
                    pr.c.status == "running" if only_running else pr.c.status.is_not(None),
                )
                .values(**values)
            )
            return res.rowcount
