"""Failure behaviour of a tenant run through Dagster: retry limit, D9, failed dates keep their CSV.

The tenant is generic_metrics_only with a fixed cost type and static identities, so billing and
inventory need no Prometheus; only usage_ratio metrics do.
"""

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from chargeback_dagster.config import load_config
from chargeback_dagster.defs.build import build_definitions
from chargeback_dagster.devtools.local_run import materialize_range
from chargeback_dagster.domain import blocks_from_rows
from chargeback_dagster.store import TenantStore
from chargeback_dagster_tests.store_helpers import total_units

DAY = date(2026, 3, 10)


def boom(ctx):
    raise RuntimeError("allocator exploded")


def write_config(
    root: Path, *, cost_type: dict, overrides: dict | None = None, url="http://127.0.0.1:9"
) -> Path:
    settings = {
        "cluster_id": "batch-cluster",
        "metrics": {"url": url},
        "identity_source": {
            "source": "static",
            "static_identities": [{"identity_id": "team-x", "identity_type": "principal"}],
        },
        "cost_types": [cost_type],
        "emitters": [{"type": "csv", "params": {"output_dir": "out"}}],
    }
    if overrides:
        settings["allocator_overrides"] = overrides
    config = {
        "tenants": {
            "batch": {
                "ecosystem": "generic_metrics_only",
                "tenant_id": "batch",
                "partitions_start_date": "2026-01-01",
                "allocation_retry_limit": 3,
                "plugin_settings": settings,
            }
        }
    }
    path = root / "chargeback.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


FIXED = {
    "name": "nodes",
    "product_category": "compute",
    "rate": "0.01",
    "cost_quantity": {"type": "fixed", "count": 1},
}


def csv_rows(path: Path) -> list[list[str]]:
    return [line.split(",") for line in path.read_text().splitlines()[1:]]


def check_result(result, name):
    return {e.check_name: e for e in result.get_asset_check_evaluations()}[name]


def test_allocation_failure_reaches_retry_limit_on_third_run(tmp_path):
    config_path = write_config(tmp_path, cost_type=FIXED)
    defs = build_definitions(load_config(config_path))
    assert materialize_range(defs, "batch", DAY, DAY).success
    csv_path = tmp_path / "out" / f"batch_{DAY}.csv"
    good = csv_path.read_bytes()
    assert csv_rows(csv_path) == [
        [
            "generic_metrics_only",
            "batch",
            "2026-03-10T00:00:00+00:00",
            "batch-cluster",
            "compute",
            "nodes",
            "team-x",
            "shared",
            "0.2400",
            "even_split",
            "even_split_allocation",
        ]
    ]

    # runs started after an edit read the new config (a run worker loads the code location at its start)
    write_config(tmp_path, cost_type=FIXED, overrides={"nodes": f"{__name__}:boom"})
    defs = build_definitions(load_config(config_path))
    for _run in (1, 2):
        result = materialize_range(defs, "batch", DAY, DAY)
        assert not result.success  # all_dates_calculated fails the run ...
        evaluation = check_result(result, "all_dates_calculated")
        assert not evaluation.passed
        assert evaluation.description == f"Calculate failed for date {DAY}: allocator exploded"
        assert csv_path.read_bytes() == good  # ... and the date keeps its previous rows and file

    result = materialize_range(defs, "batch", DAY, DAY)
    assert result.success
    assert csv_rows(csv_path) == [
        [
            "generic_metrics_only",
            "batch",
            "2026-03-10T00:00:00+00:00",
            "batch-cluster",
            "compute",
            "nodes",
            "UNALLOCATED",
            "shared",
            "0.2400",
            "ALLOCATION_FAILED",
            "Failed after 3 attempts: allocator exploded",
        ]
    ]
    store = TenantStore.open(
        load_config(config_path).tenants["batch"].database_url,
        tenant_name="batch",
        ecosystem="generic_metrics_only",
        tenant_id="batch",
    )
    assert total_units(store, DAY) == 2400


@pytest.mark.slow
def test_failed_usage_query_marks_rows_metrics_fetch_failed(tmp_path):
    """docs/generic-metrics.md §6 last row: alloc query failed, static team-x → 0.2400 (D9)."""
    usage_ratio = {
        **FIXED,
        "allocation_strategy": "usage_ratio",
        "allocation_label": "team",
        "allocation_query": "sum by (team) (stored_bytes)",
    }
    # nothing listens on port 9: every Prometheus request fails after its retries
    defs = build_definitions(load_config(write_config(tmp_path, cost_type=usage_ratio)))
    result = materialize_range(defs, "batch", DAY, DAY)
    assert result.success  # a failed metric query never fails the run
    warn = check_result(result, "all_metrics_fetched")
    assert not warn.passed
    assert "Exhausted 4 attempts" in warn.metadata["failures"].value
    rows = csv_rows(tmp_path / "out" / f"batch_{DAY}.csv")
    assert [(r[6], r[7], r[8], r[9], r[10]) for r in rows] == [
        ("team-x", "shared", "0.2400", "even_split", "metrics_fetch_failed")
    ]
    assert sum(Decimal(r[8]) for r in rows) == Decimal("0.24")


def test_reconciliation_names_date_and_difference(tmp_path):
    """The reconciles_to_billing check compares stored facts with Σ T of the stored lines."""
    from chargeback_dagster import pipeline

    config_path = write_config(tmp_path, cost_type=FIXED)
    defs = build_definitions(load_config(config_path))
    result = materialize_range(defs, "batch", DAY, date(2026, 3, 11))
    assert check_result(result, "reconciles_to_billing").passed
    tenant = load_config(config_path).tenants["batch"]
    store = TenantStore.open(
        tenant.database_url, tenant_name="batch", ecosystem=tenant.ecosystem, tenant_id="batch"
    )
    assert pipeline.reconciliation_gaps(store, [DAY, date(2026, 3, 11)]) == {}
    # a row lost on one date (as a broken writer would) is reported with its exact difference
    key = (
        "",
        "batch-cluster",
        "compute",
        "nodes",
        "team-x",
        "shared",
        "even_split",
        "even_split_allocation",
        "",
    )
    store.chargeback.write(
        DAY,
        blocks_from_rows({key: 2399}),
        calculation_id="x",
        run_id=None,
        succeeded_lines=[],
        calculated_at=datetime(2026, 3, 12, tzinfo=UTC),
    )
    assert pipeline.reconciliation_gaps(store, [DAY, date(2026, 3, 11)]) == {DAY: -1}
