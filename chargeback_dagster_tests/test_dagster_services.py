"""A real deployment: dagster-webserver + dagster-daemon on PostgreSQL instance storage, driven over GraphQL.

The shipped deploy/dagster-postgres.yaml and workspace.yaml are used as they are (only the dequeue and
run-monitoring intervals are shortened); DAGSTER_HOME is a temporary folder, the ports are free random ports.
The tenant is a generic_metrics_only tenant with fixed costs and static identities: no Prometheus needed.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[1]
LOCATION = "chargeback_dagster"
TENANT_ASSETS = [["shop", name] for name in ("billing", "inventory", "usage_metrics", "chargeback")]
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}

LAUNCH_RUN = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
  }
}"""
LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""
RUN = """
query($id: ID!) {
  runOrError(runId: $id) {
    __typename
    ... on Run { runId status startTime endTime tags { key value } }
  }
}"""
BACKFILL = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { id status }
  }
}"""
BACKFILL_RUNS = """
query($id: String!) {
  runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
    ... on Runs { results { runId status startTime endTime tags { key value } } }
  }
}"""
STEP_FAILURES = """
query($id: ID!) {
  logsForRun(runId: $id) {
    ... on EventConnection { events { __typename ... on ExecutionStepFailureEvent { error { message } } } }
  }
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Dagster:
    """The two processes and a tiny GraphQL client."""

    def __init__(self, home: Path, env: dict[str, str]):
        self.home, self.env = home, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/graphql"
        self.procs: list[subprocess.Popen] = []
        self.http = httpx.Client(timeout=30)

    def start(self) -> None:
        workspace = str(REPO / "workspace.yaml")
        bin_dir = Path(sys.executable).parent
        for name, args in (
            ("webserver", ["dagster-webserver", "-h", "127.0.0.1", "-p", str(self.port), "-w", workspace]),
            ("daemon", ["dagster-daemon", "run", "-w", workspace]),
        ):
            args[0] = str(bin_dir / args[0]) if (bin_dir / args[0]).exists() else args[0]
            log = (self.home / f"{name}.log").open("wb")
            self.procs.append(
                subprocess.Popen(args, cwd=self.home, env=self.env, stdout=log, stderr=subprocess.STDOUT)
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                data = self.gql(
                    "{ workspaceOrError { ... on Workspace { locationEntries { name "
                    "locationOrLoadError { __typename } } } } }"
                )
                entries = data["workspaceOrError"]["locationEntries"]
                if entries and entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation":
                    return
                if entries and entries[0]["locationOrLoadError"]["__typename"] == "PythonError":
                    raise AssertionError(f"code location failed to load: {self.logs()}")
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"webserver did not come up: {self.logs()}")

    def logs(self) -> str:
        return "\n".join((self.home / f"{n}.log").read_text()[-3000:] for n in ("webserver", "daemon"))

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.http.close()

    def gql(self, query: str, **variables) -> dict:
        response = self.http.post(self.url, json={"query": query, "variables": variables})
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def launch_run(self, job: str, tags: dict[str, str], assets: list[list[str]] | None = None) -> str:
        selector = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "jobName": job}
        if assets:
            selector["assetSelection"] = [{"path": p} for p in assets]
        params = {
            "selector": selector,
            "runConfigData": {},
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
        }
        result = self.gql(LAUNCH_RUN, params=params)["launchRun"]
        assert result["__typename"] == "LaunchRunSuccess", result
        return result["run"]["runId"]

    def run(self, run_id: str) -> dict:
        return self.gql(RUN, id=run_id)["runOrError"]

    def wait_runs(self, run_ids: list[str], timeout: float) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = {r: self.run(r) for r in run_ids}
            if all(run["status"] in FINISHED for run in runs.values()):
                return runs
            time.sleep(1)
        raise AssertionError(f"runs did not finish: {runs}\n{self.logs()}")

    def step_failures(self, run_id: str) -> list[str]:
        events = self.gql(STEP_FAILURES, id=run_id)["logsForRun"]["events"]
        return [e["error"]["message"] for e in events if e["__typename"] == "ExecutionStepFailureEvent"]


def tenant_yaml(db_url: str, out: Path) -> dict:
    return {
        "features": {"enable_periodic_refresh": False, "max_parallel_tenants": 4},
        "tenants": {
            "shop": {
                "ecosystem": "generic_metrics_only",
                "tenant_id": "shop-prod",
                "partitions_start_date": "2026-01-01",
                "lookback_days": 30,
                "cutoff_days": 2,
                "storage": {"connection_string": db_url},
                "plugin_settings": {
                    "cluster_id": "shop-cluster",
                    "metrics": {"url": "http://127.0.0.1:9"},  # never queried: fixed costs, static ids
                    "identity_source": {
                        "source": "static",
                        "static_identities": [
                            {"identity_id": "team-a", "identity_type": "principal"},
                            {"identity_id": "team-b", "identity_type": "principal"},
                        ],
                    },
                    "cost_types": [
                        {
                            "name": "broker_hours",
                            "product_category": "compute",
                            "rate": 1.25,
                            "cost_quantity": {"type": "fixed", "count": 2},
                        }
                    ],
                    "emitters": [{"type": "csv", "params": {"output_dir": str(out)}}],
                },
            }
        },
    }


@pytest.fixture
def dagster_services(tmp_path, make_pg_database):
    instance_url = make_url(make_pg_database())
    home = tmp_path / "dagster_home"
    home.mkdir()
    instance_yaml = yaml.safe_load((REPO / "deploy" / "dagster-postgres.yaml").read_text())
    instance_yaml["run_coordinator"]["config"]["dequeue_interval_seconds"] = 1  # test speed only
    instance_yaml["run_monitoring"]["poll_interval_seconds"] = 5
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml))
    out = tmp_path / "out"
    config = tmp_path / "chargeback.yaml"
    config.write_text(yaml.safe_dump(tenant_yaml(make_pg_database(), out)))
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_USER": instance_url.username or "postgres",
        "DAGSTER_PG_PASSWORD": instance_url.password or "unused-with-trust-auth",
        "DAGSTER_PG_HOST": instance_url.host or "127.0.0.1",
        "DAGSTER_PG_PORT": str(instance_url.port or 5432),
        "DAGSTER_PG_DB": instance_url.database,
        "CHARGEBACK_CONFIG_FILE": str(config),
        "PYTHONUNBUFFERED": "1",
    }
    services = Dagster(home, env)
    try:
        services.start()
        yield services, out, config
    finally:
        services.stop()
        shutil.rmtree(home / "storage", ignore_errors=True)


def window(run: dict) -> tuple[float, float]:
    return run["startTime"], run["endTime"]


def overlaps(a: dict, b: dict) -> bool:
    (s1, e1), (s2, e2) = window(a), window(b)
    return s1 < e2 and s2 < e1


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
@pytest.mark.postgres
def test_webserver_and_daemon_over_graphql(dagster_services):
    dagster, out, config = dagster_services
    t0 = time.monotonic()

    # 1. one tenant date through the tenant job (queued by the run queue), and 2. a partition backfill of a
    #    date range (single-run backfill policy → one run); tagged with the tenant so the queue serialises it
    single = dagster.launch_run("shop_pipeline", {"dagster/partition": "2026-02-01"})
    backfill = dagster.gql(
        LAUNCH_BACKFILL,
        params={
            "assetSelection": [{"path": p} for p in TENANT_ASSETS],
            "partitionNames": ["2026-02-02", "2026-02-03", "2026-02-04"],
            "tags": [
                {"key": "chargeback/tenant", "value": "shop"},
                {"key": "chargeback/pipeline", "value": "tenant"},
            ],
        },
    )["launchPartitionBackfill"]
    assert backfill["__typename"] == "LaunchBackfillSuccess", backfill
    backfill_id = backfill["backfillId"]

    runs = dagster.wait_runs([single], timeout=60)
    assert runs[single]["status"] == "SUCCESS", dagster.step_failures(single)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = dagster.gql(BACKFILL, id=backfill_id)["partitionBackfillOrError"]["status"]
        backfill_runs = dagster.gql(BACKFILL_RUNS, id=backfill_id)["runsOrError"]["results"]
        if status == "COMPLETED_SUCCESS" or (backfill_runs and backfill_runs[0]["status"] in FINISHED):
            break
        time.sleep(2)
    (brun,) = backfill_runs  # one run for the whole range
    brun = dagster.wait_runs([brun["runId"]], timeout=30)[brun["runId"]]
    assert brun["status"] == "SUCCESS", dagster.step_failures(brun["runId"])
    tags = {t["key"]: t["value"] for t in brun["tags"]}
    assert (tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"]) == (
        "2026-02-02",
        "2026-02-04",
    )
    assert not overlaps(runs[single], brun)
    t_happy = time.monotonic() - t0

    for d in ("2026-02-01", "2026-02-02", "2026-02-03", "2026-02-04"):
        rows = read_csv(out / f"shop-prod_{d}.csv")
        # 2 brokers × 24 h × 1.25 = 60.00, split evenly between the two static identities
        assert [(r["identity_id"], r["amount"], r["timestamp"]) for r in rows] == [
            ("team-a", "30.0000", f"{d}T00:00:00+00:00"),
            ("team-b", "30.0000", f"{d}T00:00:00+00:00"),
        ]

    # 3. two overlapping runs of one tenant, launched at the same moment, both through the tenant job:
    #    the run queue (tag limit) holds the second until the first ended
    pair = [
        dagster.launch_run(
            "shop_pipeline",
            {
                "dagster/asset_partition_range_start": "2026-02-01",
                "dagster/asset_partition_range_end": "2026-02-04",
            },
        )
        for _ in range(2)
    ]
    # wait first: an untagged run launched now could hold the tenant lock and fail a tagged one fast
    finished = dagster.wait_runs(pair, timeout=90)
    a, b = (finished[r] for r in pair)
    assert a["status"] == b["status"] == "SUCCESS"
    assert not overlaps(a, b)

    # 4. two overlapping untagged asset-graph runs (no tenant tag: the queue cannot see them); the guard's
    #    tenant lock makes the one that would overlap fail fast
    untagged = [
        dagster.launch_run(
            "__ASSET_JOB",
            {
                "dagster/asset_partition_range_start": "2026-02-03",
                "dagster/asset_partition_range_end": "2026-02-04",
            },
            assets=TENANT_ASSETS,
        )
        for _ in range(2)
    ]
    finished.update(dagster.wait_runs(untagged, timeout=90))

    u1, u2 = (finished[r] for r in untagged)
    outcomes = sorted(r["status"] for r in (u1, u2))
    if outcomes == ["FAILURE", "SUCCESS"]:
        failed = u1 if u1["status"] == "FAILURE" else u2
        assert any(
            "Pipeline is already running for tenant shop" in m for m in dagster.step_failures(failed["runId"])
        )
    else:  # the daemon happened to start them one after the other
        assert outcomes == ["SUCCESS", "SUCCESS"] and not overlaps(u1, u2)
    # no two successful runs of the tenant ever executed at the same time
    ok = [r for r in [runs[single], brun, *finished.values()] if r["status"] == "SUCCESS"]
    assert not any(overlaps(x, y) for i, x in enumerate(ok) for y in ok[i + 1 :])

    # the run-status sensors (in the real daemon) closed the audit rows in the tenant database
    from chargeback_dagster.config import load_config
    from chargeback_dagster.store import TenantStore

    tenant = load_config(config).tenants["shop"]
    store = TenantStore.open(
        tenant.database_url, tenant_name="shop", ecosystem=tenant.ecosystem, tenant_id="shop-prod"
    )
    expected = {r["runId"]: ("completed" if r["status"] == "SUCCESS" else "failed") for r in ok}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        audit = {r["dagster_run_id"]: r["status"] for r in store.state.runs()}
        if all(audit.get(run_id) == status for run_id, status in expected.items()):
            break
        time.sleep(2)
    assert all(audit.get(run_id) == status for run_id, status in expected.items()), audit
    store.dispose()
    print(
        f"\nhappy path (1 run + 3-date backfill) {t_happy:.0f}s; total {time.monotonic() - t0:.0f}s; "
        f"{len(ok)} successful runs; untagged pair: {outcomes}"
    )
