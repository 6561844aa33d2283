"""Chargeback facts of a tenant: dimensions, per-date facts, totals and the CSV rows (docs/operations.md §4
`chargeback`, §10)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from itertools import repeat
from typing import Any

from sqlalchemy import Connection, delete, func, select, type_coerce
from sqlalchemy.types import NullType

from chargeback_dagster.domain import IDENTITY_INDEX, BillingLine, BlockKey, day_start, row_key
from chargeback_dagster.store import tables as t
from chargeback_dagster.store.billing import BillingRepository
from chargeback_dagster.store.database import Database, Repository, StoreError
from chargeback_dagster.store.tables import DIMENSION_KEY_COLUMNS
from chargeback_dagster.store.tenant_state import TenantStateRepository

# The dimension columns a CSV row shows: resource_id … allocation_detail (env_id and composition_part are
# summed over).
CSV_DIMENSION_COLUMNS = DIMENSION_KEY_COLUMNS[1:-1]

# Chargeback dimension ids as block key (the dimension key without identity_id) -> identity_id -> id.
Dimensions = dict[BlockKey, dict[str, int]]
BLOCK_KEY_LENGTH = len(DIMENSION_KEY_COLUMNS) - 1


class _StaleDimensionCache(Exception):
    """A cached dimension id no longer exists (purged by another store instance)."""


def _nest_dimensions(rows: Iterable[Any]) -> Dimensions:
    """(dimension_id, *DIMENSION_KEY_COLUMNS) rows as Dimensions."""
    out: Dimensions = {}
    for dimension_id, *key in rows:
        identity_id = key.pop(IDENTITY_INDEX)
        out.setdefault(tuple(key), {})[identity_id] = int(dimension_id)
    return out


def _merge_dimensions(into: Dimensions, other: Dimensions) -> None:
    for block_key, ids in other.items():
        into.setdefault(block_key, {}).update(ids)


def _missing_dimensions(known: Dimensions, blocks: Mapping[BlockKey, Mapping[str, int]]) -> list[tuple]:
    missing = []
    for block_key, per_identity in blocks.items():
        ids = known.get(block_key)
        if ids is None:
            missing += ((block_key, i) for i in per_identity)
        elif not ids.keys() >= per_identity.keys():
            missing += ((block_key, i) for i in per_identity if i not in ids)
    return missing


def _normalised_blocks(blocks: Mapping[BlockKey, Mapping[str, int]]) -> Mapping[BlockKey, Mapping[str, int]]:
    """Checks the block keys; None in a key becomes "" (the columns are NOT NULL), summing rows that meet."""
    if any(len(k) != BLOCK_KEY_LENGTH for k in blocks):
        bad = next(k for k in blocks if len(k) != BLOCK_KEY_LENGTH)
        raise StoreError(f"Chargeback block key must have {BLOCK_KEY_LENGTH} fields: {bad!r}")
    if not any(None in k or None in v for k, v in blocks.items()):
        return blocks
    out: dict[BlockKey, dict[str, int]] = {}
    for block_key, per_identity in blocks.items():
        merged = out.setdefault(tuple("" if x is None else x for x in block_key), {})
        for identity_id, units in per_identity.items():
            identity_id = "" if identity_id is None else identity_id
            merged[identity_id] = merged.get(identity_id, 0) + units
    return out


class ChargebackRepository(Repository):
    """Tables `chargeback_dimensions` and `chargeback_facts`. A chargeback write also resets the billing
    lines' attempt counters and sets the date's calculation state, in the same transaction."""

    def __init__(
        self,
        db: Database,
        *,
        tenant_name: str,
        ecosystem: str,
        tenant_id: str,
        billing: BillingRepository,
        state: TenantStateRepository,
    ) -> None:
        super().__init__(db, tenant_name=tenant_name, ecosystem=ecosystem, tenant_id=tenant_id)
        self._billing = billing
        self._state = state
        self._dims: Dimensions = {}  # block key -> identity_id -> dimension_id
        self._dims_max_id = 0
        self._csv_fields_by_id: dict[int, tuple[str, ...]] = {}
        self._csv_rank: tuple[dict[int, int], list[tuple[str, ...]]] = ({}, [])
        self._dims_lock = threading.Lock()

    def forget_dimensions(self) -> None:
        """Drop the cached dimension ids (after a purge deleted dimensions)."""
        with self._dims_lock:
            self._dims = {}
            self._dims_max_id = 0

    def _load_dimensions(self, conn: Connection, *, full: bool) -> Dimensions:
        dim = t.chargeback_dimensions
        q = select(dim.c.dimension_id, *(dim.c[c] for c in DIMENSION_KEY_COLUMNS)).where(self._mine(dim))
        if not full:
            q = q.where(dim.c.dimension_id > self._dims_max_id)
        return _nest_dimensions(conn.execute(q))

    def _dimension_ids(self, conn: Connection, blocks: Mapping[BlockKey, Mapping[str, int]]) -> Dimensions:
        """Ids of every (block key, identity) of `blocks`, creating missing dimensions inside the caller's
        transaction. Returns a new mapping; the instance cache is updated by the caller after commit only.
        """
        if not _missing_dimensions(self._dims, blocks):
            return self._dims
        known = {k: dict(v) for k, v in self._dims.items()}
        _merge_dimensions(known, self._load_dimensions(conn, full=not known))
        missing = _missing_dimensions(known, blocks)
        if missing:
            self.db.bulk_insert(
                conn,
                t.chargeback_dimensions,
                [(self.ecosystem, self.tenant_id, *row_key(k, i)) for k, i in missing],
                columns=("ecosystem", "tenant_id", *DIMENSION_KEY_COLUMNS),
                ignore_conflicts=True,
            )
            # New ids are above everything this instance has seen, except under concurrent writers.
            floor = max((i for ids in known.values() for i in ids.values()), default=0)
            dim = t.chargeback_dimensions
            q = select(dim.c.dimension_id, *(dim.c[c] for c in DIMENSION_KEY_COLUMNS)).where(
                self._mine(dim), dim.c.dimension_id > floor
            )
            _merge_dimensions(known, _nest_dimensions(conn.execute(q)))
            if _missing_dimensions(known, blocks):
                known = self._load_dimensions(conn, full=True)
        return known

    def write(
        self,
        d: date,
        blocks: Mapping[BlockKey, Mapping[str, int]],
        *,
        calculation_id: str,
        run_id: str | None,
        succeeded_lines: list[BillingLine],
        calculated_at: datetime,
    ) -> int:
        """Replace the facts of `d` (docs/operations.md §4 `chargeback`), one transaction.

        `blocks`: block key (the dimension key without identity_id: env_id, resource_id, product_category,
        product_type, cost_type, allocation_method, allocation_detail, composition_part) → identity_id →
        amount_units (int), as `DateAllocation.blocks`. Also resets allocation_attempts of
        `succeeded_lines` and sets the date's calculation state (last_error cleared). Returns the number of
        facts written.
        """
        blocks = _normalised_blocks(blocks)
        try:
            return self._write(d, blocks, calculation_id, run_id, succeeded_lines, calculated_at)
        except _StaleDimensionCache:
            # A cached dimension was purged by another store instance since: reload and retry once.
            self.forget_dimensions()
            return self._write(d, blocks, calculation_id, run_id, succeeded_lines, calculated_at)

    def _write(
        self,
        d: date,
        blocks: Mapping[BlockKey, Mapping[str, int]],
        calculation_id: str,
        run_id: str | None,
        succeeded_lines: list[BillingLine],
        calculated_at: datetime,
    ) -> int:
        facts = t.chargeback_facts
        with self.db.write() as conn:
            conn.execute(delete(facts).where(self._mine(facts), facts.c.date == d))
            cached = bool(self._dims)
            ids = self._dimension_ids(conn, blocks)
            fact_ids: list[int] = []
            fact_units: list[int] = []
            for block_key, per_identity in blocks.items():
                fact_ids += map(ids[block_key].__getitem__, per_identity)
                fact_units += per_identity.values()
            if fact_ids:
                self._insert_facts(conn, d, fact_ids, fact_units)
                if cached and self._dangling_fact(conn, d):
                    raise _StaleDimensionCache  # rolls the date back
            if succeeded_lines:
                self._billing.reset_attempts(conn, d, succeeded_lines)
            self._state.upsert_dates(
                conn,
                [d],
                {
                    "chargeback_calculated_at": calculated_at,
                    "calculation_id": calculation_id,
                    "calculation_run_id": run_id,
                    "last_error": None,
                },
            )
        with self._dims_lock:
            if ids is not self._dims:
                _merge_dimensions(self._dims, ids)
            self._dims_max_id = max(self._dims_max_id, max(fact_ids, default=0))
        return len(fact_ids)

    def _insert_facts(self, conn: Connection, d: date, dimension_ids: list[int], units: list[int]) -> None:
        """One date's facts. The date, timestamp and tenant columns are the same on every row: their values
        are bound once (per statement on SQLite, repeated in C otherwise), so a fact costs no Python object
        of its own."""
        if set(map(type, units)) != {int}:
            raise TypeError("Chargeback amounts must be int units of 0.0001")
        facts = t.chargeback_facts
        dialect = conn.dialect
        constants = []
        for name, value in (
            ("ecosystem", self.ecosystem),
            ("tenant_id", self.tenant_id),
            ("date", d),
            ("timestamp", day_start(d)),
        ):
            process = facts.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            constants.append(process(value) if process else value)
        columns = ("ecosystem", "tenant_id", "date", "timestamp", "dimension_id", "amount_units")
        if self.db.dialect_name == "sqlite":
            # a fact binds only its dimension_id and amount_units: ?5, ?6 for the first, and so on
            values: list[int] = [0] * (2 * len(dimension_ids))
            values[0::2] = dimension_ids
            values[1::2] = units
            self.db.insert_sqlite(
                conn,
                "chargeback_facts",
                columns,
                constants,
                2,
                lambda i: f"(?1, ?2, ?3, ?4, ?{i}, ?{i + 1})",
                values,
            )
            return
        rows = zip(*map(repeat, constants), dimension_ids, units, strict=False)  # repeat() is endless
        self.db.bulk_insert(conn, facts, rows, columns=columns, processed=True)

    def _dangling_fact(self, conn: Connection, d: date) -> bool:
        """Whether a fact of `d` points at no dimension (facts carry no foreign key, see tables.py)."""
        facts, dim = t.chargeback_facts, t.chargeback_dimensions
        known = select(dim.c.dimension_id).where(dim.c.dimension_id == facts.c.dimension_id)
        q = select(facts.c.dimension_id).where(self._mine(facts), facts.c.date == d, ~known.exists()).limit(1)
        return conn.execute(q).first() is not None

    def totals(self, start: date, end: date) -> dict[date, int]:
        """Σ amount_units per date with start ≤ d < end, one grouped query (dates without facts absent)."""
        facts = t.chargeback_facts
        with self.db.read() as conn:
            rows = conn.execute(
                select(facts.c.date, func.sum(facts.c.amount_units))
                .where(self._mine(facts), facts.c.date >= start, facts.c.date < end)
                .group_by(facts.c.date)
            ).all()
        return {d: int(units) for d, units in rows}

    def rows(self, d: date) -> list[tuple]:
        """The facts of `d` as (dimension key fields..., amount_units), env_id included: the Prometheus
        emitter charges each row to its resource's or environment's team (chargeback_dagster/teams.py)."""
        facts, dim = t.chargeback_facts, t.chargeback_dimensions
        with self.db.read() as conn:
            rows = conn.execute(
                select(*(dim.c[c] for c in DIMENSION_KEY_COLUMNS), facts.c.amount_units)
                .select_from(facts.join(dim, facts.c.dimension_id == dim.c.dimension_id))
                .where(self._mine(facts), facts.c.date == d)
            ).all()
        return [(*r[:-1], int(r[-1])) for r in rows]

    def csv_groups(self, start: date, end: date) -> list[tuple[datetime, tuple[str, ...], int]]:
        """The CSV rows of dates start ≤ d < end (docs/operations.md §10) as (timestamp, CSV_DIMENSION_COLUMNS
        values, Σ amount_units), facts summed over env_id and composition_part, ordered by code point.

        Facts are read as (dimension_id, units) and grouped here: a join and GROUP BY over text columns in
        SQL cost several times more than the cached dimension fields. A date's facts share one timestamp:
        the distinct (timestamp, date) pairs are read first, then each pair's facts through the driver, so
        a fact costs neither a timestamp nor a SQLAlchemy row. Each timestamp's rows are grouped and sorted
        by one integer, the rank of the dimension's CSV fields, not by the fields.
        """
        facts = t.chargeback_facts
        # Raw driver values: bound back unchanged below; a timestamp is converted once, not per fact.
        raw_ts, raw_date = (type_coerce(facts.c[name], NullType()) for name in ("timestamp", "date"))
        q = (
            select(raw_ts, raw_date)
            .distinct()
            .where(self._mine(facts), facts.c.date >= start, facts.c.date < end)
        )
        mark = "?" if self.db.dialect_name == "sqlite" else "%s"
        sql = (
            "SELECT dimension_id, amount_units FROM chargeback_facts"
            f" WHERE ecosystem = {mark} AND tenant_id = {mark} AND date = {mark} AND timestamp = {mark}"
        )

        def summed(rows: list[tuple[int, int]], rank_of: dict[int, int]) -> dict[int, int]:
            """rank -> Σ units of `rows`, summing facts that differ only in env_id or composition_part.
            KeyError when `rank_of` lacks a dimension id."""
            totals: dict[int, int] = {}
            get = totals.get
            for dimension_id, units in rows:
                rank = rank_of[dimension_id]
                totals[rank] = get(rank, 0) + units
            return totals

        facts_by_ts: dict[Any, list[tuple[int, int]]] = {}
        with self.db.read() as conn:
            pairs = conn.execute(q).all()
            binary = {"binary": True} if conn.dialect.driver == "psycopg" else {}  # psycopg 3: no int parsing
            with self.db.driver_cursor(conn, sql) as cursor:
                for raw, d in pairs:
                    cursor.execute(sql, (self.ecosystem, self.tenant_id, d, raw), **binary)
                    facts_by_ts.setdefault(raw, []).extend(cursor.fetchall())
            # The cached ranking usually covers every id: try it before building the set of ids.
            rank_of, fields_by_rank = self._csv_rank
            try:
                totals_by_ts = {raw: summed(rows, rank_of) for raw, rows in facts_by_ts.items()}
            except KeyError:
                ids = {i for rows in facts_by_ts.values() for i, _ in rows}
                rank_of, fields_by_rank = self._csv_ranking(conn, ids)
                totals_by_ts = {raw: summed(rows, rank_of) for raw, rows in facts_by_ts.items()}
            dialect = conn.dialect
        to_ts = facts.c.timestamp.type.dialect_impl(dialect).result_processor(dialect, None)
        out: list[tuple[datetime, tuple[str, ...], int]] = []
        for stamp, raw in sorted((to_ts(raw) if to_ts is not None else raw, raw) for raw in totals_by_ts):
            totals = totals_by_ts[raw]
            order = sorted(totals)
            out += zip(repeat(stamp), map(fields_by_rank.__getitem__, order), map(totals.__getitem__, order))
        return out

    def _csv_ranking(self, conn: Connection, ids: set[int]) -> tuple[dict[int, int], list[tuple[str, ...]]]:
        """(dimension_id → rank of its CSV_DIMENSION_COLUMNS values, the distinct values in code point
        order) covering `ids`. Cached: a dimension row never changes and ids are never reused, so the cache
        only grows; it is rebuilt (one sort) when an id is not in it."""
        ranking = self._csv_rank
        if ids <= ranking[0].keys():
            return ranking
        missing = ids - self._csv_fields_by_id.keys()
        if missing:
            dim = t.chargeback_dimensions
            q = select(dim.c.dimension_id, *(dim.c[c] for c in CSV_DIMENSION_COLUMNS)).where(
                self._mine(dim), dim.c.dimension_id >= min(missing)
            )
            loaded = {int(r[0]): tuple(r[1:]) for r in conn.execute(q)}
        else:
            loaded = {}
        with self._dims_lock:
            self._csv_fields_by_id.update(loaded)
            distinct = sorted(set(self._csv_fields_by_id.values()))
            rank = {fields: i for i, fields in enumerate(distinct)}
            ranking = {i: rank[fields] for i, fields in self._csv_fields_by_id.items()}, distinct
            self._csv_rank = ranking
        return ranking

    def money_groups(self, start: date, end: date) -> dict[date, dict[tuple[str, str, str, str], int]]:
        """Per date start ≤ d < end: (env_id, resource_id, identity_id, allocation_detail) → Σ amount_units,
        one grouped query (the per-date money metadata of dates a run did not calculate itself)."""
        facts, dim = t.chargeback_facts, t.chargeback_dimensions
        cols = [dim.c.env_id, dim.c.resource_id, dim.c.identity_id, dim.c.allocation_detail]
        with self.db.read() as conn:
            rows = conn.execute(
                select(facts.c.date, *cols, func.sum(facts.c.amount_units))
                .select_from(facts.join(dim, facts.c.dimension_id == dim.c.dimension_id))
                .where(self._mine(facts), facts.c.date >= start, facts.c.date < end)
                .group_by(facts.c.date, *cols)
            ).all()
        out: dict[date, dict[tuple[str, str, str, str], int]] = {}
        for d, env, resource, identity, detail, units in rows:
            out.setdefault(d, {})[(env, resource, identity, detail)] = int(units)
        return out

    def csv_row_counts(self, start: date, end: date) -> dict[date, int]:
        """Number of CSV rows per date start ≤ d < end (facts summed over env_id and composition_part)."""
        facts, dim = t.chargeback_facts, t.chargeback_dimensions
        grouped = (
            select(facts.c.date)
            .select_from(facts.join(dim, facts.c.dimension_id == dim.c.dimension_id))
            .where(self._mine(facts), facts.c.date >= start, facts.c.date < end)
            .group_by(facts.c.date, *(dim.c[c] for c in CSV_DIMENSION_COLUMNS))
            .subquery()
        )
        with self.db.read() as conn:
            rows = conn.execute(select(grouped.c.date, func.count()).group_by(grouped.c.date)).all()
        return {d: int(n) for d, n in rows}
