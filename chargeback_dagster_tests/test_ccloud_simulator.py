"""The local Confluent Cloud simulator: determinism, published shapes, costs window, faults, metrics."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import httpx
import pytest

from chargeback_dagster.devtools.ccloud_simulator import (
    CCloudSimulator,
    Faults,
    OrgSpec,
    SimulatedOrg,
    build_parser,
)

D0 = date(2026, 2, 1)
KEY, SECRET = "SIMTESTKEY000001", "sim-test-secret"


@pytest.fixture(scope="module")
def org() -> SimulatedOrg:
    return SimulatedOrg(OrgSpec(start_date=D0, days=3, malformed_row=True))


@pytest.fixture(scope="module")
def server(org):
    with CCloudSimulator(
        org, key=KEY, secret=SECRET, flink_key="FLINKKEY", flink_secret="flink-secret"
    ) as sim:
        yield sim


@pytest.fixture
def sim(server):
    server.faults = Faults()
    yield server
    server.faults = Faults()


@pytest.fixture
def http(sim):
    with httpx.Client(base_url=sim.url, auth=(KEY, SECRET)) as client:
        yield client


def get_json(http: httpx.Client, path: str, **params) -> dict:
    r = http.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


# --- org generation


def test_deterministic_for_a_seed():
    a, b = SimulatedOrg(OrgSpec(seed=3)), SimulatedOrg(OrgSpec(seed=3))
    c = SimulatedOrg(OrgSpec(seed=4))
    span = (a.spec.start_date, a.spec.end_date)
    assert a.cost_lines(*span) == b.cost_lines(*span)
    assert a.openmetrics() == b.openmetrics()
    assert a.api_api_keys() == b.api_api_keys()
    assert a.api_statements(a.org_id, a.environments[0]["id"]) == b.api_statements(
        b.org_id, b.environments[0]["id"]
    )
    assert [e["id"] for e in a.environments] != [e["id"] for e in c.environments]
    assert a.cost_lines(*span) != c.cost_lines(*span)


def test_org_layout(org):
    spec = org.spec
    assert len(org.environments) == spec.environments
    assert len(org.live_clusters()) == spec.environments * spec.clusters_per_env
    assert all(e["id"].startswith("env-") for e in org.environments)
    assert all(c.id.startswith("lkc-") for c in org.clusters)
    assert len({c.id for c in org.clusters}) == len(org.clusters)
    midday = org.midday_cluster
    assert midday is not None and midday.created_at == datetime(2026, 2, 2, 12, tzinfo=UTC)
    deleted = org.deleted_cluster
    assert deleted is not None and deleted.deleted_at == datetime(2026, 2, 2, 18, tzinfo=UTC)
    assert len(org.service_accounts) == 10 and all(s["id"].startswith("sa-") for s in org.service_accounts)
    assert len(org.users) == 3 and all(u["id"].startswith("u-") for u in org.users)
    owners = {k.owner_id for k in org.api_keys}
    assert any(o.startswith("sa-") for o in owners) and any(o.startswith("u-") for o in owners)
    assert {k.resource_id[:4] for k in org.api_keys} == {"lkc-", "lsrc"}
    modes = Counter(c["mode"] for c in org.connectors if c["deleted_at"] is None)
    assert {"KAFKA_API_KEY", "SERVICE_ACCOUNT", "MASKED"} <= set(modes)
    masked = next(c for c in org.connectors if c["mode"] == "MASKED")
    assert masked["config"]["kafka.api.key"] == "****"
    real = next(c for c in org.connectors if c["mode"] == "KAFKA_API_KEY" and c["deleted_at"] is None)
    assert real["config"]["kafka.api.key"] in {k.id for k in org.live_api_keys()}


def test_cost_lines_mix(org):
    lines = org.cost_lines(D0, D0 + timedelta(days=3))
    types = {line["line_type"] for line in lines}
    expected_types = [
        "KAFKA_NUM_CKUS",
        "KAFKA_NUM_CKU",
        "KAFKA_NETWORK_READ",
        "KAFKA_NETWORK_WRITE",
        "KAFKA_BASE",
        "KAFKA_PARTITION",
        "KAFKA_STORAGE",
        "SCHEMA_REGISTRY",
        "GOVERNANCE_BASE",
        "CONNECT_CAPACITY",
        "CONNECT_NUM_TASKS",
        "CONNECT_THROUGHPUT",
        "KSQL_NUM_CSU",
        "KSQL_NUM_CSUS",
        "FLINK_NUM_CFU",
        "AUDIT_LOG_READ",
        "SUPPORT",
        "CLUSTER_LINKING_PER_LINK",
        "CLUSTER_LINKING_READ",
        "CLUSTER_LINKING_WRITE",
        "TABLEFLOW_DATA_PROCESSED",
        "TABLEFLOW_NUM_TOPICS",
        "TABLEFLOW_STORAGE",
        "KAFKA_REST_PRODUCE",
        "PROMO_CREDIT",
    ]
    for t in expected_types:
        assert t in types, t
    promo = [line for line in lines if line["line_type"] == "PROMO_CREDIT"]
    assert all(line["amount"] < 0 and "resource" not in line for line in promo)
    day0 = [
        line
        for line in lines
        if line["start_date"] == D0.isoformat() and isinstance(line.get("resource"), dict)
    ]
    keys = Counter((line["resource"]["id"], line["line_type"]) for line in day0)
    tiered = [k for k, n in keys.items() if n > 1]
    assert {t for _, t in tiered} == {"KAFKA_NETWORK_READ", "KAFKA_NETWORK_WRITE"}
    read = [line for line in day0 if (line["resource"]["id"], line["line_type"]) == tiered[0]]
    assert len({(line["price"], line.get("network_access_type")) for line in read}) == 2
    malformed = [line for line in lines if "resource" in line and not isinstance(line["resource"], dict)]
    assert len(malformed) == 1
    rest = next(line for line in lines if line["line_type"] == "KAFKA_REST_PRODUCE")
    assert "environment" not in rest["resource"] and rest["environment"]["id"].startswith("env-")
    for line in lines:
        assert line["amount"] == line["original_amount"] - line["discount_amount"]


def test_active_fractions_in_costs(org):
    midday, deleted = org.midday_cluster, org.deleted_cluster
    cku = {
        (line["start_date"], line["resource"]["id"]): line["quantity"]
        for line in org.cost_lines(D0, D0 + timedelta(days=3))
        if line["line_type"].startswith("KAFKA_NUM_CKU")
    }
    assert (D0.isoformat(), midday.id) not in cku
    assert cku[("2026-02-02", midday.id)] == 12 * midday.ckus
    assert cku[("2026-02-03", midday.id)] == 24 * midday.ckus
    assert cku[("2026-02-02", deleted.id)] == 18 * deleted.ckus
    assert ("2026-02-03", deleted.id) not in cku
    assert len(org.kafka_samples(date(2026, 2, 2), midday.id)[org.kafka_principals(midday.id)[0]]) == 12


def test_string_amounts_option():
    org = SimulatedOrg(OrgSpec(days=1, string_amounts=True))
    lines = org.cost_lines(org.spec.start_date, org.spec.end_date)
    as_str = [line for line in lines if isinstance(line["amount"], str)]
    assert as_str and len(as_str) < len(lines)
    assert sum(Decimal(str(line["amount"])) for line in lines) == org.billed_total(org.spec.start_date)


# --- HTTP endpoints


def test_auth_required(sim):
    assert httpx.get(sim.url + "/org/v2/environments").status_code == 401
    assert httpx.get(sim.url + "/org/v2/environments", auth=(KEY, "nope")).status_code == 401
    assert httpx.get(sim.url + "/org/v2/environments", auth=("FLINKKEY", "flink-secret")).status_code == 401
    assert sim.request_log[-1][4] == 401


def test_list_shapes(http, org):
    envs = get_json(http, "/org/v2/environments")
    assert envs["api_version"] == "org/v2" and envs["kind"] == "EnvironmentList"
    assert envs["metadata"]["total_size"] == len(org.environments) and "next" not in envs["metadata"]
    env = envs["data"][0]
    assert (
        env["id"].startswith("env-") and env["display_name"] and env["metadata"]["created_at"].endswith("Z")
    )
    env_id = env["id"]

    assert http.get("/cmk/v2/clusters").status_code == 400  # environment is required
    clusters = get_json(http, "/cmk/v2/clusters", environment=env_id)["data"]
    assert {c["id"] for c in clusters} == {c.id for c in org.live_clusters() if c.env_id == env_id}
    c = clusters[0]
    assert c["spec"]["environment"]["id"] == env_id
    assert c["spec"]["kafka_bootstrap_endpoint"].startswith("SASL_SSL://")
    assert c["spec"]["cloud"] == "AWS" and c["spec"]["region"] == "us-east-1"
    assert c["metadata"]["created_at"]

    sr = get_json(http, "/srcm/v3/clusters", environment=env_id)["data"]
    assert (
        len(sr) == 1
        and sr[0]["id"].startswith("lsrc-")
        and sr[0]["spec"]["http_endpoint"].startswith("https://")
    )

    ksql = get_json(http, "/ksqldbcm/v2/clusters", environment=env_id)["data"]
    assert ksql[0]["id"].startswith("lksqlc-")
    assert ksql[0]["spec"]["credential_identity"]["id"].startswith("sa-")
    assert ksql[0]["spec"]["kafka_cluster"]["id"].startswith("lkc-") and ksql[0]["spec"]["csu"] > 0

    pools = get_json(http, "/fcpm/v2/compute-pools", environment=env_id)["data"]
    assert pools[0]["id"].startswith("lfcp-")
    assert f"organization={org.org_id}" in pools[0]["metadata"]["resource_name"]

    sas = get_json(http, "/iam/v2/service-accounts", page_size=99)["data"]
    assert [s["id"] for s in sas] == [s["id"] for s in org.service_accounts]
    assert sas[0]["display_name"] and "description" in sas[0]
    users = get_json(http, "/iam/v2/users", page_size=99)["data"]
    assert users[0]["id"].startswith("u-") and users[0]["full_name"]
    keys = get_json(http, "/iam/v2/api-keys", page_size=100)["data"]
    assert len(keys) == len(org.live_api_keys())
    assert keys[0]["spec"]["owner"]["id"] and keys[0]["spec"]["resource"]["id"].startswith("lkc-")
    assert "description" in keys[0]["spec"]
    assert org.deleted_cluster.id not in {k["spec"]["resource"]["id"] for k in keys}
    idps = get_json(http, "/iam/v2/identity-providers")["data"]
    pools = get_json(http, f"/iam/v2/identity-providers/{idps[0]['id']}/identity-pools")["data"]
    assert len(pools) == 2 and all(p["id"].startswith("pool-") for p in pools)
    assert http.get("/iam/v2/identity-providers/op-none/identity-pools").status_code == 404
    assert http.get("/nope").status_code == 404


def test_connectors_keyed_by_name(http, org):
    for con in (c for c in org.connectors if c["deleted_at"] is None):
        path = f"/connect/v1/environments/{con['env_id']}/clusters/{con['cluster_id']}/connectors"
        body = get_json(http, path, expand="info,status,id")
        assert "metadata" not in body and "data" not in body
        entry = body[con["name"]]
        assert entry["id"]["id"] == con["id"]
        assert entry["info"]["config"]["name"] == con["name"]
        assert entry["status"]["connector"]["state"] == "RUNNING"
        assert get_json(http, path) == [con["name"]] or isinstance(http.get(path).json(), list)
    deleted = org.deleted_cluster
    r = http.get(f"/connect/v1/environments/{deleted.env_id}/clusters/{deleted.id}/connectors")
    assert r.status_code == 404


def test_flink_statements(sim, org):
    env_id = org.environments[0]["id"]
    path = f"/sql/v1/organizations/{org.org_id}/environments/{env_id}/statements"
    r = httpx.get(sim.url + path, auth=("FLINKKEY", "flink-secret"), params={"page_size": 1})
    assert r.status_code == 200
    body = r.json()
    assert (
        body["kind"] == "StatementList"
        and len(body["data"]) == 1
        and "page_token=" in body["metadata"]["next"]
    )
    st = body["data"][0]
    assert st["metadata"]["uid"] and st["name"] and st["spec"]["principal"].startswith("sa-")
    assert st["spec"]["compute_pool"]["id"].startswith("lfcp-") and st["status"]["phase"]
    assert httpx.get(sim.url + path, auth=(KEY, SECRET)).status_code == 200
    other = f"/sql/v1/organizations/other-org/environments/{env_id}/statements"
    assert httpx.get(sim.url + other, auth=(KEY, SECRET)).status_code == 404


def test_pagination_tokens(http, org):
    first = get_json(http, "/iam/v2/api-keys", page_size=4)
    assert len(first["data"]) == 4 and first["metadata"]["total_size"] == len(org.live_api_keys())
    nxt = first["metadata"]["next"]
    assert nxt.startswith(str(http.base_url).rstrip("/") + "/iam/v2/api-keys?") and "page_size=4" in nxt
    second = http.get(nxt).json()
    assert second["data"] == org.api_api_keys()[4:8]
    ids, url = [], "/iam/v2/api-keys?page_size=4"
    while url:
        body = http.get(url).json()
        ids += [k["id"] for k in body["data"]]
        url = body["metadata"].get("next")
    assert ids == [k.id for k in org.live_api_keys()]
    # capped at the published maximum; a token from another listing is rejected
    big = get_json(
        http, "/billing/v1/costs", start_date="2026-02-01", end_date="2026-02-04", page_size=100000
    )
    assert len(big["data"]) == len(org.cost_lines(D0, D0 + timedelta(days=3)))
    token = nxt.split("page_token=")[1]
    assert http.get("/iam/v2/users", params={"page_token": token}).status_code == 400


def test_costs_window_rule(http, org):
    body = get_json(http, "/billing/v1/costs", start_date="2026-02-02", end_date="2026-02-03", page_size=1000)
    assert body["kind"] == "CostList"
    assert {line["start_date"] for line in body["data"]} == {"2026-02-02"}  # end date exclusive
    line = body["data"][0]
    for field in ("id", "start_date", "end_date", "granularity", "product", "line_type", "quantity", "unit",
                  "price", "original_amount", "discount_amount", "amount", "resource"):  # fmt: skip
        assert field in line, field
    assert set(line["resource"]) == {"id", "display_name", "environment"}
    assert get_json(http, "/billing/v1/costs", start_date="2026-01-01", end_date="2026-02-01")["data"] == []
    ok = http.get("/billing/v1/costs", params={"start_date": "2026-01-15", "end_date": "2026-02-15"})
    assert ok.status_code == 200  # exactly 31 days
    too_long = http.get("/billing/v1/costs", params={"start_date": "2026-01-15", "end_date": "2026-02-16"})
    assert too_long.status_code == 400 and "31 days" in too_long.text
    assert http.get("/billing/v1/costs", params={"start_date": "2026-02-01"}).status_code == 400
    assert (
        http.get(
            "/billing/v1/costs", params={"start_date": "2026-02-02", "end_date": "2026-02-02"}
        ).status_code
        == 400
    )
    assert (
        http.get("/billing/v1/costs", params={"start_date": "x", "end_date": "2026-02-02"}).status_code == 400
    )


def test_costs_amounts_are_exact_json_numbers(http, org):
    for d in org.days:
        r = http.get("/billing/v1/costs", params={"start_date": d.isoformat(),
                                                  "end_date": (d + timedelta(days=1)).isoformat(),
                                                  "page_size": 1000})  # fmt: skip
        assert '"amount":"' not in r.text  # numbers, not strings (default spec)
        lines = json.loads(r.text, parse_float=Decimal)["data"]
        assert sum(Decimal(line["amount"]) for line in lines) == org.billed_total(d)
        assert any(line["amount"] != line["amount"].quantize(Decimal("0.01")) for line in lines)


def test_faults_at_runtime(sim, http):
    sim.faults = Faults(rate_limit_burst=1, rate_limit_seconds=7)
    r = http.get("/iam/v2/users")
    assert r.status_code == 429 and r.headers["Retry-After"] == "7"
    assert http.get("/iam/v2/users").status_code == 200
    sim.faults = Faults(rate_limit_burst=1, rate_limit_seconds=3, rate_limit_header="x-ratelimit-reset")
    r = http.get("/iam/v2/users")
    assert r.status_code == 429 and r.headers["X-RateLimit-Reset"] == "3" and "Retry-After" not in r.headers
    sim.faults = Faults(rate_limit_burst=1, rate_limit_header="retry-after-date")
    assert http.get("/iam/v2/users").headers["Retry-After"].endswith(" GMT")
    sim.faults = Faults(server_errors=2, paths=("/billing/v1/costs",))
    assert http.get("/iam/v2/users").status_code == 200
    params = {"start_date": "2026-02-01", "end_date": "2026-02-02"}
    assert [http.get("/billing/v1/costs", params=params).status_code for _ in range(3)] == [503, 503, 200]
    sim.faults = Faults(down=True)
    assert http.get("/org/v2/environments").status_code == 503
    sim.faults = Faults(fail_page_token_once=True)
    nxt = get_json(http, "/iam/v2/api-keys", page_size=2)["metadata"]["next"]
    assert http.get(nxt).status_code == 400
    assert http.get(nxt).status_code == 200
    sim.faults = Faults(loop_page_token=True)
    again = http.get(nxt).json()["metadata"]["next"]
    assert again == nxt
    sim.faults = Faults(slow_seconds=0.2, paths=("/iam/v2/users",))
    with pytest.raises(httpx.TimeoutException):
        http.get("/iam/v2/users", timeout=0.05)
    log = sim.requests_to("/billing/v1/costs")[-3:]
    assert (
        [entry[4] for entry in log] == [503, 503, 200] and log[0][1] == "GET" and "start_date=" in log[0][3]
    )


def test_cli_parser():
    argv = "--port 0 --environments 1 --clusters-per-env 3 --service-accounts 4 --days 2"
    argv += " --start-date 2026-03-01 --seed 9 --write-openmetrics /tmp/x.om"
    args = build_parser().parse_args(argv.split())
    assert (args.port, args.environments, args.clusters_per_env) == (0, 1, 3)
    assert (args.service_accounts, args.days, args.seed) == (4, 2, 9)
    assert args.start_date == date(2026, 3, 1) and args.write_openmetrics == "/tmp/x.om"


# --- Prometheus data


@pytest.fixture(scope="module")
def prom_org() -> SimulatedOrg:
    return SimulatedOrg(OrgSpec(start_date=date(2026, 1, 10), days=2, environments=1, seed=5))


@pytest.fixture(scope="module")
def prometheus(local_prometheus_factory, prom_org):
    return local_prometheus_factory(prom_org.openmetrics())


def _query_day(prom_url: str, query: str, d: date) -> dict[tuple[str, ...], float]:
    start = datetime(d.year, d.month, d.day, tzinfo=UTC)
    end = start + timedelta(days=1) - timedelta(seconds=1)
    r = httpx.post(
        prom_url + "/api/v1/query_range",
        data={"query": query, "start": start.timestamp(), "end": end.timestamp(), "step": "3600"},
        timeout=30,
    )
    r.raise_for_status()
    out = {}
    for series in r.json()["data"]["result"]:
        key = tuple(sorted(series["metric"].items()))
        out[key] = sum(float(v) for _, v in series["values"])
    return out


def test_openmetrics_bytes_match_org(prometheus, prom_org):
    d = date(2026, 1, 11)  # the midday cluster starts at 12:00 this day
    got = _query_day(
        prometheus.url, "sum by (kafka_id, principal_id) (confluent_kafka_server_request_bytes)", d
    )
    expected = {
        (("kafka_id", c.id), ("principal_id", p)): v
        for c in prom_org.clusters
        for p, v in prom_org.expected_bytes(d, c.id).items()
    }
    assert got == expected
    assert any(p.startswith("sa-") for (_, (_, p)) in got) and any(
        p[:3] not in ("sa-", "poo") for (_, (_, p)) in got
    )
    midday = prom_org.midday_cluster
    assert midday is not None
    assert expected[(("kafka_id", midday.id), ("principal_id", prom_org.kafka_principals(midday.id)[0]))] > 0


def test_openmetrics_flink_cfu_match_org(prometheus, prom_org):
    d = date(2026, 1, 10)
    pool = prom_org.flink_pools[0]["id"]
    got = _query_day(
        prometheus.url,
        "sum by (compute_pool_id, flink_statement_name) "
        f'(confluent_flink_num_cfu{{compute_pool_id="{pool}"}})',
        d,
    )
    assert got == {
        (("compute_pool_id", pool), ("flink_statement_name", n)): v
        for n, v in prom_org.expected_cfu(d, pool).items()
    }
