"""The benchmark scripts still work (tiny `--small` scenarios; no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "run.py"
KEYS = {
    "scenario",
    "backend",
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
    "machine",
}


def run_benchmark(tmp_path: Path, scenario: str) -> dict:
    output = tmp_path / f"{scenario}.json"
    workdir = tmp_path / "w"
    proc = subprocess.run(
        [sys.executable, str(RUN), scenario, "--small", "--output", str(output), "--workdir", str(workdir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(output.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["confluent", "self-managed"])
def test_small_benchmark_reports(tmp_path, scenario):
    report = run_benchmark(tmp_path, scenario)
    assert set(report) >= KEYS
    assert report["run_success"] is True
    assert report["reconciliation_passed"] is True
    assert set(report["asset_seconds"]) == {"billing", "inventory", "usage_metrics", "chargeback"}
    assert report["billing_lines"] > 0 and report["chargeback_rows"] > 0
    assert report["csv_files"] == report["dates"] and report["csv_bytes"] > 0
    assert report["peak_rss_mib"] > 0
    # one range query per metric key per day at most
    assert 0 < report["prometheus_range_queries"] <= 4 * report["dates"] + 3 * report["dates"] + 1
    if scenario == "confluent":
        assert report["simulator_requests"] > 0


FLEET = ROOT / "benchmarks" / "fleet.py"


def run_fleet(tmp_path: Path, *parts: str, timeout: float) -> None:
    proc = subprocess.run(
        [sys.executable, str(FLEET), *parts, "--small", "--output", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.postgres
def test_small_fleet_load_and_ticks(tmp_path, pg_base_url, monkeypatch):
    monkeypatch.setenv("CHARGEBACK_TEST_PG_URL", pg_base_url)
    # the "before" code of the side-by-side comparison is this checkout too (its interleaving is tested)
    run_fleet(tmp_path, "load", "ticks", "--before-root", str(ROOT), "--before-label", "same", timeout=400)
    load = json.loads((tmp_path / "load-small.json").read_text())
    before = json.loads((tmp_path / "load-before-same-small.json").read_text())
    assert before["code_root"] == str(ROOT) and before["interleaved_with"] == [str(ROOT)]
    assert [s["tenants"] for s in before["sizes"]] == [1, 3]
    assert before["sizes"][1]["import"]["best"]["assets"] == 15  # the same checkout: 5 assets per tenant
    # the bare builds run no project code: measured once, the same samples in both reports
    assert before["sizes"][1]["bare_full"] == load["sizes"][1]["bare_full"]
    assert [s["tenants"] for s in load["sizes"]] == [1, 3]
    three = load["sizes"][1]
    # generic, self-managed, Confluent: 4 daily assets and a monthly report, a pipeline and a retention job,
    # a refresh sensor and a retention schedule each; plus resume_tenant, Dagster's asset job, the two
    # run-status sensors and the monthly reports' automation sensor
    imported = three["import"]["best"]
    assert (imported["assets"], imported["jobs"], imported["sensors"], imported["schedules"]) == (15, 8, 6, 3)
    for mode in ("import", "breakdown", "bare", "bare_full"):
        assert three[mode]["best"]["process_wall_seconds"] > 0 and three[mode]["best"]["peak_rss_mib"] > 0
        assert len(three[mode]["samples"][0]["load_average"]) == 3
    assert three["breakdown"]["best"]["config_load_validate_seconds"] > 0
    assert imported["import_resolve_seconds"] >= imported["import_seconds"]

    ticks = json.loads((tmp_path / "ticks-small.json").read_text())
    (size,) = ticks["sizes"]
    assert [r["round"] for r in size["rounds"]] == ["cold", "warm", "warm_with_cursor"]
    cold, warm, cursor = size["rounds"]
    assert cold["refresh_sensors"] == 3
    # without a cursor every refresh sensor requests its run; with the cursor each one skips (min gap)
    assert (warm["run_requests"], cursor["run_requests"]) == (3, 0)
    # each tenant store is opened once per process: by the cold round, never again
    assert (cold["store_opens_so_far"], warm["store_opens_so_far"], cursor["store_opens_so_far"]) == (3, 3, 3)
    status_sensors = {"tenant_run_failure_sensor", "tenant_run_success_sensor"}
    assert set(cold["run_status_sensors_seconds"]) == status_sensors


@pytest.mark.slow
@pytest.mark.postgres
def test_small_fleet_refresh(tmp_path, pg_base_url, monkeypatch):
    monkeypatch.setenv("CHARGEBACK_TEST_PG_URL", pg_base_url)
    run_fleet(tmp_path, "refresh", timeout=400)
    report = json.loads((tmp_path / "refresh-2-p2-small.json").read_text())
    assert (report["runs"], report["runs_succeeded"], report["failures"]) == (2, 2, {})
    assert report["csv_files"] == report["csv_files_expected"] == 4
    for run in report["run_details"]:
        assert run["dagster_overhead_seconds"] > 0 and run["step_work_seconds"] > 0
    assert report["peak_rss_mib"]["run_worker"]["processes"] == 2
    assert report["daemon_sensor_ticks"]["refresh"]["ticks"] >= 2
