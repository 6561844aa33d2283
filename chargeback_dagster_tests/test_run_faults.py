"""Faults inside a run (issue 12 §4) against a real Prometheus: usage and billing quantities that overflow
when summed are skipped and reported, never failing the run.

Generic tenant (the one of test_generic_e2e) on 2026-02-01, with bad series added:

| series | samples (24, hourly) | effect |
|---|---|---|
| egress_bytes | 1e308 each | the `egress` quantity sums to 2.4e309 (beyond the float range): line skipped |
| stored_bytes_by_team{team="team-c"} | 1e308 each | team-c's usage sum overflows: row skipped |
| stored_bytes_by_team{team="team-d"} | +Inf each | non-finite samples: skipped at parsing (as before) |

Self-managed Kafka tenant on 2026-02-01 (usage fetched by the batched multi-day path): bob's bytes-in
counter resets every hour at 6e307, so each hourly increase is finite but the day's sum is not; one storage
sample of 1e300 makes a finite storage cost no database can store."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from chargeback_dagster import pipeline
from chargeback_dagster.config import load_config
from chargeback_dagster.defs.build import build_definitions
from chargeback_dagster.devtools.ccloud_simulator import CCloudSimulator, Faults, OrgSpec, SimulatedOrg
from chargeback_dagster.devtools.local_run import materialize_range
from chargeback_dagster.devtools.openmetrics import OpenMetricsWriter
from chargeback_dagster.ecosystems.confluent_cloud.billing import COSTS_PATH
from chargeback_dagster.ecosystems.registry import ecosystem_for
from chargeback_dagster.sources.prometheus import Series, reduce_series
from chargeback_dagster.store import TenantStore
from chargeback_dagster_tests import test_confluent_billing as confluent
from chargeback_dagster_tests import test_self_managed_kafka as kafka
from chargeback_dagster_tests.test_generic_e2e import hours, make_defs, read_csv
from chargeback_dagster_tests.test_self_managed_kafka import IN, OUT

D = date(2026, 2, 1)
GIB = 2**30


def overflowing_metrics() -> str:
    w = OpenMetricsWriter()
    w.add("storage_bytes", {}, [(t, 100 * GIB) for t in hours(D)])  # 2400 GiB-hours -> 0.24
    w.add("egress_bytes", {}, [(t, 1e308) for t in hours(D)])
    for team, value in (("team-a", 3), ("team-b", 1), ("team-c", 1e308), ("team-d", float("inf"))):
        w.add("stored_bytes_by_team", {"team": team}, [(t, value) for t in hours(D)])
        w.add("requests", {"team": team}, [(t, 1) for t in hours(D)])
    return w.text()


@pytest.fixture(scope="module")
def prometheus(local_prometheus_factory):
    return local_prometheus_factory(overflowing_metrics())


def test_generic_overflowing_usage_and_quantity_are_skipped_and_reported(tmp_path, prometheus, caplog):
    # Prometheus stores and returns these values as they are
    body = httpx.post(
        f"{prometheus.url}/api/v1/query",
        data={"query": "stored_bytes_by_team or egress_bytes", "time": "2026-02-01T00:00:00Z"},
    ).json()
    got = {r["metric"].get("team", r["metric"]["__name__"]): r["value"][1] for r in body["data"]["result"]}
    assert got == {
        "team-a": "3",
        "team-b": "1",
        "team-c": "1e+308",
        "team-d": "+Inf",
        "egress_bytes": "1e+308",
    }
    defs = make_defs(tmp_path, prometheus.url, "sqlite:///data/search.db")
    with caplog.at_level(logging.WARNING):
        result = materialize_range(defs, "search", D, D)
    assert result.success
    rows = read_csv(tmp_path / "out" / f"search-prod_{D}.csv")
    # no egress line (it would have been 2.4e309 bytes); storage 0.24 split 3:1 between team-a and team-b
    # (team-c's usage overflows, team-d's is +Inf); broker hours 180 split evenly over the day's teams
    assert {(r["product_type"], r["identity_id"]): r["amount"] for r in rows} == {
        ("broker_hours", "team-a"): "45.0000",
        ("broker_hours", "team-b"): "45.0000",
        ("broker_hours", "team-c"): "45.0000",
        ("broker_hours", "team-d"): "45.0000",
        ("storage", "team-a"): "0.1800",
        ("storage", "team-b"): "0.0600",
    }
    messages = [r.getMessage().split(" | ")[-1] for r in caplog.records]  # without the run's log prefix
    assert (
        "Billing line egress for 2026-02-01 skipped: its Prometheus samples sum beyond the float range"
        in messages
    )
    assert (
        "Usage of {'team': 'team-c'} on 2026-02-01 skipped: its 24 samples sum beyond the float range"
        in messages
    )


def test_reduction_keeps_a_sum_that_only_overflows_part_way():
    """fsum also overflows when just a partial sum does: 1e308 + 1e308 − 1e308 = 1e308 is kept (halved
    retry), 1e308 + 1e308 is skipped; both label sets of one day, one row left."""
    series = [
        Series({"team": "a"}, [(1.0, 1e308), (2.0, 1e308), (3.0, -1e308)]),
        Series({"team": "b"}, [(1.0, 1e308), (2.0, 1e308)]),
    ]
    assert reduce_series(series, D) == [({"team": "a"}, 1e308, 1e308, 3)]


# --- self_managed_kafka: the batched usage path (several days per query) and the cluster quantities --------
def sawtooth(d: date) -> list[tuple[datetime, float]]:
    """A bytes-in counter that climbs to 6e307 every hour and resets: increase() per hourly step is finite
    (≈ 6e307), but a day of them sums beyond the float range."""
    start = datetime(d.year, d.month, d.day, tzinfo=UTC) - timedelta(hours=1)
    return [(start + timedelta(minutes=m), (m % 60 + 1) * 1e306) for m in range(26 * 60)]


def kafka_metrics() -> str:
    w = OpenMetricsWriter()
    w.add(
        IN,
        {"broker": "1", "topic": "orders", "principal": "alice"},
        kafka.counter({D: 7 * GIB}),
        type="counter",
    )
    w.add(IN, {"broker": "2", "topic": "payments", "principal": "bob"}, sawtooth(D), type="counter")
    w.add(
        OUT,
        {"broker": "1", "topic": "orders", "principal": "alice"},
        kafka.counter({D: 5 * GIB}),
        type="counter",
    )
    w.add(
        OUT,
        {"broker": "2", "topic": "payments", "principal": "bob"},
        kafka.counter({D: 15 * GIB}),
        type="counter",
    )
    w.add("kafka_log_log_size", {"broker": "1", "topic": "orders"}, [(t, 50 * GIB) for t in hours(D)])
    # one finite but absurd size: the storage cost (≈ 9.3e286) is beyond any storable amount
    w.add("kafka_log_log_size", {"broker": "2", "topic": "payments"}, [(hours(D)[12], 1e300)])
    return w.text()


def test_self_managed_overflowing_usage_and_quantity_are_skipped_and_reported(
    tmp_path, local_prometheus_factory, caplog
):
    prom = local_prometheus_factory(kafka_metrics())
    config = load_config(kafka.write_config(tmp_path, {"onprem": kafka.plugin_settings(prom.url)}))
    with caplog.at_level(logging.WARNING):
        result = materialize_range(build_definitions(config), "onprem", D, D)
    assert result.success
    rows = read_csv(tmp_path / "out" / f"onprem_{D}.csv")
    # no ingress and no storage line; bob's bytes-in usage is skipped, his bytes-out usage still counts:
    # compute 7.20 split evenly over alice and bob, egress 0.40 by 5 : 15 GiB
    assert [(r["product_type"], r["identity_id"], r["amount"]) for r in rows] == [
        ("SELF_KAFKA_COMPUTE", "alice", "3.6000"),
        ("SELF_KAFKA_COMPUTE", "bob", "3.6000"),
        ("SELF_KAFKA_NETWORK_EGRESS", "alice", "0.1000"),
        ("SELF_KAFKA_NETWORK_EGRESS", "bob", "0.3000"),
    ]
    messages = [r.getMessage().split(" | ")[-1] for r in caplog.records]
    assert (
        "Billing line SELF_KAFKA_STORAGE for 2026-02-01 skipped: its cost 9.3132E+286 is beyond the largest "
        "storable amount 922337203685477.5807" in messages
    )
    assert (
        "Billing line SELF_KAFKA_NETWORK_INGRESS for 2026-02-01 skipped: its Prometheus samples sum beyond "
        "the float range" in messages
    )
    # 24 finite hourly increases (≈ 6e307 each) that only overflow when summed
    assert (
        "Usage of {'principal': 'bob'} on 2026-02-01 skipped: its 24 samples sum beyond the float range"
        in messages
    )


# --- Confluent Cloud: a cost row returned twice -------------------------------------------------------
# One simulated day: 29 cost rows, billed total 172.006750; pages capped at 12 rows (3 pages).
@pytest.mark.parametrize(
    ("faults", "repeated", "total_before"),
    [
        # every page ends with its first row again: rows 0, 12 and 24 twice (+130.08 before)
        (Faults(paths=(COSTS_PATH,), page_size_max=12, repeat_first_row=True), [0, 12, 24], "302.086750"),
        # pages 2 and 3 start one row early: the rows at the page boundaries (11, 22) twice
        (Faults(paths=(COSTS_PATH,), page_size_max=12, page_overlap=1), [11, 22], "173.201086"),
    ],
    ids=["same-page", "across-pages"],
)
def test_confluent_cost_row_returned_twice_is_counted_once(tmp_path, caplog, faults, repeated, total_before):
    org = SimulatedOrg(OrgSpec(start_date=date(2026, 1, 1), days=1, environments=1, clusters_per_env=1))
    day = org.days[0]
    rows = org.cost_lines(day, day + timedelta(days=1))
    assert (len(rows), org.billed_total(day)) == (29, Decimal("172.006750"))
    doubled = org.billed_total(day) + sum((Decimal(str(rows[i]["amount"])) for i in repeated), Decimal(0))
    assert doubled == Decimal(total_before)  # what the run stored before: the repeats summed as tiers
    with CCloudSimulator(org) as sim:
        sim.faults = faults
        tenant = confluent.make_tenant(tmp_path, sim.url)
        store = TenantStore.open(
            tenant.database_url, tenant_name="cc", ecosystem=tenant.ecosystem, tenant_id="acme"
        )
        with caplog.at_level(logging.WARNING):
            pipeline.gather_billing(store, ecosystem_for(tenant), [day], confluent.ctx_for(tenant))
        assert len(sim.requests_to(COSTS_PATH)) == 3
    assert sum((ln.total_cost for ln in store.billing.lines(day)), Decimal(0)) == Decimal("172.006750")
    warnings = [r.getMessage() for r in caplog.records if "returned more than once" in r.getMessage()]
    assert warnings == [
        f"Billing row {rows[i]['id']} returned more than once by the Costs API; counted once"
        for i in repeated
    ]
