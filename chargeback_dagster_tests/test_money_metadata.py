"""Each partition of a single-run `chargeback` carries its own date's money metadata (issue 14, item 2),
and the inputs check fails a date without billing lines. Generic worked example of test_generic_e2e."""

from __future__ import annotations

from datetime import date

import dagster as dg
import pytest

from chargeback_dagster.devtools.local_run import materialize_range
from chargeback_dagster_tests.test_generic_e2e import make_defs, worked_example_metrics


@pytest.fixture(scope="module")
def prometheus(local_prometheus_factory):
    return local_prometheus_factory(worked_example_metrics())


def partition_metadata(instance: dg.DagsterInstance, partition: str) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(["search", "chargeback"]), asset_partitions=[partition]),
        limit=1,
    ).records
    return records[0].asset_materialization.metadata


@pytest.mark.slow
def test_each_date_carries_its_own_money_and_the_empty_date_fails_inputs_check(tmp_path, prometheus):
    defs = make_defs(tmp_path, prometheus.url, "sqlite:///data/search.db")
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_range(defs, "search", date(2026, 2, 2), date(2026, 2, 4), instance=instance)
    assert result.success

    for day in ("2026-02-02", "2026-02-04"):
        md = partition_metadata(instance, day)
        # 3 brokers × 24 h × 2.50 + 2400 GiB-h × 0.0001 + 10 GiB × 0.05
        assert md["billed_total_exact"].value == "180.7400"
        assert md["allocated_total_exact"].value == "180.7400"
        assert md["billed_total"].value == 180.74
        assert md["unallocated_share"].value == 0.0
        assert md["fallback_share"].value == 0.0
        assert md["credits_total_exact"].value == "0.0000"
        assert md["dagster/row_count"].value == 8
        top = [(r.data["name"], r.data["amount"]) for r in md["top_identities"].value.records]
        # 60 + 0.1667 + 0.18; 60 + 0.1667 + 0.06; 60 + 0.1666
        assert top == [("team-a", "60.3467"), ("team-b", "60.2267"), ("team-c", "60.1666")]
        teams = md["top_teams"].value.records
        assert [r.data["amount"] for r in teams] == ["180.7400"]
        assert md["csv_path_0"].value.endswith(f"out/search-prod_{day}.csv")
        assert [c.name for c in md["dagster/column_schema"].schema.columns][8] == "amount"

    empty = partition_metadata(instance, "2026-02-03")
    assert empty["billed_total_exact"].value == "0.0000"
    assert empty["dagster/row_count"].value == 0

    checks = {
        e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    inputs = checks["inputs_gathered_and_non_empty"]
    assert not inputs.passed
    assert inputs.description == (
        "2026-02-03: no billing lines (never gathered, or the provider returned none)"
    )
    rows = [(r.data["date"], r.data["passed"]) for r in inputs.metadata["dates"].value.records]
    assert rows == [("2026-02-02", True), ("2026-02-03", False), ("2026-02-04", True)]
    assert checks["reconciles_to_billing"].passed
