"""Topic attribution end to end: Confluent Cloud simulator + real Prometheus → Dagster → topic CSV, view."""

from __future__ import annotations

import csv
import sqlite3
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import httpx
import pytest
import yaml

from chargeback_dagster.config import load_config
from chargeback_dagster.defs import maintenance
from chargeback_dagster.defs.build import build_definitions
from chargeback_dagster.devtools.ccloud_simulator import (
    DEFAULT_KEY,
    DEFAULT_SECRET,
    CCloudSimulator,
    OrgSpec,
    SimulatedOrg,
)
from chargeback_dagster.devtools.local_prometheus import LocalPrometheus
from chargeback_dagster.devtools.local_run import materialize_range
from chargeback_dagster.money import round4_units, to_units
from chargeback_dagster.outputs.prometheus import midnight_ms
from chargeback_dagster.store import TenantStore

START = date(2026, 1, 1)
DATES = [START, START + timedelta(days=1)]
SPEC = OrgSpec(environments=1, clusters_per_env=2, start_date=START, days=len(DATES))
TENANT = "ccloud"
ATTRIBUTED = {
    "KAFKA_NETWORK_WRITE",
    "KAFKA_NETWORK_READ",
    "KAFKA_STORAGE",
    "KAFKA_NUM_CKU",
    "KAFKA_NUM_CKUS",
    "KAFKA_PARTITION",
    "KAFKA_BASE",
}


@pytest.fixture(scope="module")
def org() -> SimulatedOrg:
    return SimulatedOrg(SPEC)


@pytest.fixture(scope="module")
def prometheus(org, local_prometheus_factory):
    return local_prometheus_factory(org.openmetrics())


@pytest.fixture
def sim(org):
    with CCloudSimulator(org) as server:
        yield server


def write_config(root: Path, sim_url: str, prometheus_url: str, attribution: bool) -> Path:
    settings: dict = {
        "ccloud_api": {"key": DEFAULT_KEY, "secret": DEFAULT_SECRET, "base_url": sim_url},
        "metrics": {"url": prometheus_url},
        "emitters": [{"type": "csv", "params": {"output_dir": "out"}}],
    }
    if attribution:
        settings["topic_attribution"] = {
            "enabled": True,
            "emitters": [
                {"type": "csv", "params": {"output_dir": "topics"}},
                {"type": "prometheus", "params": {"output_dir": "topics_om"}},  # topic_attr_acme_<d>.om
            ],
        }
    tenant = {
        "ecosystem": "confluent_cloud",
        "tenant_id": "acme",
        "partitions_start_date": "2025-12-01",
        "storage": {"connection_string": "sqlite:///data/ccloud.db"},
        "plugin_settings": settings,
    }
    path = root / "chargeback.yaml"
    path.write_text(yaml.safe_dump({"tenants": {TENANT: tenant}}, sort_keys=False))
    return path


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def query_range_count(prometheus_url: str) -> int:
    """Prometheus' own counter of /api/v1/query_range requests."""
    total = 0
    for line in httpx.get(f"{prometheus_url}/metrics").text.splitlines():
        if line.startswith("prometheus_http_requests_total{") and 'handler="/api/v1/query_range"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def check(result, name):
    return {e.check_name: e for e in result.get_asset_check_evaluations()}[name]


@pytest.mark.slow
def test_topic_csv_sums_to_the_billing_lines_and_the_view_agrees(tmp_path, org, prometheus, sim):
    on, off = tmp_path / "on", tmp_path / "off"
    on.mkdir()
    off.mkdir()
    defs = build_definitions(load_config(write_config(on, sim.url, prometheus.url, attribution=True)))
    before = query_range_count(prometheus.url)
    result = materialize_range(defs, TENANT, DATES[0], DATES[-1])
    assert result.success
    requests_on = query_range_count(prometheus.url) - before
    assert check(result, "topic_attribution_reconciles").passed
    assert check(result, "topic_attribution_complete").passed

    tenant = load_config(on / "chargeback.yaml").tenants[TENANT]
    store = TenantStore.open(
        tenant.database_url, tenant_name=TENANT, ecosystem="confluent_cloud", tenant_id="acme"
    )
    view_sums: dict[tuple, int] = defaultdict(int)
    with sqlite3.connect(on / "data" / "ccloud.db") as db:
        for d, cluster, product_type, units in db.execute(
            "SELECT date, cluster_resource_id, product_type, amount_units FROM v_topic_attribution"
        ):
            view_sums[(d, cluster, product_type)] += units

    checked = 0
    for d in DATES:
        rows = read_csv(on / "topics" / f"topic_attr_acme_{d}.csv")
        assert list(rows[0]) == [
            "ecosystem", "tenant_id", "timestamp", "env_id", "cluster_resource_id", "topic_name",
            "product_category", "product_type", "attribution_method", "amount",
        ]  # fmt: skip
        csv_sums: dict[tuple, int] = defaultdict(int)
        for r in rows:
            assert r["timestamp"] == f"{d}T00:00:00+00:00"
            assert r["topic_name"] != "_confluent-command"  # excluded by the default patterns
            csv_sums[(str(d), r["cluster_resource_id"], r["product_type"])] += to_units(Decimal(r["amount"]))
        billed: dict[tuple, int] = defaultdict(int)
        for line in store.billing.lines(d):
            if line.resource_id.startswith("lkc-") and line.product_type in ATTRIBUTED:
                billed[(str(d), line.resource_id, line.product_type)] += round4_units(line.total_cost)
        # every attributable line of every cluster is split, to the unit, and the view shows the same rows
        assert csv_sums == billed
        assert {k: v for k, v in view_sums.items() if k[0] == str(d)} == billed
        checked += len(billed)

        # network write by the simulator's received bytes per topic: each within one unit of its exact share
        for cluster in org.clusters:
            key = (str(d), cluster.id, "KAFKA_NETWORK_WRITE")
            if key not in billed:
                continue
            received = org.topic_samples(d, cluster.id, "received_bytes")
            weights = {t: sum(v for _, v in s) for t, s in received.items() if t != "_confluent-command"}
            shares = {
                r["topic_name"]: to_units(Decimal(r["amount"]))
                for r in rows
                if r["cluster_resource_id"] == cluster.id and r["product_type"] == "KAFKA_NETWORK_WRITE"
            }
            assert set(shares) == set(weights)
            for topic, units in shares.items():
                exact = Fraction(billed[key]) * weights[topic] / sum(weights.values())
                assert abs(units - exact) < 1
    assert checked >= 4

    # the prometheus topic emitter: promtool loads its files into a real Prometheus, and the topic series
    # add up per cluster and product type to the same billed amounts
    files = [on / "topics_om" / f"topic_attr_acme_{d}.om" for d in DATES]
    with LocalPrometheus(None, tmp_path / "om_tsdb", openmetrics_files=files) as loaded:
        for d in DATES:
            answer = httpx.post(
                f"{loaded.url}/api/v1/query",
                data={
                    "query": "sum by (resource, product_type) (chargeback_topic_attribution_amount)",
                    "time": midnight_ms(d) / 1000,
                },
            ).json()["data"]["result"]
            series = {
                (str(d), x["metric"]["resource"], x["metric"]["product_type"]): to_units(
                    Decimal(x["value"][1]).quantize(Decimal("0.0001"))
                )
                for x in answer
            }
            assert series == {k: v for k, v in view_sums.items() if k[0] == str(d)}

    # retention: topic rows have their own window (90 days) beside the tenant's (250 days)
    deleted = maintenance.purge(store, 250, datetime(2026, 4, 2, 12, tzinfo=UTC), topic_retention_days=90)
    assert deleted["billing"] == 0 and deleted["topic_attribution_facts"] > 0
    assert {r[0] for r in store.topic_attribution.rows(DATES[0], DATES[-1] + timedelta(days=1))} == {DATES[1]}

    # attribution off: no topic asset, no topic files, and the chargeback CSVs are byte-identical
    defs_off = build_definitions(load_config(write_config(off, sim.url, prometheus.url, attribution=False)))
    assert not any(k.path[-1] == "topic_attribution" for k in defs_off.resolve_all_asset_keys())
    before = query_range_count(prometheus.url)
    assert materialize_range(defs_off, TENANT, DATES[0], DATES[-1]).success
    requests_off = query_range_count(prometheus.url) - before
    # per-topic metrics: one query per metric for all clusters and both days, plus discovery's three
    # queries per cluster listed by the API now (never one per cluster and day)
    listed = [
        r for r in store.inventory.resources() if r.resource_type == "kafka_cluster" and r.status == "active"
    ]
    assert len(listed) == 2
    assert requests_on == requests_off + 3 + 3 * len(listed)
    assert not (off / "topics").exists()
    for d in DATES:
        assert (on / "out" / f"acme_{d}.csv").read_bytes() == (off / "out" / f"acme_{d}.csv").read_bytes()
