"""The SQL views for BI tools (docs/outputs.md §3) on SQLite and PostgreSQL, against the CSV files.

A generic tenant is materialized end to end from a real Prometheus over 2026-01-31 .. 2026-02-02 with the
worked example of docs/generic-metrics.md §6 (compute 180.00, storage 0.24, egress 0.50 a day). Identities
team-a and team-b map to team `search`, team-c to the default team `ads`. On 2026-02-02 nobody sends
requests, so the even-split lines (compute and egress) go to UNALLOCATED; storage is still split by usage.
"""

from __future__ import annotations

import csv
import re
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from chargeback_dagster.config import load_config
from chargeback_dagster.defs.build import build_definitions
from chargeback_dagster.devtools.local_run import materialize_range
from chargeback_dagster.devtools.openmetrics import OpenMetricsWriter
from chargeback_dagster_tests.test_generic_e2e import GIB, hours, tenant_yaml

DATES = [date(2026, 1, 31), date(2026, 2, 1), date(2026, 2, 2)]
QUIET = date(2026, 2, 2)  # no requests: nobody discovered for the even-split lines
DOCS = Path(__file__).resolve().parents[1] / "docs" / "outputs.md"
pytestmark = pytest.mark.slow  # starts a Prometheus and materializes a tenant on each backend

CSV_KEY = (
    "timestamp",
    "resource_id",
    "product_category",
    "product_type",
    "identity_id",
    "cost_type",
    "allocation_method",
    "allocation_detail",
)


def metrics() -> str:
    w = OpenMetricsWriter()
    storage, egress, stored = [], [], {"team-a": [], "team-b": []}
    requests = {team: [] for team in ("team-a", "team-b", "team-c")}
    for d in DATES:
        for i, t in enumerate(hours(d)):
            storage.append((t, 100 * GIB))
            egress.append((t, GIB if i < 10 else 0))
            stored["team-a"].append((t, 3))
            stored["team-b"].append((t, 1))
            if d != QUIET:
                for samples in requests.values():
                    samples.append((t, 1))
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    for minutes in range(0, 120, 5):  # recent traffic for inventory discovery
        for samples in requests.values():
            samples.append((now - timedelta(minutes=minutes), 1))
    w.add("storage_bytes", {}, storage)
    w.add("egress_bytes", {}, egress)
    for team, samples in stored.items():
        w.add("stored_bytes_by_team", {"team": team}, samples)
    for team, samples in requests.items():
        w.add("requests", {"team": team}, samples)
    return w.text()


@pytest.fixture(scope="module")
def prometheus(local_prometheus_factory):
    return local_prometheus_factory(metrics())


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def tenant(request, prometheus, tmp_path_factory):
    """(engine on the materialized tenant database, folder of its daily CSV files)."""
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "sqlite":
        db_url = f"sqlite:///{root / 'search.db'}"
    else:
        db_url = request.getfixturevalue("make_pg_database")()
    config = tenant_yaml(prometheus.url, db_url, "out")
    settings = config["tenants"]["search"]["plugin_settings"]
    settings["emitters"] = settings["emitters"][:1]  # daily files only
    settings["identity_source"].update(
        {"principal_to_team": {"team-a": "search", "team-b": "search"}, "default_team": "ads"}
    )
    (root / "chargeback.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    defs = build_definitions(load_config(root / "chargeback.yaml"))
    assert materialize_range(defs, "search", DATES[0], DATES[-1]).success
    engine = sa.create_engine(db_url)
    yield engine, root / "out"
    engine.dispose()


def query(engine: sa.Engine, sql: str) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.text(sql))]


def csv_rows(out: Path, d: date) -> list[dict]:
    with (out / f"search-prod_{d}.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def docs_query_starting(text: str) -> str:
    """The ```sql block of docs/outputs.md that starts with `text`."""
    for block in re.findall(r"```sql\n(.*?)```", DOCS.read_text(), re.S):
        if block.startswith(text):
            return block
    raise AssertionError(f"no SQL block starting with '{text}' in {DOCS}")


def docs_query(title: str) -> str:
    """The example query of docs/outputs.md whose first line is `-- <title>`."""
    return docs_query_starting(f"-- {title}\n")


def test_chargeback_view_totals_equal_the_csv_files(tenant):
    engine, out = tenant
    totals = dict(query(engine, "SELECT date, SUM(amount) FROM v_chargeback GROUP BY date"))
    exact = dict(query(engine, "SELECT date, SUM(amount_units) FROM v_chargeback GROUP BY date"))
    assert len(totals) == 3
    for d in DATES:
        key = d if engine.dialect.name == "postgresql" else d.isoformat()
        expected = sum(Decimal(r["amount"]) for r in csv_rows(out, d))
        assert expected == Decimal("180.74")
        assert abs(Decimal(str(totals[key])) - expected) <= Decimal("0.0001")
        assert exact[key] == 1_807_400


def test_chargeback_view_grouped_as_the_csv_gives_its_rows(tenant):
    """Summed over env_id and composition_part, the view's rows are the CSV rows, amounts to the unit."""
    engine, out = tenant
    for d in DATES:
        rows = query(
            engine,
            f"SELECT {', '.join(CSV_KEY)}, SUM(amount_units) FROM v_chargeback WHERE date = '{d}' "
            f"GROUP BY {', '.join(CSV_KEY)}",
        )
        from_view = sorted((*(str(v) for v in r[1:-1]), Decimal(r[-1]) / 10000) for r in rows)
        from_csv = sorted((*(r[k] for k in CSV_KEY[1:]), Decimal(r["amount"])) for r in csv_rows(out, d))
        assert from_view == from_csv


def test_chargeback_view_joins_team_and_display_name(tenant):
    engine, _ = tenant
    rows = query(engine, "SELECT DISTINCT identity_id, display_name, team, resource_name FROM v_chargeback")
    assert sorted(rows) == [
        ("UNALLOCATED", "Unallocated Costs", None, "opensearch-prod"),
        ("team-a", "search", "search", "opensearch-prod"),
        ("team-b", "search", "search", "opensearch-prod"),
        ("team-c", "team-c", "ads", "opensearch-prod"),
    ]


def test_per_team_sums_are_the_hand_worked_numbers(tenant):
    """A full day: search = 60 + 60 (compute) + 0.1667 + 0.1667 (egress) + 0.18 + 0.06 (storage) = 120.5734,
    ads = 60 + 0.1666 = 60.1666. On the quiet day search keeps its storage 0.24 and 180.50 is unallocated."""
    engine, _ = tenant
    rows = query(
        engine,
        "SELECT date, team, SUM(amount_units) FROM v_chargeback GROUP BY date, team ORDER BY date, team",
    )
    got = {(str(d), team): units for d, team, units in rows}
    assert got == {
        ("2026-01-31", "ads"): 601_666,
        ("2026-01-31", "search"): 1_205_734,
        ("2026-02-01", "ads"): 601_666,
        ("2026-02-01", "search"): 1_205_734,
        ("2026-02-02", None): 1_805_000,
        ("2026-02-02", "search"): 2_400,
    }


def test_billing_view_total_equals_the_billed_total(tenant):
    engine, _ = tenant
    rows = query(
        engine,
        "SELECT date, product_type, quantity, unit_price, total_cost, resource_name FROM v_billing "
        "ORDER BY date, product_type",
    )
    as_numbers = [(str(d), p, *(Decimal(str(v)) for v in (q, u, c)), n) for d, p, q, u, c, n in rows]
    day = [
        ("broker_hours", Decimal(72), Decimal("2.5"), Decimal(180), "opensearch-prod"),
        ("egress", Decimal(10), Decimal("0.05"), Decimal("0.5"), "opensearch-prod"),
        ("storage", Decimal(2400), Decimal("0.0001"), Decimal("0.24"), "opensearch-prod"),
    ]
    assert as_numbers == [(d.isoformat(), *line) for d in DATES for line in day]
    (total,) = query(engine, "SELECT SUM(total_cost) FROM v_billing")[0]
    assert abs(Decimal(str(total)) - Decimal("542.22")) <= Decimal("0.0001")


def test_date_status_view_shows_each_date_calculated(tenant):
    engine, _ = tenant
    rows = query(
        engine,
        "SELECT date, billing_gathered, calculated, calculation_run_id IS NOT NULL, last_error "
        "FROM v_date_status ORDER BY date",
    )
    assert [(str(d), g, c, bool(r), e) for d, g, c, r, e in rows] == [
        (d.isoformat(), 1, 1, True, None) for d in DATES
    ]


def test_docs_cost_per_team_per_month(tenant):
    engine, _ = tenant
    rows = query(engine, docs_query("Cost per team per month"))  # its order of teams depends on the collation
    assert sorted((m, team, Decimal(str(a))) for m, team, a in rows) == [
        ("2026-01", "ads", Decimal("60.1666")),
        ("2026-01", "search", Decimal("120.5734")),
        ("2026-02", "(no team)", Decimal("180.5")),
        ("2026-02", "ads", Decimal("60.1666")),
        ("2026-02", "search", Decimal("120.8134")),
    ]


def test_docs_top_identities_per_cluster(tenant):
    """Over the three days: UNALLOCATED 180.50; team-a 2 × 60.3467 + 0.18 = 120.8734;
    team-b 2 × 60.2267 + 0.06 = 120.5134; team-c 2 × 60.1666 = 120.3332."""
    engine, _ = tenant
    rows = query(engine, docs_query("Top 5 identities per cluster"))
    assert [(r, i, n, Decimal(str(a))) for r, i, n, a in rows] == [
        ("opensearch-prod", "UNALLOCATED", "Unallocated Costs", Decimal("180.5")),
        ("opensearch-prod", "team-a", "search", Decimal("120.8734")),
        ("opensearch-prod", "team-b", "search", Decimal("120.5134")),
        ("opensearch-prod", "team-c", "team-c", Decimal("120.3332")),
    ]


def test_docs_unallocated_share_per_day(tenant):
    engine, _ = tenant
    rows = query(engine, docs_query("Unallocated share per day"))
    assert [(str(d), round(float(s), 6)) for d, s in rows] == [
        ("2026-01-31", 0.0),
        ("2026-02-01", 0.0),
        ("2026-02-02", round(180.5 / 180.74, 6)),
    ]


def test_docs_read_only_role_reads_the_views_only(tenant):
    """The GRANT statements of the docs give a role that reads the views but neither the tables nor writes."""
    engine, _ = tenant
    if engine.dialect.name != "postgresql":
        pytest.skip("roles and grants are PostgreSQL's")
    role = f"cb_bi_{uuid.uuid4().hex[:8]}"
    block = docs_query_starting("CREATE ROLE chargeback_bi")
    block = block.replace("chargeback_bi", role).replace("chargeback_acme", engine.url.database)
    with engine.connect() as conn:
        for statement in filter(str.strip, block.split(";")):
            conn.execute(sa.text(statement))
        conn.commit()
    reader = sa.create_engine(engine.url.set(username=role, password=None))
    try:
        assert query(reader, "SELECT COUNT(*) FROM v_chargeback") == [(20,)]
        assert query(reader, "SELECT COUNT(*) FROM v_billing") == [(9,)]
        assert query(reader, "SELECT COUNT(*) FROM v_date_status WHERE calculated = 1") == [(3,)]
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied for table chargeback_facts"):
            query(reader, "SELECT COUNT(*) FROM chargeback_facts")
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied for view v_date_status"):
            query(reader, "DELETE FROM v_date_status")
        assert query(reader, "SHOW default_transaction_read_only") == [("on",)]
    finally:
        reader.dispose()
        with engine.connect() as conn:
            conn.execute(sa.text(f"DROP OWNED BY {role}"))
            conn.execute(sa.text(f"DROP ROLE {role}"))
            conn.commit()
