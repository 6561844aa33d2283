"""The `prometheus` emitter on real Prometheus servers: the generic worked example (test_generic_e2e) of
2026-02-01..04 materialized through Dagster, its OpenMetrics files imported with promtool into a fresh
Prometheus, the same dates pushed by remote write, and PromQL sums compared with the CSV files.

Teams: team-a and team-b belong to `alpha`, team-c to `beta` (principal_to_team). A day with data bills
180.74: broker_hours 3 × 60.00, egress 0.50 (0.1667 + 0.1667 + 0.1666), storage 0.24 (team-a 0.18, team-b
0.06), so alpha gets 120.5734 and beta 60.1666. 2026-02-03 has no samples, hence no bill."""

from __future__ import annotations

import csv
import logging
import socket
from datetime import date
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import yaml

from chargeback_dagster.config import ConfigError, EmitterConfig, load_config
from chargeback_dagster.defs.build import build_definitions
from chargeback_dagster.devtools.local_prometheus import MINIMAL_CONFIG, LocalPrometheus
from chargeback_dagster.devtools.local_run import materialize_range
from chargeback_dagster.outputs.base import ChargebackResult
from chargeback_dagster.outputs.prometheus import PrometheusOutput, PrometheusWriteError, midnight_ms
from chargeback_dagster.store import TenantStore
from chargeback_dagster_tests.test_generic_e2e import tenant_yaml, worked_example_metrics

DATES = [date(2026, 2, 1), date(2026, 2, 2), date(2026, 2, 3), date(2026, 2, 4)]
TEAMS = {"team-a": "alpha", "team-b": "alpha", "team-c": "beta"}
DAY_BY_TEAM = {"alpha": Decimal("120.5734"), "beta": Decimal("60.1666")}
# Backfilling by remote write needs out-of-order ingestion reaching back to the oldest date pushed.
OOO_CONFIG = MINIMAL_CONFIG + "storage:\n  tsdb:\n    out_of_order_time_window: 3650d\n"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def source(local_prometheus_factory):
    return local_prometheus_factory(worked_example_metrics())


def write_config(root: Path, source_url: str, broker_rate: float = 2.50, support: bool = False) -> Path:
    config = tenant_yaml(source_url, "sqlite:///data/search.db", "out")
    plugin = config["tenants"]["search"]["plugin_settings"]
    plugin["identity_source"]["principal_to_team"] = TEAMS
    plugin["cost_types"][0]["rate"] = broker_rate
    if support:  # 24.00 a day, split evenly
        fixed = {"type": "fixed", "count": 1}
        plugin["cost_types"].append(
            {"name": "support", "product_category": "support", "rate": 1.00, "cost_quantity": fixed}
        )
    plugin["emitters"] = [
        {"type": "csv", "params": {"output_dir": "out"}},
        {"type": "prometheus", "params": {"output_dir": "om"}},  # template chargeback_{tenant_id}_{date}.om
        {
            "type": "prometheus",
            "name": "prometheus_monthly",
            "aggregation": "monthly",
            "params": {"output_dir": "om/monthly", "filename_template": "cb_{tenant_id}_{date}.om"},
        },
    ]
    path = root / "chargeback.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def materialize(config_path: Path, start: date, end: date) -> None:
    defs = build_definitions(load_config(config_path))
    assert materialize_range(defs, "search", start, end).success


def query(prom: LocalPrometheus, expr: str, d: date) -> dict[str, Decimal]:
    """Instant query at the date's midnight: the first label value of each result (or '') -> value."""
    r = httpx.post(f"{prom.url}/api/v1/query", data={"query": expr, "time": midnight_ms(d) / 1000})
    body = r.json()
    assert body["status"] == "success", body
    return {
        next(iter(x["metric"].values()), ""): Decimal(x["value"][1]).quantize(Decimal("0.0001"))
        for x in body["data"]["result"]
    }


def csv_sums(out: Path, d: date) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    """(amount by team, total) of the date's CSV file, {} when it has no rows."""
    by_team: dict[str, Decimal] = {}
    with (out / f"search-prod_{d}.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            team = TEAMS[row["identity_id"]]
            by_team[team] = by_team.get(team, Decimal(0)) + Decimal(row["amount"])
    return by_team, ({"": sum(by_team.values(), Decimal(0))} if by_team else {})


def assert_matches_csv(prom: LocalPrometheus, out: Path) -> None:
    for d in DATES:
        by_team, total = csv_sums(out, d)
        assert query(prom, "sum by (team) (chargeback_amount)", d) == by_team, d
        assert query(prom, "sum(chargeback_amount)", d) == total, d


def imported(tmp: Path, files: list[Path]) -> LocalPrometheus:
    return LocalPrometheus(None, tmp, openmetrics_files=files)


def push(config_path: Path, url: str, dates: list[date], **params: object) -> None:
    """Write the dates through a prometheus emitter, as YAML would configure it, that pushes to `url`."""
    tenant = load_config(config_path).tenants["search"]
    store = TenantStore.open(
        tenant.database_url, tenant_name="search", ecosystem=tenant.ecosystem, tenant_id=tenant.tenant_id
    )
    try:
        emitter = EmitterConfig.model_validate(
            {
                "type": "prometheus",
                "name": "push",
                "params": {"output_dir": "pushed", "remote_write_url": url, **params},
            },
            context={"config_dir": config_path.parent},
        )
        PrometheusOutput(ChargebackResult(tenant, tuple(dates), store.chargeback.csv_groups, store)).write(
            emitter
        )
    finally:
        store.dispose()


@pytest.mark.slow
def test_openmetrics_files_imported_by_promtool_match_the_csv(tmp_path, source):
    config_path = write_config(tmp_path, source.url)
    materialize(config_path, DATES[0], DATES[-1])
    out, om = tmp_path / "out", tmp_path / "om"

    first = (om / "chargeback_search-prod_2026-02-01.om").read_text()
    assert first.startswith("# TYPE chargeback_amount gauge\n# HELP chargeback_amount ")
    assert first.endswith("\n# EOF\n")
    assert (
        'chargeback_amount{tenant="search-prod",ecosystem="generic_metrics_only",resource="opensearch-prod",'
        'product_category="compute",product_type="broker_hours",identity="team-c",team="beta",'
        'cost_type="shared",method="even_split",detail="even_split_allocation"} 60.0000 1769904000\n'
    ) in first
    assert (
        'chargeback_billing_amount{tenant="search-prod",ecosystem="generic_metrics_only",'
        'resource="opensearch-prod",product_category="storage",product_type="storage",currency="USD"} '
        "0.2400 1769904000\n"
    ) in first
    # no bill on 2026-02-03, but the inventory is still active
    third = (om / "chargeback_search-prod_2026-02-03.om").read_text()
    assert "chargeback_amount{" not in third and "chargeback_identity_active{" in third

    with imported(tmp_path / "prom-daily", sorted(om.glob("*.om"))) as prom:
        assert_matches_csv(prom, out)
        assert query(prom, "sum by (team) (chargeback_amount)", DATES[0]) == DAY_BY_TEAM
        assert query(prom, "sum(chargeback_billing_amount)", DATES[3]) == {"": Decimal("180.7400")}
        assert query(prom, "sum by (team) (chargeback_identity_active)", DATES[2]) == {
            "alpha": 2,
            "beta": 1,
            "": 1,  # UNALLOCATED, no team
        }
        assert query(prom, "count(chargeback_resource_active)", DATES[2]) == {"": 1}

    # monthly: one file for February holding each calculated date's own samples
    assert [p.name for p in (om / "monthly").glob("*.om")] == ["cb_search-prod_2026-02-01.om"]
    with imported(tmp_path / "prom-monthly", [om / "monthly" / "cb_search-prod_2026-02-01.om"]) as prom:
        assert_matches_csv(prom, out)
        monthly = "sum by (team) (sum_over_time(chargeback_amount[4d]))"
        assert query(prom, monthly, DATES[3]) == {t: v * 3 for t, v in DAY_BY_TEAM.items()}

    # re-materializing a date rewrites its file with the same samples: a fresh import sums the same
    before = {p.name: p.read_bytes() for p in om.glob("*.om")}
    materialize(config_path, DATES[1], DATES[1])
    assert {p.name: p.read_bytes() for p in om.glob("*.om")} == before

    # a recalculation with other values replaces the date's file; a fresh import shows only the new values
    materialize(write_config(tmp_path, source.url, broker_rate=3.00), DATES[3], DATES[3])
    with imported(tmp_path / "prom-recalc", sorted(om.glob("*.om"))) as prom:
        assert query(prom, "sum(chargeback_amount)", DATES[3]) == {"": Decimal("216.7400")}
        assert query(prom, "sum(chargeback_amount)", DATES[1]) == {"": Decimal("180.7400")}
        assert_matches_csv(prom, out)


@pytest.mark.slow
def test_remote_write_backfills_history_and_a_repush_does_not_double_count(tmp_path, source, caplog):
    config_path = write_config(tmp_path, source.url)
    materialize(config_path, DATES[0], DATES[-1])
    out = tmp_path / "out"
    receiver = LocalPrometheus(
        None,
        tmp_path / "receiver",
        extra_flags=["--web.enable-remote-write-receiver"],
        config_text=OOO_CONFIG,
    )
    with receiver as prom:
        url = f"{prom.url}/api/v1/write"
        # newest first: the older dates are out of order and need the out-of-order window
        push(config_path, url, [DATES[3]])
        push(config_path, url, DATES[:3])
        assert_matches_csv(prom, out)
        assert query(prom, "sum by (team) (chargeback_amount)", DATES[1]) == DAY_BY_TEAM

        # re-materialize 2026-02-02 and push every date again: same series, same values, no double counting
        materialize(config_path, DATES[1], DATES[1])
        push(config_path, url, DATES)
        assert_matches_csv(prom, out)
        assert query(prom, "sum(chargeback_amount)", DATES[1]) == {"": Decimal("180.7400")}

        # Prometheus cannot overwrite a sample. Recalculate 2026-02-01 with broker_hours at 3.00 (72.00
        # instead of 60.00 per identity) and 2026-02-04 likewise plus a new `support` cost of 24.00 (8.00
        # each).
        recalculated = write_config(tmp_path, source.url, broker_rate=3.00)
        materialize(recalculated, DATES[0], DATES[0])
        materialize(write_config(tmp_path, source.url, broker_rate=3.00, support=True), DATES[3], DATES[3])
        assert csv_sums(out, DATES[0])[1] == {"": Decimal("216.7400")}
        assert csv_sums(out, DATES[3])[1] == {"": Decimal("240.7400")}
        with caplog.at_level(logging.WARNING, logger="chargeback_dagster.outputs.prometheus"):
            push(config_path, url, [DATES[0], DATES[3]])
        # 2026-02-04 holds the newest samples: the 3 broker_hours chargeback_amount samples and its
        # chargeback_billing_amount are refused as duplicates (of 20: 11 chargeback, 4 billing, 1 resource,
        # 4 identities), the new support samples land. The changed samples of 2026-02-01 are out of order:
        # accepted and dropped without a word.
        assert [
            r.getMessage() for r in caplog.records if r.name == "chargeback_dagster.outputs.prometheus"
        ] == [
            f"Prometheus remote write '{url}': 4 of 20 samples of 2026-02-04 kept their earlier value "
            "(Prometheus cannot overwrite a sample; docs/outputs.md §4)"
        ]
        assert query(prom, "sum(chargeback_amount)", DATES[0]) == {"": Decimal("180.7400")}
        assert query(prom, "sum(chargeback_amount)", DATES[3]) == {"": Decimal("204.7400")}
        assert query(prom, "sum by (team) (chargeback_amount)", DATES[3]) == {
            "alpha": Decimal("136.5734"),
            "beta": Decimal("68.1666"),
        }


@pytest.mark.slow
def test_remote_write_refusals_are_one_line_errors(tmp_path, source):
    config_path = write_config(tmp_path, source.url)
    materialize(config_path, DATES[0], DATES[1])
    # the push parameters are checked when the config loads
    config = yaml.safe_load(config_path.read_text())
    emitters = config["tenants"]["search"]["plugin_settings"]["emitters"]
    emitters[1]["params"].update(remote_write_url="http://127.0.0.1:9/api/v1/write", timeout=0)
    emitters[0]["params"]["remote_write_url"] = "http://127.0.0.1:9/api/v1/write"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(ConfigError) as problems:
        load_config(bad)
    assert [line.split(": ", 1)[1] for line in str(problems.value).splitlines()[1:]] == [
        "plugin_settings.emitters[0].params.remote_write_url: "
        "'remote_write_url' is not a parameter of emitters of type 'csv'",
        "plugin_settings.emitters[1].params.timeout: must be > 0, got 0",
    ]
    closed = f"http://127.0.0.1:{closed_port()}/api/v1/write"
    with pytest.raises(
        PrometheusWriteError, match=rf"^Cannot push to Prometheus remote write '{closed}': .*refused"
    ):
        push(config_path, closed, [DATES[1]])
    # the files were written before the push
    assert (tmp_path / "pushed" / "chargeback_search-prod_2026-02-02.om").read_text().endswith("# EOF\n")
    # a Prometheus without --web.enable-remote-write-receiver
    # (2.42 names the feature flag it still accepts besides --web.enable-remote-write-receiver)
    with (
        LocalPrometheus(None, tmp_path / "plain") as prom,
        pytest.raises(
            PrometheusWriteError,
            match=r"refused the samples: HTTP 404 remote write receiver needs to be enabled with "
            r"--enable-feature=remote-write-receiver$",
        ),
    ):
        push(config_path, f"{prom.url}/api/v1/write", [DATES[1]])
    # history without the out-of-order window
    receiver = LocalPrometheus(
        None, tmp_path / "receiver", extra_flags=["--web.enable-remote-write-receiver"]
    )
    with receiver as prom:
        push(config_path, f"{prom.url}/api/v1/write", [DATES[1]])
        with pytest.raises(
            PrometheusWriteError,
            match=r"refused the samples: HTTP 400 out of bounds \(history needs "
            r"storage.tsdb.out_of_order_time_window, docs/outputs.md §4\)$",
        ):
            push(config_path, f"{prom.url}/api/v1/write", [DATES[0]])
