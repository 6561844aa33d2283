"""confluent_cloud end to end: Confluent Cloud simulator + real Prometheus → Dagster assets → store → CSVs.

The retry backoff for 5xx is shortened with the test-only environment variable
``CHARGEBACK_CCLOUD_BACKOFF_SCALE`` (read by ConfluentCloudEcosystem); provider-given 429 waits
(``Retry-After``) are honoured in full, which the fault test measures on the simulator's request log.
"""

from __future__ import annotations

import csv
import re
import time
from datetime import date, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import httpx
import pytest
import yaml

from chargeback_dagster.config import load_config
from chargeback_dagster.defs.build import build_definitions
from chargeback_dagster.devtools.ccloud_simulator import (
    DEFAULT_KEY,
    DEFAULT_SECRET,
    CCloudSimulator,
    Faults,
    OrgSpec,
    SimulatedOrg,
)
from chargeback_dagster.devtools.local_run import materialize_range
from chargeback_dagster.ecosystems.confluent_cloud.billing import collapse_tiers, map_cost_row
from chargeback_dagster.money import format_units, round4, to_units
from chargeback_dagster.store import TenantStore
from chargeback_dagster_tests.store_helpers import fact_rows, total_units

START = date(2026, 1, 1)
DAYS = 4
DATES = [START + timedelta(days=i) for i in range(DAYS)]
SPEC = OrgSpec(
    environments=2, clusters_per_env=3, start_date=START, days=DAYS, malformed_row=True, string_amounts=True
)
TENANT = "ccloud"


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


@pytest.fixture(autouse=True)
def short_backoff(monkeypatch):
    monkeypatch.setenv("CHARGEBACK_CCLOUD_BACKOFF_SCALE", "0.01")


def write_config(root: Path, sim_url: str, prometheus_url: str) -> Path:
    config = {
        "tenants": {
            TENANT: {
                "ecosystem": "confluent_cloud",
                "tenant_id": "acme",
                "partitions_start_date": "2025-12-01",
                "storage": {"connection_string": "sqlite:///data/ccloud.db"},
                "plugin_settings": {
                    "ccloud_api": {
                        "key": DEFAULT_KEY,
                        "secret": DEFAULT_SECRET,
                        "base_url": sim_url,
                        "flink_url_template": sim_url,
                    },
                    "billing_api": {"days_per_query": 3},
                    "flink": [{"region_id": "us-east-1", "key": DEFAULT_KEY, "secret": DEFAULT_SECRET}],
                    "metrics": {"url": prometheus_url},
                    "emitters": [{"type": "csv", "params": {"output_dir": "out"}}],
                },
            }
        }
    }
    path = root / "chargeback.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def open_store(config_path: Path) -> TenantStore:
    tenant = load_config(config_path).tenants[TENANT]
    return TenantStore.open(
        tenant.database_url, tenant_name=TENANT, ecosystem=tenant.ecosystem, tenant_id=tenant.tenant_id
    )


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def query_range_count(prometheus_url: str) -> int:
    """Prometheus' own counter of /api/v1/query_range requests."""
    text = httpx.get(f"{prometheus_url}/metrics").text
    total = 0
    for line in text.splitlines():
        if line.startswith("prometheus_http_requests_total{") and 'handler="/api/v1/query_range"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def expected_lines(org: SimulatedOrg, d: date):
    return collapse_tiers(map_cost_row(item, d, "acme", _NullLog()) for item in org.cost_lines(d, d))


def expected_lines_between(org: SimulatedOrg, d: date):
    items = org.cost_lines(d, d + timedelta(days=1))
    return collapse_tiers(map_cost_row(item, d, "acme", _NullLog()) for item in items)


class _NullLog:
    def warning(self, *a, **k):
        pass


def check(result, name):
    return {e.check_name: e for e in result.get_asset_check_evaluations()}[name]


def db_snapshot(store: TenantStore) -> dict:
    return {
        "billing": {d: [(ln.key, ln.total_cost) for ln in store.billing.lines(d)] for d in DATES},
        "chargeback": {d: sorted(fact_rows(store, d)) for d in DATES},
    }


@pytest.mark.slow
def test_multi_day_range_end_to_end(tmp_path, org, prometheus, sim):
    from chargeback_dagster import pipeline

    config_path = write_config(tmp_path, sim.url, prometheus.url)
    defs = build_definitions(load_config(config_path))
    before = query_range_count(prometheus.url)
    result = materialize_range(defs, TENANT, DATES[0], DATES[-1])
    assert result.success
    prom_requests = query_range_count(prometheus.url) - before
    assert check(result, "reconciles_to_billing").passed
    assert check(result, "all_dates_calculated").passed
    assert check(result, "all_metrics_fetched").passed

    # billing windows of 3 days: [01-01, 01-04), [01-04, 01-05)
    costs = [q for _, _, _, q, _ in sim.requests_to("/billing/v1/costs")]
    assert [re.findall(r"(?:start|end)_date=([\d-]+)", q) for q in costs] == [
        ["2026-01-01", "2026-01-04"],
        ["2026-01-04", "2026-01-05"],
    ]

    # Prometheus: one range query per metric key for all clusters/pools and up to BATCH_DAYS consecutive
    # days (sliced by day afterwards): 4 keys × ⌈N / BATCH_DAYS⌉, independent of the M = 7 Kafka clusters
    # (never O(N·M); at most one query per key per day).
    m_clusters = len(org.clusters)
    assert m_clusters == 7
    assert DAYS <= pipeline.BATCH_DAYS
    assert prom_requests == 4

    store = open_store(config_path)
    out = tmp_path / "out"
    midday = org.midday_cluster
    for d in DATES:
        lines = store.billing.lines(d)
        # every provider line stored once (tiers collapsed, malformed rows kept), exact Decimal totals
        assert sum(ln.total_cost for ln in lines) == org.billed_total(d)
        assert len(lines) == len(expected_lines_between(org, d))
        billed = sum(to_units(round4(ln.total_cost)) for ln in lines)
        assert total_units(store, d) == billed
        rows = read_csv(out / f"acme_{d}.csv")
        assert sum(to_units(Decimal(r["amount"])) for r in rows) == billed
        # batched metrics were split per cluster: stored sums equal the simulator's per-principal sums
        metrics = store.metrics.rows(d)
        for cluster in org.clusters:
            if not org.kafka_samples(d, cluster.id):
                continue
            stored = {
                r.labels["principal_id"]: r.value_sum for r in metrics.get((cluster.id, "bytes_in"), [])
            }
            if any(
                ln.resource_id == cluster.id and ln.product_type.startswith("KAFKA_NUM_CKU") for ln in lines
            ) or any(
                ln.resource_id == cluster.id and ln.product_type == "KAFKA_NETWORK_WRITE" for ln in lines
            ):
                assert stored == org.expected_bytes(d, cluster.id, "request")

    # decision D11: a Standard cluster's KAFKA_BASE goes evenly (sorted ids, the first ones get the extra
    # units) to its API-key owners and the principals in its bytes metrics, among them the service account
    # the simulator sends traffic from without a key on that cluster
    key_owner = {k.id: k.owner_id for k in org.api_keys}
    keyless_principals = 0
    for d in DATES:
        base_lines = [ln for ln in store.billing.lines(d) if ln.product_type == "KAFKA_BASE"]
        base_rows = [r for r in read_csv(out / f"acme_{d}.csv") if r["product_type"] == "KAFKA_BASE"]
        for base in base_lines:
            if midday is not None and base.resource_id == midday.id:
                continue  # part of its day goes to UNALLOCATED
            owners = {k.owner_id for k in org.api_keys if k.resource_id == base.resource_id}
            principals = {key_owner.get(p, p) for p in org.kafka_principals(base.resource_id)}
            keyless_principals += len(principals - owners)
            merged = sorted(owners | principals)
            units, extra = divmod(to_units(round4(base.total_cost)), len(merged))
            expected = [
                (i, format_units(units + (n < extra)), "no_metrics_located") for n, i in enumerate(merged)
            ]
            got = [
                (r["identity_id"], r["amount"], r["allocation_detail"])
                for r in base_rows
                if r["resource_id"] == base.resource_id
            ]
            assert sorted(got) == expected, (d, base.resource_id)
    assert keyless_principals >= len(DATES)  # the check above covers principals without a key

    # the cluster created at 12:00 on day 2: half its lines go to UNALLOCATED / resource_inactive_fraction
    d2 = DATES[1]
    rows = read_csv(out / f"acme_{d2}.csv")
    inactive = [
        r
        for r in rows
        if r["resource_id"] == midday.id and r["allocation_detail"] == "resource_inactive_fraction"
    ]
    assert inactive and all(r["identity_id"] == "UNALLOCATED" for r in inactive)
    # the malformed row (day 1) is kept and charged to UNALLOCATED as an unknown type
    d1_rows = read_csv(out / f"acme_{DATES[0]}.csv")
    malformed = [r for r in d1_rows if r["product_type"] == "MALFORMED_BILLING_ROW"]
    assert [(r["identity_id"], r["allocation_method"], r["amount"]) for r in malformed] == [
        ("UNALLOCATED", "unknown", "0.5000")
    ]

    # decision D12: the daily PROMO_CREDIT −20.00 (no resource, no environment) is spread over the day's
    # identities in proportion to their cost (UNALLOCATED takes no share); no negative UNALLOCATED row
    unallocated_cost_days = 0
    for d in DATES:
        credit_units = sum(
            to_units(round4(ln.total_cost))
            for ln in store.billing.lines(d)
            if ln.product_type == "PROMO_CREDIT"
        )
        assert credit_units == -200_000
        rows = read_csv(out / f"acme_{d}.csv")
        promo = [r for r in rows if r["product_type"] == "PROMO_CREDIT"]
        assert {(r["allocation_method"], r["allocation_detail"]) for r in promo} == {
            ("credit", "credit_proportional_to_org_cost")
        }
        assert sum(to_units(Decimal(r["amount"])) for r in promo) == credit_units
        costs: dict[str, int] = {}
        for r in rows:
            if r["product_type"] != "PROMO_CREDIT":
                costs[r["identity_id"]] = costs.get(r["identity_id"], 0) + to_units(Decimal(r["amount"]))
        weights = {i: u for i, u in costs.items() if u > 0 and i != "UNALLOCATED"}
        assert len(weights) > 10
        unallocated_cost_days += costs.get("UNALLOCATED", 0) > 0
        shares = {r["identity_id"]: to_units(Decimal(r["amount"])) for r in promo}
        assert shares.keys() == weights.keys()
        for i, u in shares.items():
            assert abs(u - Fraction(credit_units * weights[i], sum(weights.values()))) < 1, (d, i)
        assert not [r for r in rows if r["identity_id"] == "UNALLOCATED" and Decimal(r["amount"]) < 0]
    assert unallocated_cost_days >= 2  # day 1 (malformed row) and day 2 (inactive fraction)

    # re-materialization is idempotent: identical CSV bytes and database rows
    files = {p.name: p.read_bytes() for p in out.glob("*.csv")}
    snapshot = db_snapshot(store)
    assert len(files) == DAYS
    again = materialize_range(defs, TENANT, DATES[0], DATES[-1])
    assert again.success
    assert {p.name: p.read_bytes() for p in out.glob("*.csv")} == files
    assert db_snapshot(store) == snapshot
    store.dispose()


@pytest.mark.slow
def test_rate_limits_and_server_errors_are_retried(tmp_path, org, prometheus, sim):
    config_path = write_config(tmp_path, sim.url, prometheus.url)
    defs = build_definitions(load_config(config_path))
    sim.faults = Faults(rate_limit_burst=3, rate_limit_seconds=1, server_errors=2, paths=("/billing/",))
    started = time.monotonic()
    result = materialize_range(defs, TENANT, DATES[0], DATES[-1])
    elapsed = time.monotonic() - started
    assert result.success

    log = sim.requests_to("/billing/v1/costs")
    statuses = [status for *_, status in log]
    assert statuses == [429, 429, 429, 503, 503, 200, 200]
    # Retry-After: 1 is honoured: every retry after a 429 comes ≥ 1 s × 1.1 later
    gaps = [log[i + 1][0] - log[i][0] for i in range(len(log) - 1)]
    assert all(g >= 1.09 for g in gaps[:3]), gaps
    # the 503 backoff (16–17 s and 32–33 s unscaled) is scaled by CHARGEBACK_CCLOUD_BACKOFF_SCALE=0.01
    assert all(g < 1.0 for g in gaps[3:5]), gaps
    assert elapsed >= 3.3

    store = open_store(config_path)
    for d in DATES:
        lines = store.billing.lines(d)
        keys = [ln.key + (ln.product_category,) for ln in lines]
        assert len(keys) == len(set(keys))  # no duplicates
        assert len(lines) == len(expected_lines_between(org, d))  # none lost
        assert sum(ln.total_cost for ln in lines) == org.billed_total(d)
    assert check(result, "reconciles_to_billing").passed
    store.dispose()


@pytest.mark.slow
def test_api_down_fails_billing_and_keeps_earlier_results(tmp_path, org, prometheus, sim):
    config_path = write_config(tmp_path, sim.url, prometheus.url)
    defs = build_definitions(load_config(config_path))
    assert materialize_range(defs, TENANT, DATES[0], DATES[1]).success
    out = tmp_path / "out"
    files = {p.name: p.read_bytes() for p in out.glob("*.csv")}
    store = open_store(config_path)
    snapshot = db_snapshot(store)

    sim.faults = Faults(down=True, paths=("/billing/",))
    result = materialize_range(defs, TENANT, DATES[0], DATES[2])
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert [f.step_key.endswith("billing") for f in failures] == [True]
    error = failures[0].event_specific_data.error.to_string()
    assert "GET /billing/v1/costs failed after 6 attempts: HTTP 503" in error
    assert len(sim.requests_to("/billing/v1/costs")) == 1 + 6  # first run's window + 6 attempts

    # nothing earlier is damaged: same CSVs, same billing and chargeback rows; day 3 never written
    assert {p.name: p.read_bytes() for p in out.glob("*.csv")} == files
    assert db_snapshot(store) == snapshot
    assert not (out / f"acme_{DATES[2]}.csv").exists()
    store.dispose()


def gathered_store(tmp_path: Path, sim, prometheus_url: str, dates: list[date]):
    from chargeback_dagster import pipeline
    from chargeback_dagster.ecosystems.base import GatherContext
    from chargeback_dagster.ecosystems.registry import ecosystem_for

    config_path = write_config(tmp_path, sim.url, prometheus_url)
    tenant = load_config(config_path).tenants[TENANT]
    eco = ecosystem_for(tenant)
    store = open_store(config_path)
    ctx = GatherContext(tenant, _NullLogger(), pipeline.now_utc(), lambda: None)
    pipeline.gather_billing(store, eco, dates, ctx)
    pipeline.gather_inventory(store, eco, dates, ctx, -1)
    return store, eco


class _NullLogger:
    def __getattr__(self, name):
        return lambda *a, **k: None


@pytest.mark.parametrize("n_days", [2, 4])
def test_prometheus_requests_are_o_of_days_not_days_times_clusters(tmp_path, org, prometheus, sim, n_days):
    from chargeback_dagster import pipeline
    from chargeback_dagster.sources.prometheus import PrometheusClient

    dates = DATES[:n_days]
    store, eco = gathered_store(tmp_path, sim, prometheus.url, dates)
    client = PrometheusClient(prometheus.url)
    summary = pipeline.fetch_usage_metrics(store, eco, dates, lambda: client, 3600, pipeline.now_utc())
    # groups = (date, resource, key): 7 Kafka clusters (the deleted one on its days) × 2 keys + 2 pools × 2
    assert summary.fetched >= n_days * (6 * 2 + 2 * 2)
    # one query per key for the whole range (≤ BATCH_DAYS days), whatever M is
    assert client.request_count == 4
    assert not summary.failures
    # resources without any series get an ok, empty result
    d = dates[0]
    statuses = store.metrics.fetch_status(d)
    assert all(status == "ok" for status, _, _ in statuses.values())
    store.dispose()


def test_a_failed_batched_query_fails_every_group_of_that_key_and_day(tmp_path, org, sim):
    import httpx as _httpx

    from chargeback_dagster import pipeline
    from chargeback_dagster.sources.prometheus import PrometheusClient

    def answer(request: _httpx.Request) -> _httpx.Response:
        form = dict(x.split("=", 1) for x in request.content.decode().split("&"))
        if "response_bytes" in form["query"]:
            return _httpx.Response(400, json={"status": "error", "errorType": "bad_data", "error": "boom"})
        return _httpx.Response(
            200, json={"status": "success", "data": {"resultType": "matrix", "result": []}}
        )

    dates = DATES[:1]
    store, eco = gathered_store(tmp_path, sim, "http://prometheus.test", dates)
    client = PrometheusClient("http://prometheus.test", transport=_httpx.MockTransport(answer))
    summary = pipeline.fetch_usage_metrics(store, eco, dates, lambda: client, 3600, pipeline.now_utc())
    assert client.request_count == 4
    statuses = store.metrics.fetch_status(dates[0])
    failed = {rid for (rid, key), (status, _, _) in statuses.items() if status == "failed"}
    out_keys = {rid for (rid, key) in statuses if key == "bytes_out"}
    assert failed == out_keys and len(out_keys) >= 6
    assert all(statuses[(rid, "bytes_in")][0] == "ok" for rid in out_keys)
    assert len(summary.failures) == len(out_keys)
    store.dispose()


def test_batched_queries_cover_batch_days_and_fall_back_per_day(tmp_path, org, prometheus, sim, monkeypatch):
    """Multi-day batched queries are sliced into days exactly; a failed multi-day query is retried per day."""
    from chargeback_dagster import pipeline
    from chargeback_dagster.sources.prometheus import MetricsQueryError, PrometheusClient

    monkeypatch.setattr(pipeline, "BATCH_DAYS", 3)  # 4 days → chunks of 3 and 1 days

    class MultiDayBytesOutFails(PrometheusClient):
        def query_range(self, q):
            if "response_bytes" in q.query and q.end - q.start > timedelta(days=1):
                raise MetricsQueryError("execution: query processing would load too many samples")
            return super().query_range(q)

    store, eco = gathered_store(tmp_path, sim, prometheus.url, DATES)
    client = MultiDayBytesOutFails(prometheus.url)
    summary = pipeline.fetch_usage_metrics(store, eco, DATES, lambda: client, 3600, pipeline.now_utc())
    assert not summary.failures
    # chunk 1: bytes_in + 2 Flink keys over 3 days, bytes_out once per day; chunk 2: 4 keys for 1 day
    assert client.request_count == 3 + 3 + 4
    checked = 0
    for d in DATES:
        metrics = store.metrics.rows(d)
        for cluster in org.clusters:
            for key, direction in (("bytes_in", "request"), ("bytes_out", "response")):
                rows = metrics.get((cluster.id, key))
                if rows is None:
                    continue
                assert {r.labels["principal_id"]: r.value_sum for r in rows} == org.expected_bytes(
                    d, cluster.id, direction
                )
                checked += 1
        for pool in org.flink_pools:
            rows = metrics.get((pool["id"], "flink_cfu_primary"))
            if rows is not None:
                expected = org.expected_cfu(d, pool["id"])
                assert {r.labels["flink_statement_name"]: r.value_sum for r in rows} == expected
    assert checked >= len(DATES) * 6 * 2
    store.dispose()
