"""The monthly report (docs/outputs.md §6): `monthly_report/<tenant>` sums the stored days of a month per team
and identity beside the previous month, shows UNALLOCATED, fallback and credits, marks a partial month, writes
its CSV and UI metadata, and declarative automation asks for it again when a day of its month is
re-materialized.

Worked example: the toy ecosystem (toy_ecosystem.py) with compute_rate 3.00, unmetered 0.30 and credit −0.60
over identities team-a, team-b (team `alpha`) and team-c (`gamma`). A day d of the month bills
TOY_COMPUTE 3·d (d each), TOY_UNMETERED 0.30 (0.10 each, `no_metrics_located`: the fallback), TOY_SUPPORT
1.50 (no allocator: UNALLOCATED) and TOY_CREDIT −0.60 (−0.20 each, in proportion to their equal costs on
toy-1): d − 0.10 per identity, 3·d + 1.20 in all.
- January (30, 31; the tenant starts on the 30th): 60.80 per identity, 185.40 in all, UNALLOCATED 3.00,
  fallback 0.60, credits −1.20.
- February (1–3 of 28 days): 5.70 per identity, 21.60 in all, UNALLOCATED 4.50, fallback 0.90, credits −1.80.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import dagster as dg
import pytest
import yaml

from chargeback_dagster.config import load_config
from chargeback_dagster.defs import guard
from chargeback_dagster.defs.build import build_definitions
from chargeback_dagster.defs.monthly_assets import AUTOMATION_SENSOR, MONTHLY_REPORT_CONDITION
from chargeback_dagster.devtools.local_run import materialize_monthly_reports, materialize_range
from chargeback_dagster.monthly_report import Line
from chargeback_dagster_tests.test_ecosystem_registry import toy_registered  # noqa: F401 (fixture)

REPORT = dg.AssetKey(["monthly_report", "toys"])
CHARGEBACK = dg.AssetKey(["toys", "chargeback"])


def toy_defs(tmp_path: Path, compute_rate: str = "3.00") -> dg.Definitions:
    config = {
        "tenants": {
            "toys": {
                "ecosystem": "toy",
                "tenant_id": "toy-prod",
                "partitions_start_date": "2026-01-30",
                "storage": {"connection_string": "sqlite:///data/toys.db"},
                "teams": {"identities": {"team-a": "alpha", "team-b": "alpha", "team-c": "gamma"}},
                "plugin_settings": {
                    "cluster_id": "toy-1",
                    "compute_rate": compute_rate,
                    "unmetered": "0.30",
                    "credit": "-0.60",
                    "teams": ["team-b", "team-a", "team-c"],
                    "emitters": [{"type": "csv", "params": {"output_dir": "out"}}],
                },
            }
        }
    }
    (tmp_path / "chargeback.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return build_definitions(load_config(tmp_path / "chargeback.yaml"))


def materialize_months(defs: dg.Definitions, instance: dg.DagsterInstance, months: set[str]) -> None:
    job = defs.resolve_implicit_job_def_def_for_assets([REPORT])
    for month in sorted(months):
        assert job.execute_in_process(
            instance=instance, partition_key=month, asset_selection=[REPORT]
        ).success


def report_metadata(instance: dg.DagsterInstance, month: str) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=REPORT, asset_partitions=[month]), limit=1
    ).records
    return records[0].asset_materialization.metadata


FEBRUARY_CSV = """\
tenant_id,month,days_covered,days_in_month,line,key,name,team,amount,previous_amount,change,change_percent
toy-prod,2026-02,3,28,billed,,,,21.6000,185.4000,-163.8000,-88.35
toy-prod,2026-02,3,28,allocated,,,,21.6000,185.4000,-163.8000,-88.35
toy-prod,2026-02,3,28,unallocated,,,,4.5000,3.0000,1.5000,50.00
toy-prod,2026-02,3,28,fallback,,,,0.9000,0.6000,0.3000,50.00
toy-prod,2026-02,3,28,credits,,,,-1.8000,-1.2000,-0.6000,-50.00
toy-prod,2026-02,3,28,team,alpha,,,11.4000,121.6000,-110.2000,-90.63
toy-prod,2026-02,3,28,team,gamma,,,5.7000,60.8000,-55.1000,-90.63
toy-prod,2026-02,3,28,team,(no team),,,4.5000,3.0000,1.5000,50.00
toy-prod,2026-02,3,28,identity,team-a,team-a,alpha,5.7000,60.8000,-55.1000,-90.63
toy-prod,2026-02,3,28,identity,team-b,team-b,alpha,5.7000,60.8000,-55.1000,-90.63
toy-prod,2026-02,3,28,identity,team-c,team-c,gamma,5.7000,60.8000,-55.1000,-90.63
toy-prod,2026-02,3,28,identity,UNALLOCATED,Unallocated Costs,,4.5000,3.0000,1.5000,50.00
"""


@pytest.mark.slow
def test_month_totals_change_partial_month_and_recompute_when_a_day_changes(tmp_path, toy_registered):  # noqa: F811
    defs = toy_defs(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    tick = dg.evaluate_automation_conditions(defs, instance)
    assert tick.total_requested == 0  # nothing materialized yet: no report of an empty month

    assert materialize_range(defs, "toys", date(2026, 1, 30), date(2026, 2, 3), instance=instance).success
    tick = dg.evaluate_automation_conditions(defs, instance, cursor=tick.cursor)
    assert tick.get_requested_partitions(REPORT) == {"2026-01", "2026-02"}
    # both months in one run (a single-run backfill's partition range), as the demo does
    assert materialize_monthly_reports(
        defs, "toys", date(2026, 1, 30), date(2026, 2, 3), instance=instance
    ).success

    january = report_metadata(instance, "2026-01")
    assert (january["days_covered"].value, january["days_in_month"].value) == (2, 2)  # from the 30th
    assert january["complete"].value is True
    assert january["allocated_exact"].value == january["billed_exact"].value == "185.4000"
    assert january["previous_allocated_exact"].value == "none"  # December precedes the tenant's start
    assert january["change_percent"].value == "none"
    assert "No previous month to compare with" in january["summary"].value
    january_csv = (tmp_path / "out" / "monthly_report" / "toy-prod_2026-01.csv").read_text()
    assert "toy-prod,2026-01,2,2,allocated,,,,185.4000,,,\n" in january_csv

    path = tmp_path / "out" / "monthly_report" / "toy-prod_2026-02.csv"
    assert path.read_bytes() == FEBRUARY_CSV.encode()
    february = report_metadata(instance, "2026-02")
    assert february["csv_path_0"].value == str(path)
    assert (february["days_covered"].value, february["days_in_month"].value) == (3, 28)
    assert february["complete"].value is False
    assert february["missing_dates"].value.startswith("2026-02-04, 2026-02-05")
    assert february["missing_dates"].value.endswith("2026-02-28")
    assert {k: february[f"{k}_exact"].value for k in ("billed", "unallocated", "fallback", "credits")} == {
        "billed": "21.6000",
        "unallocated": "4.5000",
        "fallback": "0.9000",
        "credits": "-1.8000",
    }
    assert february["allocated_total"].value == 21.6
    assert february["dagster/row_count"].value == 12
    table = february["report"].value
    assert [c.name for c in table.schema.columns] == FEBRUARY_CSV.splitlines()[0].split(",")[4:]
    records = [tuple(r.data[c.name] for c in table.schema.columns) for r in table.records]
    assert records == [tuple(line.split(",")[4:]) for line in FEBRUARY_CSV.splitlines()[1:]]
    # team lines and identity lines each add up to the month's billed total, to the unit
    teams = sum(int(r[4].replace(".", "")) for r in records if r[0] == "team")
    identities = sum(int(r[4].replace(".", "")) for r in records if r[0] == "identity")
    assert teams == identities == 216_000
    summary = february["summary"].value
    assert "**Partial month**: 3 of 28 days calculated; not yet calculated: 2026-02-04," in summary
    assert "| allocated | 21.6000 | 185.4000 | -163.8000 | -88.35 |" in summary
    assert "| Unallocated Costs | 4.5000 | 3.0000 | 1.5000 | 50.00 |" in summary

    # TOY_COMPUTE doubles its rate and 2026-02-02 alone is materialized again: +6.00 on February only
    defs = toy_defs(tmp_path, compute_rate="6.00")
    assert materialize_range(defs, "toys", date(2026, 2, 2), date(2026, 2, 2), instance=instance).success
    tick = dg.evaluate_automation_conditions(defs, instance, cursor=tick.cursor)
    assert tick.get_requested_partitions(REPORT) == {"2026-02"}  # January is not asked for
    materialize_months(defs, instance, tick.get_requested_partitions(REPORT))
    lines = path.read_text().splitlines()
    # 2026-02-02 per identity: 4.00 + 0.10 − 0.20 = 3.90 (was 1.90); 0.90 + 3.90 + 2.90 = 7.70 each
    assert lines[2] == "toy-prod,2026-02,3,28,allocated,,,,27.6000,185.4000,-157.8000,-85.11"
    assert lines[6] == "toy-prod,2026-02,3,28,team,alpha,,,15.4000,121.6000,-106.2000,-87.34"
    assert lines[9] == "toy-prod,2026-02,3,28,identity,team-a,team-a,alpha,7.7000,60.8000,-53.1000,-87.34"
    assert report_metadata(instance, "2026-02")["allocated_exact"].value == "27.6000"
    assert report_metadata(instance, "2026-01")["allocated_exact"].value == "185.4000"
    assert dg.evaluate_automation_conditions(defs, instance, cursor=tick.cursor).total_requested == 0


def test_the_report_hangs_off_the_days_of_its_month_and_its_sensor_runs(tmp_path, toy_registered):  # noqa: F811
    defs = toy_defs(tmp_path)
    graph = defs.resolve_asset_graph()
    report = graph.get(REPORT)
    assert report.automation_condition == MONTHLY_REPORT_CONDITION
    assert report.partitions_def.get_first_partition_key() == "2026-01"
    mapping = report.partition_mappings[CHARGEBACK]
    assert isinstance(mapping, dg.TimeWindowPartitionMapping)
    days = mapping.get_upstream_mapped_partitions_result_for_partitions(
        report.partitions_def.subset_with_partition_keys(["2026-02"]),
        report.partitions_def,
        graph.get(CHARGEBACK).partitions_def,
    ).partitions_subset.get_partition_keys()
    assert (days[0], days[-1], len(days)) == ("2026-02-01", "2026-02-28", 28)
    # the daily job and selections of the tenant stay one daily partitions definition
    assert REPORT not in defs.resolve_job_def("toys_pipeline").asset_layer.executable_asset_keys
    assert dg.AssetSelection.from_string('key:"toys/*"').resolve(graph) == {
        dg.AssetKey(["toys", name]) for name in ("billing", "inventory", "usage_metrics", "chargeback")
    }
    # a report run is no tenant run: the run-status sensors neither audit it nor count its failure
    report_run = dg.DagsterRun(job_name="__ASSET_JOB", asset_selection=frozenset({REPORT}))
    assert guard.run_tenant(report_run) == "monthly_report"  # a reserved tenant name (test_config.py)
    sensors = {s.name: s for s in defs.get_repository_def().sensor_defs}
    assert "default_automation_condition_sensor" not in sensors
    assert sensors[AUTOMATION_SENSOR].default_status == dg.DefaultSensorStatus.RUNNING
    assert sensors[AUTOMATION_SENSOR].asset_selection.resolve(graph) == {REPORT}


@pytest.mark.parametrize(
    ("amount", "previous", "change", "percent"),
    [
        (216_000, 1_854_000, -1_638_000, "-88.35"),
        (5, 0, 5, ""),  # no percent of a zero previous amount
        (5, None, None, ""),  # no previous month
        (0, 30_000, -30_000, "-100.00"),  # a team without cost this month
        (-18_000, -12_000, -6_000, "-50.00"),  # a bigger credit is a negative change
        (2, 3, -1, "-33.33"),
        (1, 8, -7, "-87.50"),
        (1_000_005, 1_000_000, 5, "0.00"),
    ],
)
def test_change_and_percent(amount, previous, change, percent):
    line = Line("team", "t", "", "", amount, previous)
    assert (line.change, line.change_percent) == (change, percent)


def test_tenants_starting_in_one_month_share_one_op_and_a_run_may_compute_several(
    tmp_path,
    toy_registered,  # noqa: F811
):
    """The reports are one multi-asset per first month (defs/monthly_assets.py): `toys` and `more_toys` start
    in January 2026 and share an op, `late_toys` starts in February and has its own. One run computes both
    January tenants' reports, each with its own CSV and metadata; selecting one computes only that one."""
    tenants = {}
    for name, start in (("toys", "2026-01-30"), ("more_toys", "2026-01-31"), ("late_toys", "2026-02-01")):
        tenants[name] = {
            "ecosystem": "toy",
            "tenant_id": f"{name}-prod",
            "partitions_start_date": start,
            "storage": {"connection_string": f"sqlite:///data/{name}.db"},
            "plugin_settings": {
                "cluster_id": "toy-1",
                "compute_rate": "3.00",
                "teams": ["team-a", "team-b"],
                "emitters": [{"type": "csv", "params": {"output_dir": "out"}}],
            },
        }
    (tmp_path / "chargeback.yaml").write_text(yaml.safe_dump({"tenants": tenants}, sort_keys=False))
    defs = build_definitions(load_config(tmp_path / "chargeback.yaml"))
    keys = {name: dg.AssetKey(["monthly_report", name]) for name in tenants}
    graph = defs.resolve_asset_graph()
    ops = {name: graph.get(key).assets_def.node_def.name for name, key in keys.items()}
    assert ops == {
        "toys": "monthly_reports_from_2026_01",
        "more_toys": "monthly_reports_from_2026_01",
        "late_toys": "monthly_reports_from_2026_02",
    }
    assert graph.get(keys["late_toys"]).partitions_def.get_first_partition_key() == "2026-02"

    instance = dg.DagsterInstance.ephemeral()
    for name in ("toys", "more_toys"):
        assert materialize_range(defs, name, date(2026, 1, 31), date(2026, 1, 31), instance=instance).success
    january = [keys["toys"], keys["more_toys"]]
    job = defs.resolve_implicit_job_def_def_for_assets(january)
    assert job.execute_in_process(instance=instance, partition_key="2026-01", asset_selection=january).success
    for name in ("toys", "more_toys"):
        # one day (the 31st): TOY_COMPUTE 3·31 = 93.00 (46.50 each of two) + TOY_SUPPORT 1.50 (UNALLOCATED)
        csv = (tmp_path / "out" / "monthly_report" / f"{name}-prod_2026-01.csv").read_text()
        assert f"{name}-prod,2026-01,1,{2 if name == 'toys' else 1},allocated,,,,94.5000,,,\n" in csv
        record = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=keys[name], asset_partitions=["2026-01"]), limit=1
        ).records[0]
        assert record.asset_materialization.metadata["allocated_exact"].value == "94.5000"

    # one tenant selected: only its report is materialized again
    one = [keys["more_toys"]]
    result = job.execute_in_process(instance=instance, partition_key="2026-01", asset_selection=one)
    assert [e.asset_key for e in result.get_asset_materialization_events()] == [keys["more_toys"]]
