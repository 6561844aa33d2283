"""Per-tenant storage (docs/operations.md §13): SQLAlchemy Core on SQLite or PostgreSQL (decision D10).

Only SQL both dialects run. Ordering that must be identical on both backends (billing line order, CSV row
order) is done in Python by code point, because PostgreSQL's ORDER BY follows the database collation.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import chain, repeat
from pathlib import Path
from typing import Any, NamedTuple, cast

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    or_,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.types import NullType

from chargeback_dagster.domain import (
    IDENTITY_INDEX,
    UNALLOCATED,
    BillingLine,
    BlockKey,
    Identity,
    MetricRow,
    Resource,
    day_start,
    row_key,
)
from chargeback_dagster.money import round4_units
from chargeback_dagster.store import tables as t
from chargeback_dagster.store.tables import DIMENSION_KEY_COLUMNS, VERSION_TABLE, canonical_json

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Arbitrary constant key of the PostgreSQL advisory lock taken around `upgrade head`.
MIGRATION_LOCK_KEY = 0x63686172676562  # "chargeb"

STATE_FIELDS = (
    "billing_gathered_at",
    "inventory_gathered_at",
    "metrics_fetched_at",
    "chargeback_calculated_at",
    "calculation_id",
    "calculation_run_id",
    "last_error",
)
BILLING_KEY_COLUMNS = ("date", "env_id", "resource_id", "product_category", "product_type")
_CHUNK = 500  # ids per IN (...) list
LABEL_CACHE_SIZE = 100_000  # parsed metric label texts kept between dates (a cluster-day holds ~30)


# The dimension columns a CSV row shows: resource_id … allocation_detail (env_id and composition_part are
# summed over).
CSV_DIMENSION_COLUMNS = DIMENSION_KEY_COLUMNS[1:-1]


class StoreError(Exception):
    """A tenant database problem the caller should report as is."""


class RunLock(NamedTuple):
    """The tenant run lock's row (docs/operations.md §4)."""

    run_id: str
    acquired_at: datetime
    heartbeat_at: datetime


class _StaleDimensionCache(Exception):
    """A cached dimension id no longer exists (purged by another store instance)."""


def normalize_url(url: str) -> str:
    """Accepted: sqlite:///path, sqlite+pysqlite:///path, postgresql+psycopg://, postgresql+psycopg2://.

    A bare `postgresql://` (or `postgres://`) means psycopg 3.
    """
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    parsed = make_url(url)
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg", "postgresql+psycopg2"):
        raise StoreError(
            f"Unsupported storage URL scheme '{parsed.drivername}' "
            "(use sqlite:///, postgresql+psycopg:// or postgresql+psycopg2://)"
        )
    return url


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.replace(microsecond=0)


def _chunks(seq: Sequence[Any], n: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


# Chargeback dimension ids as block key (the dimension key without identity_id) -> identity_id -> id.
Dimensions = dict[BlockKey, dict[str, int]]
BLOCK_KEY_LENGTH = len(DIMENSION_KEY_COLUMNS) - 1


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


def _processed(process: Callable[[Any], Any], values: Sequence[Any]) -> list[Any]:
    """`process` applied to each value, once per distinct value (dates and timestamps recur). Decimals and
    floats are processed one by one: equal numbers can differ in their text (4 and 4.0000, 0.0 and -0.0)."""
    if values and type(values[0]) in _NOT_MEMOISED:
        return list(map(process, values))
    memo: dict[Any, Any] = {}
    try:
        return [memo[v] if v in memo else memo.setdefault(v, process(v)) for v in values]
    except TypeError:  # unhashable values (JSON columns)
        return list(map(process, values))


_NOT_MEMOISED = frozenset({Decimal, float})


class TenantStore:
    """One tenant database. Thread-safe as far as the SQLAlchemy engine is; cheap to construct."""

    def __init__(self, url: str, *, tenant_name: str, ecosystem: str, tenant_id: str) -> None:
        self.url = normalize_url(url)
        self.tenant_name = tenant_name
        self.ecosystem = ecosystem
        self.tenant_id = tenant_id
        parsed = make_url(self.url)
        self.dialect_name = parsed.get_backend_name()
        if self.dialect_name == "sqlite":
            database = parsed.database or ""
            if database and database != ":memory:" and not database.startswith("file:"):
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(self.url, connect_args={"timeout": 5.0})
            event.listen(self.engine, "connect", _sqlite_on_connect)
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True)
        self._dims: Dimensions = {}  # block key -> identity_id -> dimension_id
        self._dims_max_id = 0
        self._labels_by_text: dict[str, dict] = {}  # parsed metric label sets, see metric_rows
        self._csv_fields_by_id: dict[int, tuple[str, ...]] = {}
        self._csv_rank: tuple[dict[int, int], list[tuple[str, ...]]] = ({}, [])
        self._dims_lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(cls, url: str, *, tenant_name: str, ecosystem: str, tenant_id: str) -> TenantStore:
        """Construct, apply migrations, upsert the `UNALLOCATED` identity."""
        store = cls(url, tenant_name=tenant_name, ecosystem=ecosystem, tenant_id=tenant_id)
        try:
            store.migrate()
            store.ensure_unallocated()
        except BaseException:
            store.dispose()
            raise
        return store

    def dispose(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True)
        return f"TenantStore({url!r}, tenant={self.tenant_name!r})"

    def _alembic_config(self) -> Any:
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        return cfg

    def known_revisions(self) -> set[str]:
        from alembic.script import ScriptDirectory

        script = ScriptDirectory.from_config(self._alembic_config())
        return {rev.revision for rev in script.walk_revisions()}

    def head_revision(self) -> str:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self._alembic_config()).get_current_head()

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
            return ctx.get_current_revision()

    def migrate(self) -> None:
        """`upgrade head` (docs/operations.md §13).

        SQLite: inside BEGIN IMMEDIATE; PostgreSQL: under an advisory lock. Unknown revision → StoreError.
        """
        from alembic import command
        from alembic.runtime.migration import MigrationContext

        cfg = self._alembic_config()
        known = self.known_revisions()
        with self.engine.connect() as conn:
            if self.dialect_name == "postgresql":
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
                conn.commit()
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
                for rev in ctx.get_current_heads():
                    if rev not in known:
                        raise StoreError(
                            f"Tenant '{self.tenant_name}' database is at revision '{rev}', which this "
                            "version of chargeback-dagster does not know; upgrade chargeback-dagster or use "
                            "another database"
                        )
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            finally:
                if self.dialect_name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
                    conn.commit()

    def ensure_unallocated(self) -> None:
        row = {
            **self._tenant(),
            "identity_id": UNALLOCATED,
            "identity_type": "system",
            "display_name": "Unallocated Costs",
            "created_at": None,
            "deleted_at": None,
            "last_seen_at": None,
            "metadata_json": {},
        }
        with self._write() as conn:
            stmt = self._insert(t.identities)
            stmt = stmt.on_conflict_do_update(
                index_elements=["ecosystem", "tenant_id", "identity_id"],
                set_={"identity_type": "system", "display_name": "Unallocated Costs", "deleted_at": None},
            )
            conn.execute(stmt, [row])

    # ------------------------------------------------------------------ helpers

    def _tenant(self) -> dict[str, str]:
        return {"ecosystem": self.ecosystem, "tenant_id": self.tenant_id}

    def _mine(self, table: Any) -> Any:
        return and_(table.c.ecosystem == self.ecosystem, table.c.tenant_id == self.tenant_id)

    def _insert(self, table: Any) -> Any:
        if self.dialect_name == "postgresql":
            return pg_dialect.insert(table)
        return sqlite_dialect.insert(table)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction; on SQLite `BEGIN IMMEDIATE` so writers serialise up front."""
        with self.engine.connect() as conn:
            if self.dialect_name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.commit()
            except BaseException:
                conn.rollback()
                raise

    def _bulk_insert(
        self,
        conn: Connection,
        table: Any,
        rows: Sequence[dict] | Sequence[tuple] | Iterable[tuple],
        *,
        columns: Sequence[str] | None = None,
        constant: Sequence[str] = (),
        ignore_conflicts: bool = False,
        processed: bool = False,
    ) -> None:
        """Fast bulk INSERT through the DBAPI cursor (SQLAlchemy's per-row parameter handling dominates
        at 10,000 rows). Values go through each column type's bind processor; `constant` columns hold one
        value for every row and are processed once. `processed`: the rows (any iterable of tuples in
        `columns` order) already hold DBAPI values. SQLite: executemany; PostgreSQL: COPY, or multi-row
        VALUES in batches."""
        if processed:
            assert columns is not None
            self._execute_insert(conn, table, rows, columns, ignore_conflicts)
            return
        rows = cast(Sequence[dict] | Sequence[tuple], rows)
        if not rows:
            return
        if columns is None:
            columns = list(rows[0].keys())  # type: ignore[union-attr]
            rows = [tuple(r[c] for c in columns) for r in rows]  # type: ignore[index]
        dialect = conn.dialect
        procs = []
        for name in columns:
            proc = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            procs.append(proc)
        first = rows[0]
        const_idx = {columns.index(c) for c in constant}
        const_vals = {i: (procs[i](first[i]) if procs[i] else first[i]) for i in const_idx}
        active = [(i, p) for i, p in enumerate(procs) if p is not None and i not in const_idx]
        if active or const_vals:
            # Column by column; a value is processed once however often it recurs (dates, timestamps).
            cols: list[Sequence[Any]] = list(zip(*rows, strict=True))
            for i, p in active:
                cols[i] = _processed(p, cols[i])
            for i, v in const_vals.items():
                cols[i] = [v] * len(rows)
            rows = list(zip(*cols, strict=True))
        self._execute_insert(conn, table, rows, columns, ignore_conflicts)

    def _execute_insert(
        self,
        conn: Connection,
        table: Any,
        rows: Iterable[Any],
        columns: Sequence[str],
        ignore_conflicts: bool,
    ) -> None:
        cols_sql = ", ".join(f'"{c}"' for c in columns)
        cursor = conn.connection.cursor()
        try:
            if self.dialect_name == "postgresql" and not ignore_conflicts and hasattr(cursor, "copy"):
                # psycopg 3: COPY is several times faster than multi-row VALUES
                with cursor.copy(f'COPY "{table.name}" ({cols_sql}) FROM STDIN') as copy:
                    for r in rows:
                        copy.write_row(r)
            elif self.dialect_name == "sqlite":
                sql = f'INSERT INTO "{table.name}" ({cols_sql}) VALUES ({", ".join("?" * len(columns))})'
                if ignore_conflicts:
                    sql += " ON CONFLICT DO NOTHING"
                cursor.executemany(sql, rows)
            elif conn.dialect.driver == "psycopg2":
                from psycopg2.extras import execute_values

                sql = f'INSERT INTO "{table.name}" ({cols_sql}) VALUES %s'
                if ignore_conflicts:
                    sql += " ON CONFLICT DO NOTHING"
                execute_values(cursor, sql, rows, page_size=1000)
            else:
                one = "(" + ", ".join(["%s"] * len(columns)) + ")"
                batch = max(1, 6000 // len(columns))
                for chunk in _chunks(list(rows), batch):
                    sql = f'INSERT INTO "{table.name}" ({cols_sql}) VALUES ' + ", ".join([one] * len(chunk))
                    if ignore_conflicts:
                        sql += " ON CONFLICT DO NOTHING"
                    cursor.execute(sql, [v for r in chunk for v in r])
        except conn.dialect.loaded_dbapi.Error as exc:
            # same exception classes as SQLAlchemy-executed statements (IntegrityError, OperationalError, …)
            raise DBAPIError.instance(
                f'INSERT INTO "{table.name}" ({cols_sql}) …', None, exc, conn.dialect.loaded_dbapi.Error
            ) from exc
        finally:
            cursor.close()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    # ------------------------------------------------------------------ billing

    # Column order of the rows `_line_rows` makes: the table's.
    _LINE_ROW_COLUMNS = tuple(c.name for c in t.billing.columns)

    def _line_rows(
        self,
        dialect: Any,
        lines: list[BillingLine],
        attempts: list[int],
        topics: list[int],
        gathered_at: datetime | None,
    ) -> Iterator[tuple]:
        """Driver-ready billing rows in `_LINE_ROW_COLUMNS` order, the values processed as `_bulk_insert`
        does (per column, once per distinct value) but built column by column and zipped lazily: no
        tuple per line survives the insert, which spares the garbage collector 2 tuples per line."""
        b = t.billing

        def processor(name: str) -> Callable[[Any], Any] | None:
            return b.c[name].type.dialect_impl(dialect).bind_processor(dialect)

        def column(name: str, values: list[Any]) -> Iterable[Any]:
            process = processor(name)
            if process is None:
                return values
            return _processed(process, values)

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

    @staticmethod
    def _line_key(line: BillingLine) -> tuple:
        return (line.date, line.env_id or "", line.resource_id, line.product_category, line.product_type)

    # BillingLine fields in constructor order, read by _select_lines.
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

    def replace_billing(self, lines: list[BillingLine], dates: Iterable[date], gathered_at: datetime) -> dict:
        """Per-date replacement (docs/confluent-cloud.md §4), one transaction.

        Every date that has ≥ 1 line in `lines` gets exactly those lines (lines keep the stored
        allocation/topic-attribution attempt counters when their key survives). Dates of `dates` without
        lines keep their stored lines. Returns
        `{"revised": [(date, resource_id, product_type, old_total, new_total)],
          "removed": [(date, resource_id, product_type)], "kept_dates": {date: n_stored}}`.
        """
        line_key = self._line_key
        keys = [line_key(line) for line in lines]
        seen = set(keys)
        if len(seen) != len(keys):
            self._raise_duplicate_key(keys)
        replace_dates = sorted({key[0] for key in keys})
        kept_dates = sorted(set(dates) - set(replace_dates))
        b = t.billing
        revised: list[tuple] = []
        removed: list[tuple] = []
        kept: dict[date, int] = {}
        with self._write() as conn:
            old = self._stored_billing(conn, replace_dates)
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
            for chunk in _chunks(replace_dates):
                conn.execute(delete(b).where(self._mine(b), b.c.date.in_(chunk)))
            if lines:
                rows = self._line_rows(conn.dialect, lines, attempts, topics, gathered_at)
                self._bulk_insert(conn, b, rows, columns=self._LINE_ROW_COLUMNS, processed=True)
        revised.sort(key=lambda x: (x[0], x[1], x[2]))
        return {"revised": revised, "removed": removed, "kept_dates": kept}

    @staticmethod
    def _raise_duplicate_key(keys: list[tuple]) -> None:
        seen: set[tuple] = set()
        for key in keys:
            if key in seen:
                raise StoreError(f"Duplicate billing line key {key} (lines must be collapsed per key)")
            seen.add(key)

    def _stored_billing(self, conn: Connection, dates: Sequence[date]) -> dict[tuple, tuple]:
        """`{line key: (total_cost, allocation_attempts, topic_attribution_attempts)}` of the stored lines
        of `dates`, read raw and converted column by column (a recurring raw value, e.g. a date, once)."""
        b = t.billing
        columns = [
            *(b.c[c] for c in BILLING_KEY_COLUMNS),
            b.c.total_cost,
            b.c.allocation_attempts,
            b.c.topic_attribution_attempts,
        ]
        raw: list[Any] = []
        for chunk in _chunks(dates):
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
                converted.append(_processed(process, values))
        return dict(zip(zip(*converted[:5], strict=True), zip(*converted[5:], strict=True), strict=True))

    def _select_lines(self, *where: Any) -> list[BillingLine]:
        """Lines read raw and converted column by column: a converted value (a date, an exact decimal, a
        text) is reused wherever its raw value recurs; JSON is parsed per row (dicts are mutable)."""
        b = t.billing
        columns = [b.c[name] for name in self._LINE_COLUMNS]
        with self._read() as conn:
            rows = conn.execute(
                select(*(type_coerce(c, NullType()) for c in columns)).where(self._mine(b), *where)
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
                converted.append(_processed(process, values))
        lines = list(map(BillingLine, *converted))
        lines.sort(key=lambda ln: (ln.date, ln.resource_id, ln.product_type, ln.env_id, ln.product_category))
        return lines

    def billing_lines(self, d: date) -> list[BillingLine]:
        """Lines of `d` ordered by (resource_id, product_type, env_id), code-point order."""
        return self._select_lines(t.billing.c.date == d)

    def billing_lines_between(self, start: date, end: date) -> dict[date, list[BillingLine]]:
        """Lines with start ≤ date < end, per date (dates without lines are absent)."""
        out: dict[date, list[BillingLine]] = {}
        for line in self._select_lines(t.billing.c.date >= start, t.billing.c.date < end):
            out.setdefault(line.date, []).append(line)
        return out

    def _line_where(self, line: BillingLine) -> list[Any]:
        b = t.billing
        return [
            self._mine(b),
            b.c.date == line.date,
            b.c.env_id == (line.env_id or ""),
            b.c.resource_id == line.resource_id,
            b.c.product_category == line.product_category,
            b.c.product_type == line.product_type,
        ]

    def increment_allocation_attempts(self, line: BillingLine) -> int:
        """docs/allocation.md §6 step 1: own transaction, committed at once. Returns the new count."""
        b = t.billing
        with self._write() as conn:
            res = conn.execute(
                update(b)
                .where(*self._line_where(line))
                .values(allocation_attempts=b.c.allocation_attempts + 1)
            )
            if res.rowcount == 0:
                raise StoreError(
                    f"Billing line not stored: {line.date} {line.resource_id} {line.product_type} "
                    f"{line.env_id}"
                )
            return int(
                conn.execute(select(b.c.allocation_attempts).where(*self._line_where(line))).scalar_one()
            )

    # ------------------------------------------------------------------ inventory

    def upsert_resources(self, resources: list[Resource], seen_at: datetime) -> None:
        """Insert or update; a re-gathered row takes the gathered status/deleted_at (normally active)."""
        if not resources:
            return
        rows = [
            {
                **self._tenant(),
                "resource_id": r.resource_id,
                "resource_type": r.resource_type,
                "display_name": r.display_name,
                "parent_id": r.parent_id,
                "owner_id": r.owner_id,
                "status": r.status or "active",
                "cloud": r.cloud,
                "region": r.region,
                "created_at": r.created_at,
                "deleted_at": r.deleted_at,
                "last_seen_at": seen_at,
                "metadata_json": r.metadata or {},
                "team": r.team,
            }
            for r in {r.resource_id: r for r in resources}.values()
        ]
        tab = t.resources
        stmt = self._insert(tab)
        ex = stmt.excluded
        stmt = stmt.on_conflict_do_update(
            index_elements=["ecosystem", "tenant_id", "resource_id"],
            set_={
                "resource_type": ex.resource_type,
                "display_name": ex.display_name,
                "parent_id": ex.parent_id,
                "owner_id": ex.owner_id,
                "status": ex.status,
                "cloud": ex.cloud,
                "region": ex.region,
                "created_at": func.coalesce(ex.created_at, tab.c.created_at),
                "deleted_at": ex.deleted_at,
                "last_seen_at": ex.last_seen_at,
                "metadata_json": ex.metadata_json,
                "team": ex.team,
            },
        )
        with self._write() as conn:
            conn.execute(stmt, rows)

    def upsert_identities(self, identities: list[Identity], seen_at: datetime) -> None:
        if not identities:
            return
        rows = [
            {
                **self._tenant(),
                "identity_id": i.identity_id,
                "identity_type": i.identity_type,
                "display_name": i.display_name,
                "created_at": i.created_at,
                "deleted_at": i.deleted_at,
                "last_seen_at": seen_at,
                "metadata_json": i.metadata or {},
                "team": i.team,
            }
            for i in {i.identity_id: i for i in identities}.values()
        ]
        tab = t.identities
        stmt = self._insert(tab)
        ex = stmt.excluded
        stmt = stmt.on_conflict_do_update(
            index_elements=["ecosystem", "tenant_id", "identity_id"],
            set_={
                "identity_type": ex.identity_type,
                "display_name": ex.display_name,
                "created_at": func.coalesce(ex.created_at, tab.c.created_at),
                "deleted_at": ex.deleted_at,
                "last_seen_at": ex.last_seen_at,
                "metadata_json": ex.metadata_json,
                "team": ex.team,
            },
        )
        with self._write() as conn:
            conn.execute(stmt, rows)

    def mark_resources_deleted(self, resource_type: str, keep_ids: set[str], at: datetime) -> int:
        """Active rows of `resource_type` whose id is not in `keep_ids` → deleted_at = at, status deleted."""
        tab = t.resources
        with self._write() as conn:
            active = conn.execute(
                select(tab.c.resource_id).where(
                    self._mine(tab), tab.c.resource_type == resource_type, tab.c.deleted_at.is_(None)
                )
            ).scalars()
            gone = sorted(set(active) - set(keep_ids))
            for chunk in _chunks(gone):
                conn.execute(
                    update(tab)
                    .where(self._mine(tab), tab.c.resource_id.in_(chunk))
                    .values(deleted_at=at, status="deleted")
                )
        return len(gone)

    def mark_identities_deleted(self, keep_ids: set[str], at: datetime) -> int:
        """Active identities not in `keep_ids` → deleted_at = at. `UNALLOCATED` is never marked."""
        tab = t.identities
        with self._write() as conn:
            active = conn.execute(
                select(tab.c.identity_id).where(
                    self._mine(tab), tab.c.deleted_at.is_(None), tab.c.identity_id != UNALLOCATED
                )
            ).scalars()
            gone = sorted(set(active) - set(keep_ids))
            for chunk in _chunks(gone):
                conn.execute(
                    update(tab).where(self._mine(tab), tab.c.identity_id.in_(chunk)).values(deleted_at=at)
                )
        return len(gone)

    def resources(self) -> list[Resource]:
        """All resources, deleted ones included, sorted by resource_id."""
        tab = t.resources
        with self._read() as conn:
            rows = conn.execute(select(tab).where(self._mine(tab))).all()
        out = [
            Resource(
                resource_id=r.resource_id,
                resource_type=r.resource_type,
                display_name=r.display_name,
                parent_id=r.parent_id,
                owner_id=r.owner_id,
                status=r.status,
                cloud=r.cloud,
                region=r.region,
                created_at=r.created_at,
                deleted_at=r.deleted_at,
                metadata=r.metadata_json or {},
                team=r.team,
            )
            for r in rows
        ]
        out.sort(key=lambda r: r.resource_id)
        return out

    def identities(self) -> list[Identity]:
        """All identities (deleted ones and `UNALLOCATED` included), sorted by identity_id."""
        tab = t.identities
        with self._read() as conn:
            rows = conn.execute(select(tab).where(self._mine(tab))).all()
        out = [
            Identity(
                identity_id=r.identity_id,
                identity_type=r.identity_type,
                display_name=r.display_name,
                created_at=r.created_at,
                deleted_at=r.deleted_at,
                metadata=r.metadata_json or {},
                team=r.team,
            )
            for r in rows
        ]
        out.sort(key=lambda i: i.identity_id)
        return out

    def get_gather_counter(self, key: str) -> int:
        tab = t.gather_counters
        with self._read() as conn:
            v = conn.execute(
                select(tab.c.consecutive_zero_gathers).where(self._mine(tab), tab.c.key == key)
            ).scalar()
        return int(v or 0)

    def set_gather_counter(self, key: str, value: int) -> None:
        stmt = self._insert(t.gather_counters)
        stmt = stmt.on_conflict_do_update(
            index_elements=["key"],
            set_={
                "consecutive_zero_gathers": stmt.excluded.consecutive_zero_gathers,
                "ecosystem": stmt.excluded.ecosystem,
                "tenant_id": stmt.excluded.tenant_id,
            },
        )
        with self._write() as conn:
            conn.execute(stmt, [{**self._tenant(), "key": key, "consecutive_zero_gathers": int(value)}])

    # ------------------------------------------------------------------ usage metrics

    def store_metric_fetch(
        self,
        d: date,
        resource_id: str,
        query_key: str,
        rows: list[MetricRow] | None,
        error: str | None,
        fetched_at: datetime,
    ) -> None:
        """Replace the values of (d, resource_id, query_key); status `ok` if rows is not None, else `failed`
        (no values kept)."""
        self.store_metric_fetches([(d, resource_id, query_key, rows, error)], fetched_at)

    def store_metric_fetches(
        self,
        fetches: list[tuple[date, str, str, list[MetricRow] | None, str | None]],
        fetched_at: datetime,
    ) -> None:
        """Bulk `store_metric_fetch`, one transaction. A failed fetch (rows None) leaves no values."""
        if not fetches:
            return
        v = t.usage_metric_values
        latest: dict[tuple, tuple] = {}
        for d, resource_id, query_key, rows, error in fetches:
            latest[(d, resource_id, query_key)] = (rows, error)
        value_rows = self._metric_value_rows(latest)
        del_stmt = delete(v).where(
            v.c.ecosystem == bindparam("b_eco"),
            v.c.tenant_id == bindparam("b_tid"),
            v.c.date == bindparam("b_date"),
            v.c.resource_id == bindparam("b_res"),
            v.c.query_key == bindparam("b_key"),
        )
        with self._write() as conn:
            # Delete only groups that have stored values (a first fetch has none: no per-group DELETEs).
            # One query per date: with `date IN (…)`, PostgreSQL without fresh statistics (during a
            # backfill) scanned every row of the tenant each time.
            stored: set[tuple] = set()
            stored_groups = select(v.c.resource_id, v.c.query_key).distinct().where(self._mine(v))
            for day in sorted({k[0] for k in latest}):
                stored.update((day, r, k) for r, k in conn.execute(stored_groups.where(v.c.date == day)))
            del_params = [
                {"b_eco": self.ecosystem, "b_tid": self.tenant_id, "b_date": d, "b_res": r, "b_key": k}
                for (d, r, k) in latest
                if (d, r, k) in stored
            ]
            if del_params:
                conn.execute(del_stmt, del_params)
            if value_rows:
                self._insert_metric_values(conn, value_rows)
            self._upsert_metric_fetches(conn, latest, fetched_at)

    @contextmanager
    def _dbapi_cursor(self, conn: Connection, statement: str) -> Iterator[Any]:
        """A driver cursor on `conn` whose errors surface as SQLAlchemy's (IntegrityError, …)."""
        cursor = conn.connection.cursor()
        try:
            yield cursor
        except conn.dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(statement, None, exc, conn.dialect.loaded_dbapi.Error) from exc
        finally:
            cursor.close()

    # The columns of usage_metric_values with their PostgreSQL types (binary COPY).
    _METRIC_VALUE_COLUMNS = (
        ("ecosystem", "text"),
        ("tenant_id", "text"),
        ("date", "date"),
        ("resource_id", "text"),
        ("query_key", "text"),
        ("labels_key", "text"),
        ("labels_json", "text"),
        ("value_sum", "float8"),
        ("value_max", "float8"),
        ("sample_count", "int4"),
    )

    def _metric_value_rows(self, latest: dict[tuple, tuple]) -> list[tuple]:
        """(date, resource_id, query_key, label text, value_sum, value_max, sample_count) of the ok
        fetches in `latest`, driver-ready and in primary-key order (a first fetch of later dates appends
        at the right edge of the key's B-tree). The label text is both labels_key and labels_json.

        A duplicate label set raises StoreError naming the first one in the fetches' order."""
        dialect = self.engine.dialect
        date_proc = t.usage_metric_values.c.date.type.dialect_impl(dialect).bind_processor(dialect)
        label_texts: dict[tuple, str] = {}  # the same label sets recur on every date: serialise once
        per_group: dict[tuple, list[tuple]] = {}
        for group, (rows, _) in latest.items():
            if not rows:
                continue
            d, resource_id, query_key = group
            day = date_proc(d) if date_proc is not None else d
            texts = []
            for m in rows:
                try:
                    items = tuple(m.labels.items())
                    text = label_texts.get(items)
                    if text is None:
                        text = label_texts[items] = canonical_json(dict(m.labels))
                except TypeError:  # unhashable label value: no memo
                    text = canonical_json(dict(m.labels))
                texts.append(text)
            by_text = dict(zip(texts, rows, strict=True))
            if len(by_text) < len(texts):
                seen: set[str] = set()
                for text in texts:
                    if text in seen:
                        raise StoreError(
                            f"Duplicate label set {text} for {d} {resource_id} query {query_key}"
                        )
                    seen.add(text)
            per_group[group] = out = []
            for text in sorted(by_text):  # by code point, as SQLite compares text
                m = by_text[text]
                out.append(
                    (
                        day,
                        resource_id,
                        query_key,
                        text,
                        float(m.value_sum),
                        float(m.value_max),
                        int(m.sample_count),
                    )
                )
        return [row for group in sorted(per_group) for row in per_group[group]]

    def _insert_sqlite(
        self,
        conn: Connection,
        table: str,
        columns: Sequence[str],
        constants: Sequence[Any],
        width: int,
        row_marks: Callable[[int], str],
        values: list[Any],
    ) -> None:
        """Multi-row INSERTs on SQLite, up to 1,000 rows each: executemany runs one statement per row, and
        the per-statement work cost more than inserting the row. `constants` are ?1 … ?k, bound once per
        statement; `values` holds `width` parameters per row, flat; `row_marks(i)` is the VALUES tuple of a
        row whose first own parameter is ?i."""
        cols_sql = ", ".join(f'"{c}"' for c in columns)
        first = len(constants) + 1

        def statement(n: int) -> str:
            marks = ", ".join(row_marks(i) for i in range(first, first + width * n, width))
            return f'INSERT INTO "{table}" ({cols_sql}) VALUES {marks}'

        # Below the connection's host parameter limit (by default 32766 since SQLite 3.32, 999 before).
        limit = conn.connection.dbapi_connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        chunk = width * max(1, min(1000, (limit - len(constants)) // width))  # parameters per statement
        full = len(values) - len(values) % chunk
        constants = list(constants)
        with self._dbapi_cursor(conn, f'INSERT INTO "{table}" ({cols_sql}) …') as cursor:
            if full:
                params = (constants + values[i : i + chunk] for i in range(0, full, chunk))
                cursor.executemany(statement(chunk // width), params)
            if full < len(values):  # the leftover rows, fewer than a full statement's
                cursor.execute(statement((len(values) - full) // width), constants + values[full:])

    def _insert_metric_values(self, conn: Connection, rows: list[tuple]) -> None:
        """Insert `_metric_value_rows`. SQLite: multi-row INSERTs; psycopg 3: binary COPY (text COPY's
        per-value formatting cost the client more than the server spent inserting); otherwise the shared
        bulk insert."""
        eco, tid = self.ecosystem, self.tenant_id
        columns = [name for name, _ in self._METRIC_VALUE_COLUMNS]
        cols_sql = ", ".join(f'"{c}"' for c in columns)
        if self.dialect_name == "sqlite":
            # Key-ordered rows: within one statement SQLite appends them at the B-tree's right edge. A row
            # binds its label text once, for both labels_key and labels_json.
            self._insert_sqlite(
                conn,
                "usage_metric_values",
                columns,
                [eco, tid],
                7,
                lambda i: (
                    f"(?1, ?2, ?{i}, ?{i + 1}, ?{i + 2}, ?{i + 3}, ?{i + 3}, ?{i + 4}, ?{i + 5}, ?{i + 6})"
                ),
                list(chain.from_iterable(rows)),
            )
            return
        wide = [(eco, tid, d, r, q, text, text, s, mx, n) for d, r, q, text, s, mx, n in rows]
        counts = [row[-1] for row in rows]
        # binary int4 would wrap a count out of its range instead of failing as the database does
        if conn.dialect.driver != "psycopg" or not -(2**31) <= min(counts) <= max(counts) < 2**31:
            self._bulk_insert(conn, t.usage_metric_values, wide, columns=columns, processed=True)
            return
        sql = f'COPY "usage_metric_values" ({cols_sql}) FROM STDIN (FORMAT BINARY)'
        with self._dbapi_cursor(conn, sql) as cursor, cursor.copy(sql) as copy:
            copy.set_types([pg_type for _, pg_type in self._METRIC_VALUE_COLUMNS])
            write = copy.write_row
            for row in wide:
                write(row)

    def _upsert_metric_fetches(
        self, conn: Connection, latest: dict[tuple, tuple], fetched_at: datetime
    ) -> None:
        """The status row of every fetch in `latest`, through the driver: SQLAlchemy's per-row parameter
        handling cost more than the upsert itself."""
        f, dialect = t.usage_metric_fetches, conn.dialect
        date_proc = f.c.date.type.dialect_impl(dialect).bind_processor(dialect)
        at_proc = f.c.fetched_at.type.dialect_impl(dialect).bind_processor(dialect)
        at = at_proc(fetched_at) if at_proc is not None else fetched_at
        eco, tid = self.ecosystem, self.tenant_id
        rows = [
            (
                eco,
                tid,
                date_proc(d) if date_proc is not None else d,
                resource_id,
                query_key,
                "ok" if values is not None else "failed",
                error,
                at,
            )
            for (d, resource_id, query_key), (values, error) in latest.items()
        ]
        insert = (
            'INSERT INTO "usage_metric_fetches" ("ecosystem", "tenant_id", "date", "resource_id",'
            ' "query_key", "status", "error", "fetched_at") VALUES '
        )
        conflict = (
            ' ON CONFLICT ("ecosystem", "tenant_id", "date", "resource_id", "query_key") DO UPDATE SET'
            ' "status" = excluded."status", "error" = excluded."error", "fetched_at" = excluded."fetched_at"'
        )
        one = "(" + ", ".join(["?" if self.dialect_name == "sqlite" else "%s"] * 8) + ")"
        with self._dbapi_cursor(conn, insert + one + conflict) as cursor:
            if conn.dialect.driver != "psycopg2":
                cursor.executemany(insert + one + conflict, rows)
                return
            for chunk in _chunks(rows):  # psycopg2's executemany is a round trip per row
                sql = insert + ", ".join([one] * len(chunk)) + conflict
                cursor.execute(sql, [value for row in chunk for value in row])

    def metric_rows(self, d: date) -> dict[tuple[str, str], list[MetricRow]]:
        """(resource_id, query_key) → rows (sorted by label set) for every fetch of `d` with status `ok`
        (an ok fetch without data maps to []). Failed fetches are absent; see metric_fetch_status."""
        f = t.usage_metric_fetches
        out: dict[tuple[str, str], list[MetricRow]] = {}
        with self._read() as conn:
            for r in conn.execute(
                select(f.c.resource_id, f.c.query_key).where(self._mine(f), f.c.date == d, f.c.status == "ok")
            ):
                out[(r.resource_id, r.query_key)] = []
            values = self._metric_value_tuples(conn, d)
        # Label sets recur across resources, keys and dates: each text is parsed once and its dict shared by
        # the rows that carry it (MetricRow labels are read-only). The cache is bounded by clearing it.
        parsed = self._labels_by_text
        if len(parsed) > LABEL_CACHE_SIZE:
            parsed.clear()
        group: list[MetricRow] = []
        last_resource = last_query = None
        for resource_id, query_key, labels_json, value_sum, value_max, count in values:
            if query_key != last_query or resource_id != last_resource:
                group = out.setdefault((resource_id, query_key), [])
                last_resource, last_query = resource_id, query_key
            labels = parsed.get(labels_json)
            if labels is None:
                labels = parsed[labels_json] = self._parse_labels(labels_json)
            group.append(MetricRow(labels, float(value_sum), float(value_max), int(count)))
        return out

    def _metric_value_tuples(self, conn: Connection, d: date) -> list[tuple]:
        """(resource_id, query_key, labels_json, value_sum, value_max, sample_count) of `d`, sorted by
        resource, query and label text by code point, as Python sorts.

        Through the driver: SQLAlchemy's row objects cost a fair share of the read; psycopg 3 fetches
        binary values (no float parsing)."""
        date_proc = t.usage_metric_values.c.date.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        params = (self.ecosystem, self.tenant_id, date_proc(d) if date_proc is not None else d)
        mark = "?" if self.dialect_name == "sqlite" else "%s"
        sql = (
            "SELECT resource_id, query_key, labels_json, value_sum, value_max, sample_count"
            f" FROM usage_metric_values WHERE ecosystem = {mark} AND tenant_id = {mark} AND date = {mark}"
            " ORDER BY resource_id, query_key, labels_key"
        )
        with self._dbapi_cursor(conn, sql) as cursor:
            if conn.dialect.driver == "psycopg":
                cursor.execute(sql, params, binary=True)
            else:
                cursor.execute(sql, params)
            rows = cursor.fetchall()
        # SQLite compares text bytewise: its order (the key's B-tree order) is the code point order already.
        # PostgreSQL's follows the database collation: the database returns its index order (a sort with
        # COLLATE "C" cost more than the query) and Python re-sorts the nearly sorted list. labels_json and
        # labels_key hold the same text.
        if self.dialect_name != "sqlite":
            rows.sort()
        return rows

    @staticmethod
    def _parse_labels(text: str) -> dict:
        """orjson for the usual object of strings; anything else through `json`, whose numbers (big
        integers, overflowing floats) orjson parses differently or rejects."""
        try:
            labels = orjson.loads(text)
        except orjson.JSONDecodeError:
            return json.loads(text)
        if type(labels) is dict and all(type(value) is str for value in labels.values()):
            return labels
        return json.loads(text)

    def metric_fetch_status(self, d: date) -> dict[tuple[str, str], tuple[str, str | None, datetime]]:
        f = t.usage_metric_fetches
        with self._read() as conn:
            rows = conn.execute(
                select(f.c.resource_id, f.c.query_key, f.c.status, f.c.error, f.c.fetched_at).where(
                    self._mine(f), f.c.date == d
                )
            ).all()
        return {(r.resource_id, r.query_key): (r.status, r.error, r.fetched_at) for r in rows}

    # ------------------------------------------------------------------ chargeback

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
            self._bulk_insert(
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

    def write_chargeback(
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
            return self._write_chargeback(d, blocks, calculation_id, run_id, succeeded_lines, calculated_at)
        except _StaleDimensionCache:
            # A cached dimension was purged by another store instance since: reload and retry once.
            with self._dims_lock:
                self._dims = {}
                self._dims_max_id = 0
            return self._write_chargeback(d, blocks, calculation_id, run_id, succeeded_lines, calculated_at)

    def _write_chargeback(
        self,
        d: date,
        blocks: Mapping[BlockKey, Mapping[str, int]],
        calculation_id: str,
        run_id: str | None,
        succeeded_lines: list[BillingLine],
        calculated_at: datetime,
    ) -> int:
        facts, b = t.chargeback_facts, t.billing
        with self._write() as conn:
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
                nonzero = conn.execute(
                    select(*(b.c[c] for c in BILLING_KEY_COLUMNS)).where(
                        self._mine(b), b.c.date == d, b.c.allocation_attempts != 0
                    )
                ).all()
                ok = {self._line_key(ln) for ln in succeeded_lines}
                reset = [tuple(r) for r in nonzero if tuple(r) in ok]
                if reset:
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
            self._upsert_state(
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
        if self.dialect_name == "sqlite":
            # a fact binds only its dimension_id and amount_units: ?5, ?6 for the first, and so on
            values: list[int] = [0] * (2 * len(dimension_ids))
            values[0::2] = dimension_ids
            values[1::2] = units
            self._insert_sqlite(
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
        self._bulk_insert(conn, facts, rows, columns=columns, processed=True)

    def _dangling_fact(self, conn: Connection, d: date) -> bool:
        """Whether a fact of `d` points at no dimension (facts carry no foreign key, see tables.py)."""
        facts, dim = t.chargeback_facts, t.chargeback_dimensions
        known = select(dim.c.dimension_id).where(dim.c.dimension_id == facts.c.dimension_id)
        q = select(facts.c.dimension_id).where(self._mine(facts), facts.c.date == d, ~known.exists()).limit(1)
        return conn.execute(q).first() is not None

    def chargeback_total_units(self, d: date) -> int:
        """Σ amount_units of `d` (0 without facts)."""
        return self.chargeback_totals(d, d + timedelta(days=1)).get(d, 0)

    def chargeback_totals(self, start: date, end: date) -> dict[date, int]:
        """Σ amount_units per date with start ≤ d < end, one grouped query (dates without facts absent)."""
        facts = t.chargeback_facts
        with self._read() as conn:
            rows = conn.execute(
                select(facts.c.date, func.sum(facts.c.amount_units))
                .where(self._mine(facts), facts.c.date >= start, facts.c.date < end)
                .group_by(facts.c.date)
            ).all()
        return {d: int(units) for d, units in rows}

    def billed_units_between(self, start: date, end: date) -> dict[date, int]:
        """Σ T in units per date with start ≤ d < end (what the date's chargeback must add up to, decision
        D1), T being a line's total_cost rounded to 0.0001; only the two columns are read."""
        b = t.billing
        with self._read() as conn:
            rows = conn.execute(
                select(b.c.date, type_coerce(b.c.total_cost, NullType())).where(
                    self._mine(b), b.c.date >= start, b.c.date < end
                )
            ).all()
        totals: dict[date, int] = {}
        for d, total_cost in rows:
            totals[d] = totals.get(d, 0) + round4_units(Decimal(total_cost))
        return totals

    def chargeback_rows(self, d: date) -> list[tuple]:
        """The stored facts of `d` as (dimension key tuple..., amount_units), sorted (the Prometheus emitter
        charges each to its env_id's team, chargeback_dagster/teams.py; tests, tools)."""
        facts, dim = t.chargeback_facts, t.chargeback_dimensions
        with self._read() as conn:
            rows = conn.execute(
                select(*(dim.c[c] for c in DIMENSION_KEY_COLUMNS), facts.c.amount_units)
                .select_from(facts.join(dim, facts.c.dimension_id == dim.c.dimension_id))
                .where(self._mine(facts), facts.c.date == d)
            ).all()
        return sorted((*r[:-1], int(r[-1])) for r in rows)

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
        mark = "?" if self.dialect_name == "sqlite" else "%s"
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
        with self._read() as conn:
            pairs = conn.execute(q).all()
            binary = {"binary": True} if conn.dialect.driver == "psycopg" else {}  # psycopg 3: no int parsing
            with self._dbapi_cursor(conn, sql) as cursor:
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

    def csv_rows(self, start: date, end: date) -> list[tuple]:
        """`csv_groups` as full rows: (ecosystem, tenant_id, timestamp, resource_id, product_category,
        product_type, identity_id, cost_type, amount_units, allocation_method, allocation_detail)."""
        eco, tid = self.ecosystem, self.tenant_id
        return [(eco, tid, ts, *f[:5], units, *f[5:]) for ts, f, units in self.csv_groups(start, end)]

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

    # ------------------------------------------------------------------ pipeline state

    def _upsert_state(self, conn: Connection, dates: Sequence[date], fields: dict[str, Any]) -> None:
        unknown = set(fields) - set(STATE_FIELDS)
        if unknown:
            raise StoreError(f"Unknown pipeline_state fields: {sorted(unknown)}")
        if not dates:
            return
        values = {k: (_utc(v) if isinstance(v, datetime) else v) for k, v in fields.items()}
        stmt = self._insert(t.pipeline_state)
        if values:
            stmt = stmt.on_conflict_do_update(
                index_elements=["ecosystem", "tenant_id", "date"],
                set_={k: stmt.excluded[k] for k in values},
            )
        else:
            stmt = stmt.on_conflict_do_nothing()
        conn.execute(stmt, [{**self._tenant(), "date": d, **values} for d in dates])

    def set_state(self, d: date, **fields: Any) -> None:
        """Upsert the pipeline_state row of `d`; fields among STATE_FIELDS (others untouched)."""
        self.set_states([d], **fields)

    def set_states(self, dates: Iterable[date], **fields: Any) -> None:
        dates = sorted(set(dates))
        with self._write() as conn:
            self._upsert_state(conn, dates, fields)

    def get_state(self, d: date) -> dict | None:
        """{'date': d, <STATE_FIELDS>...} or None."""
        ps = t.pipeline_state
        with self._read() as conn:
            r = conn.execute(
                select(ps.c.date, *(ps.c[c] for c in STATE_FIELDS)).where(self._mine(ps), ps.c.date == d)
            ).first()
        return None if r is None else dict(r._mapping)

    def calculated_dates(self, start: date, end: date) -> list[date]:
        """Dates start ≤ d < end with chargeback_calculated_at set, ascending."""
        ps = t.pipeline_state
        with self._read() as conn:
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

    # ------------------------------------------------------------------ retention

    def purge_before(self, cutoff_date: date, exact_cutoff: datetime) -> dict[str, int]:
        """docs/operations.md §9, one transaction. Returns rows deleted per table."""
        out: dict[str, int] = {}
        dim, facts = t.chargeback_dimensions, t.chargeback_facts
        with self._write() as conn:
            for tab in (t.chargeback_facts, t.billing, t.usage_metric_values, t.usage_metric_fetches):
                out[tab.name] = conn.execute(
                    delete(tab).where(self._mine(tab), tab.c.date < cutoff_date)
                ).rowcount
            out["pipeline_state"] = conn.execute(
                delete(t.pipeline_state).where(
                    self._mine(t.pipeline_state), t.pipeline_state.c.date < cutoff_date
                )
            ).rowcount
            # One anti-join over the facts (they have no index by dimension, see tables.py).
            out["chargeback_dimensions"] = conn.execute(
                delete(dim).where(
                    self._mine(dim), dim.c.dimension_id.not_in(select(facts.c.dimension_id).distinct())
                )
            ).rowcount
            out["resources"] = conn.execute(
                delete(t.resources).where(
                    self._mine(t.resources),
                    t.resources.c.deleted_at.is_not(None),
                    t.resources.c.deleted_at < exact_cutoff,
                )
            ).rowcount
            out["identities"] = conn.execute(
                delete(t.identities).where(
                    self._mine(t.identities),
                    t.identities.c.identity_id != UNALLOCATED,
                    t.identities.c.deleted_at.is_not(None),
                    t.identities.c.deleted_at < exact_cutoff,
                )
            ).rowcount
            out["pipeline_runs"] = conn.execute(
                delete(t.pipeline_runs).where(
                    self._mine(t.pipeline_runs),
                    t.pipeline_runs.c.ended_at.is_not(None),
                    t.pipeline_runs.c.ended_at < exact_cutoff,
                )
            ).rowcount
        with self._dims_lock:
            self._dims = {}
            self._dims_max_id = 0
        return out

    # ------------------------------------------------------------------ misc (tenant status, gather log)

    def get_tenant_status(self) -> dict | None:
        ts = t.tenant_status
        with self._read() as conn:
            r = conn.execute(select(ts).where(ts.c.tenant_name == self.tenant_name)).first()
        return None if r is None else dict(r._mapping)

    def append_gather_log(self, **fields: Any) -> int:
        """Insert one gather_log row (kind, run_id, trigger, started_at, finished_at, range_start,
        range_end, status, error); returns its id."""
        with self._write() as conn:
            res = conn.execute(t.gather_log.insert().values(**self._tenant(), **fields))
            return int(res.inserted_primary_key[0])

    def finish_gather_log(self, log_id: int, *, finished_at: datetime, status: str, error: str | None = None):
        gl = t.gather_log
        with self._write() as conn:
            conn.execute(
                update(gl)
                .where(self._mine(gl), gl.c.id == log_id)
                .values(finished_at=finished_at, status=status, error=error)
            )

    def gather_kinds_ok(self, run_id: str) -> set[str]:
        """Kinds (`billing`, `inventory`) whose gather succeeded in run `run_id`."""
        gl = t.gather_log
        with self._read() as conn:
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
        with self._read() as conn:
            value = conn.execute(q).scalar_one_or_none()
        return _utc(value) if isinstance(value, datetime) else value

    def last_gather(self) -> dict | None:
        """The latest gather_log row (by start), as a dict."""
        gl = t.gather_log
        with self._read() as conn:
            r = conn.execute(
                select(gl).where(self._mine(gl)).order_by(gl.c.started_at.desc(), gl.c.id.desc()).limit(1)
            ).first()
        return None if r is None else dict(r._mapping)

    def last_calculated_date(self) -> date | None:
        ps = t.pipeline_state
        with self._read() as conn:
            return conn.execute(
                select(func.max(ps.c.date)).where(self._mine(ps), ps.c.chargeback_calculated_at.is_not(None))
            ).scalar_one_or_none()

    # ------------------------------------------------------------------ tenant status (docs/operations.md §7)

    def _ensure_status(self, conn: Connection) -> None:
        stmt = self._insert(t.tenant_status).on_conflict_do_nothing(index_elements=["tenant_name"])
        conn.execute(stmt, [{**self._tenant(), "tenant_name": self.tenant_name}])

    def _status_row(self, conn: Connection) -> dict:
        ts = t.tenant_status
        return dict(conn.execute(select(ts).where(ts.c.tenant_name == self.tenant_name)).one()._mapping)

    def record_gather_failure(self, run_id: str, error: str) -> int:
        """Count a gather failure of run `run_id` (at most once per run); returns the counter."""
        ts = t.tenant_status
        with self._write() as conn:
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
        with self._write() as conn:
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
        with self._write() as conn:
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
                    suspended_at=_utc(at),
                    suspended_reason=reason(count, row["last_gather_error"] or ""),
                )
            )
            return self._status_row(conn) if res.rowcount == 1 else None

    def clear_suspension(self) -> dict | None:
        """Resume: suspended false, counter 0. Returns the status row as it was when it was suspended,
        None when the tenant was not suspended."""
        ts = t.tenant_status
        with self._write() as conn:
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
        with self._read() as conn:
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
        with self._write() as conn:
            if replacing is None:
                stmt = self._insert(lk).on_conflict_do_nothing(index_elements=["tenant_name"])
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
                    held.append(func.coalesce(lk.c.heartbeat_at, lk.c.acquired_at) <= _utc(stale_before))
                res = conn.execute(
                    update(lk).where(*held).values(run_id=run_id, acquired_at=_utc(at), heartbeat_at=_utc(at))
                )
            return res.rowcount == 1

    def touch_run_lock(self, run_id: str, at: datetime) -> bool:
        """Refresh the heartbeat of the lock held by `run_id`; False when that run no longer holds it."""
        lk = t.tenant_run_lock
        with self._write() as conn:
            res = conn.execute(
                update(lk)
                .where(lk.c.tenant_name == self.tenant_name, lk.c.run_id == run_id)
                .values(heartbeat_at=_utc(at))
            )
            return res.rowcount == 1

    def release_run_lock(self, run_id: str) -> bool:
        lk = t.tenant_run_lock
        with self._write() as conn:
            res = conn.execute(delete(lk).where(lk.c.tenant_name == self.tenant_name, lk.c.run_id == run_id))
            return res.rowcount == 1

    # ------------------------------------------------------------------ run audit (docs/operations.md §4)

    def upsert_pipeline_run(self, run_id: str, **fields: Any) -> None:
        """Create the audit row of `run_id` (with `fields`) or update the given fields of it."""
        pr = t.pipeline_runs
        unknown = set(fields) - set(pr.c.keys())
        if unknown:
            raise StoreError(f"Unknown pipeline_runs fields: {sorted(unknown)}")
        values = {k: (_utc(v) if isinstance(v, datetime) else v) for k, v in fields.items()}
        row = {
            **self._tenant(),
            "dagster_run_id": run_id,
            "tenant_name": self.tenant_name,
            "trigger": "manual",
            "status": "running",
            **values,
        }
        row.setdefault("started_at", _utc(datetime.now(UTC)))
        stmt = self._insert(pr)
        stmt = (
            stmt.on_conflict_do_update(
                index_elements=["dagster_run_id"], set_={k: stmt.excluded[k] for k in values}
            )
            if values
            else stmt.on_conflict_do_nothing(index_elements=["dagster_run_id"])
        )
        with self._write() as conn:
            conn.execute(stmt, [row])

    def get_pipeline_run(self, run_id: str) -> dict | None:
        pr = t.pipeline_runs
        with self._read() as conn:
            r = conn.execute(select(pr).where(self._mine(pr), pr.c.dagster_run_id == run_id)).first()
        return None if r is None else dict(r._mapping)

    def pipeline_runs(self, status: str | None = None) -> list[dict]:
        """Audit rows (optionally of one status), newest first."""
        pr = t.pipeline_runs
        q = select(pr).where(self._mine(pr))
        if status is not None:
            q = q.where(pr.c.status == status)
        with self._read() as conn:
            rows = conn.execute(q.order_by(pr.c.started_at.desc())).all()
        return [dict(r._mapping) for r in rows]

    def end_pipeline_runs(
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
        values: dict[str, Any] = {"status": status, "ended_at": _utc(at)}
        if error is not None:
            values["error_message"] = error[:2000]
        with self._write() as conn:
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


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA busy_timeout=5000",
            "PRAGMA synchronous=NORMAL",
            "PRAGMA foreign_keys=ON",
            "PRAGMA temp_store=MEMORY",
        ):
            cur.execute(pragma)
    finally:
        cur.close()


__all__ = ["RunLock", "StoreError", "TenantStore", "normalize_url"]
