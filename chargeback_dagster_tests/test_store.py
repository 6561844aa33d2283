"""TenantStore on SQLite and PostgreSQL (docs/operations.md §13, decision D10)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy as sa

from chargeback_dagster import pipeline
from chargeback_dagster.domain import (
    UNALLOCATED,
    BillingLine,
    Identity,
    MetricRow,
    Resource,
    blocks_from_rows,
)
from chargeback_dagster.store import StoreError, TenantStore
from chargeback_dagster.store import tables as t
from chargeback_dagster.store.database import alembic_config
from chargeback_dagster.store.tables import VERSION_TABLE
from chargeback_dagster_tests.store_helpers import (
    billing_dates,
    csv_rows,
    current_revision,
    fact_rows,
    head_revision,
    total_units,
)

ECO = "confluent_cloud"
TID = "acme"
D1 = date(2026, 2, 1)
D2 = date(2026, 2, 2)
D3 = date(2026, 2, 3)
NOW = datetime(2026, 2, 10, 12, 30, 15, tzinfo=UTC)


@pytest.fixture
def store(store_url):
    s = TenantStore.open(store_url, tenant_name="t1", ecosystem=ECO, tenant_id=TID)
    yield s
    s.dispose()


def line(d, resource_id, product_type, total, *, env="env-1", cat="KAFKA", qty="1", price="0"):
    return BillingLine(
        ecosystem=ECO,
        tenant_id=TID,
        date=d,
        resource_id=resource_id,
        product_category=cat,
        product_type=product_type,
        quantity=Decimal(qty),
        unit_price=Decimal(price),
        total_cost=Decimal(total),
        env_id=env,
        metadata={"b": 1, "a": [1, 2]},
    )


def key(identity, *, res="lkc-1", env="env-1", ptype="KAFKA_NUM_CKU", part="", cost="usage", detail="ok"):
    return (env, res, "KAFKA", ptype, identity, cost, "usage_ratio", detail, part)


# ---------------------------------------------------------------- migrations


def test_migrate_idempotent_and_version_table(store):
    store.migrate()
    store.migrate()
    insp = sa.inspect(store.engine)
    names = set(insp.get_table_names())
    assert VERSION_TABLE in names
    assert "alembic_version" not in names
    for table in (
        "resources",
        "identities",
        "billing",
        "usage_metric_values",
        "usage_metric_fetches",
        "chargeback_dimensions",
        "chargeback_facts",
        "pipeline_state",
        "pipeline_runs",
        "tenant_status",
        "gather_log",
        "gather_counters",
        "tenant_run_lock",
    ):
        assert table in names
        cols = {c["name"] for c in insp.get_columns(table)}
        assert {"ecosystem", "tenant_id"} <= cols, table
    assert current_revision(store) == head_revision()
    with store.engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT count(*) FROM {VERSION_TABLE}")).scalar_one() == 1
    again = TenantStore.open(store.url, tenant_name="t1", ecosystem=ECO, tenant_id=TID)
    assert [i.identity_id for i in again.inventory.identities()] == [UNALLOCATED]
    again.dispose()


def test_upgrade_from_0001_keeps_facts_and_drops_their_index(store_url):
    """Migration 0002 (facts without foreign key and dimension index) on a database written at 0001."""
    from alembic import command

    s = TenantStore(store_url, tenant_name="t1", ecosystem=ECO, tenant_id=TID)
    with s.engine.connect() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.commit()
        dim_id = conn.execute(
            sa.insert(t.chargeback_dimensions)
            .values(
                ecosystem=ECO, tenant_id=TID, **dict(zip(t.DIMENSION_KEY_COLUMNS, key("sa-1"), strict=True))
            )
            .returning(t.chargeback_dimensions.c.dimension_id)
        ).scalar_one()
        conn.execute(
            sa.insert(t.chargeback_facts).values(
                ecosystem=ECO, tenant_id=TID, date=D1, dimension_id=dim_id, timestamp=NOW, amount_units=1234
            )
        )
        conn.commit()
    assert current_revision(s) == "0001"
    s.migrate()
    assert current_revision(s) == head_revision() == "0007"
    assert fact_rows(s, D1) == [(*key("sa-1"), 1234)]
    inspector = sa.inspect(s.engine)
    assert inspector.get_indexes("chargeback_facts") == []
    assert inspector.get_foreign_keys("chargeback_facts") == []
    assert inspector.get_pk_constraint("chargeback_facts")["constrained_columns"] == ["date", "dimension_id"]
    s.dispose()


def test_upgrade_from_0002_keeps_metric_values(store_url):
    """Migration 0003 (metric values WITHOUT ROWID on SQLite): values written at 0002 stay readable and
    replaceable, and a downgrade keeps them too."""
    from alembic import command

    m1 = MetricRow({"principal_id": "sa-1", "kafka_id": "lkc-1"}, 1.5, 1.0, 24)
    m2 = MetricRow({"principal_id": "sa-2"}, 0.25, 0.25, 1)
    s = TenantStore(store_url, tenant_name="t1", ecosystem=ECO, tenant_id=TID)

    def at(revision, step):
        with s.engine.connect() as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            step(cfg, revision)
            conn.commit()

    def without_rowid():
        with s.engine.connect() as conn:
            sql = conn.execute(
                sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'usage_metric_values'")
            ).scalar_one()
        return "WITHOUT ROWID" in sql.upper()

    at("0002", command.upgrade)
    s.metrics.save_fetches([(D1, "lkc-1", "q", [m2, m1], None), (D1, "lkc-1", "empty", [], None)], NOW)
    s.migrate()
    assert current_revision(s) == head_revision()
    assert s.metrics.rows(D1) == {("lkc-1", "q"): [m1, m2], ("lkc-1", "empty"): []}
    if s.db.dialect_name == "sqlite":
        assert without_rowid()
        assert sa.inspect(s.engine).get_indexes("usage_metric_values") == []
    s.metrics.save_fetches([(D1, "lkc-1", "q", [m2], None)], NOW)
    assert s.metrics.rows(D1)[("lkc-1", "q")] == [m2]
    at("0002", command.downgrade)
    if s.db.dialect_name == "sqlite":
        assert not without_rowid()
    assert s.metrics.rows(D1) == {("lkc-1", "q"): [m2], ("lkc-1", "empty"): []}
    s.dispose()


def test_run_lock_heartbeat_and_takeover_are_conditional(store_url):
    """Migration 0004 gives a lock row written at 0003 its acquisition time as heartbeat; a takeover by
    heartbeat replaces the holder only while its heartbeat is still stale (one conditional UPDATE)."""
    from alembic import command

    s = TenantStore(store_url, tenant_name="t1", ecosystem=ECO, tenant_id=TID)
    with s.engine.connect() as conn:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
        conn.execute(
            sa.text(
                "INSERT INTO tenant_run_lock (ecosystem, tenant_id, tenant_name, run_id, acquired_at) "
                "VALUES (:e, :t, 't1', 'old-run', :at)"
            ),
            {"e": ECO, "t": TID, "at": NOW.replace(tzinfo=None) if s.db.dialect_name == "sqlite" else NOW},
        )
        conn.commit()
    s.migrate()
    assert s.state.run_lock_holder() == ("old-run", NOW, NOW)

    later = NOW + timedelta(seconds=90)
    assert s.state.touch_run_lock("old-run", later)  # the holder is alive after all
    assert not s.state.try_take_run_lock(
        "new-run", later, replacing="old-run", stale_before=later - timedelta(seconds=60)
    )
    assert s.state.run_lock_holder() == ("old-run", NOW, later)
    assert not s.state.touch_run_lock("new-run", later)  # a run that does not hold the lock cannot refresh it

    much_later = later + timedelta(seconds=61)
    assert s.state.try_take_run_lock(
        "new-run", much_later, replacing="old-run", stale_before=much_later - timedelta(seconds=60)
    )
    assert s.state.run_lock_holder() == ("new-run", much_later, much_later)
    assert not s.state.try_take_run_lock("third", much_later)  # held: the INSERT does nothing
    s.dispose()


def test_unknown_revision(store):
    with store.engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = 'zz99'"))
    with pytest.raises(StoreError) as err:
        store.migrate()
    assert str(err.value) == (
        "Tenant 't1' database is at revision 'zz99', which this version of chargeback-dagster does not know; "
        "upgrade chargeback-dagster or use another database"
    )


def test_unallocated_identity(store):
    ids = store.inventory.identities()
    assert len(ids) == 1
    u = ids[0]
    assert (u.identity_id, u.identity_type, u.display_name, u.deleted_at) == (
        UNALLOCATED,
        "system",
        "Unallocated Costs",
        None,
    )
    assert store.inventory.mark_identities_deleted(set(), NOW) == 0
    assert store.inventory.identities()[0].deleted_at is None


# ---------------------------------------------------------------- billing


def test_replace_billing_semantics(store):
    first = [
        line(D1, "lkc-1", "KAFKA_NUM_CKU", "10.5"),
        line(D1, "lkc-2", "KAFKA_NUM_CKU", "3"),
        line(D2, "lkc-1", "KAFKA_NUM_CKU", "7"),
    ]
    res = store.billing.replace(first, [D1, D2], NOW)
    assert res == {"revised": [], "removed": [], "kept_dates": {}}
    # D1 restated (lkc-1 revised, lkc-2 vanished, lkc-3 new); D2 returned nothing -> kept; D3 empty -> kept 0
    second = [line(D1, "lkc-1", "KAFKA_NUM_CKU", "11.25"), line(D1, "lkc-3", "KAFKA_STORAGE", "1")]
    res = store.billing.replace(second, [D1, D2, D3], NOW + timedelta(hours=1))
    assert res["revised"] == [(D1, "lkc-1", "KAFKA_NUM_CKU", Decimal("10.5"), Decimal("11.25"))]
    assert res["removed"] == [(D1, "lkc-2", "KAFKA_NUM_CKU")]
    assert res["kept_dates"] == {D2: 1, D3: 0}
    got = store.billing.lines(D1)
    assert [(ln.resource_id, ln.product_type, ln.total_cost) for ln in got] == [
        ("lkc-1", "KAFKA_NUM_CKU", Decimal("11.25")),
        ("lkc-3", "KAFKA_STORAGE", Decimal("1")),
    ]
    assert got[0] == second[0]
    assert got[0].metadata == {"a": [1, 2], "b": 1}
    assert [ln.total_cost for ln in store.billing.lines(D2)] == [Decimal("7")]
    assert billing_dates(store, D1, D3) == [D1, D2]
    assert billing_dates(store, D1, D2) == [D1]


def test_billing_decimal_exact_and_order(store):
    lines = [
        line(D1, "b", "X", "1234567.123456789", qty="0.00009", price="1E-9"),
        line(D1, "a", "Y", "0.00009", env="env-2"),
        line(D1, "a", "Y", "2", env="env-1"),
        line(D1, "a", "X", "-0.1"),
    ]
    store.billing.replace(lines, [D1], NOW)
    got = store.billing.lines(D1)
    assert [(ln.resource_id, ln.product_type, ln.env_id) for ln in got] == [
        ("a", "X", "env-1"),
        ("a", "Y", "env-1"),
        ("a", "Y", "env-2"),
        ("b", "X", "env-1"),
    ]
    b = got[3]
    assert b.total_cost == Decimal("1234567.123456789")
    assert str(b.total_cost) == "1234567.123456789"
    assert b.quantity == Decimal("0.00009")
    assert b.unit_price == Decimal("1E-9")
    assert got[2].total_cost == Decimal("0.00009")
    with store.engine.connect() as conn:
        raw = conn.execute(sa.text("SELECT quantity FROM billing WHERE resource_id = 'b'")).scalar_one()
    assert raw == "0.00009"
    assert b.timestamp == datetime(2026, 2, 1, tzinfo=UTC)


def test_allocation_attempts_committed_and_preserved(store):
    ln = line(D1, "lkc-1", "KAFKA_NUM_CKU", "10")
    other = line(D1, "lkc-2", "KAFKA_NUM_CKU", "5")
    store.billing.replace([ln, other], [D1], NOW)
    assert store.billing.increment_attempts(ln) == 1

    # a later failing date transaction rolls back; the increment stays committed
    with pytest.raises(StoreError):
        store.chargeback.write(
            D1,
            {("bad",): {"sa-1": 1}},
            calculation_id="c",
            run_id="r",
            succeeded_lines=[ln],
            calculated_at=NOW,
        )

    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.db.write() as conn:
        conn.execute(sa.text("DELETE FROM billing"))
        raise Boom
    assert store.billing.increment_attempts(ln) == 2
    assert {x.resource_id: x.allocation_attempts for x in store.billing.lines(D1)} == {"lkc-1": 2, "lkc-2": 0}

    # restatement keeps the counter of a surviving key
    store.billing.replace([line(D1, "lkc-1", "KAFKA_NUM_CKU", "12")], [D1], NOW)
    assert store.billing.lines(D1)[0].allocation_attempts == 2

    # a successful calculation resets it
    store.chargeback.write(
        D1,
        blocks_from_rows({key("sa-1"): 120000}),
        calculation_id="c1",
        run_id="r1",
        succeeded_lines=[ln],
        calculated_at=NOW,
    )
    assert store.billing.lines(D1)[0].allocation_attempts == 0
    with pytest.raises(StoreError):
        store.billing.increment_attempts(line(D2, "nope", "X", "1"))


# ---------------------------------------------------------------- chargeback


def test_write_chargeback_idempotent_and_state(store):
    rows = {key("sa-1"): 70000, key("sa-2"): 30000, key(UNALLOCATED, cost="shared", detail="x"): 5}
    for _ in range(2):
        n = store.chargeback.write(
            D1,
            blocks_from_rows(rows),
            calculation_id="calc-1",
            run_id="run-1",
            succeeded_lines=[],
            calculated_at=NOW,
        )
        assert n == 3
        assert total_units(store, D1) == 100005
    assert fact_rows(store, D1) == sorted((*k, v) for k, v in rows.items())
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM chargeback_dimensions")).scalar_one() == 3
        assert conn.execute(sa.text("SELECT count(*) FROM chargeback_facts")).scalar_one() == 3

    # a fresh store instance (empty dimension cache) reuses the stored dimensions
    fresh = TenantStore(store.url, tenant_name="t1", ecosystem=ECO, tenant_id=TID)
    fresh.chargeback.write(
        D2,
        blocks_from_rows({key("sa-1"): 1, key("sa-3"): 2}),
        calculation_id="c2",
        run_id=None,
        succeeded_lines=[],
        calculated_at=NOW,
    )
    fresh.dispose()
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM chargeback_dimensions")).scalar_one() == 4
    # the original instance learns the new dimension from the database
    store.chargeback.write(
        D3,
        blocks_from_rows({key("sa-3"): 9}),
        calculation_id="c3",
        run_id="r3",
        succeeded_lines=[],
        calculated_at=NOW,
    )
    assert total_units(store, D3) == 9
    assert total_units(store, date(2030, 1, 1)) == 0

    # recalculation replaces the date's facts
    store.chargeback.write(
        D1,
        blocks_from_rows({key("sa-1"): 100005}),
        calculation_id="calc-2",
        run_id="run-2",
        succeeded_lines=[],
        calculated_at=NOW + timedelta(hours=1),
    )
    assert fact_rows(store, D1) == [(*key("sa-1"), 100005)]
    state = store.state.date_row(D1)
    assert state["calculation_id"] == "calc-2"
    assert state["calculation_run_id"] == "run-2"
    assert state["chargeback_calculated_at"] == NOW + timedelta(hours=1)
    assert state["last_error"] is None
    assert store.state.calculated_dates(D1, D3) == [D1, D2]
    assert store.state.calculated_dates(D1, date(2026, 3, 1)) == [D1, D2, D3]


def test_failed_write_rolls_back_and_cache_stays_valid(store):
    store.chargeback.write(
        D1,
        blocks_from_rows({key("a"): 1}),
        calculation_id="c",
        run_id="r",
        succeeded_lines=[],
        calculated_at=NOW,
    )
    store.state.set_dates([D1], last_error="previous")
    # a row with a non-integer amount fails after the delete and the dimension insert -> rollback
    with pytest.raises((ValueError, TypeError)):
        store.chargeback.write(
            D1,
            blocks_from_rows({key("new"): 5, key("b"): "x"}),
            calculation_id="c2",
            run_id="r",
            succeeded_lines=[],
            calculated_at=NOW,
        )
    assert fact_rows(store, D1) == [(*key("a"), 1)]
    assert store.state.date_row(D1)["last_error"] == "previous"
    store.chargeback.write(
        D2,
        blocks_from_rows({key("new"): 5}),
        calculation_id="c3",
        run_id="r",
        succeeded_lines=[],
        calculated_at=NOW,
    )
    assert fact_rows(store, D2) == [(*key("new"), 5)]


def test_csv_rows_grouping_and_order(store):
    rows = {
        # same printed columns: two composition parts and two env_ids -> one CSV row, summed
        key("sa-1", part="usage", cost="shared"): 100,
        key("sa-1", part="shared", cost="shared"): 20,
        key("sa-1", env="env-2", part="", cost="shared"): 3,
        key("sa-0", res="lkc-2"): 7,
        key("Sa-Z"): 1,
        key("_x"): 2,
        key("sa-1", cost="usage"): -4,
    }
    store.chargeback.write(
        D1, blocks_from_rows(rows), calculation_id="c", run_id="r", succeeded_lines=[], calculated_at=NOW
    )
    store.chargeback.write(
        D2,
        blocks_from_rows({key("sa-1"): 5}),
        calculation_id="c",
        run_id="r",
        succeeded_lines=[],
        calculated_at=NOW,
    )
    got = csv_rows(store, D1, D3)
    ts1 = datetime(2026, 2, 1, tzinfo=UTC)
    ts2 = datetime(2026, 2, 2, tzinfo=UTC)

    def r(ts, res, ident, cost, units, detail="ok"):
        return (ECO, TID, ts, res, "KAFKA", "KAFKA_NUM_CKU", ident, cost, units, "usage_ratio", detail)

    assert got == [
        r(ts1, "lkc-1", "Sa-Z", "usage", 1),
        r(ts1, "lkc-1", "_x", "usage", 2),
        r(ts1, "lkc-1", "sa-1", "shared", 123),
        r(ts1, "lkc-1", "sa-1", "usage", -4),
        r(ts1, "lkc-2", "sa-0", "usage", 7),
        r(ts2, "lkc-1", "sa-1", "usage", 5),
    ]
    assert all(row[2].tzinfo is not None and row[2].utcoffset() == timedelta(0) for row in got)
    assert all(type(row[8]) is int for row in got)
    assert csv_rows(store, D2, D2) == []
    assert csv_rows(store, D2, D3) == got[-1:]


def test_write_chargeback_10000_rows(store):
    rows = {}
    for i in range(10_000):
        rows[key(f"sa-{i:05d}", res=f"lkc-{i % 37}", part=("usage", "shared", "")[i % 3])] = i - 5000
    n = store.chargeback.write(
        D1, blocks_from_rows(rows), calculation_id="c", run_id="r", succeeded_lines=[], calculated_at=NOW
    )
    assert n == 10_000
    expected = sum(rows.values())
    assert total_units(store, D1) == expected
    # second date reuses every cached dimension; recalculating D1 is idempotent
    assert (
        store.chargeback.write(
            D2, blocks_from_rows(rows), calculation_id="c", run_id="r", succeeded_lines=[], calculated_at=NOW
        )
        == n
    )
    assert (
        store.chargeback.write(
            D1, blocks_from_rows(rows), calculation_id="c", run_id="r", succeeded_lines=[], calculated_at=NOW
        )
        == n
    )
    assert total_units(store, D1) == expected
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM chargeback_dimensions")).scalar_one() == 10_000
    csv = csv_rows(store, D1, D2)
    assert len(csv) == 10_000
    assert sum(r[8] for r in csv) == expected


@pytest.mark.parametrize("n", [1, 1000, 2501])
def test_facts_stored_exactly_across_insert_statements(store, n):
    # SQLite inserts up to 1,000 facts per statement: full statements, then a shorter one for the rest
    rows = {key(f"sa-{i:05d}", res=f"lkc-{i % 7}"): (i * 7919) % 100_003 - 50_000 for i in range(n)}
    written = store.chargeback.write(
        D1, blocks_from_rows(rows), calculation_id="c", run_id="r", succeeded_lines=[], calculated_at=NOW
    )
    assert written == n
    assert fact_rows(store, D1) == sorted((*k, units) for k, units in rows.items())
    assert store.chargeback.totals(D1, D3) == {D1: sum(rows.values())}


def test_reconciliation_totals_per_date(store):
    store.billing.replace(
        [
            line(D1, "a", "X", "10.00005"),  # rounds half up to 10.0001
            line(D1, "b", "Y", "-0.00005"),  # half away from zero: -0.0001
            line(D2, "a", "X", "3"),
        ],
        [D1, D2],
        NOW,
    )
    assert store.billing.billed_units(D1, D3) == {D1: 100_000, D2: 30_000}
    assert store.billing.billed_units(D2, D3) == {D2: 30_000}
    store.chargeback.write(
        D2,
        blocks_from_rows({key("sa-1"): 29_999, key("sa-2"): 2}),
        calculation_id="c",
        run_id="r",
        succeeded_lines=[],
        calculated_at=NOW,
    )
    assert store.chargeback.totals(D1, D3) == {D2: 30_001}  # D1 has no facts
    assert pipeline.reconciliation_gaps(store, [D1, D2]) == {D1: -100_000, D2: 1}


# ---------------------------------------------------------------- metrics


def test_metric_fetch_replace_and_failed(store):
    m1 = MetricRow(
        labels={"principal_id": "sa-1", "kafka_id": "lkc-1"}, value_sum=1.5, value_max=1.0, sample_count=24
    )
    m2 = MetricRow(labels={"principal_id": "sa-2"}, value_sum=0.25, value_max=0.25, sample_count=1)
    store.metrics.save_fetches([(D1, "lkc-1", "bytes_in", [m1, m2], None)], NOW)
    store.metrics.save_fetches([(D1, "lkc-1", "bytes_out", [], None)], NOW)
    assert store.metrics.rows(D1) == {("lkc-1", "bytes_in"): [m1, m2], ("lkc-1", "bytes_out"): []}
    # replace: only the new label set remains
    store.metrics.save_fetches([(D1, "lkc-1", "bytes_in", [m2], None)], NOW + timedelta(hours=1))
    assert store.metrics.rows(D1)[("lkc-1", "bytes_in")] == [m2]
    # failure: values gone, status failed
    store.metrics.save_fetches([(D1, "lkc-1", "bytes_in", None, "HTTP 500: boom")], NOW + timedelta(hours=2))
    assert store.metrics.rows(D1) == {("lkc-1", "bytes_out"): []}
    status = store.metrics.fetch_status(D1)
    assert status[("lkc-1", "bytes_in")] == ("failed", "HTTP 500: boom", NOW + timedelta(hours=2))
    assert status[("lkc-1", "bytes_out")] == ("ok", None, NOW)
    assert status[("lkc-1", "bytes_out")][2].tzinfo is not None
    # bulk version, several dates
    store.metrics.save_fetches([(D1, "lkc-1", "bytes_in", [m1], None), (D2, "lkc-2", "q", None, "down")], NOW)
    assert store.metrics.rows(D1)[("lkc-1", "bytes_in")] == [m1]
    assert store.metrics.fetch_status(D2) == {("lkc-2", "q"): ("failed", "down", NOW)}
    assert store.metrics.rows(D2) == {}
    assert store.metrics.rows(D3) == {}


def test_metric_rows_sorted_by_label_text_and_duplicates_rejected(store):
    """Rows come back sorted by their label text by code point whatever the insertion order and the
    database collation; a label set twice in one fetch fails the whole batch, naming the first repeat."""
    texts = ["a", "B", "b", "é", "a b", "a-b", "Z", "ß", "日本", "😀", "", 'q"x']
    rows = [MetricRow({"p": x, "k": "1"}, float(i), 0.5, i) for i, x in enumerate(texts)]
    store.metrics.save_fetches([(D1, "r", "q", rows[::-1], None), (D1, "R", "q", rows[:3], None)], NOW)

    def by_text(ms):
        return sorted(ms, key=lambda m: t.canonical_json(m.labels))

    assert store.metrics.rows(D1) == {("r", "q"): by_text(rows), ("R", "q"): by_text(rows[:3])}
    # by text: '{"k":"1","p":"a b"}' < '{"k":"1","p":"a"}' (space before quote)
    assert [m.labels["p"] for m in store.metrics.rows(D1)[("r", "q")]][:4] == ["", "B", "Z", "a b"]
    a, b = MetricRow({"a": "1"}, 1.0, 1.0, 1), MetricRow({"b": "1"}, 1.0, 1.0, 1)
    with pytest.raises(StoreError, match=r'^Duplicate label set \{"b":"1"\} for 2026-02-02 r query q2$'):
        store.metrics.save_fetches([(D2, "r", "q", [a], None), (D2, "r", "q2", [a, b, b, a], None)], NOW)
    assert store.metrics.fetch_status(D2) == {}
    assert store.metrics.rows(D2) == {}


def test_metric_values_many_rows(store):
    """Thousands of rows per fetch, stored in several statements on SQLite (also under the 999-variable
    limit of older SQLite builds), come back complete and in order."""
    if store.db.dialect_name == "sqlite":
        import sqlite3

        limit = sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER
        sa.event.listen(store.engine, "connect", lambda dbapi_conn, _: dbapi_conn.setlimit(limit, 999))
        store.engine.dispose()
    rows = [MetricRow({"principal_id": f"sa-{i:05d}"}, i / 7, float(i), i) for i in range(2500)]
    store.metrics.save_fetches([(D1, "r", "q", rows[::-1], None), (D2, "r", "q", rows[:5], None)], NOW)
    assert store.metrics.rows(D1) == {("r", "q"): rows}
    assert store.metrics.rows(D2) == {("r", "q"): rows[:5]}
    store.metrics.save_fetches([(D1, "r", "q", rows[1000:], None)], NOW)
    assert store.metrics.rows(D1) == {("r", "q"): rows[1000:]}


def test_metric_sample_count_beyond_integer_column(store):
    """The values column is INTEGER: PostgreSQL rejects a count beyond int4 (never stores it wrapped);
    SQLite keeps 64-bit integers."""
    m = MetricRow({"a": "b"}, 1.0, 1.0, 2**31)
    if store.db.dialect_name == "sqlite":
        store.metrics.save_fetches([(D1, "r", "q", [m], None)], NOW)
        assert store.metrics.rows(D1) == {("r", "q"): [m]}
        return
    with pytest.raises(sa.exc.DataError):
        store.metrics.save_fetches([(D1, "r", "q", [m], None)], NOW)
    assert store.metrics.fetch_status(D1) == {}


# ---------------------------------------------------------------- inventory


def test_resources_deleted_and_reactivated(store):
    created = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
    r1 = Resource("lkc-1", "kafka_cluster", display_name="one", created_at=created, metadata={"k": "v"})
    r2 = Resource("lkc-2", "kafka_cluster")
    c1 = Resource("lcc-1", "connector")
    store.inventory.upsert_resources([r1, r2, c1], NOW)
    assert store.inventory.mark_resources_deleted("kafka_cluster", {"lkc-1"}, NOW) == 1
    by_id = {r.resource_id: r for r in store.inventory.resources()}
    assert by_id["lkc-2"].status == "deleted" and by_id["lkc-2"].deleted_at == NOW
    assert by_id["lcc-1"].status == "active"
    assert by_id["lkc-1"].created_at == created and by_id["lkc-1"].metadata == {"k": "v"}
    assert by_id["lkc-1"].created_at.tzinfo is not None
    # already deleted rows are not counted again
    assert store.inventory.mark_resources_deleted("kafka_cluster", {"lkc-1"}, NOW + timedelta(days=1)) == 0
    # re-gathered -> active again; created_at kept when the new gather has none
    store.inventory.upsert_resources(
        [Resource("lkc-2", "kafka_cluster", display_name="two")], NOW + timedelta(days=2)
    )
    store.inventory.upsert_resources([Resource("lkc-1", "kafka_cluster")], NOW + timedelta(days=2))
    by_id = {r.resource_id: r for r in store.inventory.resources()}
    assert by_id["lkc-2"].status == "active" and by_id["lkc-2"].deleted_at is None
    assert by_id["lkc-2"].display_name == "two"
    assert by_id["lkc-1"].created_at == created


def test_identities_and_counters(store):
    store.inventory.upsert_identities([Identity("sa-1", "service_account"), Identity("u-1", "user")], NOW)
    assert store.inventory.mark_identities_deleted({"sa-1"}, NOW) == 1
    ids = {i.identity_id: i for i in store.inventory.identities()}
    assert set(ids) == {UNALLOCATED, "sa-1", "u-1"}
    assert ids["u-1"].deleted_at == NOW and ids[UNALLOCATED].deleted_at is None
    store.inventory.upsert_identities([Identity("u-1", "user")], NOW)
    assert {i.identity_id: i.deleted_at for i in store.inventory.identities()}["u-1"] is None
    assert store.state.zero_gathers("identities") == 0
    store.state.set_zero_gathers("identities", 2)
    store.state.set_zero_gathers("identities", 3)
    store.state.set_zero_gathers("resources:kafka_cluster", 1)
    assert store.state.zero_gathers("identities") == 3
    assert store.state.zero_gathers("resources:kafka_cluster") == 1


# ---------------------------------------------------------------- state, time, retention


def test_state_and_tz_aware(store):
    assert store.state.date_row(D1) is None
    naive = datetime(2026, 2, 5, 1, 2, 3)
    other_tz = datetime(2026, 2, 5, 3, 2, 3, 999, tzinfo=UTC).astimezone(timezone(timedelta(hours=2)))
    store.state.set_dates([D1], billing_gathered_at=naive)
    store.state.set_dates([D1, D2], inventory_gathered_at=other_tz)
    s1 = store.state.date_row(D1)
    assert s1["date"] == D1
    assert s1["billing_gathered_at"] == datetime(2026, 2, 5, 1, 2, 3, tzinfo=UTC)
    assert s1["billing_gathered_at"].utcoffset() == timedelta(0)
    assert s1["inventory_gathered_at"] == datetime(2026, 2, 5, 3, 2, 3, tzinfo=UTC)
    assert s1["inventory_gathered_at"].tzinfo is not None
    assert store.state.date_row(D2)["billing_gathered_at"] is None
    with pytest.raises(StoreError):
        store.state.set_dates([D1], bogus=1)
    assert store.state.calculated_dates(D1, D3) == []


def test_purge_before(store):
    old, new = date(2025, 1, 1), date(2026, 2, 1)
    store.billing.replace([line(old, "r", "X", "1"), line(new, "r", "X", "2")], [old, new], NOW)
    store.chargeback.write(
        old,
        blocks_from_rows({key("gone"): 1, key("both"): 1}),
        calculation_id="c",
        run_id="r",
        succeeded_lines=[],
        calculated_at=NOW,
    )
    store.chargeback.write(
        new,
        blocks_from_rows({key("both"): 2}),
        calculation_id="c",
        run_id="r",
        succeeded_lines=[],
        calculated_at=NOW,
    )
    m = MetricRow(labels={"a": "b"}, value_sum=1, value_max=1, sample_count=1)
    store.metrics.save_fetches([(old, "r", "q", [m], None), (new, "r", "q", [m], None)], NOW)
    cutoff_ts = datetime(2025, 6, 1, tzinfo=UTC)
    store.inventory.upsert_resources(
        [Resource("old", "t"), Resource("recent", "t"), Resource("active", "t")], NOW
    )
    store.inventory.mark_resources_deleted("t", {"recent", "active"}, datetime(2025, 1, 1, tzinfo=UTC))
    store.inventory.mark_resources_deleted("t", {"active"}, datetime(2025, 12, 1, tzinfo=UTC))
    store.inventory.upsert_identities([Identity("old-id", "user")], NOW)
    store.inventory.mark_identities_deleted(set(), datetime(2025, 1, 1, tzinfo=UTC))
    with store.db.write() as conn:
        conn.execute(
            t.pipeline_runs.insert(),
            [
                {
                    "ecosystem": ECO,
                    "tenant_id": TID,
                    "dagster_run_id": rid,
                    "tenant_name": "t1",
                    "trigger": "manual",
                    "started_at": ended,
                    "ended_at": ended,
                    "status": "completed",
                }
                for rid, ended in (("r-old", datetime(2025, 1, 1, tzinfo=UTC)), ("r-new", NOW))
            ],
        )
    out = store.retention.purge(date(2025, 6, 1), cutoff_ts)
    assert out == {
        "chargeback_facts": 2,
        "billing": 1,
        "usage_metric_values": 1,
        "usage_metric_fetches": 1,
        "pipeline_state": 1,
        "chargeback_dimensions": 1,
        "resources": 1,
        "identities": 1,
        "pipeline_runs": 1,
    }
    assert billing_dates(store, date(2000, 1, 1), date(2100, 1, 1)) == [new]
    assert fact_rows(store, new) == [(*key("both"), 2)]
    assert {r.resource_id for r in store.inventory.resources()} == {"recent", "active"}
    assert {i.identity_id for i in store.inventory.identities()} == {UNALLOCATED}
    assert store.state.date_row(old) is None and store.state.date_row(new) is not None
    # the dimension cache was reset: re-creating a purged dimension works
    store.chargeback.write(
        new,
        blocks_from_rows({key("gone"): 3}),
        calculation_id="c",
        run_id="r",
        succeeded_lines=[],
        calculated_at=NOW,
    )
    assert fact_rows(store, new) == [(*key("gone"), 3)]
    assert store.retention.purge(date(2025, 6, 1), cutoff_ts)["billing"] == 0


def test_purged_dimension_in_other_instance_cache(store):
    other = TenantStore(store.url, tenant_name="t1", ecosystem=ECO, tenant_id=TID)
    other.chargeback.write(
        D1,
        blocks_from_rows({key("x"): 1}),
        calculation_id="c",
        run_id="r",
        succeeded_lines=[],
        calculated_at=NOW,
    )
    store.retention.purge(date(2026, 3, 1), NOW)  # removes D1's facts and the dimension other has cached
    other.chargeback.write(
        D2,
        blocks_from_rows({key("x"): 4}),
        calculation_id="c",
        run_id="r",
        succeeded_lines=[],
        calculated_at=NOW,
    )
    assert fact_rows(store, D2) == [(*key("x"), 4)]
    other.dispose()


def test_url_normalisation_and_sqlite_pragmas(tmp_path):
    s = TenantStore(f"sqlite+pysqlite:///{tmp_path}/a/b/c.db", tenant_name="t", ecosystem=ECO, tenant_id=TID)
    assert (tmp_path / "a" / "b").is_dir()
    with s.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA temp_store").scalar() == 2
    s.dispose()
    p = TenantStore("postgresql://u:secret@h/db", tenant_name="t", ecosystem=ECO, tenant_id=TID)
    assert p.engine.url.drivername == "postgresql+psycopg"
    assert "secret" not in repr(p)
    assert (
        TenantStore(
            "postgresql+psycopg2://u@h/db", tenant_name="t", ecosystem=ECO, tenant_id=TID
        ).engine.url.drivername
        == "postgresql+psycopg2"
    )
    with pytest.raises(StoreError):
        TenantStore("mysql://u@h/db", tenant_name="t", ecosystem=ECO, tenant_id=TID)


def test_psycopg2_driver(make_pg_database):
    url = make_pg_database().replace("postgresql+psycopg://", "postgresql+psycopg2://")
    s = TenantStore.open(url, tenant_name="t1", ecosystem=ECO, tenant_id=TID)
    assert s.engine.url.drivername == "postgresql+psycopg2"
    s.billing.replace([line(D1, "r", "X", "0.00009")], [D1], NOW)
    assert s.billing.lines(D1)[0].total_cost == Decimal("0.00009")
    rows = {key(f"sa-{i}"): i for i in range(2500)}
    assert (
        s.chargeback.write(
            D1, blocks_from_rows(rows), calculation_id="c", run_id="r", succeeded_lines=[], calculated_at=NOW
        )
        == 2500
    )
    assert total_units(s, D1) == sum(range(2500))
    assert csv_rows(s, D1, D2)[0][2] == datetime(2026, 2, 1, tzinfo=UTC)
    s.metrics.save_fetches([(D1, "r", "q", [MetricRow({"a": "b"}, 1.0, 1.0, 1)], None)], NOW)
    assert s.metrics.rows(D1) == {("r", "q"): [MetricRow({"a": "b"}, 1.0, 1.0, 1)]}
    s.dispose()


def test_replace_billing_stored_columns_and_counters(store):
    ln1 = line(D1, "lkc-1", "KAFKA_NUM_CKU", "10.50", qty="4.0000", price="2.6250")
    ln2 = BillingLine(ECO, TID, D2, "lkc-2", "KAFKA", "X", Decimal(1), Decimal(0), Decimal(0), env_id=None)
    store.billing.replace([ln1, ln2], [D1, D2], NOW)
    b = t.billing
    with store.engine.connect() as conn:
        conn.execute(sa.update(b).where(b.c.resource_id == "lkc-1").values(topic_attribution_attempts=3))
        conn.commit()
    store.billing.increment_attempts(ln1)
    new = BillingLine(
        ECO, TID, D1, "lkc-9", "KAFKA", "Y", Decimal(1), Decimal(1), Decimal(1), allocation_attempts=5
    )
    later = NOW + timedelta(hours=1)
    res = store.billing.replace([line(D1, "lkc-1", "KAFKA_NUM_CKU", "10.5"), new], [D1, D2], later)
    assert res == {"revised": [], "removed": [], "kept_dates": {D2: 1}}  # 10.50 == 10.5: no revision
    cols = ["ecosystem", "tenant_id", "resource_id", "env_id", "timestamp", "total_cost", "currency"]
    cols += ["allocation_attempts", "topic_attribution_attempts", "metadata_json", "gathered_at"]
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(*(b.c[c] for c in cols)).order_by(b.c.date, b.c.resource_id)).all()
    day1, day2 = datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 2, 2, tzinfo=UTC)
    assert [tuple(r) for r in rows] == [
        (ECO, TID, "lkc-1", "env-1", day1, Decimal("10.5"), "USD", 1, 3, {"a": [1, 2], "b": 1}, later),
        (ECO, TID, "lkc-9", "", day1, Decimal("1"), "USD", 5, 0, {}, later),
        (ECO, TID, "lkc-2", "", day2, Decimal("0"), "USD", 0, 0, {}, NOW),
    ]
    dup = [line(D1, "a", "X", "1"), line(D1, "b", "X", "1"), line(D1, "a", "X", "2")]
    with pytest.raises(StoreError, match=r"Duplicate billing line key .*'a', 'KAFKA', 'X'\)"):
        store.billing.replace(dup, [D1], NOW)
    assert len(store.billing.lines(D1)) == 2
