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
