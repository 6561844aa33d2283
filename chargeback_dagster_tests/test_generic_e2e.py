"""generic_metrics_only end to end: real Prometheus → Dagster assets → tenant store → CSV files.

The data reproduces the worked example of docs/generic-metrics.md §3/§6 on 2026-02-01, 02 and 04;
2026-02-03 has no samples at all. Discovery samples also exist in the last hours before now, because
inventory discovery looks at [now − discovery_window_hours, now).
"""

from __future__ import annotations

import csv
import os
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
import yaml

from chargeback_dagster.config import load_config
from chargeback_dagster.defs.build import build_definitions
from chargeback_dagster.devtools.local_run import materialize_range
from chargeback_dagster.devtools.openmetrics import OpenMetricsWriter

GIB = 2**30
DAYS_WITH_DATA = [date(2026, 2, 1), date(2026, 2, 2), date(2026, 2, 4)]
HEADER = (
    "ecosystem,tenant_id,timestamp,resource_id,product_category,product_type,identity_id,cost_type,"
    "amount,allocation_method,allocation_detail"
)


def hours(d: date):
    start = datetime(d.year, d.month, d.day, tzinfo=UTC)
    return [start + timedelta(hours=h) for h in range(24)]


def worked_example_metrics(teams: tuple[str, ...] = ("team-a", "team-b", "team-c")) -> str:
    w = OpenMetricsWriter()
    storage, egress, stored_by_team = [], [], {"team-a": [], "team-b": []}
    requests = {team: [] for team in teams}
    for d in DAYS_WITH_DATA:
        for i, t in enumerate(hours(d)):
            storage.append((t, 100 * GIB))  # 24 samples of 100 GiB -> 2400 GiB-hours
            egress.append((t, GIB if i < 10 else 0))  # sums to 10 GiB
            stored_by_team["team-a"].append((t, 3))
            stored_by_team["team-b"].append((t, 1))
            for team in requests:
                requests[team].append((t, 1))
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    for minutes in range(0, 120, 5):  # recent traffic for inventory discovery
        for team in requests:
            requests[team].append((now - timedelta(minutes=minutes), 1))
    w.add("storage_bytes", {}, storage)
    w.add("egress_bytes", {}, egress)
    for team, samples in stored_by_team.items():
        w.add("stored_bytes_by_team", {"team": team}, samples)
    for team, samples in requests.items():
        w.add("requests", {"team": team}, samples)
    return w.text()


def tenant_yaml(prometheus_url: str, db_url: str, out: str) -> dict:
    return {
        "tenants": {
            "search": {
                "ecosystem": "generic_metrics_only",
                "tenant_id": "search-prod",
                "partitions_start_date": "2026-01-01",
                "storage": {"connection_string": db_url},
                "plugin_settings": {
                    "cluster_id": "opensearch-prod",
                    "metrics": {"url": prometheus_url},
                    "identity_source": {
                        "source": "prometheus",
                        "label": "team",
                        "discovery_query": "group by (team) (requests)",
                    },
                    "discovery_window_hours": 2,
                    "cost_types": [
                        {
                            "name": "broker_hours",
                            "product_category": "compute",
                            "rate": 2.50,
                            "cost_quantity": {"type": "fixed", "count": 3},
                        },
                        {
                            "name": "storage",
                            "product_category": "storage",
                            "rate": 0.0001,
                            "cost_quantity": {"type": "storage_gib", "query": "sum(storage_bytes)"},
                            "allocation_strategy": "usage_ratio",
                            "allocation_query": "sum by (team) (stored_bytes_by_team)",
                            "allocation_label": "team",
                        },
                        {
                            "name": "egress",
                            "product_category": "network",
                            "rate": 0.05,
                            "cost_quantity": {"type": "network_gib", "query": "sum(egress_bytes)"},
                        },
                    ],
                    "emitters": [
                        {"type": "csv", "params": {"output_dir": out}},
                        {
                            "type": "csv",
                            "name": "monthly",
                            "aggregation": "monthly",
                            "params": {"output_dir": out + "/monthly"},
                        },
                    ],
                },
            }
        }
    }


@pytest.fixture(scope="module")
def prometheus(local_prometheus_factory):
    return local_prometheus_factory(worked_example_metrics())


def make_defs(tmp_path: Path, prometheus_url: str, db_url: str):
    config_path = tmp_path / "chargeback.yaml"
    config_path.write_text(yaml.safe_dump(tenant_yaml(prometheus_url, db_url, "out"), sort_keys=False))
    return build_definitions(load_config(config_path))


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def csv_total(path: Path) -> Decimal:
    return sum((Decimal(r["amount"]) for r in read_csv(path)), Decimal(0))


@pytest.mark.slow
def test_worked_example_over_four_days(tmp_path, prometheus):
    defs = make_defs(tmp_path, prometheus.url, "sqlite:///data/search.db")
    result = materialize_range(defs, "search", date(2026, 2, 1), date(2026, 2, 4))
    assert result.success

    out = tmp_path / "out"
    rows = read_csv(out / "search-prod_2026-02-01.csv")
    table = [
        (
            r["product_type"],
            r["identity_id"],
            r["amount"],
            r["cost_type"],
            r["allocation_method"],
            r["allocation_detail"],
        )
        for r in rows
    ]
    assert table == [
        ("broker_hours", "team-a", "60.0000", "shared", "even_split", "even_split_allocation"),
        ("broker_hours", "team-b", "60.0000", "shared", "even_split", "even_split_allocation"),
        ("broker_hours", "team-c", "60.0000", "shared", "even_split", "even_split_allocation"),
        ("egress", "team-a", "0.1667", "shared", "even_split", "even_split_allocation"),
        ("egress", "team-b", "0.1667", "shared", "even_split", "even_split_allocation"),
        ("egress", "team-c", "0.1666", "shared", "even_split", "even_split_allocation"),
        ("storage", "team-a", "0.1800", "usage", "usage_ratio", "usage_ratio_allocation"),
        ("storage", "team-b", "0.0600", "usage", "usage_ratio", "usage_ratio_allocation"),
    ]
    assert rows[0]["timestamp"] == "2026-02-01T00:00:00+00:00"
    assert {r["resource_id"] for r in rows} == {"opensearch-prod"}
    # the billed total (180.00 + 0.24 + 0.50) is allocated to the last unit, every day with data
    for d in DAYS_WITH_DATA:
        assert csv_total(out / f"search-prod_{d}.csv") == Decimal("180.74")
    # a day without any samples has no billing lines: a header-only file
    assert (out / "search-prod_2026-02-03.csv").read_text() == HEADER + "\n"
    # the monthly file groups the month's rows by dimension
    monthly = read_csv(out / "monthly" / "search-prod_2026-02-01.csv")
    assert {(r["product_type"], r["identity_id"]): r["amount"] for r in monthly}[
        ("broker_hours", "team-a")
    ] == ("180.0000")
    assert sum(Decimal(r["amount"]) for r in monthly) == Decimal("180.74") * 3

    # re-materializing gives byte-identical files
    before = {p.name: p.read_bytes() for p in out.glob("*.csv")}
    assert materialize_range(defs, "search", date(2026, 2, 1), date(2026, 2, 4)).success
    assert {p.name: p.read_bytes() for p in out.glob("*.csv")} == before


@pytest.mark.slow
@pytest.mark.postgres
def test_sqlite_and_postgresql_give_identical_csvs(tmp_path, prometheus, make_pg_database):
    files = {}
    for backend, url in (("sqlite", "sqlite:///data/search.db"), ("pg", make_pg_database())):
        root = tmp_path / backend
        root.mkdir()
        assert materialize_range(
            make_defs(root, prometheus.url, url), "search", date(2026, 2, 1), date(2026, 2, 4)
        ).success
        files[backend] = {p.name: p.read_bytes() for p in (root / "out").glob("*.csv")}
    assert len(files["sqlite"]) == 4
    assert files["sqlite"] == files["pg"]


@pytest.mark.slow
def test_prometheus_outage_fails_billing_and_keeps_earlier_days(tmp_path, local_prometheus_factory):
    prom = local_prometheus_factory(worked_example_metrics())
    defs = make_defs(tmp_path, prom.url, "sqlite:///data/search.db")
    assert materialize_range(defs, "search", date(2026, 2, 1), date(2026, 2, 2)).success
    out = tmp_path / "out"
    before = {p.name: p.read_bytes() for p in out.glob("*.csv")}

    prom.stop()
    result = materialize_range(defs, "search", date(2026, 2, 4), date(2026, 2, 4))
    assert not result.success
    failure = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure[0].step_key.endswith("billing")
    assert "Billing construction failed for all 1 dates: Exhausted 4 attempts for" in (
        failure[0].event_specific_data.error.to_string()
    )
    # nothing was written for the failed day; the earlier days are untouched
    assert not (out / "search-prod_2026-02-04.csv").exists()
    assert {p.name: p.read_bytes() for p in out.glob("*.csv")} == before


@pytest.mark.slow
def test_hostile_label_values_give_well_formed_csvs_readable_by_others(tmp_path, local_prometheus_factory):
    """Identities from Prometheus labels with a line break before a formula, a comma and quotes: every CSV
    parses with csv and pandas to the header's 11 columns, values intact; files get 0666 less the umask."""
    formula = "ok\n=1+2+cmd|' /C calc'!A0"
    teams = (formula, "a, b", 'say "hi"', "cr\r=1+1", "team-c")
    prom = local_prometheus_factory(worked_example_metrics(teams))
    defs = make_defs(tmp_path, prom.url, "sqlite:///data/search.db")
    previous = os.umask(0o002)
    try:
        assert materialize_range(defs, "search", date(2026, 2, 1), date(2026, 2, 1)).success
    finally:
        os.umask(previous)

    out = tmp_path / "out"
    for path in (out / "search-prod_2026-02-01.csv", out / "monthly" / "search-prod_2026-02-01.csv"):
        assert oct(path.stat().st_mode & 0o777) == "0o664"
        rows = read_csv(path)
        with path.open(newline="") as fh:
            assert {len(r) for r in csv.reader(fh)} == {11}
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        assert frame.shape == (len(rows), 11)
        assert frame.to_dict("records") == rows
        broker = sorted(r["identity_id"] for r in rows if r["product_type"] == "broker_hours")
        assert broker == sorted(teams)
        assert {r["amount"] for r in rows if r["product_type"] == "broker_hours"} == {"36.0000"}
    # the break is inside the quoted identity: one cell, which starts with "ok", not with the formula
    text = (out / "search-prod_2026-02-01.csv").read_bytes().decode()
    assert f'compute,broker_hours,"{formula}",shared,36.0000,even_split,even_split_allocation\n' in text
    assert 'compute,broker_hours,"cr\r=1+1",shared,36.0000,' in text
