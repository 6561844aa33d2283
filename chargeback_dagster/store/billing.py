"""Billing lines of a tenant (docs/confluent-cloud.md §4, docs/allocation.md §6)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date, datetime
from decimal import Decimal
from itertools import repeat
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, select, type_coerce, update
from sqlalchemy.types import NullType

from chargeback_dagster.domain import BillingLine, day_start
from chargeback_dagster.money import round4_units
from chargeback_dagster.store import tables as t
from chargeback_dagster.store.database import Repository, StoreError, chunks, process_each

KEY_COLUMNS = ("date", "env_id", "resource_id", "product_category", "product_type")

# Column order of the rows `_line_rows` makes: the table's.
_ROW_COLUMNS = tuple(c.name for c in t.billing.columns)

# BillingLine fields in constructor order, read by `lines`.
_LINE_COLUMNS = (
    "ecosystem",
    "tenant_id",
    "date",
    "resource_id",
    "product_category",
    "product_type",
    "quantity",
    "unit_price",
    "total_cost",
    "env_id",
    "currency",
    "granularity",
    "metadata_json",
    "allocation_attempts",
)


def line_key(line: BillingLine) -> tuple:
    """The stored key of `line`, in KEY_COLUMNS order."""
    return (line.date, line.env_id or "", line.resource_id, line.product_category, line.product_type)


def line_where(mine: Any, line: BillingLine) -> list[Any]:
    """WHERE clauses selecting the stored row of `line`; `mine` is the repository's tenant filter."""
    b = t.billing
    return [
        mine,
        b.c.date == line.date,
        b.c.env_id == (line.env_id or ""),
        b.c.resource_id == line.resource_id,
        b.c.product_category == line.product_category,
        b.c.product_type == line.product_type,
    ]


class BillingRepository(Repository):
    """Table `billing`."""

    def replace(self, lines: list[BillingLine], dates: Iterable[date], gathered_at: datetime) -> dict:
        """Per-date replacement (docs/confluent-cloud.md §4), one transaction.

        Every date that has ≥ 1 line in `lines` gets exactly those lines (lines keep the stored
        allocation/topic-attribution attempt counters when their key survives). Dates of `dates` without
        lines keep their stored lines. Returns
        `{"revised": [(date, resource_id, product_type, old_total, new_total)],
          "removed": [(date, resource_id, product_type)], "kept_dates": {date: n_stored}}`.
        """
        keys = [line_key(line) for line in lines]
        seen = set(keys)
        if len(seen) != len(keys):
            _raise_duplicate_key(keys)
        replace_dates = sorted({key[0] for key in keys})
        kept_dates = sorted(set(dates) - set(replace_dates))
        b = t.billing
        revised: list[tuple] = []
        removed: list[tuple] = []
        kept: dict[date, int] = {}
        with self.db.write() as conn:
            old = self._stored(conn, replace_dates)
            if kept_dates:
                counts = dict(
                    conn.execute(
                        select(b.c.date, func.count())
                        .where(self._mine(b), b.c.date.in_(kept_dates))
                        .group_by(b.c.date)
                    ).all()
                )
                kept = {d: int(counts.get(d, 0)) for d in kept_dates}
            if old:
                attempts: list[int] = []
                topics: list[int] = []
                for line, key in zip(lines, keys, strict=True):
                    prev = old.get(key)
                    if prev is None:
                        attempts.append(line.allocation_attempts)
                        topics.append(0)
                        continue
                    total, n_attempts, n_topic = prev
                    if total != line.total_cost:
                        revised.append(
                            (line.date, line.resource_id, line.product_type, total, line.total_cost)
                        )
                    attempts.append(n_attempts)
                    topics.append(n_topic)
                removed = sorted((k[0], k[2], k[4]) for k in old.keys() - seen)
            else:
                attempts = [line.allocation_attempts for line in lines]
                topics = [0] * len(lines)
            for chunk in chunks(replace_dates):
                conn.execute(delete(b).where(self._mine(b), b.c.date.in_(chunk)))
            if lines:
                rows = self._line_rows(conn.dialect, lines, attempts, topics, gathered_at)
                self.db.bulk_insert(conn, b, rows, columns=_ROW_COLUMNS, processed=True)
        revised.sort(key=lambda x: (x[0], x[1], x[2]))
        return {"revised": revised, "removed": removed, "kept_dates": kept}

    def _line_rows(
        self,
        dialect: Any,
        lines: list[BillingLine],
        attempts: list[int],
        topics: list[int],
        gathered_at: datetime | None,
    ) -> Iterator[tuple]:
        """Driver-ready billing rows in `_ROW_COLUMNS` order, the values processed as `bulk_insert` does
        (per column, once per distinct value) but built column by column and zipped lazily: no tuple per
        line survives the insert, which spares the garbage collector 2 tuples per line."""
        b = t.billing

        def processor(name: str) -> Callable[[Any], Any] | None:
            return b.c[name].type.dialect_impl(dialect).bind_processor(dialect)

        def column(name: str, values: list[Any]) -> Iterable[Any]:
            process = processor(name)
            if process is None:
                return values
            return process_each(process, values)

        def constant(name: str, value: Any) -> Iterable[Any]:
            process = processor(name)
            return repeat(process(value) if process is not None else value)  # endless; zip stops

        days = [line.date for line in lines]
        stamps = {d: day_start(d) for d in set(days)}
        metadata = processor("metadata_json")
        mds = (line.metadata or {} for line in lines)
        return zip(
            constant("ecosystem", self.ecosystem),
            constant("tenant_id", self.tenant_id),
            column("date", days),
            column("env_id", [line.env_id or "" for line in lines]),
            column("resource_id", [line.resource_id for line in lines]),
            column("product_category", [line.product_category for line in lines]),
            column("product_type", [line.product_type for line in lines]),
            column("timestamp", [stamps[d] for d in days]),
            column("quantity", [line.quantity for line in lines]),
            column("unit_price", [line.unit_price for line in lines]),
            column("total_cost", [line.total_cost for line in lines]),
            column("currency", [line.currency for line in lines]),
            column("granularity", [line.granularity for line in lines]),
            column("allocation_attempts", attempts),
            column("topic_attribution_attempts", topics),
            map(metadata, mds) if metadata is not None else mds,  # JSON text per row, made as inserted
            constant("gathered_at", gathered_at),
            strict=False,
        )

    def _stored(self, conn: Connection, dates: Sequence[date]) -> dict[tuple, tuple]:
        """`{line key: (total_cost, allocation_attempts, topic_attribution_attempts)}` of the stored lines
        of `dates`, read raw and converted column by column (a recurring raw value, e.g. a date, once)."""
        b = t.billing
        columns = [
            *(b.c[c] for c in KEY_COLUMNS),
            b.c.total_cost,
            b.c.allocation_attempts,
            b.c.topic_attribution_attempts,
        ]
        raw: list[Any] = []
        for chunk in chunks(dates):
            raw.extend(
                conn.execute(
                    select(*(type_coerce(c, NullType()) for c in columns)).where(
                        self._mine(b), b.c.date.in_(chunk)
                    )
                ).all()
            )
        if not raw:
            return {}
        dialect = conn.dialect
        converted: list[Sequence[Any]] = []
        for column, values in zip(columns, zip(*raw, strict=True), strict=True):
            process = column.type.dialect_impl(dialect).result_processor(dialect, None)
            if process is None:
                converted.append(values)
            else:
                converted.append(process_each(process, values))
        return dict(zip(zip(*converted[:5], strict=True), zip(*converted[5:], strict=True), strict=True))

    def lines(self, d: date) -> list[BillingLine]:
        """Lines of `d` ordered by (resource_id, product_type, env_id), code-point order.

        Read raw and converted column by column: a converted value (a date, an exact decimal, a text) is
        reused wherever its raw value recurs; JSON is parsed per row (dicts are mutable)."""
        b = t.billing
        columns = [b.c[name] for name in _LINE_COLUMNS]
        with self.db.read() as conn:
            rows = conn.execute(
                select(*(type_coerce(c, NullType()) for c in columns)).where(self._mine(b), b.c.date == d)
            ).all()
            dialect = conn.dialect
        if not rows:
            return []
        converted: list[Any] = []
        for column, values in zip(columns, zip(*rows, strict=True), strict=True):
            process = column.type.dialect_impl(dialect).result_processor(dialect, None)
            if process is None:
                converted.append(values)
            elif column.name == "metadata_json":
                converted.append([process(v) or {} for v in values])
            else:
                converted.append(process_each(process, values))
        lines = list(map(BillingLine, *converted))
        lines.sort(key=lambda ln: (ln.date, ln.resource_id, ln.product_type, ln.env_id, ln.product_category))
        return lines

    def increment_attempts(self, line: BillingLine, counter: str = "allocation_attempts") -> int:
        """Add one to the line's `counter` (allocation_attempts, docs/allocation.md §6 step 1, or
        topic_attribution_attempts, docs/confluent-cloud.md §9) in its own transaction, committed at once.
        Returns the new count."""
        b = t.billing
        column = b.c[counter]
        where = line_where(self._mine(b), line)
        with self.db.write() as conn:
            res = conn.execute(update(b).where(*where).values({counter: column + 1}))
            if res.rowcount == 0:
                raise StoreError(
                    f"Billing line not stored: {line.date} {line.resource_id} {line.product_type} "
                    f"{line.env_id}"
                )
            return int(conn.execute(select(column).where(*where)).scalar_one())

    def reset_attempts(self, conn: Connection, d: date, lines: list[BillingLine]) -> None:
        """allocation_attempts of `lines` (all of date `d`) back to 0, inside the caller's transaction."""
        b = t.billing
        nonzero = conn.execute(
            select(*(b.c[c] for c in KEY_COLUMNS)).where(
                self._mine(b), b.c.date == d, b.c.allocation_attempts != 0
            )
        ).all()
        ok = {line_key(ln) for ln in lines}
        reset = [tuple(r) for r in nonzero if tuple(r) in ok]
        if not reset:
            return
        conn.execute(
            update(b)
            .where(
                b.c.ecosystem == bindparam("b_eco"),
                b.c.tenant_id == bindparam("b_tid"),
                b.c.date == bindparam("b_date"),
                b.c.env_id == bindparam("b_env"),
                b.c.resource_id == bindparam("b_res"),
                b.c.product_category == bindparam("b_cat"),
                b.c.product_type == bindparam("b_type"),
            )
            .values(allocation_attempts=0),
            [
                {
                    "b_eco": self.ecosystem,
                    "b_tid": self.tenant_id,
                    "b_date": k[0],
                    "b_env": k[1],
                    "b_res": k[2],
                    "b_cat": k[3],
                    "b_type": k[4],
                }
                for k in reset
            ],
        )

    def billed_units(self, start: date, end: date) -> dict[date, int]:
        """Σ T in units per date with start ≤ d < end (what the date's chargeback must add up to, decision
        D1), T being a line's total_cost rounded to 0.0001; only the two columns are read."""
        b = t.billing
        with self.db.read() as conn:
            rows = conn.execute(
                select(b.c.date, type_coerce(b.c.total_cost, NullType())).where(
                    self._mine(b), b.c.date >= start, b.c.date < end
                )
            ).all()
        totals: dict[date, int] = {}
        for d, total_cost in rows:
            totals[d] = totals.get(d, 0) + round4_units(Decimal(total_cost))
        return totals

    def credit_units(self, start: date, end: date) -> dict[date, int]:
        """Σ T in units of the negative lines (credits, discounts) per date with start ≤ d < end."""
        b = t.billing
        with self.db.read() as conn:
            rows = conn.execute(
                select(b.c.date, type_coerce(b.c.total_cost, NullType())).where(
                    self._mine(b), b.c.date >= start, b.c.date < end, b.c.total_cost < 0
                )
            ).all()
        totals: dict[date, int] = {}
        for d, total_cost in rows:
            totals[d] = totals.get(d, 0) + round4_units(Decimal(total_cost))
        return totals


def _raise_duplicate_key(keys: list[tuple]) -> None:
    seen: set[tuple] = set()
    for key in keys:
        if key in seen:
            raise StoreError(f"Duplicate billing line key {key} (lines must be collapsed per key)")
        seen.add(key)
