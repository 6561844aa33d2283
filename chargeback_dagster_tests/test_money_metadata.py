"""Each partition of a single-run `chargeback` carries its own date's money metadata (issue 14, item 2),
and the inputs check fails a date without billing lines. Generic worked example of test_generic_e2e."""

from __future__ import annotations

from datetime import date

import dagster as dg
import pytest
import yaml

from chargeback_dagster.config import load_config
from chargeback_dagster.defs.build import build_definitions
from chargeback_dagster.devtools.local_run import materialize_range
from chargeback_dagster.money_metadata import MoneyMetadata
from chargeback_dagster.store import TenantStore
from chargeback_dagster_tests.test_generic_e2e import make_defs, tenant_yaml, worked_example_metrics


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
    config = tenant_yaml(prometheus.url, "sqlite:///data/search.db", "out")
    # team-a and team-b are one cost centre; team-c stays on the ecosystem's default team
    config["tenants"]["search"]["teams"] = {"identities": {"team-a": "search-core", "team-b": "search-core"}}
    (tmp_path / "chargeback.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    defs = build_definitions(load_config(tmp_path / "chargeback.yaml"))
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
        assert [(r.data["name"], r.data["amount"]) for r in teams] == [
            ("search-core", "120.5734"),
            ("UNASSIGNED", "60.1666"),
        ]
        assert md["csv_path_0"].value.endswith(f"out/search-prod_{day}.csv")
        assert [c.name for c in md["dagster/column_schema"].schema.columns][8] == "amount"

    empty = partition_metadata(instance, "2026-02-03")
    assert empty["billed_total_exact"].value == "0.0000"
    assert empty["dagster/row_count"].value == 0

    # the run sums its own allocation in memory; the store's grouped reads (used for dates a run did not
    # calculate) give the same groups and CSV row counts
    tenant = load_config(tmp_path / "chargeback.yaml").tenants["search"]
    store = TenantStore.open(
        tenant.database_url, tenant_name="search", ecosystem=tenant.ecosystem, tenant_id=tenant.tenant_id
    )
    try:
        stored = store.chargeback.money_groups(date(2026, 2, 2), date(2026, 2, 5))
        counts = store.chargeback.csv_row_counts(date(2026, 2, 2), date(2026, 2, 5))
        for day in (date(2026, 2, 2), date(2026, 2, 4)):
            from_store = MoneyMetadata(store, [day], {}).finish()[day]  # no `add`: read back
            assert from_store["dagster/row_count"] == counts[day] == 8
            assert from_store["allocated_total_exact"] == "180.7400"
            assert sum(stored[day].values()) == 1_807_400
            assert partition_metadata(instance, day.isoformat())["top_teams"].value.records == (
                from_store["top_teams"].value.records
            )
    finally:
        store.dispose()

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
    reconciliation = checks["reconciles_to_billing"]
    assert reconciliation.passed
    assert [
        (r.data["date"], r.data["billed"], r.data["allocated"], r.data["difference_units"])
        for r in reconciliation.metadata["dates"].value.records
    ] == [
        ("2026-02-02", "180.7400", "180.7400", 0),
        ("2026-02-03", "0.0000", "0.0000", 0),
        ("2026-02-04", "180.7400", "180.7400", 0),
    ]


@pytest.mark.slow
def test_chargeback_of_a_never_gathered_date_fails_the_inputs_check(tmp_path, prometheus):
    defs = make_defs(tmp_path, prometheus.url, "sqlite:///data/search.db")
    job = defs.resolve_job_def("search_pipeline")
    result = job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        asset_selection=[dg.AssetKey(["search", "chargeback"])],
        partition_key="2026-02-01",
    )
    assert result.success  # the check does not block: the date is visible as a failed check, not green
    evaluation = next(
        e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
        and e.asset_check_evaluation_data.check_name == "inputs_gathered_and_non_empty"
    )
    assert not evaluation.passed
    assert evaluation.description == (
        "2026-02-01: no billing lines (never gathered, or the provider returned none); inventory not gathered"
    )


def test_assets_and_checks_say_what_they_are(tmp_path):
    defs = make_defs(tmp_path, "http://127.0.0.1:1", "sqlite:///data/search.db")
    graph = defs.resolve_asset_graph()
    chargeback = graph.get(dg.AssetKey(["search", "chargeback"]))
    assert chargeback.kinds == {"python", "csv", "sqlite"}
    assert chargeback.tags["tenant"] == "search"
    assert graph.get(dg.AssetKey(["search", "billing"])).kinds == {"python", "prometheus", "sqlite"}
    checks = {k.name: graph.get(k).description for k in graph.asset_check_keys}
    assert checks["inputs_gathered_and_non_empty"] == (
        "Every date's billing and inventory were gathered and its billing has a line"
    )
    assert all(checks.values())
