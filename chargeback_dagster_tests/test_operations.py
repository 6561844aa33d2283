"""Operations layer (docs/operations.md §3–§9, §12): refresh sensor, guard, suspension, timeouts, retention,
CLI.

Runs are real in-process Dagster runs on a temporary Dagster instance against real tenant stores; sensors are
evaluated with Dagster's `build_*_context` helpers. The fault test uses a real Prometheus for the good runs
and a closed port for the outage.
"""

from __future__ import annotations

import http.server
import json
import logging
import re
import socket
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.test_utils import create_run_for_test

from chargeback_dagster import cli, tenant_ops
from chargeback_dagster.config import load_config
from chargeback_dagster.defs import maintenance, sensors
from chargeback_dagster.defs.build import build_definitions
from chargeback_dagster.devtools.local_run import materialize_range
from chargeback_dagster.devtools.openmetrics import OpenMetricsWriter
from chargeback_dagster.store import TenantStore
from chargeback_dagster.store.chargeback import ChargebackRepository
from chargeback_dagster_tests.store_helpers import csv_rows, fact_rows

DATES = (date(2026, 2, 1), date(2026, 2, 2))


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def tenant_config(
    prometheus_url: str,
    db_url: str = "sqlite:///data/shop.db",
    *,
    discovery: bool = False,
    name: str = "shop",
    **tenant_fields,
) -> dict:
    identity_source: dict = {
        "source": "static",
        "static_identities": [
            {"identity_id": "team-a", "identity_type": "principal"},
            {"identity_id": "team-b", "identity_type": "principal"},
        ],
    }
    if discovery:
        identity_source = {
            "source": "prometheus",
            "label": "team",
            "discovery_query": "group by (team) (requests)",
        }
    return {
        "ecosystem": "generic_metrics_only",
        "tenant_id": f"{name}-prod",
        "partitions_start_date": "2026-01-01",
        "lookback_days": 16,
        "cutoff_days": 1,
        "gather_failure_threshold": 2,
        "storage": {"connection_string": db_url},
        "plugin_settings": {
            "cluster_id": f"{name}-cluster",
            "metrics": {"url": prometheus_url},
            "identity_source": identity_source,
            "discovery_window_hours": 2,
            "cost_types": [
                {
                    "name": "broker_hours",
                    "product_category": "compute",
                    "rate": 1.25,
                    "cost_quantity": {"type": "fixed", "count": 2},
                }
            ],
            "emitters": [{"type": "csv", "params": {"output_dir": "out"}}],
        },
        **tenant_fields,
    }


def write_config(path: Path, tenants: dict, **features) -> Path:
    doc = {"features": {"enable_periodic_refresh": False, **features}, "tenants": tenants}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def open_store(config_path: Path, name: str = "shop") -> TenantStore:
    t = load_config(config_path).tenants[name]
    return TenantStore.open(t.database_url, tenant_name=name, ecosystem=t.ecosystem, tenant_id=t.tenant_id)


def step_failures(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    return {
        e.step_key: e.event_specific_data.error.to_string()
        for e in result.all_events
        if e.event_type_value == "STEP_FAILURE"
    }


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def shop(tmp_path):
    """A static-identity, fixed-cost tenant: runs need no Prometheus."""
    return write_config(tmp_path / "chargeback.yaml", {"shop": tenant_config(closed_port_url())})


# --- refresh sensor (§3) ---------------------------------------------------------------------------
def evaluate_refresh(config_path: Path, instance, tick: datetime, cursor: str | None = None):
    config = load_config(config_path)
    defs = build_definitions(config)
    sensor = sensors.build_refresh_sensor(config.tenants["shop"], config.features, clock=lambda: tick)
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=defs.resources) as context:
        return sensor(context)


def test_refresh_requests_the_whole_window_as_one_range(shop, instance):
    tick = datetime(2026, 7, 18, 9, 30, tzinfo=UTC)
    result = evaluate_refresh(shop, instance, tick)
    (request,) = result.run_requests
    assert request.job_name == "shop_pipeline"
    assert request.run_key == "shop:2026-07-18T09:30:00+00:00"
    # docs/operations.md §2 example: today 2026-07-18, lookback 16, cutoff 1 → 2026-07-02 … 2026-07-16
    assert request.tags == {
        "dagster/asset_partition_range_start": "2026-07-02",
        "dagster/asset_partition_range_end": "2026-07-16",
        "chargeback/tenant": "shop",
        "chargeback/pipeline": "tenant",
        "chargeback/trigger": "refresh",
        "dagster/max_runtime": "3900",
    }
    assert result.cursor == tick.isoformat()


def test_refresh_window_edges(tmp_path):
    config = write_config(
        tmp_path / "c.yaml",
        {"shop": tenant_config(closed_port_url(), lookback_days=16, cutoff_days=3)},
    )
    tenant = load_config(config).tenants["shop"]
    # clamped to partitions_start_date (2026-01-01); last = today − cutoff − 1
    assert sensors.refresh_window(tenant, date(2026, 1, 10)) == (date(2026, 1, 1), date(2026, 1, 6))
    assert sensors.refresh_window(tenant, date(2026, 1, 5)) == (date(2026, 1, 1), date(2026, 1, 1))
    assert sensors.refresh_window(tenant, date(2026, 1, 4)) is None  # 2026-01-01 ≥ today − cutoff
    assert sensors.refresh_window(tenant, date(2026, 3, 1)) == (date(2026, 2, 13), date(2026, 2, 25))


def test_refresh_skips_an_empty_window(shop, instance):
    result = evaluate_refresh(shop, instance, datetime(2026, 1, 1, 12, tzinfo=UTC))
    assert isinstance(result, dg.SkipReason)
    assert result.skip_message == "Refresh window is empty"


def test_refresh_gap_rule(shop, instance):
    tick = datetime(2026, 7, 18, 9, 30, tzinfo=UTC)
    # this sensor's previous request, 1799 s ago (default min_refresh_gap_seconds 1800)
    result = evaluate_refresh(shop, instance, tick, cursor=(tick - timedelta(seconds=1799)).isoformat())
    assert result.skip_message == (
        "min_refresh_gap_seconds (1800) not elapsed since last gather at 2026-07-18T09:00:01+00:00"
    )
    result = evaluate_refresh(shop, instance, tick, cursor=(tick - timedelta(seconds=1800)).isoformat())
    assert len(result.run_requests) == 1

    store = open_store(shop)
    # a gather of an explicit run 10 minutes ago counts; a refresh run's own gather does not
    store.state.log_gather(
        kind="billing",
        run_id="r-refresh",
        trigger="refresh",
        started_at=tick - timedelta(seconds=5),
        status="ok",
    )
    assert len(evaluate_refresh(shop, instance, tick).run_requests) == 1
    store.state.log_gather(
        kind="inventory",
        run_id="r-manual",
        trigger="manual",
        started_at=tick - timedelta(minutes=10),
        status="ok",
    )
    result = evaluate_refresh(shop, instance, tick, cursor=(tick - timedelta(hours=5)).isoformat())
    assert result.skip_message == (
        "min_refresh_gap_seconds (1800) not elapsed since last gather at 2026-07-18T09:20:00+00:00"
    )
    later = tick + timedelta(minutes=20)
    assert len(evaluate_refresh(shop, instance, later).run_requests) == 1


def test_refresh_skips_suspended_and_busy_tenants(shop, instance):
    tick = datetime(2026, 7, 18, 9, 30, tzinfo=UTC)
    store = open_store(shop)
    store.state.record_gather_failure("run-1", "billing: boom")
    assert len(evaluate_refresh(shop, instance, tick).run_requests) == 1
    store.state.record_gather_failure("run-2", "billing: boom")  # counter at threshold 2: skipped already
    assert evaluate_refresh(shop, instance, tick).skip_message == "Tenant shop is suspended"
    assert tenant_ops.suspend_if_due(store, 2) is not None
    assert evaluate_refresh(shop, instance, tick).skip_message == "Tenant shop is suspended"
    tenant_ops.resume(store)

    create_run_for_test(
        instance,
        job_name="shop_pipeline",
        status=dg.DagsterRunStatus.STARTED,
        tags={"chargeback/tenant": "shop"},
    )
    assert (
        evaluate_refresh(shop, instance, tick).skip_message == "Pipeline is already running for tenant shop"
    )


def test_refresh_skips_while_a_run_of_another_instance_holds_the_lock(shop, instance):
    """A lock holder this instance does not know (another DAGSTER_HOME, a CLI run) is alive while its
    heartbeat is fresh; once the heartbeat is older than the takeover time the tenant is free."""
    tick = datetime(2026, 7, 18, 9, 30, tzinfo=UTC)
    store = open_store(shop)
    now = tenant_ops.now_utc()
    assert store.state.try_take_run_lock("run-of-another-instance", now)
    assert (
        evaluate_refresh(shop, instance, tick).skip_message == "Pipeline is already running for tenant shop"
    )
    store.state.touch_run_lock(
        "run-of-another-instance", now - timedelta(seconds=tenant_ops.DEFAULT_TAKEOVER_SECONDS + 1)
    )
    assert len(evaluate_refresh(shop, instance, tick).run_requests) == 1


def test_refresh_sensor_default_status_follows_the_feature_flag(tmp_path):
    for enabled, status in ((True, dg.DefaultSensorStatus.RUNNING), (False, dg.DefaultSensorStatus.STOPPED)):
        path = write_config(
            tmp_path / f"{enabled}.yaml",
            {"shop": tenant_config(closed_port_url())},
            enable_periodic_refresh=enabled,
            refresh_interval=900,
        )
        sensor = build_definitions(load_config(path)).resolve_sensor_def("shop_refresh")
        assert sensor.default_status == status
        assert sensor.minimum_interval_seconds == 900


# --- guard (§4) ------------------------------------------------------------------------------------
def test_guard_lock_takeover_and_orphans(shop, instance):
    defs = build_definitions(load_config(shop))
    store = open_store(shop)
    running = create_run_for_test(instance, job_name="shop_pipeline", status=dg.DagsterRunStatus.STARTED)
    store.state.try_take_run_lock(running.run_id, tenant_ops.now_utc())

    result = materialize_range(defs, "shop", *DATES, instance=instance)
    assert not result.success
    assert all("Pipeline is already running for tenant shop" in e for e in step_failures(result).values())
    assert csv_rows(store, DATES[0], DATES[1]) == []

    # the holder ends without releasing the lock: the next run takes it over
    instance.report_run_failed(instance.get_run_by_id(running.run_id))
    # the audit row of a run Dagster never saw
    store.state.upsert_run("ghost-run", started_at=tenant_ops.now_utc())
    result = materialize_range(defs, "shop", *DATES, instance=instance)
    assert result.success
    # the run's end released its lock and stopped its heartbeat thread
    assert store.state.run_lock_holder() is None
    assert [t.name for t in threading.enumerate() if t.name.startswith("chargeback-lock-")] == []
    ghost = store.state.get_run("ghost-run")
    assert (ghost["status"], ghost["error_message"]) == ("failed", "Orphaned — run ended without completing")
    audit = store.state.get_run(result.run_id)
    assert (audit["trigger"], audit["range_start"], audit["range_end"]) == ("manual", *DATES)
    assert (audit["dates_gathered"], audit["dates_calculated"], audit["rows_written"]) == (2, 2, 4)


def test_a_run_uses_the_config_the_code_location_loaded(shop, instance, tmp_path):
    defs = build_definitions(load_config(shop))
    # the file changes after the code location loaded (the tenant even disappears): the run keeps its snapshot
    write_config(shop, {"other": tenant_config(closed_port_url(), "sqlite:///data/other.db", name="other")})
    result = materialize_range(defs, "shop", *DATES, instance=instance)
    assert result.success, step_failures(result)
    written = sorted(p.name for p in (tmp_path / "out").glob("*.csv"))
    assert written == ["shop-prod_2026-02-01.csv", "shop-prod_2026-02-02.csv"]


# --- suspension counting (§7), SQLite and PostgreSQL ----------------------------------------------
def test_gather_failure_counting(store_url):
    store = TenantStore.open(store_url, tenant_name="shop", ecosystem="generic_metrics_only", tenant_id="s")
    assert store.state.record_gather_failure("r1", "billing: a") == 1
    assert store.state.record_gather_failure("r1", "inventory: b") == 1  # at most once per run
    assert store.state.status()["last_gather_error"] == "inventory: b"
    assert not store.state.reset_gather_failures("r1")  # the same run already incremented
    # run r2: billing succeeds, inventory fails → still a failing run, the counter climbs
    store.state.log_gather(kind="billing", run_id="r2", started_at=tenant_ops.now_utc(), status="ok")
    assert not tenant_ops.record_success(store, "r2", {"billing", "inventory"})
    assert store.state.record_gather_failure("r2", "inventory: c") == 2
    assert tenant_ops.suspend_if_due(store, 3) is None
    row = tenant_ops.suspend_if_due(store, 2)
    assert row["suspended"] and row["suspended_reason"] == (
        "Tenant shop gather failed 2 consecutive times (threshold: 2). Last error: inventory: c"
    )
    assert tenant_ops.suspend_if_due(store, 2) is None  # conditional: only one writer wins
    assert tenant_ops.resume(store).resumed
    assert store.state.status()["consecutive_gather_failures"] == 0
    assert tenant_ops.resume(store).message == "Tenant shop is not suspended"
    # a run whose gathers all succeed resets the counter
    store.state.record_gather_failure("r3", "billing: d")
    for kind in ("billing", "inventory"):
        store.state.log_gather(kind=kind, run_id="r4", started_at=tenant_ops.now_utc(), status="ok")
    assert tenant_ops.record_success(store, "r4", {"billing", "inventory"})
    assert store.state.status()["consecutive_gather_failures"] == 0
    store.dispose()


# --- the fault test: outage → suspension → fail fast → resume (§7, D8) -----------------------------
def discovery_metrics() -> str:
    w = OpenMetricsWriter()
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    for team in ("team-a", "team-b", "team-c"):
        w.add("requests", {"team": team}, [(now - timedelta(minutes=m), 1) for m in range(0, 120, 5)])
    return w.text()


def run_failure_sensor(defs, instance, result) -> None:
    run = instance.get_run_by_id(result.run_id)
    failure = result.get_run_failure_event()
    with dg.build_run_status_sensor_context(
        sensor_name="tenant_run_failure_sensor",
        dagster_instance=instance,
        dagster_run=run,
        dagster_event=failure,
        resources=defs.resources,
    ) as context:
        defs.resolve_sensor_def("tenant_run_failure_sensor")(context.for_run_failure())


@pytest.mark.slow
def test_outage_suspends_then_resume(
    tmp_path, instance, local_prometheus_factory, monkeypatch, caplog, capsys
):
    prom = local_prometheus_factory(discovery_metrics())
    good = tenant_config(prom.url, discovery=True)
    config_path = write_config(tmp_path / "chargeback.yaml", {"shop": good})
    defs = build_definitions(load_config(config_path))
    assert materialize_range(defs, "shop", *DATES, instance=instance).success
    out = tmp_path / "out"
    csvs = {p.name: p.read_bytes() for p in out.glob("*.csv")}
    assert sorted(csvs) == ["shop-prod_2026-02-01.csv", "shop-prod_2026-02-02.csv"]
    store = open_store(config_path)
    rows = {d: fact_rows(store, d) for d in DATES}

    # Prometheus (identity discovery) becomes unreachable; retry waits shortened for the test
    monkeypatch.setattr("chargeback_dagster.sources.prometheus.random.uniform", lambda a, b: 0.01)
    write_config(config_path, {"shop": tenant_config(closed_port_url(), discovery=True)})
    defs = build_definitions(load_config(config_path))  # the code location reloads the edited config
    caplog.set_level(logging.INFO, logger="chargeback_dagster")
    for attempt in (1, 2):
        result = materialize_range(defs, "shop", *DATES, instance=instance)
        assert not result.success
        assert (
            "Identity discovery query failed: Exhausted 4 attempts"
            in step_failures(result)["shop__inventory"]
        )
        assert store.state.status()["consecutive_gather_failures"] == attempt
        run_failure_sensor(defs, instance, result)

    alerts = [r for r in caplog.records if r.getMessage().startswith("ALERT: Tenant shop")]
    assert len(alerts) == 1 and alerts[0].levelno == logging.CRITICAL
    assert (
        alerts[0]
        .getMessage()
        .startswith(
            "ALERT: Tenant shop has been permanently suspended after 2 consecutive gather failures "
            "(threshold: 2). "
            "Last error: inventory: Identity discovery query failed: Exhausted 4 attempts"
        )
    )
    assert alerts[0].getMessage().endswith("Resume with: chargeback-dagster resume shop")
    assert any(
        r.getMessage() == "ALERT: All 1 tenants are suspended; no chargeback is being calculated"
        for r in caplog.records
    )
    status = store.state.status()
    assert status["suspended"]

    # further runs fail fast at the guard; the failure sensor does not alert again
    result = materialize_range(defs, "shop", *DATES, instance=instance)
    assert not result.success
    expected = (
        f"Tenant shop is suspended since {status['suspended_at'].isoformat()}: {status['suspended_reason']}. "
        "Resume with 'chargeback-dagster resume shop' or the resume_tenant job."
    )
    assert all(expected in e for e in step_failures(result).values())
    run_failure_sensor(defs, instance, result)
    assert len([r for r in caplog.records if r.getMessage().startswith("ALERT: Tenant shop")]) == 1
    # data and CSVs from before are untouched
    assert {p.name: p.read_bytes() for p in out.glob("*.csv")} == csvs
    assert {d: fact_rows(store, d) for d in DATES} == rows

    assert cli.main(["status", "--config", str(config_path)]) == 0
    printed = capsys.readouterr().out
    assert "suspended: yes" in printed and "consecutive gather failures: 2" in printed

    # fix the cause, resume, and the next run succeeds
    write_config(config_path, {"shop": good})
    assert cli.main(["resume", "shop", "--config", str(config_path)]) == 0
    assert (
        f"Tenant shop resumed (was suspended since {status['suspended_at'].isoformat()})"
        in capsys.readouterr().out
    )
    defs = build_definitions(load_config(config_path))
    result = materialize_range(defs, "shop", *DATES, instance=instance)
    assert result.success
    assert store.state.status()["consecutive_gather_failures"] == 0
    assert not store.state.status()["suspended"]
    audit = store.state.get_run(result.run_id)
    assert audit["status"] == "running"  # closed by the success sensor
    # the first good run (marked completed by a later guard) and the three failed ones; start times are whole
    # seconds, so runs started within one second have no defined order
    earlier = sorted(r["status"] for r in store.state.runs() if r["dagster_run_id"] != result.run_id)
    assert earlier == ["completed", "failed", "failed", "failed"]


def test_guard_is_the_suspension_backstop(shop, instance, caplog):
    store = open_store(shop)
    store.state.record_gather_failure("r1", "billing: x")
    store.state.record_gather_failure("r2", "billing: y")  # threshold 2 reached, no sensor ran
    caplog.set_level(logging.INFO, logger="chargeback_dagster")
    result = materialize_range(build_definitions(load_config(shop)), "shop", *DATES, instance=instance)
    assert not result.success
    assert "Tenant shop is suspended since" in next(iter(step_failures(result).values()))
    assert len([r for r in caplog.records if r.getMessage().startswith("ALERT: Tenant shop")]) == 1


def test_resume_tenant_job(shop, instance, caplog):
    defs = build_definitions(load_config(shop))
    store = open_store(shop)
    store.state.record_gather_failure("r1", "billing: x")
    store.state.record_gather_failure("r2", "billing: x")
    tenant_ops.suspend_if_due(store, 2)
    caplog.set_level(logging.INFO, logger="chargeback_dagster")
    job = defs.resolve_job_def("resume_tenant")
    run_config = {"ops": {"resume_tenant": {"config": {"tenant_name": "shop"}}}}
    assert job.execute_in_process(run_config=run_config, instance=instance).success
    assert not store.state.status()["suspended"]
    assert any(r.getMessage().startswith("Tenant shop resumed (was suspended since") for r in caplog.records)
    assert job.execute_in_process(run_config=run_config, instance=instance).success
    assert any(r.getMessage() == "Tenant shop is not suspended" for r in caplog.records)
    bad = {"ops": {"resume_tenant": {"config": {"tenant_name": "nope"}}}}
    result = job.execute_in_process(run_config=bad, instance=instance, raise_on_error=False)
    assert not result.success
    assert "Unknown tenant 'nope'" in step_failures(result)["resume_tenant"]


# --- timeouts (§6) ---------------------------------------------------------------------------------
def test_deadline():
    assert not tenant_ops.Deadline(0, 0.0).expired()  # T = 0: no deadline
    deadline = tenant_ops.Deadline(5, tenant_ops.clock() - 6)
    assert deadline.expired()
    with pytest.raises(tenant_ops.ExecutionTimeout, match=r"^Execution timed out after 5s$"):
        deadline.check()
    slept = []
    deadline = tenant_ops.Deadline(5, tenant_ops.clock() - 4.9)
    bounded = deadline.wrap_sleep(lambda s: (slept.append(s), time.sleep(s)))
    with pytest.raises(tenant_ops.ExecutionTimeout):
        bounded(8.0)  # waits only until the deadline, then fails
    assert slept and slept[0] <= 0.1


def test_timeout_keeps_committed_dates(tmp_path, instance, monkeypatch):
    config_path = write_config(
        tmp_path / "c.yaml", {"shop": tenant_config(closed_port_url(), tenant_execution_timeout_seconds=30)}
    )
    defs = build_definitions(load_config(config_path))
    assert defs.resolve_job_def("shop_pipeline").tags["dagster/max_runtime"] == "330"
    # time jumps past the deadline right after the first date is committed
    offset = [0.0]
    monkeypatch.setattr(tenant_ops, "clock", lambda: time.time() + offset[0])
    original = ChargebackRepository.write

    def write_then_jump(self, *args, **kwargs):
        written = original(self, *args, **kwargs)
        offset[0] = 31.0
        return written

    monkeypatch.setattr(ChargebackRepository, "write", write_then_jump)
    result = materialize_range(defs, "shop", date(2026, 2, 1), date(2026, 2, 3), instance=instance)
    assert not result.success
    assert "Execution timed out after 30s" in step_failures(result)["shop__chargeback"]
    store = open_store(config_path)
    assert store.state.calculated_dates(date(2026, 2, 1), date(2026, 2, 4)) == [date(2026, 2, 1)]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.csv")) == ["shop-prod_2026-02-01.csv"]
    assert store.state.status()["consecutive_gather_failures"] == 0  # a timeout is no gather failure


def test_timeout_during_provider_retry_is_not_a_gather_failure(tmp_path, instance):
    config_path = write_config(
        tmp_path / "c.yaml",
        {"shop": tenant_config(closed_port_url(), discovery=True, tenant_execution_timeout_seconds=1)},
    )
    result = materialize_range(build_definitions(load_config(config_path)), "shop", *DATES, instance=instance)
    assert not result.success
    assert "Execution timed out after 1s" in step_failures(result)["shop__inventory"]
    assert (open_store(config_path).state.status() or {}).get("consecutive_gather_failures", 0) == 0


# --- retention (§9) --------------------------------------------------------------------------------
def test_retention(shop, instance, caplog):
    defs = build_definitions(load_config(shop))
    assert materialize_range(defs, "shop", date(2026, 2, 1), date(2026, 2, 4), instance=instance).success
    store = open_store(shop)
    csvs = {p.name: p.read_bytes() for p in (shop.parent / "out").glob("*.csv")}
    caplog.set_level(logging.INFO, logger="chargeback_dagster")
    # retention_days 250: with now = 2026-10-11, cutoff_date = 2026-02-03
    now = datetime(2026, 10, 11, 12, tzinfo=UTC)
    deleted = maintenance.purge(store, 250, now)
    assert deleted["chargeback_facts"] == 4 and deleted["billing"] == 2
    assert store.state.calculated_dates(date(2026, 1, 1), date(2026, 3, 1)) == [
        date(2026, 2, 3),
        date(2026, 2, 4),
    ]
    assert any("Retention deleted" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    assert {p.name: p.read_bytes() for p in (shop.parent / "out").glob("*.csv")} == csvs  # CSVs untouched
    assert sum(maintenance.purge(store, 250, now).values()) == 0

    job = defs.resolve_job_def("shop_retention")
    assert job.tags["chargeback/pipeline"] == "maintenance" and job.tags["chargeback/tenant"] == "shop"
    assert job.execute_in_process(instance=instance).success


def test_retention_schedule_skips_suspended_tenant(shop, instance):
    defs = build_definitions(load_config(shop))
    schedule = defs.resolve_schedule_def("shop_retention_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("30 2 * * *", "UTC")
    with dg.build_schedule_context(instance=instance, resources=defs.resources) as context:
        assert isinstance(schedule.evaluate_tick(context).run_requests[0], dg.RunRequest)
    store = open_store(shop)
    store.state.record_gather_failure("r1", "x")
    store.state.record_gather_failure("r2", "x")
    tenant_ops.suspend_if_due(store, 2)
    with dg.build_schedule_context(instance=instance, resources=defs.resources) as context:
        data = schedule.evaluate_tick(context)
    assert not data.run_requests and data.skip_message == "Tenant shop is suspended"


# --- CLI (§5, §12) ---------------------------------------------------------------------------------
def test_cli_instance_config_and_concurrency_warning(tmp_path, capsys, monkeypatch):
    config_path = write_config(
        tmp_path / "c.yaml", {"shop": tenant_config(closed_port_url())}, max_parallel_tenants=3
    )
    assert cli.main(["instance-config", "--config", str(config_path)]) == 0
    block = yaml.safe_load(capsys.readouterr().out)
    assert block["concurrency"]["runs"]["tag_concurrency_limits"] == [
        {"key": "chargeback/tenant", "value": {"applyLimitPerUniqueValue": True}, "limit": 1},
        {"key": "chargeback/pipeline", "value": "tenant", "limit": 3},
    ]
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((Path(__file__).parents[1] / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert cli.main(["validate", "--config", str(config_path)]) == 0
    assert (
        "WARNING: dagster.yaml concurrency.runs limit for chargeback/pipeline=tenant is 4, "
        "features.max_parallel_tenants is 3" in capsys.readouterr().out
    )
    write_config(config_path, {"shop": tenant_config(closed_port_url())}, max_parallel_tenants=4)
    assert cli.main(["validate", "--config", str(config_path)]) == 0
    assert "WARNING" not in capsys.readouterr().out
    assert cli.main(["resume", "nope", "--config", str(config_path)]) == 1
    assert capsys.readouterr().out.strip() == "Unknown tenant 'nope'; configured tenants: shop"


def test_suspension_alert_reaches_the_sensor_tick_log_and_the_chargeback_asset(
    tmp_path, instance, monkeypatch, capfd
):
    """docs/operations.md §7: the ALERT is in the failure sensor's own log (its tick history) and an
    observation on the tenant's `chargeback` asset, not only a line in the daemon's output."""
    monkeypatch.setattr("chargeback_dagster.sources.prometheus.random.uniform", lambda a, b: 0.01)
    config_path = write_config(
        tmp_path / "chargeback.yaml", {"shop": tenant_config(closed_port_url(), discovery=True)}
    )
    defs = build_definitions(load_config(config_path))
    for _ in (1, 2):
        result = materialize_range(defs, "shop", *DATES, instance=instance)
        assert not result.success
        run_failure_sensor(defs, instance, result)
    expected = (
        "ALERT: Tenant shop has been permanently suspended after 2 consecutive gather failures "
        "(threshold: 2). Last error: inventory: Identity discovery query failed: Exhausted 4 attempts"
    )
    # the sensor's `context.log` (an InstigationLogger: in the daemon it writes the tick's log) also prints
    # to stderr as "... - dagster - CRITICAL - <sensor> - <message>"
    stderr = capfd.readouterr().err
    sensor_lines = [
        line for line in stderr.splitlines() if "dagster - CRITICAL" in line and "ALERT: Tenant" in line
    ]
    assert len(sensor_lines) == 1 and expected in sensor_lines[0]
    observations = instance.fetch_observations(dg.AssetKey(["shop", "chargeback"]), limit=10).records
    alerts = [o.asset_observation.metadata["alert"].value for o in observations]
    assert len(alerts) == 2
    assert alerts[1].startswith(expected) and alerts[1].endswith(
        "Resume with: chargeback-dagster resume shop"
    )
    assert alerts[0] == "ALERT: All 1 tenants are suspended; no chargeback is being calculated"
    assert observations[0].asset_observation.description == alerts[0]


# --- progress in the run's event log (docs/operations.md §11) --------------------------------------
def test_steps_log_progress_to_the_run_event_log(tmp_path, local_prometheus_factory):
    """Each step logs counts and elapsed time per date or window, and the lines reach the run's event log
    (the `chargeback_dagster` loggers are Dagster-managed), not only stderr."""
    prom = local_prometheus_factory(discovery_metrics())
    config_path = write_config(
        tmp_path / "chargeback.yaml", {"shop": tenant_config(prom.url, discovery=True)}
    )
    defs = build_definitions(load_config(config_path))
    overrides = {"python_logs": {"managed_python_loggers": ["chargeback_dagster"]}}
    with dg.instance_for_test(overrides=overrides) as managed:
        result = materialize_range(defs, "shop", *DATES, instance=managed)
        assert result.success
        logs = [e for e in managed.all_logs(result.run_id) if " | " in e.user_message]
    progress = [(e.step_key, e.level, e.user_message.split(" | ", 1)[1]) for e in logs]
    seconds = r"\d+\.\d s"
    expected = [
        ("shop__billing", rf"billing: 2 dates gathered, 2 lines, {seconds}"),
        ("shop__inventory", rf"inventory: 1 resources, 3 identities, {seconds}"),
        ("shop__usage_metrics", rf"metrics 2026-02-01\.\.2026-02-02: 2 queries, {seconds} \(2/2 dates\)"),
        ("shop__chargeback", r"calculated 2026-02-01 \(1/2\): 1 rows, \d+\.\d\d s"),
        ("shop__chargeback", r"calculated 2026-02-02 \(2/2\): 1 rows, \d+\.\d\d s"),
    ]
    assert len(progress) == len(expected)
    for (step, level, message), (want_step, pattern) in zip(progress, expected, strict=True):
        assert (step, level) == (want_step, logging.INFO)
        assert re.fullmatch(pattern, message), message


def test_a_prometheus_outage_fails_the_step_with_a_one_line_failure(tmp_path, instance, monkeypatch):
    """An expected error (a gather failure) is a `dg.Failure`: one-line description and metadata, raised
    without the chained traceback of the underlying error."""
    monkeypatch.setattr("chargeback_dagster.sources.prometheus.random.uniform", lambda a, b: 0.01)
    url = closed_port_url()
    config_path = write_config(tmp_path / "chargeback.yaml", {"shop": tenant_config(url, discovery=True)})
    result = materialize_range(build_definitions(load_config(config_path)), "shop", *DATES, instance=instance)
    assert not result.success
    [event] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert event.step_key == "shop__inventory"
    data = event.step_failure_data
    assert data.user_failure_data.description == (
        f"Identity discovery query failed: Exhausted 4 attempts for {url}/api/v1/query_range: "
        "ConnectError: [Errno 111] Connection refused"
    )
    assert data.user_failure_data.metadata["error_type"].value == "GatherError"
    assert data.error.cls_name == "Failure"
    assert data.error.message.strip() == (
        f"dagster._core.definitions.events.Failure: {data.user_failure_data.description}"
    )
    assert data.error.cause is None and data.error.context is None  # no traceback of the GatherError


class _Receiver(http.server.BaseHTTPRequestHandler):
    bodies: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        length = int(self.headers["Content-Length"])
        _Receiver.bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("receiver_up", [True, False])
def test_suspension_alert_is_posted_to_the_webhook(tmp_path, instance, monkeypatch, capfd, receiver_up):
    """`features.alert_webhook_url`: each ALERT is POSTed as {tenant, reason, time}; a receiver that is down
    is a warning in the sensor's log, and the sensor still suspends the tenant."""
    monkeypatch.setattr("chargeback_dagster.sources.prometheus.random.uniform", lambda a, b: 0.01)
    _Receiver.bodies = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook" if receiver_up else closed_port_url() + "/hook"
    config_path = write_config(
        tmp_path / "chargeback.yaml",
        {"shop": tenant_config(closed_port_url(), discovery=True)},
        alert_webhook_url=url,
    )
    defs = build_definitions(load_config(config_path))
    before = datetime.now(UTC)
    try:
        for _ in (1, 2):
            result = materialize_range(defs, "shop", *DATES, instance=instance)
            run_failure_sensor(defs, instance, result)
    finally:
        server.shutdown()
    assert open_store(config_path).state.status()["suspended"]
    stderr = capfd.readouterr().err
    if not receiver_up:
        assert _Receiver.bodies == []
        assert f"Alert webhook POST to {url} failed: ConnectError" in stderr
        return
    assert [(b["tenant"], b["reason"][:62]) for b in _Receiver.bodies] == [
        ("shop", "ALERT: Tenant shop has been permanently suspended after 2 cons"),
        ("shop", "ALERT: All 1 tenants are suspended; no chargeback is being cal"),
    ]
    assert all(before <= datetime.fromisoformat(b["time"]) <= datetime.now(UTC) for b in _Receiver.bodies)
    assert "Alert webhook POST" not in stderr


def test_a_csv_write_error_fails_the_step_with_a_one_line_failure(shop, instance):
    (shop.parent / "out").write_text("a file where the output directory should be")
    result = materialize_range(build_definitions(load_config(shop)), "shop", *DATES, instance=instance)
    assert not result.success
    [event] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert event.step_key == "shop__chargeback"
    user = event.step_failure_data.user_failure_data
    assert user.description.startswith(
        f"Cannot write CSV '{shop.parent / 'out' / 'shop-prod_2026-02-01.csv'}': "
    )
    assert "\n" not in user.description
    assert user.metadata["error_type"].value == "CsvWriteError"
    assert event.step_failure_data.error.cause is None
