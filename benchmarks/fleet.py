"""Benchmark: many tenants on one deployment (fleet scale).

    python benchmarks/fleet.py [load] [ticks] [refresh] [--tenants 1,50,500] [--tick-tenants 50,500]
        [--refresh-tenants 50] [--parallel 2,4] [--repeats 3] [--code-root DIR] [--small] [--output DIR]
        [--profile] [--pg-url URL] [--label L] [--before-root DIR [--before-label L]]

Parts (all by default; each writes ``<output>/<part>.json``, default ``benchmarks/results/fleet/``):

1. ``load`` — code-location load for each tenant count, every figure from a fresh CHILD process, best and
   median of ``--repeats``: ``import chargeback_dagster.definitions`` with CHARGEBACK_CONFIG_FILE set (wall
   time, the child's ``ru_maxrss``), then what every Dagster process does next with it (resolve the
   repository, build the snapshot the code server sends); the breakdown (``import dagster`` alone, the
   project's modules, config load + validate, ``build_definitions``); and Dagster's own cost for the same
   shape built bare, without project code (``bare``: N×4 daily-partitioned assets, N asset jobs, N sensors;
   ``bare_full``: also the asset checks, a retention op job and schedule per tenant, the monthly reports (one
   multi-asset), two run-status sensors and an automation condition sensor, i.e. every definition the
   project builds).
   Tenants are copies of examples/ (generic, self-managed, Confluent in turn) with distinct names,
   tenant_ids and SQLite files. ``--before-root`` measures a second copy of the code side by side: each
   child right after the same child of the other.
2. ``ticks`` — every sensor of the code location evaluated in one process, the way the code server does for
   the daemon (``dagster._grpc.impl.get_external_sensor_execution``: resources built, a sensor context on
   the instance ref, ``evaluate_tick``; no gRPC) on a Dagster instance with the project's PostgreSQL
   instance config: round 1 cold (each tenant store opened and migrated for the first time), round 2 warm
   without cursor (each refresh sensor requests its run: the daily case), round 3 warm with the cursor of
   round 2 (each refresh sensor skips: the usual tick). The real daemon's tick records of part 3 are the
   end-to-end figure (gRPC and daemon loop included).
3. ``refresh`` — a live fleet refresh: ``dagster-webserver`` + ``dagster-daemon run`` with the project's
   PostgreSQL instance config, deploy/dagster-postgres.yaml (concurrency block from ``chargeback-dagster
   instance-config``), N generic tenants on one real Prometheus loaded with generated history; the tenants'
   refresh sensors (lookback 29, cutoff 1: a 28-date window) request one run each, which go through the run
   queue. Measured from the instance: wall time (first run created → last run ended), runs per minute, per run
   the queue wait, the launch (run STARTING → RUN_START: process start and code load), Dagster's time before
   the first step and after the last, the steps' own time; the peak RSS (VmHWM) of every run worker, daemon
   and webserver process; the daemon's sensor tick durations.

The machine's load average is written next to every figure (shared machines); ``--small`` is a
seconds-long smoke run (2–3 tenants, 2 dates, 1 repeat).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (ROOT, HERE):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import yaml  # noqa: E402

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
EXAMPLES = ("generic", "self_managed_kafka", "confluent_cloud")
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


def log(msg: str) -> None:
    print(f"[fleet {datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ------------------------------------------------------------------------------------------ configs


def mixed_config(n: int, workdir: Path) -> Path:
    """N tenants copied from examples/ in turn (generic, self-managed, Confluent), each with its own name,
    tenant_id, SQLite file and CSV folder; the example's `${VAR:-default}` settings are written out."""
    templates = {}
    for name in EXAMPLES:
        doc = yaml.safe_load((ROOT / "examples" / f"{name}.yaml").read_text())
        ((_, tenant),) = doc["tenants"].items()
        templates[name] = tenant
    generic = yaml.safe_load((ROOT / "examples" / "generic.yaml").read_text())
    tenants = {}
    for i in range(n):
        kind = EXAMPLES[i % len(EXAMPLES)]
        tenant = json.loads(json.dumps(templates[kind]))  # deep copy
        name = f"{kind}_{i:04d}"
        tenant["tenant_id"] = f"{kind.replace('_', '-')}-{i:04d}"
        tenant["storage"] = {"connection_string": f"sqlite:///{workdir / 'stores' / name}.db"}
        ps = tenant["plugin_settings"]
        ps["metrics"]["url"] = "http://127.0.0.1:9"  # never contacted at load
        for emitter in ps["emitters"]:
            emitter["params"]["output_dir"] = str(workdir / "out" / name / emitter.get("name", "daily"))
        if kind == "confluent_cloud":
            ps["ccloud_api"].update(key="bench-key", secret="bench-secret", base_url="http://127.0.0.1:9")
        tenants[name] = tenant
    path = workdir / f"mixed-{n}.yaml"
    doc = {"logging": generic["logging"], "features": generic["features"], "tenants": tenants}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# --------------------------------------------------------------------------------------- child side


def _rss_mib() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def child_import(spec: dict) -> dict:
    """What a Dagster process does with the code location: import it, resolve it, snapshot it."""
    t0 = time.perf_counter()
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    import chargeback_dagster.definitions as location

    t1 = time.perf_counter()
    rss_import = _rss_mib()
    repo = location.defs.get_repository_def()
    t2 = time.perf_counter()
    if profiler:
        profiler.disable()
        import pstats

        with open(spec["profile"], "w") as fh:
            stats = pstats.Stats(profiler, stream=fh)
            stats.sort_stats("cumulative").print_stats(20)
            stats.sort_stats("tottime").print_stats(20)
    from dagster._core.remote_representation.external_data import RepositorySnap

    RepositorySnap.from_def(repo)
    t3 = time.perf_counter()
    return {
        "import_seconds": round(t1 - t0, 3),
        # what a process pays before it can use the location (the code may resolve inside its import)
        "import_resolve_seconds": round(t2 - t0, 3),
        "peak_rss_mib_after_import": rss_import,
        "resolve_seconds": round(t2 - t1, 3),
        "snapshot_seconds": round(t3 - t2, 3),
        "assets": len(list(repo.assets_defs_by_key)),
        "jobs": len(repo.get_all_jobs()),
        "sensors": len(repo.sensor_defs),
        "schedules": len(repo.schedule_defs),
    }


def child_breakdown(spec: dict) -> dict:
    t0 = time.perf_counter()
    import dagster  # noqa: F401

    t1 = time.perf_counter()
    from chargeback_dagster.config import load_config
    from chargeback_dagster.defs import build

    # code that loads its location with the cycle collector paused gets each part measured the same way
    paused = getattr(build, "collector_paused", contextlib.nullcontext)
    t2 = time.perf_counter()
    with paused():
        config = load_config(os.environ["CHARGEBACK_CONFIG_FILE"])
    t3 = time.perf_counter()
    with paused():
        build.build_definitions(config)
    t4 = time.perf_counter()
    return {
        "import_dagster_seconds": round(t1 - t0, 3),
        "import_project_seconds": round(t2 - t1, 3),
        "config_load_validate_seconds": round(t3 - t2, 3),
        "build_definitions_seconds": round(t4 - t3, 3),
    }


def bare_definitions(n: int, full: bool):
    """The project's shape in plain Dagster: no project code, nothing done at evaluation."""
    import dagster as dg

    assets, jobs, sensors, schedules = [], [], [], []
    for i in range(n):
        t = f"tenant_{i:04d}"
        common = {
            "key_prefix": [t],
            "group_name": t,
            "partitions_def": dg.DailyPartitionsDefinition(start_date="2026-01-01", timezone="UTC"),
            "backfill_policy": dg.BackfillPolicy.single_run(),
        }
        keys = {s: dg.AssetKey([t, s]) for s in ("billing", "inventory", "usage_metrics", "chargeback")}

        def checks(asset: dg.AssetKey, *names: str) -> list[dg.AssetCheckSpec]:
            return [dg.AssetCheckSpec(c, asset=asset) for c in names] if full else []

        @dg.asset(name="billing", **common)
        def billing():
            return None

        @dg.asset(name="inventory", **common)
        def inventory():
            return None

        @dg.asset(
            name="usage_metrics",
            deps=[keys["billing"], keys["inventory"]],
            check_specs=checks(keys["usage_metrics"], "all_metrics_fetched"),
            **common,
        )
        def usage_metrics():
            return None

        @dg.asset(
            name="chargeback",
            deps=[keys["billing"], keys["inventory"], keys["usage_metrics"]],
            check_specs=checks(keys["chargeback"], "reconciles_to_billing", "all_dates_calculated"),
            **common,
        )
        def chargeback():
            return None

        assets += [billing, inventory, usage_metrics, chargeback]
        jobs.append(dg.define_asset_job(f"{t}_pipeline", selection=dg.AssetSelection.groups(t)))

        @dg.sensor(name=f"{t}_refresh", job_name=f"{t}_pipeline")
        def refresh(context):
            return dg.SkipReason("bare")

        sensors.append(refresh)
        if full:

            @dg.op(name=f"{t}_purge")
            def purge():
                return 0

            @dg.job(name=f"{t}_retention")
            def retention():
                purge()

            jobs.append(retention)
            schedules.append(
                dg.ScheduleDefinition(
                    name=f"{t}_retention_schedule", cron_schedule="30 2 * * *", job=retention
                )
            )
    if full:
        # the monthly reports: one multi-asset over every tenant's report (all tenants start the same month)
        monthly_mapping = dg.TimeWindowPartitionMapping()

        @dg.multi_asset(
            name="monthly_reports",
            specs=[
                dg.AssetSpec(
                    ["monthly_report", f"tenant_{i:04d}"],
                    group_name="monthly_reports",
                    deps=[dg.AssetDep([f"tenant_{i:04d}", "chargeback"], partition_mapping=monthly_mapping)],
                    automation_condition=dg.AutomationCondition.eager(),
                )
                for i in range(n)
            ],
            partitions_def=dg.MonthlyPartitionsDefinition(start_date="2026-01-01", end_offset=1),
            can_subset=True,
        )
        def monthly_reports():
            return None

        assets.append(monthly_reports)

        @dg.run_failure_sensor(name="failure_sensor")
        def failure_sensor(context):
            return None

        @dg.run_status_sensor(name="success_sensor", run_status=dg.DagsterRunStatus.SUCCESS)
        def success_sensor(context):
            return None

        sensors += [failure_sensor, success_sensor]
        sensors.append(
            dg.AutomationConditionSensorDefinition(
                "automation", target=dg.AssetSelection.groups("monthly_reports")
            )
        )
    return dg.Definitions(
        assets=assets, jobs=jobs, sensors=sensors, schedules=schedules, executor=dg.in_process_executor
    )


def child_bare(spec: dict) -> dict:
    t0 = time.perf_counter()
    import dagster  # noqa: F401

    t1 = time.perf_counter()
    defs = bare_definitions(spec["tenants"], spec["full"])
    t2 = time.perf_counter()
    rss_build = _rss_mib()
    repo = defs.get_repository_def()
    t3 = time.perf_counter()
    from dagster._core.remote_representation.external_data import RepositorySnap

    RepositorySnap.from_def(repo)
    t4 = time.perf_counter()
    return {
        "import_seconds": round(t2 - t0, 3),  # comparable with the project's import of its location
        "import_dagster_seconds": round(t1 - t0, 3),
        "build_seconds": round(t2 - t1, 3),
        "peak_rss_mib_after_import": rss_build,
        "resolve_seconds": round(t3 - t2, 3),
        "snapshot_seconds": round(t4 - t3, 3),
    }


def child_ticks(spec: dict) -> dict:
    """Evaluate every sensor of the location three times (cold, warm, warm with cursor); the automation
    condition sensor is the daemon's own (part 3 runs it for real)."""
    import dagster as dg
    from dagster._core.definitions.sensor_definition import SensorExecutionData
    from dagster._grpc.impl import get_external_sensor_execution

    import chargeback_dagster.definitions as location
    from chargeback_dagster.store import TenantStore

    # every real open of a tenant store (engine, migrations, UNALLOCATED upsert), whatever caches it
    opened: list[str] = []
    real_open = TenantStore.open

    def counting_open(url: str, **kwargs):
        opened.append(kwargs["tenant_name"])
        return real_open(url, **kwargs)

    TenantStore.open = staticmethod(counting_open)
    repo = location.defs.get_repository_def()
    instance = dg.DagsterInstance.get()

    @dg.sensor(name="bare", job=dg.JobDefinition(graph_def=dg.GraphDefinition(name="noop")))
    def bare_sensor(context):
        context.instance.get_run_records(dg.RunsFilter(tags={"chargeback/tenant": "x"}), limit=1)
        return dg.SkipReason("bare")

    # Dagster's own floor: a sensor whose only work is one run query, evaluated the same way
    bare_repo = dg.Definitions(sensors=[bare_sensor]).get_repository_def()
    rounds = []
    cursors: dict[str, str | None] = {}
    for label, keep_cursor in (("cold", False), ("warm", False), ("warm_with_cursor", True)):
        per_sensor: dict[str, float] = {}
        outcome = {"run_requests": 0, "skips": 0}
        load = load_average()
        t_round = time.perf_counter()
        for sensor in repo.sensor_defs:
            if isinstance(sensor, dg.AutomationConditionSensorDefinition):
                continue  # evaluated by the daemon itself, not by the code server (monthly reports)
            t0 = time.perf_counter()
            data = get_external_sensor_execution(
                repo,
                None,
                instance.get_ref(),
                sensor.name,
                None,
                None,
                cursors.get(sensor.name) if keep_cursor else None,
                None,
                None,
            )
            if not isinstance(data, SensorExecutionData):
                raise RuntimeError(f"sensor {sensor.name} failed: {data.error.to_string()}")
            per_sensor[sensor.name] = time.perf_counter() - t0
            cursors[sensor.name] = data.cursor
            outcome["run_requests"] += len(data.run_requests or [])
            outcome["skips"] += 1 if data.skip_message else 0
        total = time.perf_counter() - t_round
        bare = []
        for _ in range(5):
            t0 = time.perf_counter()
            get_external_sensor_execution(bare_repo, None, instance.get_ref(), "bare", *[None] * 5)
            bare.append(time.perf_counter() - t0)
        refresh = sorted(v for k, v in per_sensor.items() if k.endswith("_refresh"))
        status = {k: round(v, 4) for k, v in per_sensor.items() if not k.endswith("_refresh")}
        rounds.append(
            {
                "round": label,
                "all_sensors_seconds": round(total, 3),
                "refresh_sensors": len(refresh),
                "refresh_total_seconds": round(sum(refresh), 3),
                "refresh_median_ms": round(statistics.median(refresh) * 1000, 2),
                "refresh_max_ms": round(max(refresh) * 1000, 2),
                "run_status_sensors_seconds": status,
                "bare_sensor_median_ms": round(statistics.median(bare) * 1000, 2),
                "store_opens_so_far": len(opened),
                **outcome,
                "load_average": load,
            }
        )
    return {"rounds": rounds, "peak_rss_mib": _rss_mib()}


CHILDREN = {
    "import": child_import,
    "breakdown": child_breakdown,
    "bare": child_bare,
    "ticks": child_ticks,
}


def child_main(mode: str, spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    Path(spec["result"]).write_text(json.dumps(CHILDREN[mode](spec)))
    return 0


# -------------------------------------------------------------------------------------- parent side


def code_path(code_root: Path | None) -> str:
    path = [str(code_root)] if code_root else []
    return os.pathsep.join([*path, str(ROOT), os.environ.get("PYTHONPATH", "")])


def run_child(mode: str, spec: dict, workdir: Path, env: dict[str, str]) -> dict:
    """One fresh child process; returns its report plus the parent's view (wall, ru_maxrss)."""
    spec = {**spec, "result": str(workdir / f"child-{mode}.json")}
    spec_path = workdir / f"child-{mode}-spec.json"
    spec_path.write_text(json.dumps(spec))
    load = load_average()
    t0 = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, str(spec_path)]
    err_path = workdir / f"child-{mode}.stderr"
    with err_path.open("wb") as err:  # a file, not a pipe: the child logs a warning per tenant
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"fleet child {mode} failed: {err_path.read_text(errors='replace')[-3000:]}")
    report = json.loads(Path(spec["result"]).read_text())
    return {
        **report,
        "process_wall_seconds": round(wall, 3),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "load_average": load,
    }


def summarise(samples: list[dict]) -> dict:
    """best / median of every numeric figure over the repeats, and the samples themselves."""
    keys = [k for k, v in samples[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {
        "best": {k: min(s[k] for s in samples) for k in keys},
        "median": {k: statistics.median(s[k] for s in samples) for k in keys},
        "samples": samples,
    }


def part_load(args, workdir: Path, out: Path) -> dict[str, dict]:
    """The load report of the code (`--code-root` or this checkout); with `--before-root`, also the report
    of that code, every child of one run next to the same child of the other (before, after, before, …)
    so both see the same machine load. Returns the reports by label."""
    roots = {"after": args.code_root}
    if args.before_root:
        roots = {"before": args.before_root, **roots}
    results: dict[str, list[dict]] = {label: [] for label in roots}
    for n in args.tenants:
        config = mixed_config(n, workdir)
        envs = {
            label: {**os.environ, "PYTHONPATH": code_path(root), "CHARGEBACK_CONFIG_FILE": str(config)}
            for label, root in roots.items()
        }
        rows: dict[str, dict] = {label: {"tenants": n} for label in roots}
        for mode, spec in (
            ("import", {}),
            ("breakdown", {}),
            ("bare", {"tenants": n, "full": False}),
            ("bare_full", {"tenants": n, "full": True}),
        ):
            # the bare builds run no project code: measured once, reported with each
            labels = list(roots) if mode in ("import", "breakdown") else ["after"]
            samples: dict[str, list[dict]] = {label: [] for label in labels}
            for r in range(args.repeats):
                for label in labels:
                    log(f"load: {n} tenants, {mode} {r + 1}/{args.repeats} {label}")
                    samples[label].append(run_child(mode.removesuffix("_full"), spec, workdir, envs[label]))
            for label in roots:
                rows[label][mode] = summarise(samples.get(label, samples["after"]))
        if args.profile and n == max(args.tenants):
            for label in roots:
                name = f"load-profile-{n}{args.label_suffix}"
                if label == "before":
                    name = f"load-profile-{n}-before-{args.before_label}" + ("-small" if args.small else "")
                profile = out / f"{name}.txt"
                run_child("import", {"profile": str(profile)}, workdir, envs[label])
                rows[label]["profile"] = str(
                    profile.relative_to(ROOT) if profile.is_relative_to(ROOT) else profile
                )
        for label in roots:
            results[label].append(rows[label])
        shutil.rmtree(workdir / "stores", ignore_errors=True)
    return {
        label: {
            "part": "load",
            "repeats": args.repeats,
            "code_root": str(roots[label]) if roots[label] else None,
            "interleaved_with": [str(r) if r else str(ROOT) for lb, r in roots.items() if lb != label],
            "sizes": results[label],
        }
        for label in roots
    }


def postgres_instance_file(root: Path) -> Path:
    """The shipped PostgreSQL instance config with Dagster's default run launcher:
    deploy/dagster-postgres.yaml (since issue 16, when docker/dagster.yaml started launching a container per
    run), docker/dagster.yaml before."""
    shipped = root / "deploy" / "dagster-postgres.yaml"
    return shipped if shipped.exists() else root / "docker" / "dagster.yaml"


def dagster_home(
    workdir: Path, pg_url: str, cap: int, config: Path, code_root: str | None = None
) -> tuple[Path, dict[str, str], object]:
    """A DAGSTER_HOME with the measured code's PostgreSQL instance config (`--code-root`'s, else this
    checkout's) on a fresh PostgreSQL database, its concurrency block from `chargeback-dagster
    instance-config`; returns the home, the environment and the drop function."""
    from run import make_pg_database
    from sqlalchemy.engine import make_url

    db_url, drop = make_pg_database(pg_url)
    url = make_url(db_url)
    home = workdir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": "",
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_USER": url.username or "postgres",
        "DAGSTER_PG_PASSWORD": url.password or "unused-with-trust-auth",
        "DAGSTER_PG_HOST": url.host or "127.0.0.1",
        "DAGSTER_PG_PORT": str(url.port or 5432),
        "DAGSTER_PG_DB": url.database,
        "CHARGEBACK_CONFIG_FILE": str(config),
        "PYTHONUNBUFFERED": "1",
    }
    instance_yaml = yaml.safe_load(postgres_instance_file(Path(code_root or ROOT)).read_text())
    cli = subprocess.run(
        [sys.executable, "-m", "chargeback_dagster.cli", "instance-config", "--config", str(config)],
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    instance_yaml["concurrency"] = yaml.safe_load(cli.stdout)["concurrency"]
    assert instance_yaml["concurrency"]["runs"]["tag_concurrency_limits"][1]["limit"] == cap
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml, sort_keys=False))
    return home, env, drop


def part_ticks(args, workdir: Path) -> dict:
    results = []
    for n in args.tick_tenants:
        config = mixed_config(n, workdir)
        home, env, drop = dagster_home(workdir / f"ticks-{n}", args.pg_url, 2, config, args.code_root)
        env["PYTHONPATH"] = code_path(args.code_root)
        try:
            log(f"ticks: {n} tenants")
            results.append({"tenants": n, **run_child("ticks", {}, workdir, env)})
        finally:
            drop()
            shutil.rmtree(workdir / "stores", ignore_errors=True)
    return {
        "part": "ticks",
        "method": "get_external_sensor_execution (the code server's sensor evaluation without gRPC) in one "
        "process; instance on PostgreSQL with the project's dagster.yaml",
        "sizes": results,
    }


# --- part 3: live fleet refresh ----------------------------------------------------------------------

TEAMS = ("team-a", "team-b", "team-c")


def fleet_history(n: int, first: date, now: datetime) -> str:
    """Every tenant's cluster: index size per team (gauge) and egress per team (counter), every 30 min
    from `first` until now."""
    from chargeback_dagster.devtools.openmetrics import OpenMetricsWriter

    w = OpenMetricsWriter()
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    points = int((now - start).total_seconds() // 1800)
    times = [start + timedelta(minutes=30 * k) for k in range(points)]
    for i in range(n):
        cluster = f"cluster-{i:03d}"
        for j, team in enumerate(TEAMS):
            labels = {"cluster": cluster, "team": team}
            size = (i % 7 + 1) * (j + 1) * 2**30
            w.add(
                "index_store_size_bytes", labels, [(t, size + (k % 48) * 2**20) for k, t in enumerate(times)]
            )
            w.add(
                "egress_bytes_total",
                labels,
                [(t, k * (j + 1) * 50 * 2**20) for k, t in enumerate(times)],
                type="counter",
            )
    return w.text()


def fleet_config(n: int, dates: int, cap: int, prom_url: str, workdir: Path, today: date) -> Path:
    tenants = {}
    for i in range(n):
        name, cluster = f"gen_{i:03d}", f"cluster-{i:03d}"
        sel = f'{{cluster="{cluster}"}}'
        tenants[name] = {
            "ecosystem": "generic_metrics_only",
            "tenant_id": f"gen-{i:03d}",
            "partitions_start_date": (today - timedelta(days=dates + 10)).isoformat(),
            # refresh window: today − (dates + 1) … today − 2
            "lookback_days": dates + 1,
            "cutoff_days": 1,
            "storage": {"connection_string": f"sqlite:///{workdir / 'stores' / name}.db"},
            "plugin_settings": {
                "cluster_id": cluster,
                "metrics": {"url": prom_url},
                "identity_source": {
                    "source": "static",
                    "static_identities": [{"identity_id": t, "identity_type": "principal"} for t in TEAMS],
                },
                "cost_types": [
                    {
                        "name": "NODE_HOURS",
                        "product_category": "compute",
                        "rate": 2.5,
                        "cost_quantity": {"type": "fixed", "count": 3},
                    },
                    {
                        "name": "STORAGE",
                        "product_category": "storage",
                        "rate": 0.0001,
                        "cost_quantity": {
                            "type": "storage_gib",
                            "query": f"sum(index_store_size_bytes{sel})",
                        },
                        "allocation_strategy": "usage_ratio",
                        "allocation_query": f"sum by (team) (index_store_size_bytes{sel})",
                        "allocation_label": "team",
                    },
                    {
                        "name": "EGRESS",
                        "product_category": "network",
                        "rate": 0.05,
                        "cost_quantity": {
                            "type": "network_gib",
                            "query": f"sum(increase(egress_bytes_total{sel}[{{step}}]))",
                        },
                        "allocation_strategy": "usage_ratio",
                        "allocation_query": f"sum by (team) (increase(egress_bytes_total{sel}[{{step}}]))",
                        "allocation_label": "team",
                    },
                ],
                "emitters": [{"type": "csv", "params": {"output_dir": str(workdir / "out" / name)}}],
            },
        }
    doc = {
        "logging": {"level": "INFO"},
        "features": {"refresh_interval": 3600, "max_parallel_tenants": cap, "enable_periodic_refresh": True},
        "tenants": tenants,
    }
    path = workdir / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class ProcessWatch:
    """Peak RSS (VmHWM) of processes whose command line matches, polled from /proc in a thread."""

    def __init__(self, roots: dict[str, int]):
        import threading

        self.roots = roots  # label → pid of the processes we started
        self.peaks: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _descendants(self) -> dict[int, str]:
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        labels = {pid: label for label, pid in self.roots.items()}
        changed = True
        while changed:
            changed = False
            for pid, ppid in parents.items():
                if pid not in labels and ppid in labels:
                    labels[pid] = labels[ppid]
                    changed = True
        return labels

    def _loop(self) -> None:
        while not self._stop.is_set():
            for pid, root in self._descendants().items():
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                hwm = next((ln for ln in status.splitlines() if ln.startswith("VmHWM:")), None)
                if hwm is None:
                    continue
                if "spawn_main" in cmdline:  # the code server starts each run in a spawned process
                    kind = "run_worker"
                elif "api grpc" in cmdline:
                    kind = "code_server"
                elif "resource_tracker" in cmdline:
                    continue
                else:
                    kind = root
                mib = int(hwm.split()[1]) / 1024
                if mib > self.peaks.get(pid, ("", 0.0))[1]:
                    self.peaks[pid] = (kind, mib)
            self._stop.wait(0.5)

    def summary(self) -> dict:
        by_kind: dict[str, list[float]] = {}
        for kind, mib in self.peaks.values():
            by_kind.setdefault(kind, []).append(round(mib, 1))
        return {
            kind: {"processes": len(v), "max_mib": max(v), "median_mib": statistics.median(v)}
            for kind, v in sorted(by_kind.items())
        }


def start_services(home: Path, env: dict[str, str]) -> tuple[list[subprocess.Popen], int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workspace = str(ROOT / "workspace.yaml")
    bin_dir = Path(sys.executable).parent
    procs = []
    for name, cmd in (
        ("webserver", ["dagster-webserver", "-h", "127.0.0.1", "-p", str(port), "-w", workspace]),
        ("daemon", ["dagster-daemon", "run", "-w", workspace]),
    ):
        cmd[0] = str(bin_dir / cmd[0]) if (bin_dir / cmd[0]).exists() else cmd[0]
        out = (home / f"{name}.log").open("wb")
        procs.append(subprocess.Popen(cmd, cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT))
    return procs, port


def wait_location(port: int, home: Path, timeout: float = 300) -> None:
    import httpx

    query = (
        "{ workspaceOrError { ... on Workspace { locationEntries { name "
        "locationOrLoadError { __typename } } } } }"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            body = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": query}, timeout=30).json()
            entries = body["data"]["workspaceOrError"]["locationEntries"]
            kind = entries[0]["locationOrLoadError"]["__typename"] if entries else None
            if kind == "RepositoryLocation":
                return
            if kind == "PythonError":
                raise RuntimeError(f"code location failed to load; see {home}/webserver.log")
        except (httpx.TransportError, KeyError, ValueError):
            pass
        time.sleep(1)
    raise RuntimeError(f"webserver did not load the code location in {timeout} s")


def run_timeline(instance, record) -> dict:
    """One run's phases from its event log: queue wait (created → dequeued), launch (dequeued → RUN_START:
    the worker process starts and imports the code location), Dagster before the first step, the steps, and
    Dagster after the last step; `dagster_overhead_seconds` = everything of the launched run that is not
    inside a step."""
    import dagster as dg

    et = dg.DagsterEventType
    kinds = {et.RUN_DEQUEUED, et.RUN_STARTING, et.RUN_START, et.STEP_START, et.STEP_SUCCESS, et.STEP_FAILURE}
    kinds |= {et.RUN_SUCCESS, et.RUN_FAILURE}
    first: dict = {}
    steps: dict[str, dict] = {}
    for entry in instance.all_logs(record.dagster_run.run_id, of_type=kinds):
        ev = entry.dagster_event
        first.setdefault(ev.event_type, entry.timestamp)
        if ev.step_key:
            steps.setdefault(ev.step_key, {})[ev.event_type] = entry.timestamp
    step_ends = [s.get(et.STEP_SUCCESS) or s.get(et.STEP_FAILURE) for s in steps.values()]
    step_work = sum(end - s[et.STEP_START] for s, end in zip(steps.values(), step_ends, strict=True) if end)
    created = record.create_timestamp.timestamp()
    dequeued = first.get(et.RUN_DEQUEUED) or first.get(et.RUN_STARTING)
    start, first_step = first.get(et.RUN_START), first.get(et.STEP_START)
    last_step = max((e for e in step_ends if e), default=None)
    end = first.get(et.RUN_SUCCESS) or first.get(et.RUN_FAILURE)
    row = {
        "run_id": record.dagster_run.run_id,
        "tenant": record.dagster_run.tags.get("chargeback/tenant"),
        "status": record.dagster_run.status.value,
        "created": created,
        "ended": end or (record.end_time or created),
        "queued_seconds": None,
        "launch_seconds": None,
        "before_first_step_seconds": None,
        "steps_span_seconds": None,
        "step_work_seconds": round(step_work, 3),
        "after_last_step_seconds": None,
    }
    if dequeued and start and first_step and last_step and end:
        row.update(
            queued_seconds=round(dequeued - created, 3),
            launch_seconds=round(start - dequeued, 3),
            before_first_step_seconds=round(first_step - start, 3),
            steps_span_seconds=round(last_step - first_step, 3),
            after_last_step_seconds=round(end - last_step, 3),
            dagster_overhead_seconds=round((end - dequeued) - step_work, 3),
        )
    return row


def tick_summary(instance) -> dict:
    durations: dict[str, list[float]] = {"refresh": [], "run_status": []}
    for state in instance.all_instigator_state():
        kind = "refresh" if state.instigator_name.endswith("_refresh") else "run_status"
        if state.instigator_type.value != "SENSOR":
            continue
        for tick in instance.get_ticks(state.instigator_origin_id, state.selector_id):
            if tick.end_timestamp:
                durations[kind].append(tick.end_timestamp - tick.timestamp)
    return {
        kind: {
            "ticks": len(v),
            "median_ms": round(statistics.median(v) * 1000, 1),
            "max_ms": round(max(v) * 1000, 1),
            "total_seconds": round(sum(v), 2),
        }
        for kind, v in durations.items()
        if v
    }


def part_refresh(args, workdir: Path, n: int, cap: int, dates: int) -> dict:
    import dagster as dg

    from chargeback_dagster.devtools.local_prometheus import LocalPrometheus

    wd = workdir / f"refresh-{n}-{cap}"
    wd.mkdir(parents=True)
    now = datetime.now(UTC)
    today = now.date()
    log(f"refresh: generating history for {n} tenants")
    t0 = time.monotonic()
    prom = LocalPrometheus(fleet_history(n, today - timedelta(days=dates + 3), now), wd / "prom")
    prom.start()
    prepare = time.monotonic() - t0
    procs: list[subprocess.Popen] = []
    watch = None
    drop = None
    try:
        config = fleet_config(n, dates, cap, prom.url, wd, today)
        home, env, drop = dagster_home(wd, args.pg_url, cap, config, args.code_root)
        env["PYTHONPATH"] = code_path(args.code_root)
        os.environ.update({k: v for k, v in env.items() if k.startswith(("DAGSTER_", "CHARGEBACK_"))})
        log(f"refresh: {n} tenants, max_parallel_tenants {cap}: starting webserver + daemon")
        load_before = load_average()
        t_start = time.time()
        procs, port = start_services(home, env)
        watch = ProcessWatch({"webserver": procs[0].pid, "daemon": procs[1].pid})
        watch.start()
        wait_location(port, home)
        t_ready = time.time()
        instance = dg.DagsterInstance.get()
        runs_filter = dg.RunsFilter(tags={"chargeback/trigger": "refresh"})
        deadline = time.monotonic() + args.refresh_timeout
        loads = []
        while time.monotonic() < deadline:
            records = instance.get_run_records(runs_filter)
            done = [r for r in records if r.dagster_run.status.value in FINISHED]
            if len(records) >= n and len(done) == len(records):
                break
            loads.append(os.getloadavg()[0])
            time.sleep(2)
        else:
            raise RuntimeError(f"refresh runs did not finish in {args.refresh_timeout} s ({len(done)}/{n})")
        time.sleep(12)  # the run-status sensors tick every 10 s
        runs = [run_timeline(instance, r) for r in records]
        ticks = tick_summary(instance)
        failures = {}
        for r in records:
            if r.dagster_run.status.value != "SUCCESS":
                msgs = [
                    e.message
                    for e in instance.all_logs(r.dagster_run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
                ]
                failures[r.dagster_run.run_id] = msgs or ["run failed"]
        csvs = len(list((wd / "out").glob("*/*.csv")))
    finally:
        if watch is not None:
            watch.stop()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        prom.stop()
        if drop is not None:
            drop()
    first_created = min(r["created"] for r in runs)
    last_end = max(r["ended"] for r in runs)
    wall = last_end - first_created

    def stats(key: str) -> dict:
        values = [r[key] for r in runs if r.get(key) is not None]
        return {"median": round(statistics.median(values), 2), "max": round(max(values), 2)} if values else {}

    report = {
        "part": "refresh",
        "tenants": n,
        "dates_per_run": dates,
        "max_parallel_tenants": cap,
        "runs": len(runs),
        "runs_succeeded": sum(r["status"] == "SUCCESS" for r in runs),
        "failures": failures,
        "csv_files": csvs,
        "csv_files_expected": n * dates,
        "wall_seconds": round(wall, 1),
        "runs_per_minute": round(len(runs) / (wall / 60), 2),
        "services_start_to_location_loaded_seconds": round(t_ready - t_start, 1),
        "services_start_to_last_run_end_seconds": round(last_end - t_start, 1),
        "per_run": {
            key: stats(key)
            for key in (
                "queued_seconds",
                "launch_seconds",
                "before_first_step_seconds",
                "steps_span_seconds",
                "step_work_seconds",
                "after_last_step_seconds",
                "dagster_overhead_seconds",
            )
        },
        "peak_rss_mib": watch.summary() if watch else {},
        "daemon_sensor_ticks": ticks,
        "prepare_prometheus_seconds": round(prepare, 1),
        "load_average_before": load_before,
        "load_average_1min_during": {
            "median": round(statistics.median(loads), 2) if loads else None,
            "max": round(max(loads), 2) if loads else None,
        },
        "load_average_after": load_average(),
        "run_details": runs,
    }
    return report


# ---------------------------------------------------------------------------------------------- main


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="*", help="load, ticks, refresh (default: all)")
    parser.add_argument("--tenants", type=int_list, default=[1, 50, 500], help="tenant counts for load")
    parser.add_argument("--tick-tenants", type=int_list, default=[50, 500], help="tenant counts for ticks")
    parser.add_argument("--refresh-tenants", type=int, default=50, help="tenants of the live refresh")
    parser.add_argument("--parallel", type=int_list, default=[2, 4], help="max_parallel_tenants values")
    parser.add_argument("--dates", type=int, default=28, help="dates in each tenant's refresh window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--refresh-timeout", type=float, default=3600)
    parser.add_argument("--small", action="store_true", help="seconds-long smoke run")
    parser.add_argument("--profile", action="store_true", help="cProfile the load of the largest size")
    parser.add_argument("--code-root", type=Path, help="run the children on another copy of the code")
    parser.add_argument(
        "--before-root",
        type=Path,
        help="load: also measure this copy of the code, each child interleaved with the same child of "
        "--code-root (or this checkout); writes load-before-<--before-label>.json next to the other",
    )
    parser.add_argument("--before-label", help="names the --before-root report (default: its folder name)")
    parser.add_argument("--label", help="report names get -LABEL (load-LABEL.json, ticks-LABEL.json)")
    parser.add_argument("--output", type=Path, help="folder for the JSON reports")
    parser.add_argument("--pg-url", default=os.environ.get("CHARGEBACK_TEST_PG_URL", DEFAULT_PG_URL))
    args = parser.parse_args(argv)
    parts = args.parts or ["load", "ticks", "refresh"]
    if set(parts) - {"load", "ticks", "refresh"}:
        parser.error(f"unknown part(s): {sorted(set(parts) - {'load', 'ticks', 'refresh'})}")
    if args.small:
        args.tenants, args.tick_tenants, args.refresh_tenants = [1, 3], [3], 2
        args.parallel, args.dates, args.repeats = [2], 2, 1
    if args.code_root:
        args.code_root = args.code_root.resolve()
    if args.before_root:
        args.before_root = args.before_root.resolve()
        args.before_label = args.before_label or args.before_root.name
    args.label_suffix = (f"-{args.label}" if args.label else "") + ("-small" if args.small else "")
    out = args.output or HERE / "results" / "fleet"
    out.mkdir(parents=True, exist_ok=True)
    from run import machine

    common = {
        "small": args.small,
        "machine": machine(),
        "code_root": str(args.code_root) if args.code_root else None,
    }
    workdir = Path(tempfile.mkdtemp(prefix="cbfleet-"))

    def write(name: str, report: dict, suffix: str = args.label_suffix) -> None:
        report = {**common, **report, "measured_at": datetime.now(UTC).replace(microsecond=0).isoformat()}
        path = out / f"{name}{suffix}.json"
        path.write_text(json.dumps(report, indent=2) + "\n")
        log(f"{name}: written to {path}")

    try:
        if "load" in parts:
            reports = part_load(args, workdir, out)
            if "before" in reports:
                write(f"load-before-{args.before_label}", reports["before"], "-small" if args.small else "")
            write("load", reports["after"])
        if "ticks" in parts:
            write("ticks", part_ticks(args, workdir))
        if "refresh" in parts:
            for cap in args.parallel:
                report = part_refresh(args, workdir, args.refresh_tenants, cap, args.dates)
                write(f"refresh-{args.refresh_tenants}-p{cap}", report)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        sys.exit(child_main(sys.argv[2], sys.argv[3]))
    sys.exit(main())
