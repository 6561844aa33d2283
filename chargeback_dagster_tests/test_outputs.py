"""Output registry: a format defined here (not shipped) is one class + one registry entry, and real
materializations write it — after a normal calculation and after a timeout — next to the CSVs."""

from __future__ import annotations

import json
import time
from datetime import date, timedelta

import dagster as dg
import pytest

from chargeback_dagster import tenant_ops
from chargeback_dagster.config import ConfigError, EmitterConfig, load_config
from chargeback_dagster.defs.build import build_definitions
from chargeback_dagster.devtools.local_run import materialize_range
from chargeback_dagster.outputs import registry
from chargeback_dagster.outputs.base import Output
from chargeback_dagster.store.chargeback import ChargebackRepository
from chargeback_dagster_tests.test_operations import (
    closed_port_url,
    step_failures,
    tenant_config,
    write_config,
)


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


class JsonSummary(Output):
    """Per calculated date, a JSON file with the date's row count and total amount in units of 0.0001."""

    def write(self, emitter: EmitterConfig) -> dict[str, int]:
        written = {}
        for d in self.result.dates:
            groups = self.result.read_groups(d, d + timedelta(days=1))
            path = self.path_for(emitter, d)
            path.parent.mkdir(parents=True, exist_ok=True)
            summary = {"date": d.isoformat(), "rows": len(groups), "amount_units": sum(g[2] for g in groups)}
            path.write_text(json.dumps(summary))
            written[str(path)] = 1
        return written


def shop_with_summary(tmp_path, **tenant_fields):
    """The static-identity tenant of test_operations (2 identities, 60.0000 a day), with a CSV and a
    `json_summary` emitter."""
    shop = tenant_config(closed_port_url(), **tenant_fields)
    shop["plugin_settings"]["emitters"].append(
        {
            "type": "json_summary",
            "params": {"output_dir": "summary", "filename_template": "{tenant_id}_{date}.json"},
        }
    )
    return write_config(tmp_path / "chargeback.yaml", {"shop": shop})


def summaries(tmp_path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((tmp_path / "summary").glob("*.json"))}


def test_an_output_type_registered_from_outside_is_written_by_a_materialization(
    tmp_path, instance, monkeypatch
):
    config_path = shop_with_summary(tmp_path)
    with pytest.raises(
        ConfigError, match=r"Unknown emitter type 'json_summary'\. Available: csv, prometheus$"
    ):
        load_config(config_path)

    monkeypatch.setitem(registry.OUTPUTS, "json_summary", JsonSummary)
    result = materialize_range(
        build_definitions(load_config(config_path)),
        "shop",
        date(2026, 2, 1),
        date(2026, 2, 2),
        instance=instance,
    )
    assert result.success
    assert summaries(tmp_path) == {
        "shop-prod_2026-02-01.json": {"date": "2026-02-01", "rows": 2, "amount_units": 600000},
        "shop-prod_2026-02-02.json": {"date": "2026-02-02", "rows": 2, "amount_units": 600000},
    }
    assert sorted(p.name for p in (tmp_path / "out").glob("*.csv")) == [
        "shop-prod_2026-02-01.csv",
        "shop-prod_2026-02-02.csv",
    ]
    # one materialization per partition, each with the run's output metadata
    materializations = result.asset_materializations_for_node("shop__chargeback")
    assert [m.partition for m in materializations] == ["2026-02-01", "2026-02-02"]

    def output_metadata(m) -> dict:  # what the IO manager adds (each date also has its own csv_path_N)
        return {
            k: v.value
            for k, v in m.metadata.items()
            if k.startswith(("csv_", "json_")) and not k.startswith("csv_path_")
        }

    metadata = output_metadata(materializations[0])
    assert output_metadata(materializations[1]) == metadata
    assert metadata == {
        "csv_files": 2,
        "csv_rows": 4,
        "csv_paths": f"{tmp_path}/out/shop-prod_2026-02-01.csv\n{tmp_path}/out/shop-prod_2026-02-02.csv",
        "json_summary_files": 2,
        "json_summary_rows": 2,
        "json_summary_paths": f"{tmp_path}/summary/shop-prod_2026-02-01.json\n"
        f"{tmp_path}/summary/shop-prod_2026-02-02.json",
    }

    # an unknown type now lists every registered one
    write_config(config_path, {"shop": tenant_config(closed_port_url())})
    text = config_path.read_text().replace("type: csv", "type: parquet")
    config_path.write_text(text)
    with pytest.raises(
        ConfigError, match=r"Unknown emitter type 'parquet'\. Available: csv, json_summary, prometheus$"
    ):
        load_config(config_path)


def test_a_timeout_writes_the_committed_dates_through_every_output(tmp_path, instance, monkeypatch):
    monkeypatch.setitem(registry.OUTPUTS, "json_summary", JsonSummary)
    config_path = shop_with_summary(tmp_path, tenant_execution_timeout_seconds=30)
    defs = build_definitions(load_config(config_path))
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
    assert summaries(tmp_path) == {
        "shop-prod_2026-02-01.json": {"date": "2026-02-01", "rows": 2, "amount_units": 600000}
    }
    assert sorted(p.name for p in (tmp_path / "out").glob("*.csv")) == ["shop-prod_2026-02-01.csv"]
