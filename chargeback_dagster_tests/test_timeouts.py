"""Request time limits are totals, and the run's deadline stops an in-flight request (issue 12 §2).

A real HTTP server on 127.0.0.1 answers every request with headers at once and then trickles its body, one
byte every 0.2 s: each socket read succeeds, so only a limit on the whole request can end it. Each test runs
the client in a thread with a bounded wait, so code without such a limit fails the test instead of hanging.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest
import yaml

from chargeback_dagster import tenant_ops
from chargeback_dagster.config import load_config
from chargeback_dagster.defs.build import build_definitions
from chargeback_dagster.devtools.local_run import materialize_range
from chargeback_dagster.ecosystems.confluent_cloud.client import ConfluentApiError, ConfluentClient
from chargeback_dagster.sources.prometheus import MetricsQueryError, PrometheusClient, RangeQuery, day_window
from chargeback_dagster_tests.test_cli import ccloud_tenant, kafka_tenant, run_cli
from chargeback_dagster_tests.test_operations import (
    closed_port_url,
    step_failures,
    tenant_config,
    write_config,
)

BYTE_INTERVAL = 0.2
BODY_BYTES = 10_000  # 2,000 s at one byte per 0.2 s: never completes within a test
BOUND = 30.0  # seconds a test waits for the client before failing


class TricklingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Trickle)
        self.stop = threading.Event()
        self.paths: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Trickle(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: TricklingServer

    def do_GET(self) -> None:
        self.server.paths.append(self.path.split("?")[0])
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(BODY_BYTES))
        self.end_headers()
        try:
            for _ in range(BODY_BYTES):
                if self.server.stop.wait(BYTE_INTERVAL):
                    break
                self.wfile.write(b" ")  # JSON whitespace
                self.wfile.flush()
        except OSError:  # the client gave up
            pass
        self.close_connection = True

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def trickle() -> Iterator[TricklingServer]:
    server = TricklingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.stop.set()
    server.shutdown()
    server.server_close()


def bounded(server: TricklingServer, call: Callable[[], object]) -> tuple[object, float]:
    """`call()`'s result (or the exception it raised) and its duration; fails the test when it is still
    running after BOUND seconds (the server then stops trickling so the thread ends)."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:
            outcome.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(BOUND)
    elapsed = time.monotonic() - started
    if thread.is_alive():
        server.stop.set()
        thread.join(10)
        pytest.fail(f"still waiting for the trickling response after {BOUND:g} s")
    return outcome[0], elapsed


# --- the total time limit of one request ---------------------------------------------------------------
def test_prometheus_request_has_a_total_time_limit(trickle):
    waits: list[float] = []
    client = PrometheusClient(trickle.url, timeout=1.0, sleep=waits.append)
    error, elapsed = bounded(trickle, client.check)
    assert isinstance(error, MetricsQueryError)
    assert str(error) == (
        f"Exhausted 4 attempts for {trickle.url}/api/v1/query: "
        "ReadTimeout: no complete response within the total time limit of 1 s"
    )
    assert trickle.paths == ["/api/v1/query"] * 4
    assert len(waits) == 3  # the retry policy is unchanged
    assert 4 * 1.0 <= elapsed < 4 * 1.0 + 2.0  # four attempts of 1 s each


def test_confluent_request_has_a_total_time_limit(trickle):
    client = ConfluentClient(
        trickle.url, "key", "secret-text", timeout=2.0, max_attempts=1, min_interval=0, sleep=lambda s: None
    )
    error, elapsed = bounded(trickle, lambda: client.get("/org/v2/environments", {"page_size": 10}))
    assert isinstance(error, ConfluentApiError)
    assert str(error) == (
        "GET /org/v2/environments failed after 1 attempts: "
        "no complete response within the total time limit of 2 s"
    )
    assert 2.0 <= elapsed < 2.0 + 2.0


# --- the run's deadline stops a request in flight (docs/operations.md §6) ------------------------------
def test_deadline_stops_a_confluent_request_in_flight(trickle):
    deadline = tenant_ops.Deadline(2, tenant_ops.clock())  # 2 s left, far less than the 30 s request limit
    client = ConfluentClient(
        trickle.url,
        "key",
        "secret-text",
        min_interval=0,
        check_deadline=deadline.check,
        deadline_left=deadline.seconds_left,
    )
    error, elapsed = bounded(trickle, lambda: client.get("/org/v2/environments"))
    assert isinstance(error, tenant_ops.ExecutionTimeout)
    assert str(error) == "Execution timed out after 2s"
    assert trickle.paths == ["/org/v2/environments"]  # stopped, not retried
    assert elapsed < 2.0 + 2.0


def test_deadline_ends_every_query_of_a_prometheus_fetch(trickle):
    deadline = tenant_ops.Deadline(2, tenant_ops.clock())
    client = PrometheusClient(
        trickle.url,
        max_workers=2,
        sleep=deadline.wrap_sleep(time.sleep),
        deadline_left=deadline.seconds_left,
    )
    queries = [RangeQuery(f"sum(q{i})", *day_window(date(2026, 2, 1)), 60) for i in range(3)]
    # the run's timeout, not three "failed" queries to store and retry in the next run
    error, elapsed = bounded(trickle, lambda: client.query_range_many(queries))
    assert isinstance(error, tenant_ops.ExecutionTimeout)
    assert str(error) == "Execution timed out after 2s"
    assert trickle.paths == ["/api/v1/query_range"] * 2  # the third, due after the deadline: never sent
    assert elapsed < 2.0 + 2.0


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def test_deadline_stops_a_prometheus_request_in_flight_in_a_run(tmp_path, trickle, instance):
    # a generic tenant whose inventory step asks Prometheus for its identities: the trickling server
    tenant = tenant_config(trickle.url, discovery=True, tenant_execution_timeout_seconds=3)
    defs = build_definitions(load_config(write_config(tmp_path / "c.yaml", {"shop": tenant})))
    day = date(2026, 2, 1)
    result, elapsed = bounded(trickle, lambda: materialize_range(defs, "shop", day, day, instance=instance))
    assert isinstance(result, dg.ExecuteInProcessResult) and not result.success
    assert "Execution timed out after 3s" in step_failures(result)["shop__inventory"]
    assert trickle.paths == ["/api/v1/query_range"]
    assert elapsed < 3 + 6  # the deadline counts from run start; the run itself takes a few seconds


def confluent_config(path: Path, api_url: str, timeout_seconds: int) -> Path:
    tenant = {
        "ecosystem": "confluent_cloud",
        "tenant_id": "acme",
        "partitions_start_date": "2026-01-01",
        "tenant_execution_timeout_seconds": timeout_seconds,
        "storage": {"connection_string": "sqlite:///data/ccloud.db"},
        "plugin_settings": {
            "ccloud_api": {"key": "key", "secret": "secret-text", "base_url": api_url},
            "metrics": {"url": closed_port_url()},
            "emitters": [{"type": "csv", "params": {"output_dir": "out"}}],
        },
    }
    path.write_text(yaml.safe_dump({"tenants": {"ccloud": tenant}}, sort_keys=False))
    return path


def test_deadline_stops_a_confluent_request_in_flight_in_a_run(tmp_path, trickle, instance):
    defs = build_definitions(load_config(confluent_config(tmp_path / "c.yaml", trickle.url, 3)))
    day = date(2026, 2, 1)
    result, elapsed = bounded(trickle, lambda: materialize_range(defs, "ccloud", day, day, instance=instance))
    assert isinstance(result, dg.ExecuteInProcessResult) and not result.success
    failures = step_failures(result)
    assert failures, "the run failed without a step failure"
    for step_key, error in failures.items():  # billing and inventory both wait on the Confluent API
        assert "Execution timed out after 3s" in error, step_key
    assert trickle.paths  # a request was in flight
    assert elapsed < 3 + 6


class _EmptyPrometheus(BaseHTTPRequestHandler):
    """Answers every query at once with no series."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"status":"success","data":{"resultType":"matrix","result":[]}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_deadline_stops_the_kafka_admin_metadata_wait_in_a_run(tmp_path, instance):
    # billing finds no usage at once; the inventory asks a "broker" that accepts connections and never
    # answers, so librdkafka waits for metadata (30 s at most)
    prometheus = ThreadingHTTPServer(("127.0.0.1", 0), _EmptyPrometheus)
    threading.Thread(target=prometheus.serve_forever, daemon=True).start()
    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    try:
        prometheus_url = f"http://127.0.0.1:{prometheus.server_address[1]}"
        tenant = kafka_tenant("sqlite:///data/k.db", f"127.0.0.1:{silent.getsockname()[1]}", prometheus_url)
        tenant["tenant_execution_timeout_seconds"] = 4
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({"tenants": {"onprem": tenant}}, sort_keys=False))
        defs = build_definitions(load_config(config))
        day = date(2026, 2, 1)
        started = time.monotonic()
        result = materialize_range(defs, "onprem", day, day, instance=instance)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        for conn in held:
            conn.close()
        silent.close()
        prometheus.shutdown()
        prometheus.server_close()
    failures = step_failures(result)
    assert list(failures) == ["onprem__inventory"]
    assert "Execution timed out after 4s" in failures["onprem__inventory"]
    assert elapsed < 4 + 6  # not the 30 s metadata timeout


# --- validate --check-connections (its 5 s limit per remote is a total) --------------------------------
def test_check_connections_limits_trickling_remotes(tmp_path, trickle):
    config = tmp_path / "c.yaml"
    tenant = ccloud_tenant("sqlite:///data/cc.db", trickle.url, "secret-text", trickle.url)
    config.write_text(yaml.safe_dump({"tenants": {"cc": tenant}}, sort_keys=False))
    result, elapsed = bounded(
        trickle, lambda: run_cli("validate", "--check-connections", "--config", str(config))
    )
    assert not isinstance(result, BaseException), result
    assert (result.returncode, result.stderr) == (1, "")
    assert result.stdout.splitlines() == [
        "tenant 'cc': database: OK",
        "tenant 'cc': cannot reach Confluent Cloud API: GET /org/v2/environments failed after 1 attempts: "
        "no complete response within the total time limit of 5 s",
        "tenant 'cc': cannot reach Prometheus: no complete response within the total time limit of 5 s",
    ]
    assert elapsed < 2 * 5 + 5  # two remotes of 5 s each, plus the CLI's start
