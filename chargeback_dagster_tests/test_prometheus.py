"""Prometheus access layer (docs/generic-metrics.md §1).

Query semantics run against a REAL Prometheus (Debian 2.42) loaded with promtool-backfilled history;
protocol-only details (auth headers, retries, error texts, parsing edge cases) use an httpx MockTransport.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
from pydantic import BaseModel, SecretStr

from chargeback_dagster.devtools import LocalPrometheus, LocalPrometheusError, OpenMetricsWriter
from chargeback_dagster.sources.prometheus import (
    MetricsQueryError,
    PrometheusClient,
    RangeQuery,
    Series,
    day_window,
    reduce_series,
)
from chargeback_dagster.sources.promql import grouping_labels

TODAY = datetime.now(UTC).date()
BASE = TODAY - timedelta(days=300)  # all query-semantics data lives 300 days in the past
DAY2 = BASE + timedelta(days=1)
YESTERDAY = TODAY - timedelta(days=1)


def midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def ts(d: date, hours: float = 0) -> float:
    return (midnight(d) + timedelta(hours=hours)).timestamp()


def build_history() -> str:
    w = OpenMetricsWriter()
    start = midnight(BASE)
    # hourly gauge, value = hours since BASE 00:00, from BASE 00:00 to BASE+2 00:00 inclusive
    w.add("hourly", {"team": "a"}, [(start + timedelta(hours=h), h) for h in range(49)])
    # a single sample exactly at the midnight between BASE and DAY2
    w.add("midnight_only", {"team": "m"}, [(midnight(DAY2), 7)])
    # several raw series with more labels than the queries group by
    for team, principal, host, value in [
        ("a", "p1", "h1", 1),
        ("a", "p1", "h2", 2),
        ("a", "p2", "h1", 4),
        ("b", "p3", "h1", 8),
    ]:
        labels = {"team": team, "principal": principal, "host": host}
        w.add("usage", labels, [(start + timedelta(hours=h), value) for h in range(49)])
    # counter rising 10 per minute over three days
    w.add(
        "requests_total",
        {"team": "a"},
        [(start + timedelta(minutes=m), 10 * m) for m in range(3 * 1440 + 1)],
        type="counter",
    )
    # per-minute gauge on DAY2 for the long-range split test
    w.add("fine", {}, [(midnight(DAY2) + timedelta(minutes=m), m) for m in range(1440)])
    # recent data: makes the history span > 15 days, so default retention would drop BASE blocks
    w.add("recent", {"team": "r"}, [(midnight(YESTERDAY) + timedelta(hours=h), 1) for h in range(24)])
    return w.text()


@pytest.fixture(scope="module")
def prom(local_prometheus_factory) -> LocalPrometheus:
    return local_prometheus_factory(build_history())


@pytest.fixture()
def client(prom):
    c = PrometheusClient(prom.url, sleep=lambda s: None)
    yield c
    c.close()


# ---------------------------------------------------------------------------------- real Prometheus


def test_day_window_takes_hourly_samples_of_the_day_only(client):
    (series,) = client.query_range(RangeQuery("sum by (team) (hourly)", *day_window(DAY2), 3600))
    assert series.labels == {"team": "a"}
    assert [t for t, _ in series.samples] == [ts(DAY2, h) for h in range(24)]
    assert [v for _, v in series.samples] == [float(24 + h) for h in range(24)]  # 48 (next midnight) absent


def test_sample_at_midnight_belongs_to_next_day(client):
    assert client.query_range(RangeQuery("midnight_only", *day_window(BASE), 3600)) == []
    (series,) = client.query_range(RangeQuery("midnight_only", *day_window(DAY2), 3600))
    assert series.samples == [(ts(DAY2), 7.0)]
    # consecutive days never share a sample
    day1 = client.query_range(RangeQuery("sum(hourly)", *day_window(BASE), 3600))[0].samples
    day2 = client.query_range(RangeQuery("sum(hourly)", *day_window(DAY2), 3600))[0].samples
    assert len(day1) == len(day2) == 24
    assert not {t for t, _ in day1} & {t for t, _ in day2}


def test_data_300_days_old_is_queryable_next_to_recent_data(client):
    assert (TODAY - BASE).days == 300
    (old,) = client.query_range(RangeQuery("sum by (team) (hourly)", *day_window(BASE), 3600))
    assert len(old.samples) == 24
    (new,) = client.query_range(RangeQuery("sum by (team) (recent)", *day_window(YESTERDAY), 3600))
    assert new.labels == {"team": "r"} and len(new.samples) == 24


def test_labels_reduced_to_grouping_labels(client):
    window = day_window(DAY2)
    by_team = client.query_range(RangeQuery("sum by (team) (usage)", *window, 3600))
    assert [(s.labels, s.samples[0][1]) for s in by_team] == [({"team": "a"}, 7.0), ({"team": "b"}, 8.0)]

    trailing = client.query_range(RangeQuery("sum(usage) by (team, principal)", *window, 3600))
    assert [s.labels for s in trailing] == [
        {"principal": "p1", "team": "a"},
        {"principal": "p2", "team": "a"},
        {"principal": "p3", "team": "b"},
    ]

    without = client.query_range(RangeQuery("sum without (host) (usage)", *window, 3600))
    assert [s.labels for s in without] == [s.labels for s in trailing]

    # no grouping: every label dropped; series sharing the reduced label set are added per timestamp
    (raw,) = client.query_range(RangeQuery('usage{team="a"}', *window, 3600))
    assert raw.labels == {}
    assert raw.samples == [(ts(DAY2, h), 7.0) for h in range(24)]

    # a label named "by" inside a selector is not a grouping clause
    (total,) = client.query_range(RangeQuery("sum(usage)", *window, 3600))
    assert total.labels == {} and total.samples[0][1] == 15.0

    rows = reduce_series(by_team)
    assert rows == [({"team": "a"}, 7.0 * 24, 7.0, 24), ({"team": "b"}, 8.0 * 24, 8.0, 24)]


def test_step_placeholder_with_increase(client):
    q = RangeQuery("sum by (team) (increase(requests_total[{step}]))", *day_window(DAY2), 3600)
    (series,) = client.query_range(q)
    assert series.labels == {"team": "a"}
    assert len(series.samples) == 24
    assert all(v == pytest.approx(600.0) for _, v in series.samples)


def test_long_range_is_split_into_requests_of_at_most_10000_steps(client):
    step = 3  # 86400 / 3 = 28,800 evaluation points → 3 requests
    before = client.request_count
    (series,) = client.query_range(RangeQuery("fine", *day_window(DAY2), step))
    assert client.request_count - before == 3
    start = ts(DAY2)
    assert [t for t, _ in series.samples] == [start + i * step for i in range(28_800)]
    assert series.samples[-1][1] == 1439.0


def test_window_not_aligned_to_seconds(client):
    # e.g. discovery over [now − 1 h, now): evaluation timestamps must not be lost to sub-ms precision
    start = midnight(DAY2) + timedelta(hours=3, microseconds=123_456)
    (series,) = client.query_range(RangeQuery("sum(fine)", start, start + timedelta(hours=2), 300))
    times = [t for t, _ in series.samples]
    assert times[0] == pytest.approx(start.timestamp() - 0.000456)
    assert len(times) == 24  # 2 h / 300 s
    assert times[-1] < (start + timedelta(hours=2)).timestamp()


def test_bad_promql_is_http_400_without_retry(client):
    before = client.request_count
    with pytest.raises(MetricsQueryError) as err:
        client.query_range(RangeQuery("sum by (team) (usage", *day_window(DAY2), 3600))
    assert client.request_count - before == 1
    assert str(err.value).startswith("HTTP 400: ")
    assert "bad_data" in str(err.value)


def test_query_range_many_against_real_server(client):
    q1 = RangeQuery("sum by (team) (hourly)", *day_window(DAY2), 3600)
    q2 = RangeQuery("sum by (team) (usage)", *day_window(DAY2), 3600)
    bad = RangeQuery("sum(", *day_window(DAY2), 3600)
    before = client.request_count
    results = client.query_range_many([q1, q2, q1, bad, q2])
    assert client.request_count - before == 3
    assert set(results) == {q1, q2, bad}
    assert len(results[q1][0].samples) == 24
    assert isinstance(results[bad], MetricsQueryError)


def test_check_and_empty_server(local_prometheus_factory):
    prom = local_prometheus_factory(None)
    with PrometheusClient(prom.url) as c:
        c.check()
        assert c.query_range(RangeQuery("up", *day_window(BASE), 3600)) == []


def test_outage_then_recovery(local_prometheus_factory):
    w = OpenMetricsWriter().add(
        "g", {"team": "x"}, [(midnight(BASE) + timedelta(hours=h), 1) for h in range(24)]
    )
    prom = local_prometheus_factory(w.text())
    waits: list[float] = []
    c = PrometheusClient(prom.url, sleep=waits.append)
    q = RangeQuery("sum by (team) (g)", *day_window(BASE), 3600)
    assert len(c.query_range(q)[0].samples) == 24

    prom.stop()
    with pytest.raises(MetricsQueryError) as err:
        c.query_range(q)
    msg = str(err.value)
    assert msg.startswith(f"Exhausted 4 attempts for {prom.url}/api/v1/query_range: ")
    assert "Connect" in msg
    assert len(waits) == 3
    for n, wait in enumerate(waits, start=1):
        assert 0.8 * 2**n <= wait <= 1.2 * 2**n
    with pytest.raises(MetricsQueryError):
        c.check()

    prom.start()  # same port, same data
    assert len(c.query_range(q)[0].samples) == 24
    c.check()
    c.close()


def test_promtool_failure_is_reported(tmp_path):
    with pytest.raises(LocalPrometheusError) as err:
        LocalPrometheus('g{a="b"} not-a-number 123\n# EOF\n', tmp_path).start()
    assert "promtool" in str(err.value)
    assert len(str(err.value).splitlines()) >= 2  # carries promtool's own output


# ------------------------------------------------------------------------------ protocol (mocked HTTP)


def matrix(result, **extra):
    return httpx.Response(
        200, json={"status": "success", "data": {"resultType": "matrix", "result": result}, **extra}
    )


class Recorder:
    """MockTransport handler returning queued responses (the last one repeats) and recording requests."""

    def __init__(self, *responses):
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        r = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        return r(request) if callable(r) else r

    def form(self, i=-1) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.requests[i].content.decode()).items()}


def mock_client(handler, url="http://prom.example/prometheus/", **kw) -> PrometheusClient:
    kw.setdefault("sleep", lambda s: None)
    return PrometheusClient(url, transport=httpx.MockTransport(handler), **kw)


FEB1 = date(2026, 2, 1)


def test_request_shape_and_path_prefix():
    rec = Recorder(matrix([]))
    c = mock_client(rec)
    c.query_range(RangeQuery("sum by (team) (rate(x[{step}]))", *day_window(FEB1), 3600))
    req = rec.requests[0]
    assert req.method == "POST"
    assert req.url.path == "/prometheus/api/v1/query_range"
    assert req.headers["content-type"] == "application/x-www-form-urlencoded"
    assert req.headers["accept-encoding"] == "identity"  # gzip costs Prometheus more than the query
    assert rec.form() == {
        "query": "sum by (team) (rate(x[3600s]))",
        "start": "2026-02-01T00:00:00Z",
        "end": "2026-02-01T23:59:59Z",
        "step": "3600",
    }
    assert "authorization" not in req.headers
    c.check()
    assert rec.requests[1].url.path == "/prometheus/api/v1/query"
    assert rec.form(1) == {"query": "1"}


def test_split_requests_cover_the_grid_without_overlap():
    rec = Recorder(matrix([]))
    c = mock_client(rec)
    c.query_range(RangeQuery("x", *day_window(FEB1), 1))  # 86,400 points
    assert c.request_count == len(rec.requests) == 9
    start = ts(FEB1)
    expected = start
    for i in range(9):
        f = rec.form(i)
        s = datetime.fromisoformat(f["start"].replace("Z", "+00:00")).timestamp()
        e = datetime.fromisoformat(f["end"].replace("Z", "+00:00")).timestamp()
        assert s == expected
        assert (e - s) / 1 + 1 <= 10_000
        expected = e + 1
    assert expected == ts(FEB1 + timedelta(days=1))


def test_auth_headers():
    rec = Recorder(matrix([]))
    mock_client(rec, auth_type="basic", username="alice", password="pw").check()
    assert rec.requests[-1].headers["authorization"] == "Basic " + base64.b64encode(b"alice:pw").decode()
    mock_client(rec, auth_type="bearer", bearer_token="tok123").check()
    assert rec.requests[-1].headers["authorization"] == "Bearer tok123"
    with pytest.raises(ValueError):
        mock_client(rec, auth_type="kerberos")


def test_from_config_reads_secret_strings():
    class Metrics(BaseModel):
        url: str
        auth_type: str = "none"
        username: str | None = None
        password: SecretStr | None = None
        bearer_token: SecretStr | None = None

    c = PrometheusClient.from_config(
        Metrics(url="http://p:9090/x", auth_type="bearer", bearer_token=SecretStr("abc")), max_workers=2
    )
    assert c.max_workers == 2 and c.url == "http://p:9090/x"
    assert "abc" not in repr(c)
    c.close()


def test_parsing_skips_non_finite_and_out_of_window_samples_and_reduces_labels():
    start, end = day_window(FEB1)
    s0, s1 = start.timestamp(), end.timestamp()
    rec = Recorder(
        matrix(
            [
                {
                    "metric": {"team": "a", "host": "h1"},
                    "values": [
                        [s0 - 60, "5"],
                        [s0, "1.5"],
                        [s0 + 60, "NaN"],
                        [s0 + 120, "+Inf"],
                        [s0 + 180, "-Inf"],
                        [s0 + 240, "abc"],
                        [s0 + 300, None],
                        [s1 - 1, "2"],
                        [s1, "9"],
                    ],
                },
                {"metric": {"team": "b", "host": "h1"}, "values": [[s0, "NaN"]]},
            ]
        )
    )
    (series,) = mock_client(rec).query_range(RangeQuery("sum by (team) (x)", start, end, 60))
    assert series == Series({"team": "a"}, [(s0, 1.5), (s1 - 1, 2.0)])

    vec = {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": {}, "value": [s0, "3"]}]},
    }
    (series,) = mock_client(Recorder(httpx.Response(200, json=vec))).query_range(
        RangeQuery("x", start, end, 60)
    )
    assert series == Series({}, [(s0, 3.0)])


def test_status_error_and_warnings(caplog):
    err = httpx.Response(200, json={"status": "error", "errorType": "bad_data", "error": "boom"})
    with pytest.raises(MetricsQueryError, match=r"^bad_data: boom$"):
        mock_client(Recorder(err)).query_range(RangeQuery("x", *day_window(FEB1), 3600))

    caplog.set_level(logging.WARNING, logger="chargeback_dagster.prometheus")
    mock_client(Recorder(matrix([], warnings=["partial response"]))).query_range(
        RangeQuery("x", *day_window(FEB1), 3600)
    )
    assert any(
        r.name == "chargeback_dagster.prometheus" and "partial response" in r.getMessage()
        for r in caplog.records
    )


def test_retries_with_backoff_then_success():
    waits: list[float] = []
    rec = Recorder(httpx.Response(503, text="down"), httpx.Response(429, text="slow"), matrix([]))
    c = mock_client(rec, sleep=waits.append)
    assert c.query_range(RangeQuery("x", *day_window(FEB1), 3600)) == []
    assert c.request_count == 3
    assert 1.6 <= waits[0] <= 2.4 and 3.2 <= waits[1] <= 4.8


def test_retry_after_is_honoured_and_capped():
    waits: list[float] = []
    rec = Recorder(
        httpx.Response(429, headers={"Retry-After": "7"}),
        httpx.Response(503, headers={"Retry-After": "600"}),
        matrix([]),
    )
    mock_client(rec, sleep=waits.append).query_range(RangeQuery("x", *day_window(FEB1), 3600))
    assert waits == [7.0, 60.0]


def test_retry_on_transport_error():
    calls = []

    def handler(request):
        calls.append(1)
        if len(calls) < 3:
            raise httpx.ReadTimeout("timed out", request=request)
        return matrix([])

    assert mock_client(handler).query_range(RangeQuery("x", *day_window(FEB1), 3600)) == []
    assert len(calls) == 3


def test_exhausted_message_after_four_attempts():
    waits: list[float] = []
    c = mock_client(Recorder(httpx.Response(502, text="bad gateway")), sleep=waits.append)
    with pytest.raises(MetricsQueryError) as err:
        c.query_range(RangeQuery("x", *day_window(FEB1), 3600))
    assert str(err.value) == (
        "Exhausted 4 attempts for http://prom.example/prometheus/api/v1/query_range: HTTP 502: bad gateway"
    )
    assert c.request_count == 4 and len(waits) == 3


def test_http_400_is_not_retried():
    c = mock_client(Recorder(httpx.Response(400, text="x" * 300)))
    with pytest.raises(MetricsQueryError) as err:
        c.query_range(RangeQuery("x", *day_window(FEB1), 3600))
    assert str(err.value) == "HTTP 400: " + "x" * 200
    assert c.request_count == 1


def test_credentials_never_in_errors_or_logs(caplog):
    caplog.set_level(logging.DEBUG)
    echo = "denied for alice:hunter2-secret bob:urlpass-7 token tok-secret-9"
    for kw in (
        {"auth_type": "basic", "username": "alice", "password": "hunter2-secret"},
        {"auth_type": "bearer", "bearer_token": "tok-secret-9"},
        {},  # credentials only in the URL's user-info
    ):
        caplog.clear()
        rec = Recorder(httpx.Response(500, text=echo))
        c = mock_client(rec, url="http://bob:urlpass-7@prom.example/p", **kw)
        with pytest.raises(MetricsQueryError) as err:
            c.query_range(RangeQuery("x", *day_window(FEB1), 3600))
        text = str(err.value) + "\n".join(r.getMessage() for r in caplog.records) + repr(c)
        for secret in ("hunter2-secret", "tok-secret-9", "urlpass-7"):
            if secret in (kw.get("password"), kw.get("bearer_token"), "urlpass-7"):
                assert secret not in text
        assert str(err.value).startswith(
            "Exhausted 4 attempts for http://prom.example/p/api/v1/query_range: "
        )
        assert rec.requests[0].url.userinfo == b""
    # URL user-info alone becomes Basic auth
    assert rec.requests[0].headers["authorization"] == "Basic " + base64.b64encode(b"bob:urlpass-7").decode()


def test_query_range_many_dedupes_and_caps_concurrency():
    lock = threading.Lock()
    state = {"in_flight": 0, "max": 0, "calls": 0}

    def handler(request):
        with lock:
            state["in_flight"] += 1
            state["calls"] += 1
            state["max"] = max(state["max"], state["in_flight"])
        time.sleep(0.05)
        with lock:
            state["in_flight"] -= 1
        if "fail" in parse_qs(request.content.decode())["query"][0]:
            return httpx.Response(400, text="nope")
        return matrix([])

    c = mock_client(handler, max_workers=3)
    qs = [RangeQuery(f"q{i}", *day_window(FEB1), 3600) for i in range(10)]
    failing = RangeQuery("fail", *day_window(FEB1), 3600)
    results = c.query_range_many(qs + qs[:5] + [failing, failing])
    assert state["calls"] == 11 == c.request_count
    assert state["max"] == 3
    assert set(results) == set(qs) | {failing}
    assert all(results[q] == [] for q in qs)
    assert isinstance(results[failing], MetricsQueryError) and str(results[failing]) == "HTTP 400: nope"


# --------------------------------------------------------------------------------------- pure helpers


def test_day_window_and_reduce_series():
    assert day_window(FEB1) == (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 2, 2, tzinfo=UTC))
    rows = reduce_series(
        [
            Series({"team": "b"}, [(1.0, 2.0), (2.0, 5.0)]),
            Series({"team": "a"}, [(1.0, 1.0)]),
            Series({"team": "b"}, [(3.0, 1.0)]),
            Series({"team": "c"}, []),
        ]
    )
    assert rows == [({"team": "a"}, 1.0, 1.0, 1), ({"team": "b"}, 8.0, 5.0, 3), ({"team": "c"}, 0.0, 0.0, 0)]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("sum by (team) (x)", ("by", ("team",))),
        ("sum(rate(x[5m])) by (a, b)", ("by", ("a", "b"))),
        ('max by (b) (sum by (a) (x{by="c"}))', ("by", ("b",))),
        ("sum without (host) (x)", ("without", ("host",))),
        ('x{team="a"}', ("none", ())),
        ("sum(x)", ("none", ())),
        ("sum by (principal) (increase(y[{step}])) * 8", ("by", ("principal",))),
        # the outermost aggregation: the first at the smallest parenthesis depth
        ("abs(sum by (a) (x)) + sum by (b) (y)", ("by", ("b",))),
        ("sum by (a) (x) / on (c) group_left (d) sum by (b) (y)", ("by", ("a",))),
        ("SUM BY (a) (x) # by (z)\n", ("by", ("a",))),
        ('count_values("by", x) without (host)', ("without", ("host",))),
    ],
)
def test_grouping_labels(query, expected):
    assert grouping_labels(query) == expected


def test_grouping_labels_of_invalid_promql_is_an_error():
    # the parser says what is wrong (a query is only read after Prometheus accepted it)
    with pytest.raises(ValueError, match="^unclosed left parenthesis$"):
        grouping_labels("sum by (team) (usage")


def test_openmetrics_writer():
    w = OpenMetricsWriter()
    w.add("b_total", {"t": "x"}, [(20.0, 2), (10.0, 1)], type="counter")
    w.add("a", {"t": 'q"\\'}, [(datetime(2026, 2, 1, tzinfo=UTC), 1.5)])
    w.add("a", {}, [(5, float("nan"))])
    assert w.text() == (
        "# TYPE a gauge\n"
        "a NaN 5\n"
        'a{t="q\\"\\\\"} 1.5 1769904000\n'
        "# TYPE b counter\n"
        'b_total{t="x"} 1 10\n'
        'b_total{t="x"} 2 20\n'
        "# EOF\n"
    )
    with pytest.raises(ValueError, match="_total"):
        w.add("c", {}, [], type="counter")
    with pytest.raises(ValueError):
        w.add("a", {}, [], type="counter")


def test_local_prometheus_context_manager(tmp_path: Path):
    w = OpenMetricsWriter().add("m", {"k": "v"}, [(midnight(BASE), 3)])
    with LocalPrometheus(w.text(), tmp_path) as prom:
        assert prom.running
        body = httpx.post(f"{prom.url}/api/v1/query", data={"query": "m", "time": str(ts(BASE))}).json()
        assert json.dumps(body["data"]["result"][0]["value"][1]) == '"3"'
    assert not prom.running
