"""ConfluentClient against the real Confluent Cloud simulator over HTTP (docs/confluent-cloud.md §2).

Waits are recorded by an injected ``sleep`` (no real sleeping), so the whole module runs in about a second.
"""

from __future__ import annotations

import logging
import math
import socket
from datetime import date

import pytest

from chargeback_dagster.devtools.ccloud_simulator import CCloudSimulator, Faults, OrgSpec, SimulatedOrg
from chargeback_dagster.ecosystems.confluent_cloud.client import ConfluentApiError, ConfluentClient

KEY = "CLIENTTESTKEY001"
SECRET = "s3cr3t-Client-Test-Value"


@pytest.fixture(scope="module")
def org() -> SimulatedOrg:
    return SimulatedOrg(OrgSpec(start_date=date(2026, 1, 1), days=3, seed=11))


@pytest.fixture(scope="module")
def server(org):
    with CCloudSimulator(org, key=KEY, secret=SECRET) as sim:
        yield sim


@pytest.fixture
def sim(server):
    server.faults = Faults()
    server.request_log.clear()
    yield server
    server.faults = Faults()


class Recorder:
    """Fake clock + sleep: sleeping advances the clock; every sleep is recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def make_client(sim, rec: Recorder, **kw) -> ConfluentClient:
    kw.setdefault("min_interval", 0.0)
    return ConfluentClient(
        kw.pop("base_url", sim.url),
        kw.pop("key", KEY),
        kw.pop("secret", SECRET),
        sleep=rec.sleep,
        clock=rec.clock,
        **kw,
    )


# --- pagination


def test_list_all_follows_pages(sim, rec, org):
    client = make_client(sim, rec)
    keys = client.list_all("/iam/v2/api-keys", page_size=3)
    expected = [k.id for k in org.live_api_keys()]
    assert [k["id"] for k in keys] == expected
    assert client.request_count == math.ceil(len(expected) / 3) >= 3
    queries = [q for _, _, path, q, _ in sim.request_log if path == "/iam/v2/api-keys"]
    assert "page_token" not in queries[0]
    assert all("page_token=" in q and "page_size=3" in q for q in queries[1:])


def test_list_all_with_params_and_single_page(sim, rec, org):
    client = make_client(sim, rec)
    env = org.environments[0]["id"]
    clusters = client.list_all("/cmk/v2/clusters", {"environment": env}, page_size=1)
    assert [c["id"] for c in clusters] == [c.id for c in org.live_clusters() if c.env_id == env]
    assert all(f"environment={env}" in q for _, _, _, q, _ in sim.request_log)
    assert client.list_all("/org/v2/environments", page_size=99) == org.api_environments()


def test_costs_paginated_across_window(sim, rec, org):
    client = make_client(sim, rec)
    lines = client.list_all("/billing/v1/costs", {"start_date": "2026-01-01", "end_date": "2026-01-04"}, 25)
    assert [line["id"] for line in lines] == [
        line["id"] for line in org.cost_lines(date(2026, 1, 1), date(2026, 1, 4))
    ]
    assert client.request_count == math.ceil(len(lines) / 25)


def test_pagination_loop_detected(sim, rec):
    sim.faults = Faults(loop_page_token=True)
    client = make_client(sim, rec)
    with pytest.raises(ConfluentApiError) as err:
        client.list_all("/iam/v2/api-keys?x=1", page_size=2)
    assert str(err.value) == "Pagination loop detected for GET /iam/v2/api-keys"
    assert client.request_count == 2  # page 1 → token A; page 2 (token A) → token A again: detected


def test_expired_page_token_restarts_once(sim, rec, org):
    sim.faults = Faults(fail_page_token_once=True)
    client = make_client(sim, rec)
    keys = client.list_all("/iam/v2/api-keys", page_size=4)
    assert [k["id"] for k in keys] == [k.id for k in org.live_api_keys()]  # no duplicates from the 1st try
    statuses = [status for *_, status in sim.request_log]
    assert statuses.count(400) == 1
    assert "page_token" not in sim.request_log[2][3]  # restarted from page one
    assert rec.sleeps == []


def test_second_page_token_400_is_an_error(sim, rec):
    sim.faults = Faults(page_token_failures=2)
    client = make_client(sim, rec)
    with pytest.raises(ConfluentApiError) as err:
        client.list_all("/iam/v2/api-keys", page_size=4)
    assert str(err.value).startswith("Confluent Cloud API error HTTP 400 for GET /iam/v2/api-keys: ")
    assert "page token" in str(err.value)
    assert err.value.status == 400


# --- retries


def test_429_retry_after_seconds_honoured(sim, rec, caplog):
    sim.faults = Faults(rate_limit_burst=2, rate_limit_seconds=3)
    client = make_client(sim, rec)
    with caplog.at_level(logging.WARNING, logger="chargeback_dagster.confluent"):
        body = client.get("/org/v2/environments")
    assert body["data"]
    assert len(rec.sleeps) == 2
    assert all(3 * 1.1 <= w <= 3 * 1.2 for w in rec.sleeps)
    assert client.request_count == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert (
        "/org/v2/environments" in warnings[0] and "HTTP 429" in warnings[0] and "attempt 1/6" in warnings[0]
    )
    assert "attempt 2/6" in warnings[1]


def test_429_retry_after_small_value_floored_to_one_second(sim, rec):
    sim.faults = Faults(rate_limit_burst=1, rate_limit_seconds=0)
    make_client(sim, rec).get("/org/v2/environments")
    assert len(rec.sleeps) == 1 and 1.1 <= rec.sleeps[0] <= 1.2


def test_429_retry_after_http_date(sim, rec):
    sim.faults = Faults(rate_limit_burst=1, rate_limit_seconds=5, rate_limit_header="retry-after-date")
    make_client(sim, rec).get("/org/v2/environments")
    # the HTTP-date has whole-second precision: 4..5 s from now
    assert len(rec.sleeps) == 1 and 3.9 * 1.1 <= rec.sleeps[0] <= 5.1 * 1.2


def test_429_x_ratelimit_reset_is_relative_seconds(sim, rec):
    sim.faults = Faults(rate_limit_burst=1, rate_limit_seconds=2, rate_limit_header="x-ratelimit-reset")
    make_client(sim, rec).get("/org/v2/environments")
    assert len(rec.sleeps) == 1 and 2.2 <= rec.sleeps[0] <= 2.4


def test_429_without_header_uses_backoff(sim, rec):
    sim.faults = Faults(rate_limit_burst=1, rate_limit_header="none")
    make_client(sim, rec).get("/org/v2/environments")
    assert len(rec.sleeps) == 1 and 2.0 <= rec.sleeps[0] <= 3.0


@pytest.mark.parametrize("header", ["retry-after", "x-ratelimit-reset"])
def test_429_unreadable_wait_header_uses_backoff(sim, rec, header):
    # "nan" names no wait: the backoff applies (it used to become a NaN wait, which time.sleep rejects)
    sim.faults = Faults(rate_limit_burst=1, rate_limit_seconds=math.nan, rate_limit_header=header)
    make_client(sim, rec).get("/org/v2/environments")
    assert len(rec.sleeps) == 1 and 2.0 <= rec.sleeps[0] <= 3.0


def test_wait_capped_at_120_seconds(sim, rec):
    sim.faults = Faults(rate_limit_burst=1, rate_limit_seconds=500)
    make_client(sim, rec).get("/org/v2/environments")
    assert rec.sleeps == [120.0]


def test_5xx_then_success_with_backoff(sim, rec):
    sim.faults = Faults(server_errors=3)
    client = make_client(sim, rec)
    assert client.get("/iam/v2/users")["data"]
    assert len(rec.sleeps) == 3
    for n, wait in enumerate(rec.sleeps, start=1):
        assert 2 * 2 ** (n - 1) <= wait <= 2 * 2 ** (n - 1) + 1
    assert [s for *_, s in sim.request_log] == [503, 503, 503, 200]


def test_exhausted_after_six_attempts(sim, rec):
    sim.faults = Faults(down=True, paths=("/billing/v1/costs",))
    client = make_client(sim, rec)
    assert client.get("/org/v2/environments")["data"]  # other paths unaffected by the path filter
    with pytest.raises(ConfluentApiError) as err:
        client.get("/billing/v1/costs", {"start_date": "2026-01-01", "end_date": "2026-01-02"})
    assert str(err.value) == "GET /billing/v1/costs failed after 6 attempts: HTTP 503"
    assert len([r for r in sim.request_log if r[2] == "/billing/v1/costs"]) == 6
    assert len(rec.sleeps) == 5
    assert rec.sleeps[-1] >= 32


def test_500_502_504_are_retried(sim, rec):
    for status in (500, 502, 504):
        sim.faults = Faults(server_errors=1, server_error_status=status)
        assert make_client(sim, rec).get("/iam/v2/users")["data"]
    assert len(rec.sleeps) == 3


def test_transport_error_retried_and_reported(rec):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ConfluentClient(f"http://127.0.0.1:{port}", KEY, SECRET, sleep=rec.sleep, clock=rec.clock)
    with pytest.raises(ConfluentApiError) as err:
        client.get("/org/v2/environments")
    assert str(err.value).startswith("GET /org/v2/environments failed after 6 attempts: ")
    assert "HTTP" not in str(err.value)
    assert len([w for w in rec.sleeps if w >= 1]) == 5


def test_timeout_is_retried(sim, rec):
    sim.faults = Faults(slow_seconds=0.3, paths=("/iam/v2/users",))
    client = make_client(sim, rec, timeout=0.05, max_attempts=2)
    with pytest.raises(ConfluentApiError) as err:
        client.get("/iam/v2/users")
    assert str(err.value).startswith("GET /iam/v2/users failed after 2 attempts: ")
    assert len(rec.sleeps) == 1


def test_check_deadline_called_before_requests_and_waits(sim, rec):
    calls: list[float] = []
    sim.faults = Faults(server_errors=1)
    make_client(sim, rec, check_deadline=lambda: calls.append(rec.now)).get("/iam/v2/users")
    assert len(calls) == 3  # request 1, wait, request 2

    class Deadline(Exception):
        pass

    def deadline() -> None:
        if rec.now > 1005:
            raise Deadline

    sim.faults = Faults(down=True)
    with pytest.raises(Deadline):
        make_client(sim, rec, check_deadline=deadline).get("/iam/v2/users")
    assert len(rec.sleeps) < 6


# --- non-retried statuses


def test_401_rejected_credentials(sim, rec):
    client = make_client(sim, rec, secret="wrong")
    with pytest.raises(ConfluentApiError) as err:
        client.get("/iam/v2/service-accounts?page_size=99")
    assert str(err.value) == (
        "Confluent Cloud API rejected credentials (HTTP 401) for GET /iam/v2/service-accounts; "
        "check ccloud_api.key/secret and the service account's roles"
    )
    assert client.request_count == 1 and rec.sleeps == []
    with pytest.raises(ConfluentApiError):
        client.list_all("/iam/v2/service-accounts", page_size=99)


def test_404_is_empty(sim, rec):
    client = make_client(sim, rec)
    assert client.get("/iam/v2/identity-providers/op-NOPE/identity-pools") == {"data": []}
    assert client.list_all("/connect/v1/environments/env-gone/clusters/lkc-gone/connectors") == []
    assert rec.sleeps == []


def test_other_4xx_is_an_error_with_body(sim, rec):
    client = make_client(sim, rec)
    with pytest.raises(ConfluentApiError) as err:
        client.get("/billing/v1/costs", {"start_date": "2026-01-01", "end_date": "2026-03-01"})
    msg = str(err.value)
    assert msg.startswith("Confluent Cloud API error HTTP 400 for GET /billing/v1/costs: {")
    assert "31 days" in msg
    assert client.request_count == 1 and rec.sleeps == []


def test_body_truncated_to_500_chars(rec):
    import httpx

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(418, text="x" * 2000)

    client = ConfluentClient("http://example.invalid", KEY, SECRET, transport=httpx.MockTransport(handler))
    with pytest.raises(ConfluentApiError) as err:
        client.get("/a/b?c=d")
    assert str(err.value) == "Confluent Cloud API error HTTP 418 for GET /a/b: " + "x" * 500


# --- throttle, headers, secrets


def test_throttle_between_rapid_requests(sim):
    now = [50.0]
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s

    client = ConfluentClient(sim.url, KEY, SECRET, sleep=sleep, clock=lambda: now[0])
    for _ in range(3):
        client.get("/org/v2/environments")
    assert sleeps == pytest.approx([0.1, 0.1])
    now[0] += 5  # a request after a pause does not wait
    client.get("/org/v2/environments")
    assert len(sleeps) == 2


def test_basic_auth_and_accept_header(rec):
    import httpx

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"data": [1]})

    client = ConfluentClient("http://example.invalid/", KEY, SECRET, transport=httpx.MockTransport(handler))
    assert client.get("/org/v2/environments") == {"data": [1]}
    assert seen[0].headers["Accept"] == "application/json"
    assert seen[0].headers["Authorization"] == httpx.BasicAuth(KEY, SECRET)._auth_header
    assert str(seen[0].url) == "http://example.invalid/org/v2/environments"


def test_secrets_never_logged(sim, rec, caplog):
    caplog.set_level(logging.DEBUG)
    sim.faults = Faults(rate_limit_burst=1, server_errors=1)
    client = make_client(sim, rec)
    client.list_all("/iam/v2/api-keys", page_size=5)
    sim.faults = Faults(down=True)
    with pytest.raises(ConfluentApiError) as exhausted:
        client.get("/iam/v2/users")
    bad = make_client(sim, rec, secret=SECRET + "x")
    with pytest.raises(ConfluentApiError) as rejected:
        bad.get("/iam/v2/users")
    text = caplog.text + str(exhausted.value) + str(rejected.value)
    assert "WARNING" in caplog.text
    assert SECRET not in text and KEY not in caplog.text
    assert "Unauthorized" not in caplog.text  # 401 bodies are never logged
