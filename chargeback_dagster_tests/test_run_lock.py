"""The tenant run lock across processes and Dagster instances (docs/operations.md §4): a run killed with
SIGKILL is taken over once its heartbeat expires, and a run of another instance holds the lock while it beats.

The holder is a real run in a subprocess (devtools `materialize_range` against a DAGSTER_HOME) of a
generic_metrics_only tenant reading a real Prometheus through a proxy that slows each request, so the run is
still materializing when it is killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import httpx
import pytest
import yaml
from dagster._core.test_utils import create_run_for_test

from chargeback_dagster import tenant_ops
from chargeback_dagster.config import load_config
from chargeback_dagster.defs import guard
from chargeback_dagster.defs.build import build_definitions
from chargeback_dagster.devtools.local_run import materialize_range
from chargeback_dagster.store import TenantStore
from chargeback_dagster_tests.store_helpers import csv_rows
from chargeback_dagster_tests.test_generic_e2e import tenant_yaml, worked_example_metrics

FIRST, LAST = date(2026, 2, 1), date(2026, 2, 4)
HEARTBEAT_SECONDS = 1
TAKEOVER_SECONDS = 5
BUSY = "Pipeline is already running for tenant search"
ROOT = Path(__file__).resolve().parents[1]

HOLDER_SCRIPT = """
import sys
import dagster as dg
from datetime import date
from chargeback_dagster.config import load_config
from chargeback_dagster.defs.build import build_definitions
from chargeback_dagster.devtools.local_run import materialize_range

config, home = sys.argv[1], sys.argv[2]
with dg.DagsterInstance.from_config(home) as instance:
    materialize_range(build_definitions(load_config(config)), "search", date(2026, 2, 1), date(2026, 2, 4),
                      instance=instance)
"""


class SlowProxy:
    """Forwards every request to Prometheus after `delay` seconds; counts the requests served."""

    def __init__(self, target: str, delay: float):
        self.target, self.delay, self.served = target.rstrip("/"), delay, 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                time.sleep(proxy.delay)
                headers = {"Content-Type": self.headers.get("Content-Type", "")} if body else {}
                upstream = httpx.request(
                    self.command, proxy.target + self.path, content=body, headers=headers, timeout=30
                )
                try:
                    self.send_response(upstream.status_code)
                    self.send_header("Content-Type", upstream.headers.get("Content-Type", "application/json"))
                    self.send_header("Content-Length", str(len(upstream.content)))
                    self.end_headers()
                    self.wfile.write(upstream.content)
                except (BrokenPipeError, ConnectionResetError):  # the client was killed
                    return
                proxy.served += 1

            do_GET = do_POST = _forward

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def prometheus(local_prometheus_factory):
    return local_prometheus_factory(worked_example_metrics())


@pytest.fixture
def fast_heartbeat(monkeypatch):
    monkeypatch.setenv("CHARGEBACK_LOCK_HEARTBEAT_SECONDS", str(HEARTBEAT_SECONDS))
    monkeypatch.setenv("CHARGEBACK_LOCK_TAKEOVER_SECONDS", str(TAKEOVER_SECONDS))


def write_config(root: Path, prometheus_url: str, db_url: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "chargeback.yaml"
    path.write_text(yaml.safe_dump(tenant_yaml(prometheus_url, db_url, "out"), sort_keys=False))
    return path


def open_store(db_url: str) -> TenantStore:
    return TenantStore.open(
        db_url, tenant_name="search", ecosystem="generic_metrics_only", tenant_id="search-prod"
    )


def outputs(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "out").rglob("*.csv"))}


def failures(result: dg.ExecuteInProcessResult) -> list[str]:
    return [e.step_failure_data.user_failure_data.description for e in result.all_events if e.is_step_failure]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


class Holder:
    """A run of tenant `search` in a subprocess against its own DAGSTER_HOME, reading Prometheus through a
    slow proxy; entered once it holds the tenant lock and is materializing."""

    def __init__(self, root: Path, prometheus_url: str, db_url: str):
        self.proxy = SlowProxy(prometheus_url, delay=0.5)
        self.config = write_config(root, self.proxy.url, db_url)
        self.home = root / "dagster_home"
        self.home.mkdir()
        (self.home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        self.store = open_store(db_url)
        self.defs = build_definitions(load_config(self.config))

    def __enter__(self) -> Holder:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "DAGSTER_HOME": str(self.home)}
        args = [sys.executable, "-c", HOLDER_SCRIPT, str(self.config), str(self.home)]
        self.process = subprocess.Popen(args, env=env)
        wait_for(self.holds_lock, 90, "the holder to take the lock")
        self.run_id = self.store.state.run_lock_holder()[0]
        return self

    def holds_lock(self) -> bool:
        assert self.process.poll() is None, "the holder ended before it was seen holding the lock"
        return self.store.state.run_lock_holder() is not None and self.proxy.served >= 3

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.proxy.close()
        self.store.dispose()


@pytest.mark.slow
@pytest.mark.postgres
def test_killed_holder_is_taken_over_within_the_takeover_time(
    tmp_path, prometheus, make_pg_database, fast_heartbeat
):
    db_url = make_pg_database()
    with Holder(tmp_path / "run", prometheus.url, db_url) as holder:
        holder.process.send_signal(signal.SIGKILL)
        holder.process.wait(10)
        killed_at = time.monotonic()
        holder.proxy.delay = 0
        with dg.DagsterInstance.from_config(str(holder.home)) as instance:
            # Dagster still reports the killed run as started: only the heartbeat tells it is dead
            assert instance.get_run_by_id(holder.run_id).status == dg.DagsterRunStatus.STARTED
            attempts = []  # (seconds after the kill the attempt started, succeeded)
            while True:
                started = time.monotonic() - killed_at
                result = materialize_range(holder.defs, "search", FIRST, LAST, instance=instance)
                attempts.append((started, result.success))
                if result.success or started > TAKEOVER_SECONDS + 30:
                    break
                assert failures(result) and all(f == BUSY for f in failures(result))
                time.sleep(0.5)
        assert attempts[0][1] is False  # right after the kill the heartbeat is still fresh
        assert attempts[-1][1] is True
        # within the takeover time: no run that started later than the takeover time after the kill (plus
        # up to 2 s of whole-second timestamps) was refused, however long each attempt took
        refused = [at for at, ok in attempts if not ok]
        assert max(refused) < TAKEOVER_SECONDS + 2
        killed = holder.store.state.get_run(holder.run_id)
        assert (killed["status"], killed["error_message"]) == ("failed", tenant_ops.ORPHANED)
        totals = holder.store.chargeback.totals(FIRST, LAST + timedelta(days=1))
        rows = csv_rows(holder.store, FIRST, LAST + timedelta(days=1))

    # a clean run into another database and output dir gives the same bytes and totals
    clean_url = make_pg_database()
    clean_root = tmp_path / "clean"
    clean_defs = build_definitions(load_config(write_config(clean_root, prometheus.url, clean_url)))
    assert materialize_range(clean_defs, "search", FIRST, LAST).success
    assert len(outputs(tmp_path / "run")) == 5  # four days and the month
    assert outputs(tmp_path / "run") == outputs(clean_root)
    clean = open_store(clean_url)
    assert totals == clean.chargeback.totals(FIRST, LAST + timedelta(days=1))
    assert sum(totals.values()) == 3 * 1_807_400  # 180.74 on each of the three days with data
    assert rows == csv_rows(clean, FIRST, LAST + timedelta(days=1))
    clean.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_run_of_another_instance_is_refused_while_the_holder_runs(
    tmp_path, prometheus, backend, request, fast_heartbeat
):
    if backend == "sqlite":
        db_url = f"sqlite:///{tmp_path / 'search.db'}"
    else:
        db_url = request.getfixturevalue("make_pg_database")()
    with Holder(tmp_path / "run", prometheus.url, db_url) as holder:
        # a temporary instance (the CLI without DAGSTER_HOME) does not know the holder's run id
        other = materialize_range(holder.defs, "search", FIRST, LAST, instance=dg.DagsterInstance.ephemeral())
        assert not other.success
        assert failures(other) and all(f == BUSY for f in failures(other))
        assert holder.process.poll() is None and holder.store.state.run_lock_holder()[0] == holder.run_id

        # once the holder's process ends normally the lock is free at once, not after the takeover time
        holder.proxy.delay = 0
        assert holder.process.wait(60) == 0
        assert holder.store.state.run_lock_holder() is None
        again = materialize_range(holder.defs, "search", FIRST, LAST, instance=dg.DagsterInstance.ephemeral())
        assert again.success


def test_lock_time_overrides_must_be_positive_seconds(monkeypatch):
    assert (tenant_ops.heartbeat_seconds(), tenant_ops.takeover_seconds()) == (10, 60)
    monkeypatch.setenv("CHARGEBACK_LOCK_TAKEOVER_SECONDS", "2.5")
    assert tenant_ops.takeover_seconds() == 2.5
    for bad in ("0", "-1", "soon", "inf"):
        monkeypatch.setenv("CHARGEBACK_LOCK_HEARTBEAT_SECONDS", bad)
        with pytest.raises(tenant_ops.StopStep) as err:
            tenant_ops.heartbeat_seconds()
        assert str(err.value) == (
            f"CHARGEBACK_LOCK_HEARTBEAT_SECONDS must be a positive number of seconds, got '{bad}'"
        )


def test_a_run_whose_lock_was_taken_over_stops_at_its_next_check(tmp_path, monkeypatch):
    """A holder that could not beat for the takeover time (frozen host, database out of reach) may have been
    taken over: once it runs again, its next deadline check stops it instead of writing beside the taker."""
    monkeypatch.setenv("CHARGEBACK_LOCK_HEARTBEAT_SECONDS", "0.2")
    store = open_store(f"sqlite:///{tmp_path / 'search.db'}")
    with dg.instance_for_test() as instance:
        run = create_run_for_test(instance, job_name="search_pipeline", status=dg.DagsterRunStatus.STARTED)
        assert tenant_ops.take_lock(store, run.run_id, guard.run_lookup(instance)) is None
        tenant_ops.check_lock_kept("search", run.run_id)  # held: nothing happens
        at = tenant_ops.now_utc() + timedelta(seconds=120)  # as if the holder had been frozen for two minutes
        assert store.state.try_take_run_lock(
            "taker", at, replacing=run.run_id, stale_before=at - timedelta(seconds=60)
        )

        def stopped() -> bool:
            try:
                tenant_ops.check_lock_kept("search", run.run_id)
            except tenant_ops.StopStep as failure:
                assert str(failure) == (
                    "The tenant lock of tenant search was taken over by another run after this run's "
                    "heartbeat expired"
                )
                return True
            return False

        wait_for(stopped, 5, "the holder to notice the takeover")
        assert store.state.run_lock_holder()[0] == "taker"
    store.dispose()
