"""The ecosystem registry: an ecosystem defined in the test suite (toy_ecosystem.py) is registered with one
entry and runs end to end in Dagster; the built-in entries match what their ecosystems do."""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

import pytest
import yaml

from chargeback_dagster.config import ConfigError, load_config
from chargeback_dagster.defs.build import build_definitions
from chargeback_dagster.devtools.local_run import materialize_range
from chargeback_dagster.ecosystems.registry import ECOSYSTEMS, ecosystem_for
from chargeback_dagster_tests.toy_ecosystem import TOY_PLUGIN


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(ECOSYSTEMS, "toy", TOY_PLUGIN)


def write_config(tmp_path: Path, plugin_settings: dict) -> Path:
    config = {
        "tenants": {
            "toys": {
                "ecosystem": "toy",
                "tenant_id": "toy-prod",
                "partitions_start_date": "2026-01-01",
                "storage": {"connection_string": "sqlite:///data/toys.db"},
                "plugin_settings": plugin_settings,
            }
        }
    }
    path = tmp_path / "chargeback.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


TOY_SETTINGS = {
    "cluster_id": "toy-1",
    "compute_rate": "10.00",
    "teams": ["team-b", "team-a", "team-c"],
    "emitters": [{"type": "csv", "params": {"output_dir": "out"}}],
}


@pytest.mark.slow
def test_toy_ecosystem_registered_in_one_line_materializes_in_dagster(tmp_path, toy_registered):
    defs = build_definitions(load_config(write_config(tmp_path, TOY_SETTINGS)))
    result = materialize_range(defs, "toys", date(2026, 3, 1), date(2026, 3, 2))
    assert result.success

    def rows(day: str) -> list[tuple[str, ...]]:
        with (tmp_path / "out" / f"toy-prod_{day}.csv").open(newline="") as fh:
            return [
                (
                    r["ecosystem"],
                    r["resource_id"],
                    r["product_type"],
                    r["identity_id"],
                    r["amount"],
                    r["cost_type"],
                    r["allocation_method"],
                    r["allocation_detail"],
                )
                for r in csv.DictReader(fh)
            ]

    # day 1: TOY_COMPUTE 10.00 over three teams (the extra unit to the first by id), TOY_SUPPORT unclaimed
    assert rows("2026-03-01") == [
        ("toy", "toy-1", "TOY_COMPUTE", "team-a", "3.3334", "shared", "even_split", "even_split_allocation"),
        ("toy", "toy-1", "TOY_COMPUTE", "team-b", "3.3333", "shared", "even_split", "even_split_allocation"),
        ("toy", "toy-1", "TOY_COMPUTE", "team-c", "3.3333", "shared", "even_split", "even_split_allocation"),
        (
            "toy",
            "toy-1",
            "TOY_SUPPORT",
            "UNALLOCATED",
            "1.5000",
            "shared",
            "unknown",
            "using_unknown_allocator",
        ),
    ]
    # day 2: TOY_COMPUTE 20.00
    assert rows("2026-03-02") == [
        ("toy", "toy-1", "TOY_COMPUTE", "team-a", "6.6667", "shared", "even_split", "even_split_allocation"),
        ("toy", "toy-1", "TOY_COMPUTE", "team-b", "6.6667", "shared", "even_split", "even_split_allocation"),
        ("toy", "toy-1", "TOY_COMPUTE", "team-c", "6.6666", "shared", "even_split", "even_split_allocation"),
        (
            "toy",
            "toy-1",
            "TOY_SUPPORT",
            "UNALLOCATED",
            "1.5000",
            "shared",
            "unknown",
            "using_unknown_allocator",
        ),
    ]


def test_registered_ecosystem_settings_checked_by_its_model(tmp_path, toy_registered):
    bad = {**TOY_SETTINGS, "teams": "team-a", "identity_resolution_overrides": {"kafka": "x:y"}}
    del bad["cluster_id"]
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, bad))
    message = str(info.value)
    assert "tenant 'toys' (toy): plugin_settings.cluster_id: is required" in message
    assert "tenant 'toys' (toy): plugin_settings.teams: must be a list, got 'team-a'" in message
    assert (
        "tenant 'toys' (toy): plugin_settings.identity_resolution_overrides: unknown service_type 'kafka' "
        "for toy; expected one of ['toy']" in message
    )


def test_unregistered_ecosystem_is_rejected_with_the_registered_names(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, TOY_SETTINGS))
    assert (
        "tenant 'toys': unknown ecosystem 'toy'; expected one of: confluent_cloud, generic_metrics_only, "
        "self_managed_kafka" in str(info.value)
    )


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(
    ("example", "name"),
    [
        ("confluent_cloud.yaml", "confluent_cloud"),
        ("generic.yaml", "generic_metrics_only"),
        ("self_managed_kafka.yaml", "self_managed_kafka"),
    ],
)
def test_builtin_entries_match_their_ecosystems(monkeypatch, example, name):
    """The service types accepted by identity_resolution_overrides are the handlers' service types."""
    monkeypatch.setenv("CCLOUD_KEY", "k")
    monkeypatch.setenv("CCLOUD_SECRET", "s")
    tenant = next(t for t in load_config(EXAMPLES / example).tenants.values() if t.ecosystem == name)
    ecosystem = ecosystem_for(tenant)
    assert type(ecosystem) is ECOSYSTEMS[name].ecosystem_class()
    assert type(tenant.plugin_settings) is ECOSYSTEMS[name].settings_class()
    assert [h.service_type for h in ecosystem.handlers()] == list(ECOSYSTEMS[name].service_types)
    # its settings model says whether a metrics source is required: Confluent Cloud runs without one
    metrics = ECOSYSTEMS[name].settings_class().model_fields["metrics"]
    assert metrics.is_required() is (name != "confluent_cloud")
