"""Usage metrics of a tenant: the stored result of every Prometheus fetch (docs/operations.md §4
`metrics`)."""

from __future__ import annotations

import json
from datetime import date, datetime
from itertools import chain

import orjson
from sqlalchemy import Connection, bindparam, delete, select

from chargeback_dagster.domain import MetricRow
from chargeback_dagster.store import tables as t
from chargeback_dagster.store.database import Database, Repository, StoreError, chunks
from chargeback_dagster.store.tables import canonical_json

LABEL_CACHE_SIZE = 100_000  # parsed metric label texts kept between dates (a cluster-day holds ~30)

# One fetch: (date, resource_id, query_key, rows or None when it failed, error).
Fetch = tuple[date, str, str, list[MetricRow] | None, str | None]

# The columns of usage_metric_values with their PostgreSQL types (binary COPY).
_VALUE_COLUMNS = (
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


class MetricsRepository(Repository):
    """Tables `usage_metric_values` and `usage_metric_fetches`."""

    def __init__(self, db: Database, *, tenant_name: str, ecosystem: str, tenant_id: str) -> None:
        super().__init__(db, tenant_name=tenant_name, ecosystem=ecosystem, tenant_id=tenant_id)
        self._labels_by_text: dict[str, dict] = {}  # parsed metric label sets, see `rows`

    def save_fetches(
        self,
        fetches: list[Fetch],
        fetched_at: datetime,
    ) -> None:
        """Replace the values of each fetch's (date, resource_id, query_key), one transaction; status `ok`
        when its rows are not None, else `failed` (no values kept). The last fetch of a group wins."""
        if not fetches:
            return
        v = t.usage_metric_values
        latest: dict[tuple, tuple] = {}
        for d, resource_id, query_key, rows, error in fetches:
            latest[(d, resource_id, query_key)] = (rows, error)
        value_rows = self._value_rows(latest)
        del_stmt = delete(v).where(
            v.c.ecosystem == bindparam("b_eco"),
            v.c.tenant_id == bindparam("b_tid"),
            v.c.date == bindparam("b_date"),
            v.c.resource_id == bindparam("b_res"),
            v.c.query_key == bindparam("b_key"),
        )
        with self.db.write() as conn:
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
                self._insert_values(conn, value_rows)
            self._upsert_fetches(conn, latest, fetched_at)

    def _value_rows(self, latest: dict[tuple, tuple]) -> list[tuple]:
        """(date, resource_id, query_key, label text, value_sum, value_max, sample_count) of the ok
        fetches in `latest`, driver-ready and in primary-key order (a first fetch of later dates appends
        at the right edge of the key's B-tree). The label text is both labels_key and labels_json.

        A duplicate label set raises StoreError naming the first one in the fetches' order."""
        dialect = self.db.engine.dialect
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

    def _insert_values(self, conn: Connection, rows: list[tuple]) -> None:
        """Insert `_value_rows`. SQLite: multi-row INSERTs; psycopg 3: binary COPY; otherwise the shared
        bulk insert."""
        eco, tid = self.ecosystem, self.tenant_id
        columns = [name for name, _ in _VALUE_COLUMNS]
        if self.db.dialect_name == "sqlite":
            # Key-ordered rows: within one statement SQLite appends them at the B-tree's right edge. A row
            # binds its label text once, for both labels_key and labels_json.
            self.db.insert_sqlite(
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
            self.db.bulk_insert(conn, t.usage_metric_values, wide, columns=columns, processed=True)
            return
        self.db.copy_binary(conn, "usage_metric_values", _VALUE_COLUMNS, wide)

    def _upsert_fetches(self, conn: Connection, latest: dict[tuple, tuple], fetched_at: datetime) -> None:
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
        one = "(" + ", ".join(["?" if self.db.dialect_name == "sqlite" else "%s"] * 8) + ")"
        with self.db.driver_cursor(conn, insert + one + conflict) as cursor:
            if conn.dialect.driver != "psycopg2":
                cursor.executemany(insert + one + conflict, rows)
                return
            for chunk in chunks(rows):  # psycopg2's executemany is a round trip per row
                sql = insert + ", ".join([one] * len(chunk)) + conflict
                cursor.execute(sql, [value for row in chunk for value in row])

    def rows(self, d: date) -> dict[tuple[str, str], list[MetricRow]]:
        """(resource_id, query_key) → rows (sorted by label set) for every fetch of `d` with status `ok`
        (an ok fetch without data maps to []). Failed fetches are absent; see fetch_status."""
        f = t.usage_metric_fetches
        out: dict[tuple[str, str], list[MetricRow]] = {}
        with self.db.read() as conn:
            for r in conn.execute(
                select(f.c.resource_id, f.c.query_key).where(self._mine(f), f.c.date == d, f.c.status == "ok")
            ):
                out[(r.resource_id, r.query_key)] = []
            values = self._value_tuples(conn, d)
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

    def _value_tuples(self, conn: Connection, d: date) -> list[tuple]:
        """(resource_id, query_key, labels_json, value_sum, value_max, sample_count) of `d`, sorted by
        resource, query and label text by code point, as Python sorts.

        Through the driver: SQLAlchemy's row objects cost a fair share of the read; psycopg 3 fetches
        binary values (no float parsing)."""
        date_proc = t.usage_metric_values.c.date.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        params = (self.ecosystem, self.tenant_id, date_proc(d) if date_proc is not None else d)
        mark = "?" if self.db.dialect_name == "sqlite" else "%s"
        sql = (
            "SELECT resource_id, query_key, labels_json, value_sum, value_max, sample_count"
            f" FROM usage_metric_values WHERE ecosystem = {mark} AND tenant_id = {mark} AND date = {mark}"
            " ORDER BY resource_id, query_key, labels_key"
        )
        with self.db.driver_cursor(conn, sql) as cursor:
            if conn.dialect.driver == "psycopg":
                cursor.execute(sql, params, binary=True)
            else:
                cursor.execute(sql, params)
            rows = cursor.fetchall()
        # SQLite compares text bytewise: its order (the key's B-tree order) is the code point order already.
        # PostgreSQL's follows the database collation: the database returns its index order (a sort with
        # COLLATE "C" cost more than the query) and Python re-sorts the nearly sorted list. labels_json and
        # labels_key hold the same text.
        if self.db.dialect_name != "sqlite":
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

    def fetch_status(self, d: date) -> dict[tuple[str, str], tuple[str, str | None, datetime]]:
        f = t.usage_metric_fetches
        with self.db.read() as conn:
            rows = conn.execute(
                select(f.c.resource_id, f.c.query_key, f.c.status, f.c.error, f.c.fetched_at).where(
                    self._mine(f), f.c.date == d
                )
            ).all()
        return {(r.resource_id, r.query_key): (r.status, r.error, r.fetched_at) for r in rows}
