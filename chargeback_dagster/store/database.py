"""The tenant database (docs/operations.md §13): engine, transactions, bulk inserts and migrations, on
SQLite or PostgreSQL through SQLAlchemy Core (decision D10). The repositories of store/ run their SQL
through it.

Only SQL both dialects run. Ordering that must be identical on both backends (billing line order, CSV row
order) is done in Python by code point, because PostgreSQL's ORDER BY follows the database collation.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, and_, create_engine, event, text
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from chargeback_dagster.store.tables import VERSION_TABLE

_MIGRATIONS_IN_PROCESS = threading.Lock()

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Arbitrary constant key of the PostgreSQL advisory lock taken around `upgrade head`.
MIGRATION_LOCK_KEY = 0x63686172676562  # "chargeb"
CHUNK = 500  # ids per IN (...) list


class StoreError(Exception):
    """A tenant database problem the caller should report as is."""


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


def utc(value: datetime | None) -> datetime | None:
    """`value` as aware UTC with whole seconds (naive values are taken as UTC)."""
    if value is None:
        return None
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.replace(microsecond=0)


def chunks(seq: Sequence[Any], n: int = CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def process_each(process: Callable[[Any], Any], values: Sequence[Any]) -> list[Any]:
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


def alembic_config() -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


class Database:
    """The engine of one tenant database and the ways to use it. Thread-safe as far as the SQLAlchemy engine
    is; cheap to construct."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
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

    def dispose(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def write(self) -> Iterator[Connection]:
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

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    def insert(self, table: Any) -> Any:
        """The dialect's INSERT of `table` (with ON CONFLICT)."""
        if self.dialect_name == "postgresql":
            return pg_dialect.insert(table)
        return sqlite_dialect.insert(table)

    @contextmanager
    def driver_cursor(self, conn: Connection, statement: str) -> Iterator[Any]:
        """A driver cursor on `conn` whose errors surface as SQLAlchemy's (IntegrityError, …)."""
        cursor = conn.connection.cursor()
        try:
            yield cursor
        except conn.dialect.loaded_dbapi.Error as exc:
            raise DBAPIError.instance(statement, None, exc, conn.dialect.loaded_dbapi.Error) from exc
        finally:
            cursor.close()

    # ------------------------------------------------------------------ bulk inserts

    def bulk_insert(
        self,
        conn: Connection,
        table: Any,
        rows: Iterable[tuple],
        *,
        columns: Sequence[str],
        ignore_conflicts: bool = False,
        processed: bool = False,
    ) -> None:
        """Fast bulk INSERT through the DBAPI cursor (SQLAlchemy's per-row parameter handling dominates
        at 10,000 rows). Values go through each column type's bind processor, column by column, a value
        once however often it recurs. `processed`: the rows (any iterable of tuples in `columns` order)
        already hold DBAPI values. SQLite: executemany; PostgreSQL: COPY, or multi-row VALUES in batches."""
        if not processed:
            rows = list(rows)
            if not rows:
                return
            dialect = conn.dialect
            procs = [table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in columns]
            active = [(i, p) for i, p in enumerate(procs) if p is not None]
            if active:
                cols: list[Sequence[Any]] = list(zip(*rows, strict=True))
                for i, p in active:
                    cols[i] = process_each(p, cols[i])
                rows = list(zip(*cols, strict=True))
        self._insert_rows(conn, table, rows, columns, ignore_conflicts)

    def _insert_rows(
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
                for chunk in chunks(list(rows), batch):
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

    def insert_sqlite(
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
        with self.driver_cursor(conn, f'INSERT INTO "{table}" ({cols_sql}) …') as cursor:
            if full:
                params = (constants + values[i : i + chunk] for i in range(0, full, chunk))
                cursor.executemany(statement(chunk // width), params)
            if full < len(values):  # the leftover rows, fewer than a full statement's
                cursor.execute(statement((len(values) - full) // width), constants + values[full:])

    def copy_binary(
        self, conn: Connection, table: str, columns: Sequence[tuple[str, str]], rows: Iterable[tuple]
    ) -> None:
        """psycopg 3 binary COPY of `rows` into the (name, PostgreSQL type) `columns` of `table`: text COPY's
        per-value formatting costs the client more than the server spends inserting."""
        cols_sql = ", ".join(f'"{name}"' for name, _ in columns)
        sql = f'COPY "{table}" ({cols_sql}) FROM STDIN (FORMAT BINARY)'
        with self.driver_cursor(conn, sql) as cursor, cursor.copy(sql) as copy:
            copy.set_types([pg_type for _, pg_type in columns])
            write = copy.write_row
            for row in rows:
                write(row)

    # ------------------------------------------------------------------ migrations

    def migrate(self, tenant_name: str) -> None:
        """`upgrade head` (docs/operations.md §13), one migration at a time per process.

        SQLite: inside BEGIN IMMEDIATE; PostgreSQL: under an advisory lock. Unknown revision → StoreError.
        """
        # Alembic keeps the running migration in module-level proxies (`op`, `context`) and loads env.py as
        # a module: two threads migrating at once (the code server ticks sensors in threads) used each
        # other's connections and crashed the process. Taken before the database lock, so two tenants on
        # one database cannot wait on each other.
        with _MIGRATIONS_IN_PROCESS:
            self._migrate(tenant_name)

    def _migrate(self, tenant_name: str) -> None:
        from alembic import command
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        cfg = alembic_config()
        known = {rev.revision for rev in ScriptDirectory.from_config(cfg).walk_revisions()}
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
                            f"Tenant '{tenant_name}' database is at revision '{rev}', which this "
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


class Repository:
    """The rows of one tenant (ecosystem, tenant_id) in one group of tables, read and written through `db`."""

    def __init__(self, db: Database, *, tenant_name: str, ecosystem: str, tenant_id: str) -> None:
        self.db = db
        self.tenant_name = tenant_name
        self.ecosystem = ecosystem
        self.tenant_id = tenant_id

    def _tenant(self) -> dict[str, str]:
        return {"ecosystem": self.ecosystem, "tenant_id": self.tenant_id}

    def _mine(self, table: Any) -> Any:
        return and_(table.c.ecosystem == self.ecosystem, table.c.tenant_id == self.tenant_id)


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
