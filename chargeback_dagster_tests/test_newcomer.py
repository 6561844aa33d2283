"""The newcomer path (README quick start, `demo --ui`) and `chargeback-dagster status` after runs that no
run-status sensor closed."""

from __future__ import annotations

import csv
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import httpx
import pytest
import yaml

from chargeback_dagster import cli, tenant_ops
from chargeback_dagster.config import load_config
from chargeback_dagster.defs.build import build_definitions
from chargeback_dagster.devtools.demo import demo_metrics
from chargeback_dagster.devtools.local_run import materialize_range
from chargeback_dagster.store import TenantStore

REPO = Path(__file__).resolve().parents[1]
DATES = (date(2026, 2, 1), date(2026, 2, 2))
PARTITION_STATS = """
query($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode { partitionStats { numMaterialized numFailed } }
  }
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    """This checkout's package first; no DAGSTER_HOME or DAGSTER_PG_* from the caller's shell."""
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME" and not k.startswith("DAGSTER_PG_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


class Output:
    """A child's stdout lines, read by a thread so waiting for one never blocks on the pipe."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [self._queue.put(line) for line in proc.stdout], daemon=True).start()

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} (exit code {self.proc.poll()}):\n{''.join(self.lines)}")


def refused(url: str) -> bool:
    try:
        httpx.get(url, timeout=5)
    except httpx.ConnectError:
        return True
    return False


def shop_config(tmp_path) -> dict:
    """A tenant with fixed costs and static identities: runs need no Prometheus."""
    return {
        "tenants": {
            "shop": {
                "ecosystem": "generic_metrics_only",
                "tenant_id": "shop-prod",
                "partitions_start_date": "2026-01-01",
                "storage": {"connection_string": "sqlite:///data/shop.db"},
                "plugin_settings": {
                    "cluster_id": "shop-cluster",
                    "metrics": {"url": "http://127.0.0.1:9"},  # never queried
                    "identity_source": {
                        "source": "static",
                        "static_identities": [{"identity_id": "team-a", "identity_type": "principal"}],
                    },
                    "cost_types": [
                        {
                            "name": "broker_hours",
                            "product_category": "compute",
                            "rate": 1.25,
                            "cost_quantity": {"type": "fixed", "count": 2},
                        }
                    ],
                    "emitters": [{"type": "csv", "params": {"output_dir": str(tmp_path / "out")}}],
                },
            }
        }
    }


def status_output(capsys, config_path) -> list[str]:
    assert cli.main(["status", "--config", str(config_path)]) == 0
    return capsys.readouterr().out.splitlines()


def open_shop(config_path) -> TenantStore:
    tenant = load_config(config_path).tenants["shop"]
    return TenantStore.open(
        tenant.database_url, tenant_name="shop", ecosystem=tenant.ecosystem, tenant_id=tenant.tenant_id
    )


def test_status_does_not_report_a_finished_run_as_running(tmp_path, monkeypatch, capsys):
    """A run without a daemon (no run-status sensor closes its audit row) that finished is shown as ended;
    with its Dagster instance (DAGSTER_HOME) as completed."""
    config_path = tmp_path / "chargeback.yaml"
    config_path.write_text(yaml.safe_dump(shop_config(tmp_path)))
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv(
        tenant_ops.HEARTBEAT_ENV, "0.2"
    )  # the finished run's heartbeat thread frees the lock fast
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    defs = build_definitions(load_config(config_path))
    with dg.DagsterInstance.get() as instance:
        result = materialize_range(defs, "shop", *DATES, instance=instance)
        end = instance.get_run_record_by_id(result.run_id).end_time
    assert result.success
    monkeypatch.delenv("DAGSTER_HOME")
    store = open_shop(config_path)
    assert store.state.get_run(result.run_id)["status"] == "running"  # nobody closed it
    for _ in range(50):
        if store.state.run_lock_holder() is None:
            break
        time.sleep(0.1)
    assert store.state.run_lock_holder() is None

    lines = status_output(capsys, config_path)
    assert lines[-1] == (
        f"  last run: {result.run_id} ended (manual; it no longer holds the tenant lock; outcome unknown "
        "without its Dagster instance (DAGSTER_HOME), audit row not closed)"
    )

    monkeypatch.setenv("DAGSTER_HOME", str(home))
    ended = datetime.fromtimestamp(end, UTC).replace(microsecond=0).isoformat()
    lines = status_output(capsys, config_path)
    assert lines[-1] == (
        f"  last run: {result.run_id} completed (manual; ended at {ended} per Dagster, audit row not closed)"
    )
    store.dispose()


def test_status_judges_unclosed_runs_by_the_lock_heartbeat(tmp_path, monkeypatch, capsys):
    config_path = tmp_path / "chargeback.yaml"
    config_path.write_text(yaml.safe_dump(shop_config(tmp_path)))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert cli.main(["migrate", "--config", str(config_path)]) == 0
    store = open_shop(config_path)
    now = datetime.now(UTC).replace(microsecond=0)

    # a run killed with SIGKILL: its audit row says running, its lock heartbeat stopped 5 minutes ago
    store.state.upsert_run("killed-run", started_at=now - timedelta(minutes=6))
    assert store.state.try_take_run_lock("killed-run", now - timedelta(seconds=300))
    capsys.readouterr()
    assert status_output(capsys, config_path)[-1] == (
        "  last run: killed-run ended (manual; its process stopped: lock heartbeat 300s old, takeover after "
        "60s; outcome unknown, audit row not closed)"
    )

    # a live run: fresh heartbeat
    assert store.state.touch_run_lock("killed-run", now - timedelta(seconds=2))
    line = status_output(capsys, config_path)[-1]
    assert line.startswith("  last run: killed-run running (manual; lock heartbeat ") and line.endswith(
        "s ago)"
    )

    # a closed row is shown as written
    store.state.end_runs(["killed-run"], status="failed", at=now, error="boom")
    assert status_output(capsys, config_path)[-1] == "  last run: killed-run failed (manual)"
    store.dispose()


@pytest.mark.slow
def test_demo_ui_serves_the_materialized_demo_days_until_ctrl_c(tmp_path):
    port = free_port()
    workdir = tmp_path / "demo"
    args = ["demo", "--ui", "--workdir", str(workdir), "--days", "2", "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "chargeback_dagster.cli", *args],
        cwd=tmp_path,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = Output(proc)
    try:
        assert out.wait_for("Dagster UI:", timeout=400).startswith(f"Dagster UI: http://127.0.0.1:{port} ")
        config = yaml.safe_load((workdir / "chargeback.yaml").read_text())
        prometheus = config["tenants"]["search_cluster"]["plugin_settings"]["metrics"]["url"]
        simulator = config["tenants"]["confluent_org"]["plugin_settings"]["ccloud_api"]["base_url"]
        graphql = f"http://127.0.0.1:{port}/graphql"
        for tenant in ("search_cluster", "confluent_org"):
            body = httpx.post(
                graphql,
                json={"query": PARTITION_STATS, "variables": {"key": {"path": [tenant, "chargeback"]}}},
                timeout=30,
            ).json()
            # the two demo days, materialized by the demo's runs in the instance dagster dev serves
            stats = body["data"]["assetNodeOrError"]["partitionStats"]
            assert stats == {"numMaterialized": 2, "numFailed": 0}
        # Prometheus and the Confluent Cloud simulator are still up for runs launched from the UI
        assert httpx.get(f"{prometheus}/-/ready", timeout=5).status_code == 200
        assert not refused(simulator)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        code = proc.wait(timeout=90)
    out.wait_for("Stopping ...", timeout=5)
    assert code == 0
    assert refused(graphql) and refused(prometheus) and refused(simulator)


# --- the README's quick start, run as written -------------------------------------------------------------
def readme_block(containing: str, lang: str = "bash") -> str:
    """The README code block (```lang) that contains `containing`."""
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(rf"^```{lang}\n(.*?)^```", readme, flags=re.S | re.M)
    found = [b for b in blocks if containing in b]
    assert len(found) == 1, f"{len(found)} README {lang} blocks contain {containing!r}"
    return found[0]


def fresh_checkout(tmp_path: Path) -> Path:
    """The top-level files the README's commands read, in a new folder (the package comes from PYTHONPATH)."""
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("dagster.yaml", "workspace.yaml"):
        shutil.copy(REPO / name, clone / name)
    shutil.copytree(REPO / "examples", clone / "examples")
    return clone


@pytest.mark.slow
def test_readme_first_tenant_commands_work_from_the_repo_root(tmp_path, local_prometheus_factory):
    """`validate`, `migrate` and `dagster asset materialize --select 'key:"search_cluster/*"'` on
    examples/generic.yaml from the repo root, without DAGSTER_HOME, against a Prometheus with the metrics it
    queries (the demo's)."""
    today = datetime.now(UTC).date()
    days = [today - timedelta(days=n) for n in (3, 2, 1)]
    start = datetime.combine(days[0], datetime.min.time(), tzinfo=UTC) - timedelta(hours=1)
    prom = local_prometheus_factory(demo_metrics(start, datetime.now(UTC).replace(microsecond=0)))
    clone = fresh_checkout(tmp_path)
    block = readme_block("dagster asset materialize -m chargeback_dagster.definitions")
    script = block[block.index("export CHARGEBACK_CONFIG_FILE=examples/generic.yaml") :]
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=clone,
        env=subprocess_env(PROMETHEUS_URL=prom.url),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert "Config is valid." in result.stdout
    assert "tenant 'search_cluster': database is up to date" in result.stdout
    for day in days:
        with (clone / "examples" / "output" / "daily" / f"search_{day}.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        # 3 nodes × 24 h × 2.50 = 180.00 a day, split evenly among the 4 identities (3 discovered + 1 static)
        node_hours = {r["identity_id"]: r["amount"] for r in rows if r["product_type"] == "NODE_HOURS"}
        assert node_hours == dict.fromkeys(
            ("team-ads", "team-labs", "team-platform", "team-search"), "45.0000"
        )
    assert not list(clone.glob(".tmp_dagster_home_*"))  # the temporary instance folder is gone


@pytest.mark.slow
def test_readme_graphql_snippet_against_dagster_dev_started_the_readme_way(tmp_path):
    """`dagster dev` as README "1. One machine" starts it; then the README's GraphQL snippet, as written
    (only the port differs): a 3-date backfill and one run finish, and a launch error is printed."""
    from chargeback_dagster_tests.test_dagster_services import tenant_yaml

    clone = fresh_checkout(tmp_path)
    out = tmp_path / "out"
    config = tmp_path / "shop.yaml"
    config.write_text(yaml.safe_dump(tenant_yaml(f"sqlite:///{tmp_path / 'shop.db'}", out)))
    port = free_port()
    lines = readme_block("dagster dev").splitlines()
    (dev,) = [i for i, line in enumerate(lines) if line.startswith("dagster dev ")]
    lines[dev] = f"exec {lines[dev].split('#')[0].strip()} -p {port}"
    log = (tmp_path / "dagster-dev.log").open("wb")
    proc = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", "\n".join(lines[: dev + 1])],
        cwd=clone,
        env=subprocess_env(CHARGEBACK_CONFIG_FILE=str(config)),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    snippet = readme_block("launchRun", "python").replace("127.0.0.1:3000", f"127.0.0.1:{port}")
    try:
        wait_for_location(f"http://127.0.0.1:{port}/graphql", proc, tmp_path / "dagster-dev.log")
        run = subprocess.run(
            [sys.executable, "-c", snippet], env=subprocess_env(), capture_output=True, text=True, timeout=400
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert run.stdout.splitlines()[-1] == "COMPLETED_SUCCESS SUCCESS"
        for day in ("2026-02-01", "2026-02-02", "2026-02-03", "2026-02-04"):
            with (out / f"shop-prod_{day}.csv").open(newline="") as fh:
                # 2 brokers × 24 h × 1.25 = 60.00, split evenly between the two static identities
                assert [(r["identity_id"], r["amount"]) for r in csv.DictReader(fh)] == [
                    ("team-a", "30.0000"),
                    ("team-b", "30.0000"),
                ]
        # the location name `dagster dev -m chargeback_dagster.definitions` would have given
        wrong = snippet.replace('"chargeback_dagster"', '"chargeback_dagster.definitions"')
        run = subprocess.run(
            [sys.executable, "-c", wrong], env=subprocess_env(), capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 1
        assert run.stderr.strip().splitlines() == [
            "PipelineNotFoundError: Could not find Pipeline "
            "chargeback_dagster.definitions.__repository__.shop_pipeline"
        ]
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


def wait_for_location(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    query = (
        "{ workspaceOrError { ... on Workspace { locationEntries { name "
        "locationOrLoadError { __typename } } } } }"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            entries = httpx.post(url, json={"query": query}, timeout=10).json()["data"]["workspaceOrError"]
            entries = entries["locationEntries"]
            if entries and entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation":
                assert [e["name"] for e in entries] == ["chargeback_dagster"]
                return
        except (httpx.HTTPError, KeyError, TypeError, ValueError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"dagster dev did not come up: {log.read_text()[-3000:]}")
