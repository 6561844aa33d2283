"""`chargeback-dagster demo`: a Confluent Cloud and a generic-metrics tenant end to end on this machine.

* Confluent Cloud: a simulated organisation (devtools/ccloud_simulator/) is served over HTTP on a local
  port; its matching Kafka/Flink usage history is loaded into a real Prometheus (promtool blocks).
* Generic metrics: synthetic metrics for three teams of a search cluster, in the same Prometheus.

Each tenant's assets are materialized for the last N days in one run, then its monthly report for the
month(s) of those days; CSVs are written, and a per-identity summary is printed per tenant. The runs are
recorded in a Dagster instance under `<workdir>/dagster_home` (SQLite), so the Dagster UI shows them. With
`--ui` the demo then keeps Prometheus and the simulator up and runs `dagster dev` (webserver + daemon) on
that instance and the demo config until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import yaml

from chargeback_dagster.config import load_config
from chargeback_dagster.devtools.ccloud_simulator import (
    DEFAULT_KEY,
    DEFAULT_SECRET,
    CCloudSimulator,
    OrgSpec,
    SimulatedOrg,
)
from chargeback_dagster.devtools.local_prometheus import LocalPrometheus
from chargeback_dagster.devtools.local_run import materialize_monthly_reports, materialize_range
from chargeback_dagster.devtools.openmetrics import OpenMetricsWriter

GIB = 2**30
SAMPLE_SECONDS = 300
TEAMS = {"team-search": 60, "team-ads": 30, "team-labs": 10}  # GiB stored; also the traffic weight


def demo_metrics(start: datetime, end: datetime) -> str:
    """Index size per team (gauge) and request/egress counters per team, every 5 minutes."""
    writer = OpenMetricsWriter()
    stamps = [
        start + timedelta(seconds=s) for s in range(0, int((end - start).total_seconds()), SAMPLE_SECONDS)
    ]
    for team, weight in TEAMS.items():
        # storage wiggles a little over the day so every day's mean is slightly different
        size = [(t, weight * GIB * (1 + 0.05 * math.sin(t.timestamp() / 40_000))) for t in stamps]
        writer.add("index_store_size_bytes", {"team": team}, size)
        egress = [(t, float(i * weight * 1_000_000)) for i, t in enumerate(stamps)]
        writer.add("egress_bytes_total", {"team": team}, egress, type="counter")
        requests = [(t, float(i * weight)) for i, t in enumerate(stamps)]
        writer.add("search_requests_total", {"team": team}, requests, type="counter")
    return writer.text()


def combined_openmetrics(*texts: str) -> str:
    """Several OpenMetrics documents (distinct metric families) as one, with a single ``# EOF``."""
    bodies = [t.rstrip().removesuffix("# EOF").rstrip() for t in texts]
    return "\n".join(b for b in bodies if b) + "\n# EOF\n"


def demo_config(prometheus_url: str, ccloud_url: str | None = None) -> dict:
    start = (datetime.now(UTC).date() - timedelta(days=60)).isoformat()
    tenants: dict = {}
    if ccloud_url is not None:
        tenants["confluent_org"] = {
            "ecosystem": "confluent_cloud",
            "tenant_id": "acme-ccloud",
            "partitions_start_date": start,
            "lookback_days": 30,
            "cutoff_days": 1,
            "storage": {"connection_string": "sqlite:///data/confluent_org.db"},
            "plugin_settings": {
                "ccloud_api": {
                    "key": DEFAULT_KEY,
                    "secret": DEFAULT_SECRET,
                    "base_url": ccloud_url,
                    "flink_url_template": ccloud_url,
                },
                "flink": [{"region_id": "us-east-1", "key": DEFAULT_KEY, "secret": DEFAULT_SECRET}],
                "metrics": {"url": prometheus_url},
                "emitters": [{"type": "csv", "params": {"output_dir": "output/confluent_org"}}],
                "topic_attribution": {
                    "enabled": True,
                    "emitters": [{"type": "csv", "params": {"output_dir": "output/confluent_org_topics"}}],
                },
            },
        }
    return {
        "logging": {"level": "INFO"},
        # the demo's Prometheus and simulator hold only the demo days; the refresh sensors would recalculate
        # the whole lookback window (turn them on in the UI to see them work)
        "features": {"enable_periodic_refresh": False},
        "tenants": {
            **tenants,
            "search_cluster": {
                "ecosystem": "generic_metrics_only",
                "tenant_id": "search",
                "partitions_start_date": start,
                "lookback_days": 30,
                "cutoff_days": 1,
                "storage": {"connection_string": "sqlite:///data/search_cluster.db"},
                "plugin_settings": {
                    "cluster_id": "opensearch-prod",
                    "metrics": {"url": prometheus_url},
                    "identity_source": {
                        "source": "prometheus",
                        "label": "team",
                        "discovery_query": "group by (team) (search_requests_total)",
                    },
                    "discovery_window_hours": 24,
                    "cost_types": [
                        {
                            "name": "NODE_HOURS",
                            "product_category": "compute",
                            "rate": "2.50",
                            "cost_quantity": {"type": "fixed", "count": 3},
                        },
                        {
                            "name": "STORAGE",
                            "product_category": "storage",
                            "rate": "0.0001",
                            "cost_quantity": {"type": "storage_gib", "query": "sum(index_store_size_bytes)"},
                            "allocation_strategy": "usage_ratio",
                            "allocation_query": "sum by (team) (index_store_size_bytes)",
                            "allocation_label": "team",
                        },
                        {
                            "name": "EGRESS",
                            "product_category": "network",
                            "rate": "0.05",
                            "cost_quantity": {
                                "type": "network_gib",
                                "query": "sum(increase(egress_bytes_total[{step}]))",
                            },
                            "allocation_strategy": "usage_ratio",
                            "allocation_query": "sum by (team) (increase(egress_bytes_total[{step}]))",
                            "allocation_label": "team",
                        },
                    ],
                    "emitters": [{"type": "csv", "params": {"output_dir": "output/search_cluster"}}],
                },
            },
        },
    }


DEMO_TENANTS = ("confluent_org", "search_cluster")
LOCATION_NAME = "chargeback_dagster"  # the same name as the repo's workspace.yaml, so GraphQL selectors match
UI_STARTUP_SECONDS = 180


def run_demo(
    workdir: str, days: int = 7, *, ui: bool = False, host: str = "127.0.0.1", port: int = 3000
) -> int:
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    from chargeback_dagster.cli import instance_concurrency_block
    from chargeback_dagster.defs.build import build_definitions

    warnings.filterwarnings("ignore", category=dg.BetaWarning)  # backfill_policy is "beta" in 1.13

    root = Path(workdir).resolve()
    for leftover in ("output", "prometheus", "data", "dagster_home"):  # a fresh demo every time
        shutil.rmtree(root / leftover, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    first_day = now.date() - timedelta(days=days)
    last_day = now.date() - timedelta(days=1)
    data_start = datetime.combine(first_day, datetime.min.time(), tzinfo=UTC) - timedelta(hours=1)
    # service accounts described `...; team: <t>`: the demo's rows get teams (docs/configuration.md §5.1)
    teams = ("payments", "search", "data")
    org = SimulatedOrg(OrgSpec(start_date=first_day, days=days, service_account_teams=teams))
    history = combined_openmetrics(demo_metrics(data_start, now), org.openmetrics())
    print(f"Loading {days} days of synthetic metrics (search + Confluent Cloud) into a local Prometheus ...")
    with LocalPrometheus(history, root / "prometheus") as prom, CCloudSimulator(org) as sim:
        print(f"Confluent Cloud simulator listening on {sim.url} (organization {org.org_id})")
        config_path = root / "chargeback.yaml"
        config_path.write_text(yaml.safe_dump(demo_config(prom.url, sim.url), sort_keys=False))
        app_config = load_config(config_path)
        defs = build_definitions(app_config)
        home = root / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text(
            instance_concurrency_block(app_config) + "telemetry: {enabled: false}\n"
        )
        with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
            for tenant in DEMO_TENANTS:
                print(f"Materializing {tenant} for {first_day} .. {last_day} in one run ...")
                result = materialize_range(
                    defs, tenant, first_day, last_day, instance=instance, log_level="WARNING"
                )
                if result.success:  # what the automation sensor does after a day is materialized
                    result = materialize_monthly_reports(
                        defs, tenant, first_day, last_day, instance=instance, log_level="WARNING"
                    )
                if not result.success:
                    print(f"Run of {tenant} failed; see the log above.")
                    return 1
            print(f"Confluent Cloud API requests served by the simulator: {len(sim.request_log)}")
            for tenant in DEMO_TENANTS:
                print_summary(root / "output" / tenant, title=tenant)
                reports = sorted((root / "output" / tenant / "monthly_report").glob("*.csv"))
                print(f"monthly report (asset monthly_report/{tenant}): {', '.join(map(str, reports))}")
            print_topic_summary(root / "output" / "confluent_org_topics")
            print(f"\nThe runs are recorded in the Dagster instance DAGSTER_HOME={home}")
            if not ui:
                print("To browse them in the Dagster UI: chargeback-dagster demo --ui")
                return 0
            print(
                f"\nPrometheus with the demo metrics: {prom.url} (PROMETHEUS_URL for examples/generic.yaml)"
            )
            return serve_ui(root, home, config_path, host, port)


def serve_ui(root: Path, home: Path, config_path: Path, host: str, port: int) -> int:
    """`dagster dev` (webserver + daemon) on the demo's instance and config until Ctrl-C or SIGTERM."""
    workspace = root / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_module": {
                            "module_name": "chargeback_dagster.definitions",
                            "location_name": LOCATION_NAME,
                        }
                    }
                ]
            }
        )
    )
    env = {**os.environ, "DAGSTER_HOME": str(home), "CHARGEBACK_CONFIG_FILE": str(config_path)}
    log_path = root / "dagster-dev.log"
    url = f"http://{host}:{port}"
    # terminal signals go to this process only; it stops dagster dev (and its children) itself
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-w", str(workspace), "-h", host, "-p", str(port)],
            cwd=root,  # no dagster.yaml there: the instance is DAGSTER_HOME's
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        print(f"Starting the Dagster UI (webserver + daemon; log: {log_path}) ...")
        if not _wait_for_location(proc, url):
            print(f"dagster dev did not come up; last lines of {log_path}:\n{_tail(log_path)}")
            return 1
        print(
            f"\nDagster UI: {url}  (Assets → a tenant's chargeback → Partitions shows the demo days;"
            " Runs lists the demo's runs)\nPress Ctrl-C to stop the UI, Prometheus and the simulator."
        )
        while proc.poll() is None:
            time.sleep(1)
        print(f"dagster dev exited with {proc.returncode}; last lines of {log_path}:\n{_tail(log_path)}")
        return 1
    except KeyboardInterrupt:
        print("\nStopping ...")
        return 0
    finally:
        _stop(proc)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _wait_for_location(proc: subprocess.Popen, url: str) -> bool:
    """Until the webserver answers and the code location has loaded; False when dagster dev exited or
    the location failed to load."""
    query = (
        "{ workspaceOrError { ... on Workspace { locationEntries { locationOrLoadError { __typename } } } } }"
    )
    deadline = time.monotonic() + UI_STARTUP_SECONDS
    with httpx.Client(timeout=5) as http:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                body = http.post(f"{url}/graphql", json={"query": query}).json()
                entries = body["data"]["workspaceOrError"]["locationEntries"]
                kinds = {e["locationOrLoadError"]["__typename"] for e in entries if e["locationOrLoadError"]}
                if kinds == {"RepositoryLocation"}:
                    return True
                if "PythonError" in kinds:
                    return False
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                pass
            time.sleep(0.5)
    return False


def _stop(proc: subprocess.Popen) -> None:
    """Ctrl-C for dagster dev (it stops its webserver and daemon), then its whole process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)  # leftover webserver/daemon/code-server children
        except ProcessLookupError:
            return
        time.sleep(2)


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def print_topic_summary(output_dir: Path) -> None:
    """Cost per (cluster, topic) of the topic attribution CSVs, largest first."""
    totals: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    files = sorted(output_dir.glob("*.csv"))
    for path in files:
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                totals[(row["cluster_resource_id"], row["topic_name"])] += Decimal(row["amount"])
    print(f"\nconfluent_org topics: wrote {len(files)} CSV files to {output_dir}")
    print(f"{'cluster':<16}{'topic':<24}{'amount (USD)':>16}")
    for (cluster, topic), amount in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"{cluster:<16}{topic:<24}{amount:>16}")
    print(f"{'TOTAL':<40}{sum(totals.values(), Decimal(0)):>16}")


def print_summary(output_dir: Path, title: str | None = None) -> None:
    totals: dict[str, Decimal] = defaultdict(Decimal)
    files = sorted(output_dir.glob("*.csv"))
    for path in files:
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                totals[row["identity_id"]] += Decimal(row["amount"])
    print(f"\n{title + ': ' if title else ''}wrote {len(files)} CSV files to {output_dir}")
    width = max([20, *(len(i) + 2 for i in totals)])
    print(f"{'identity':<{width}}{'amount (USD)':>16}")
    for identity, amount in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"{identity:<{width}}{amount:>16}")
    print(f"{'TOTAL':<{width}}{sum(totals.values(), Decimal(0)):>16}")
