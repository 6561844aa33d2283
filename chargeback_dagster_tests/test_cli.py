import json
from pathlib import Path

import pytest

from chargeback_dagster.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("name", ["generic.yaml", "self_managed_kafka.yaml", "confluent_cloud.yaml"])
def test_shipped_examples_are_valid(name, monkeypatch, capsys):
    monkeypatch.setenv("CCLOUD_KEY", "key")
    monkeypatch.setenv("CCLOUD_SECRET", "very-secret")
    assert main(["validate", "--config", str(EXAMPLES / name)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "Config is valid."


def test_validate_reports_every_problem_and_exits_1(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(
        "tenants:\n"
        "  a: {ecosystem: generic_metrics_only, tenant_id: a, lookback_days: 3, cutoff_days: 5,\n"
        "      plugin_settings: {cluster_id: c, metrics: {url: 'http://p'},\n"
        "        identity_source: {source: static,\n"
        "          static_identities: [{identity_id: x, identity_type: principal}]},\n"
        "        cost_types: [{name: n, product_category: c, rate: 1,\n"
        "                      cost_quantity: {type: fixed, count: 1}}]}}\n"
        "  b: {ecosystem: nope, tenant_id: b}\n"
    )
    assert main(["validate", "--config", str(config)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "Config validation failed:",
        "tenant 'a' (generic_metrics_only): lookback_days must be > cutoff_days",
        "tenant 'b': unknown ecosystem 'nope'; expected one of: confluent_cloud, generic_metrics_only, "
        "self_managed_kafka",
    ]


def test_show_config_hides_secrets(monkeypatch, capsys):
    monkeypatch.setenv("CCLOUD_KEY", "key-123")
    monkeypatch.setenv("CCLOUD_SECRET", "very-secret")
    assert main(["show-config", "--config", str(EXAMPLES / "confluent_cloud.yaml")]) == 0
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert shown["tenants"]["prod_ccloud"]["plugin_settings"]["ccloud_api"]["secret"] == "**********"
    assert "very-secret" not in out and "key-123" not in out


def test_migrate_creates_tenant_database(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text((EXAMPLES / "generic.yaml").read_text())
    assert main(["migrate", "--config", str(config), "--tenant", "search_cluster"]) == 0
    assert (tmp_path / "data" / "search_cluster.db").exists()
    assert "tenant 'search_cluster': database is up to date" in capsys.readouterr().out
