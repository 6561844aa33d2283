"""Benchmark: one Dagster run (single-run backfill of a tenant's assets) over a whole date range.

    python benchmarks/run.py confluent|confluent-20d|self-managed [--backend sqlite|postgresql] [--small]
        [--output FILE] [--profile FILE] [--cache-dir DIR] [--workdir DIR]

Steps (only step 4 is measured):

1. generate the scenario's Prometheus history (benchmarks/scenarios.py), one OpenMetrics file per 2-hour
   block, and import it with promtool; the imported TSDB (after Prometheus compacted it) is cached in
   ``--cache-dir`` (default ``benchmarks/.cache``; ``--small`` uses a temporary directory), keyed by the
   scenario, so later runs start in seconds;
2. start Prometheus on that data and, for Confluent, the Confluent Cloud simulator (in this process; cost
   lines precomputed so that the simulator answers like a server, not like a generator);
3. write the chargeback config (SQLite file or a fresh PostgreSQL database for the tenant store);
4. run ``materialize_range`` (the same single run as a single-run backfill: tags
   ``dagster/asset_partition_range_start/_end``) in a CHILD process, in-process executor, ephemeral Dagster
   instance. Measured: wall time of the run's execution (``execute_in_process``), the child's total wall
   time (imports included), time per asset (STEP_START → STEP_SUCCESS from the run's event log), the
   child's peak RSS (``os.wait4`` rusage of that child), Prometheus ``/api/v1/query_range`` requests (the
   server's own ``prometheus_http_requests_total`` before/after), HTTP requests to the simulator (its
   request log), billing lines, chargeback rows (stored facts), CSV files and bytes, and reconciliation
   (the run's ``reconciles_to_billing`` check plus a recount over every date after the run).

The report is printed and written as JSON (default ``benchmarks/results/<scenario>-<backend>.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import httpx  # noqa: E402
import scenarios as sc  # noqa: E402
import yaml  # noqa: E402

TENANT = "bench"
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REPORT_KEYS = (
    "scenario",
    "backend",
    "small",
    "dates",
    "run_success",
    "execution_seconds",
    "child_wall_seconds",
    "asset_seconds",
    "peak_rss_mib",
    "billing_lines",
    "chargeback_rows",
    "prometheus_range_queries",
    "simulator_requests",
    "csv_files",
    "csv_bytes",
    "reconciliation_passed",
    "all_dates_calculated",
    "all_metrics_fetched",
)


# ---------------------------------------------------------------------------------------- data prep


def log(msg: str) -> None:
    print(f"[bench {datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def query_range_count(url: str) -> int:
    """Prometheus' own counter of /api/v1/query_range requests."""
    total = 0
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith("prometheus_http_requests_total{") and 'handler="/api/v1/query_range"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def _metric_value(url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for_compaction(url: str, quiet_seconds: float = 75.0, limit: float = 900.0) -> None:
    """Prometheus compacts imported 2-hour blocks in the background (first pass ≈ 1 min after start);
    wait until the block count has not changed for `quiet_seconds` so the cached TSDB is compacted."""
    started = time.monotonic()
    last = _metric_value(url, "prometheus_tsdb_blocks_loaded")
    stable_since = time.monotonic()
    while time.monotonic() - started < limit:
        time.sleep(5)
        now = _metric_value(url, "prometheus_tsdb_blocks_loaded")
        if now != last:
            last, stable_since = now, time.monotonic()
            log(f"compacting: {int(now)} blocks")
        elif time.monotonic() - stable_since >= quiet_seconds and _metric_value(
            url, "prometheus_tsdb_compactions_total"
        ):
            return


def wait_for_data(url: str, probe: str, at: float, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            form = {"query": f"count({probe})", "time": repr(at)}
            r = httpx.post(f"{url}/api/v1/query", data=form, timeout=30)
            if r.json()["data"]["result"]:
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"Prometheus at {url} does not serve {probe} at {at}")


def probe_of(s: sc.Scenario) -> tuple[str, float]:
    last = datetime.combine(s.start + timedelta(days=s.data_days - 1), datetime.min.time(), UTC)
    metric = "confluent_kafka_server_request_bytes" if s.kind == "confluent" else sc.IN
    return metric, (last + timedelta(hours=12)).timestamp()


def prepare_data(s: sc.Scenario, cache_root: Path, compact: bool) -> tuple[Path, dict]:
    """The scenario's Prometheus data directory (imported once, then cached) and generation stats."""
    from chargeback_dagster.devtools.local_prometheus import LocalPrometheus

    cache = cache_root / f"{s.kind}-{s.data_key()}"
    meta_path = cache / "meta.json"
    if meta_path.exists():
        return cache, json.loads(meta_path.read_text())
    if cache.exists():
        shutil.rmtree(cache)
    (cache / "prom").mkdir(parents=True)
    history = cache / "history"
    meta: dict = {}
    t0 = time.monotonic()
    if s.kind == "confluent":
        org = sc.confluent_org(s)
        files = sc.generate_confluent(org, history)
        t1 = time.monotonic()
        costs = org.cost_lines(org.spec.start_date, org.spec.end_date)
        meta["simulator_cost_lines"] = len(costs)
        import pickle

        (cache / "costs.pickle").write_bytes(pickle.dumps(org._cost_cache, protocol=pickle.HIGHEST_PROTOCOL))
    else:
        files = sc.write_self_managed_history(s, history)
        t1 = time.monotonic()
    meta["history_files"] = len(files)
    meta["history_bytes"] = sum(f.stat().st_size for f in files)
    meta["generate_seconds"] = round(t1 - t0, 1)
    log(f"generated {len(files)} files, {meta['history_bytes'] / 2**20:.0f} MiB in {t1 - t0:.0f} s")
    prom = LocalPrometheus(
        None, cache / "prom", openmetrics_files=files, import_workers=2, startup_timeout=600
    )
    t2 = time.monotonic()
    prom.start()
    meta["import_seconds"] = round(time.monotonic() - t2, 1)
    log(f"imported in {meta['import_seconds']} s")
    shutil.rmtree(history)
    if compact:
        t3 = time.monotonic()
        wait_for_compaction(prom.url)
        meta["compaction_seconds"] = round(time.monotonic() - t3, 1)
    meta["blocks"] = int(_metric_value(prom.url, "prometheus_tsdb_blocks_loaded"))
    prom.stop()
    meta_path.write_text(json.dumps(meta, indent=2))
    return cache, meta


# --------------------------------------------------------------------------------------------- config


def tenant_config(s: sc.Scenario, workdir: Path, store_url: str, prom_url: str, sim_url: str | None) -> dict:
    common = {
        "tenant_id": "bench",
        "partitions_start_date": (s.start - timedelta(days=1)).isoformat(),
        "storage": {"connection_string": store_url},
    }
    emitters = [{"type": "csv", "params": {"output_dir": str(workdir / "out")}}]
    if s.kind == "confluent":
        from chargeback_dagster.devtools.ccloud_simulator import DEFAULT_KEY, DEFAULT_SECRET

        return {
            "ecosystem": "confluent_cloud",
            **common,
            "plugin_settings": {
                "ccloud_api": {
                    "key": DEFAULT_KEY,
                    "secret": DEFAULT_SECRET,
                    "base_url": sim_url,
                    "flink_url_template": sim_url,
                },
                "flink": [{"region_id": "us-east-1", "key": DEFAULT_KEY, "secret": DEFAULT_SECRET}],
                "metrics": {"url": prom_url},
                "emitters": emitters,
            },
        }
    principals = sc.principal_names(s.principals)
    return {
        "ecosystem": "self_managed_kafka",
        **common,
        "plugin_settings": {
            "cluster_id": sc.CLUSTER_ID,
            "broker_count": s.brokers,
            "cost_model": {
                "compute_hourly_rate": 0.50,
                "storage_per_gib_hourly": 0.000125,
                "network_ingress_per_gib": 0.01,
                "network_egress_per_gib": 0.09,
            },
            "identity_source": {
                "source": "both",
                "static_identities": [{"identity_id": p, "identity_type": "principal"} for p in principals],
            },
            "metrics": {"url": prom_url},
            "emitters": emitters,
        },
    }


def make_pg_database(base_url: str) -> tuple[str, object]:
    import uuid

    import sqlalchemy as sa

    admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
    name = f"cbbench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(base_url).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


# ---------------------------------------------------------------------------------------------- child


def child_main(spec_path: str) -> int:
    """Runs in the measured child process."""
    t_start = time.monotonic()
    spec = json.loads(Path(spec_path).read_text())
    os.environ.setdefault("CHARGEBACK_CCLOUD_BACKOFF_SCALE", "0.01")
    import dagster as dg

    from chargeback_dagster import pipeline
    from chargeback_dagster.config import load_config
    from chargeback_dagster.defs.build import build_definitions
    from chargeback_dagster.devtools.local_run import materialize_range
    from chargeback_dagster.store import TenantStore

    config = load_config(spec["config"])
    defs = build_definitions(config)
    start, end = date.fromisoformat(spec["start"]), date.fromisoformat(spec["end"])
    instance = dg.DagsterInstance.ephemeral()
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
    t_ready = time.monotonic()
    if profiler:
        profiler.enable()
    t0 = time.monotonic()
    result = materialize_range(defs, TENANT, start, end, instance=instance, log_level="INFO")
    execution = time.monotonic() - t0
    if profiler:
        profiler.disable()
        profiler.dump_stats(spec["profile"])

    steps: dict[str, dict[str, float]] = {}
    et = dg.DagsterEventType
    types = {et.STEP_START, et.STEP_SUCCESS, et.STEP_FAILURE}
    for entry in instance.all_logs(result.run_id, of_type=types):
        ev = entry.dagster_event
        steps.setdefault(ev.step_key, {})[ev.event_type_value] = entry.timestamp
    asset_seconds = {
        key.split("__")[-1]: round(t["STEP_SUCCESS"] - t["STEP_START"], 3)
        for key, t in steps.items()
        if "STEP_START" in t and "STEP_SUCCESS" in t
    }
    checks = {e.check_name: bool(e.passed) for e in result.get_asset_check_evaluations()}

    tenant = config.tenants[TENANT]
    store = TenantStore.open(
        tenant.database_url, tenant_name=TENANT, ecosystem=tenant.ecosystem, tenant_id=tenant.tenant_id
    )
    dates = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    gaps = pipeline.reconciliation_gaps(store, dates)
    billing_lines, facts = stored_counts(store.engine, tenant, start, end)
    store.dispose()
    out = Path(spec["out_dir"])
    csvs = sorted(out.glob("*.csv")) if out.exists() else []
    import resource

    report = {
        "run_success": result.success,
        "execution_seconds": round(execution, 3),
        "child_wall_seconds": round(time.monotonic() - t_start, 3),
        "child_setup_seconds": round(t_ready - t_start, 3),
        "asset_seconds": asset_seconds,
        "peak_rss_mib_self": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "billing_lines": billing_lines,
        "chargeback_rows": facts,
        "csv_files": len(csvs),
        "csv_bytes": sum(p.stat().st_size for p in csvs),
        "csv_data_rows": sum(max(0, p.read_bytes().count(b"\n") - 1) for p in csvs),
        "reconciliation_passed": bool(checks.get("reconciles_to_billing")) and not gaps,
        "reconciliation_gaps": {str(d): u for d, u in gaps.items()},
        "all_dates_calculated": checks.get("all_dates_calculated"),
        "all_metrics_fetched": checks.get("all_metrics_fetched"),
    }
    Path(spec["result"]).write_text(json.dumps(report, indent=2))
    return 0


def stored_counts(engine: Any, tenant: Any, start: date, end: date) -> tuple[int, int]:
    """(billing lines, chargeback facts) of the tenant's dates start … end, counted in plain SQL so that the
    same count runs against any --code-root's store."""
    import sqlalchemy as sa

    from chargeback_dagster.store import tables as st

    b, f, dim = st.billing, st.chargeback_facts, st.chargeback_dimensions
    with engine.connect() as conn:
        lines = conn.execute(
            sa.select(sa.func.count()).where(
                b.c.ecosystem == tenant.ecosystem,
                b.c.tenant_id == tenant.tenant_id,
                b.c.date >= start,
                b.c.date <= end,
            )
        ).scalar_one()
        facts = conn.execute(
            sa.select(sa.func.count())
            .select_from(f.join(dim, f.c.dimension_id == dim.c.dimension_id))
            .where(
                f.c.ecosystem == tenant.ecosystem,
                f.c.tenant_id == tenant.tenant_id,
                f.c.date >= start,
                f.c.date <= end,
            )
        ).scalar_one()
    return int(lines), int(facts)


def run_child(spec: dict, workdir: Path, code_root: Path | None = None) -> tuple[dict, float, float]:
    spec_path = workdir / "child.json"
    spec_path.write_text(json.dumps(spec))
    path = [str(code_root)] if code_root else []
    path += [str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    t0 = time.monotonic()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)]
    proc = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child failed with exit code {proc.returncode}")
    return json.loads(Path(spec["result"]).read_text()), usage.ru_maxrss / 1024, wall


# --------------------------------------------------------------------------------------------- parent


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f"{kb / 2**20:.1f} GiB"
    except (OSError, IndexError, ValueError):
        pass
    from importlib.metadata import version

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "python": platform.python_version(),
        "dagster": version("dagster"),
        "sqlalchemy": version("sqlalchemy"),
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=["confluent", "confluent-20d", "self-managed"])
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--small", action="store_true", help="tiny scenario (CI smoke run)")
    parser.add_argument("--output", type=Path, help="JSON report path")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the run (child) to this file")
    parser.add_argument("--cache-dir", type=Path, help="where imported Prometheus data is cached")
    parser.add_argument("--workdir", type=Path, help="working directory (default: a temporary one)")
    parser.add_argument(
        "--code-root",
        type=Path,
        help="run the child on another copy of the code (e.g. `git archive HEAD` extracted) for a baseline",
    )
    parser.add_argument("--prepare-only", action="store_true", help="generate and cache the data, no run")
    parser.add_argument("--pg-url", default=os.environ.get("CHARGEBACK_TEST_PG_URL", DEFAULT_PG_URL))
    args = parser.parse_args(argv)

    from chargeback_dagster.devtools.local_prometheus import LocalPrometheus

    s = sc.scenario(args.scenario, args.small)
    temp = Path(tempfile.mkdtemp(prefix="cbbench-"))
    workdir = args.workdir or temp
    workdir.mkdir(parents=True, exist_ok=True)
    cache_root = args.cache_dir or (temp / "cache" if args.small else HERE / ".cache")
    drop_db = None
    sim = prom = None
    try:
        t0 = time.monotonic()
        cache, meta = prepare_data(s, cache_root, compact=not args.small)
        prepare_seconds = time.monotonic() - t0
        if args.prepare_only:
            print(json.dumps(meta, indent=2))
            return 0
        prom = LocalPrometheus(None, cache / "prom", keep_data=True, startup_timeout=300)
        prom.start()
        wait_for_data(prom.url, *probe_of(s))
        sim_url = None
        if s.kind == "confluent":
            import pickle

            from chargeback_dagster.devtools.ccloud_simulator import CCloudSimulator

            org = sc.confluent_org(s)
            org._cost_cache = pickle.loads((cache / "costs.pickle").read_bytes())
            sim = CCloudSimulator(org).start()
            sim_url = sim.url
        if args.backend == "sqlite":
            store_url = f"sqlite:///{workdir / 'store' / 'tenant.db'}"
        else:
            store_url, drop_db = make_pg_database(args.pg_url)
        config = {"tenants": {TENANT: tenant_config(s, workdir, store_url, prom.url, sim_url)}}
        config_path = workdir / "chargeback.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))

        log(f"running {s.name} ({s.days} days, {args.backend}) in a child process")
        prom_before = query_range_count(prom.url)
        sim_before = len(sim.request_log) if sim else 0
        child, peak_rss, wall = run_child(
            {
                "config": str(config_path),
                "start": s.start.isoformat(),
                "end": s.end.isoformat(),
                "result": str(workdir / "child-result.json"),
                "out_dir": str(workdir / "out"),
                "profile": str(args.profile.resolve()) if args.profile else None,
            },
            workdir,
            args.code_root,
        )
        report = {
            "scenario": s.name,
            "backend": args.backend,
            "small": args.small,
            "dates": s.days,
            "range": [s.start.isoformat(), s.end.isoformat()],
            **child,
            "peak_rss_mib": round(peak_rss, 1),
            "child_process_wall_seconds": round(wall, 3),
            "prometheus_range_queries": query_range_count(prom.url) - prom_before,
            "simulator_requests": (len(sim.request_log) - sim_before) if sim else 0,
            "prepare_seconds": round(prepare_seconds, 1),
            "data": meta,
            "machine": machine(),
            "code_root": str(args.code_root) if args.code_root else None,
            "measured_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
        }
    finally:
        if sim is not None:
            sim.stop()
        if prom is not None:
            prom.stop()
        if drop_db is not None:
            drop_db()
        shutil.rmtree(temp, ignore_errors=True)  # the workdir too, unless --workdir was given
    output = args.output or (
        HERE / "results" / f"{s.name}-{args.backend}{'-small' if args.small else ''}.json"
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in REPORT_KEYS}, indent=2))
    log(f"report written to {output}")
    return 0 if report["run_success"] and report["reconciliation_passed"] else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.exit(child_main(sys.argv[2]))
    sys.exit(main())
