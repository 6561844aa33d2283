"""Tests of the configuration layer (docs/configuration.md and the ecosystem settings tables)."""

from __future__ import annotations

import copy
import json
import logging
import os
import textwrap
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from chargeback_dagster.config import (
    AppConfig,
    ConfigError,
    OverrideError,
    clear_config_cache,
    get_config,
    load_callable,
    load_config,
    loader,
)
from chargeback_dagster.ecosystems.confluent_cloud.config import ConfluentCloudSettings
from chargeback_dagster.ecosystems.generic_metrics.config import GenericMetricsSettings
from chargeback_dagster.ecosystems.self_managed_kafka import config as self_managed_kafka_config
from chargeback_dagster.ecosystems.self_managed_kafka.config import SelfManagedKafkaSettings

ROOT = Path(__file__).resolve().parents[1]
FIX = "chargeback_dagster_tests.config_overrides_fixtures"
CC = "tenant 't1' (confluent_cloud): "
SMK = "tenant 't1' (self_managed_kafka): "
GM = "tenant 't1' (generic_metrics_only): "
LEVELS = "['CRITICAL', 'DEBUG', 'ERROR', 'INFO', 'WARNING']"

BASE_PLUGIN: dict[str, dict[str, Any]] = {
    "confluent_cloud": {"ccloud_api": {"key": "k", "secret": "s"}},
    "self_managed_kafka": {
        "cluster_id": "kafka-1",
        "broker_count": 3,
        "cost_model": {
            "compute_hourly_rate": "0.10",
            "storage_per_gib_hourly": "0.0001",
            "network_ingress_per_gib": "0.01",
            "network_egress_per_gib": "0.02",
        },
        "metrics": {"url": "http://prometheus:9090"},
    },
    "generic_metrics_only": {
        "cluster_id": "gen-1",
        "metrics": {"url": "http://prometheus:9090"},
        "identity_source": {
            "source": "static",
            "static_identities": [{"identity_id": "a", "identity_type": "p"}],
        },
        "cost_types": [
            {
                "name": "NODE",
                "product_category": "compute",
                "rate": "2.5",
                "cost_quantity": {"type": "fixed", "count": 3},
            }
        ],
    },
}


def tenant(
    ecosystem: str = "confluent_cloud", ps: dict[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    """A valid tenant of ``ecosystem``; ``ps`` keys replace plugin_settings keys (None deletes)."""
    plugin = copy.deepcopy(BASE_PLUGIN[ecosystem])
    for key, value in (ps or {}).items():
        if value is None:
            plugin.pop(key, None)
        else:
            plugin[key] = value
    out: dict[str, Any] = {"ecosystem": ecosystem, "tenant_id": "acme", "plugin_settings": plugin}
    for key, value in fields.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CHARGEBACK_CONFIG_FILE", "CHARGEBACK_ENV_FILE"):
        monkeypatch.delenv(name, raising=False)
    clear_config_cache()


def write(tmp_path: Path, content: Any, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(textwrap.dedent(content))
    else:
        path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def load(tmp_path: Path, content: Any) -> AppConfig:
    return load_config(write(tmp_path, content))


def problems(tmp_path: Path, content: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, content)
    assert str(info.value) == "Config validation failed:\n" + "\n".join(info.value.problems)
    return info.value.problems


def tenant_problems(tmp_path: Path, t: dict[str, Any], name: str = "t1") -> list[str]:
    return problems(tmp_path, {"tenants": {name: t}})


def track_env(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make monkeypatch restore (delete) variables that a .env load may set."""
    for name in names:
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)


# --- loading
def test_config_env_var_not_set() -> None:
    with pytest.raises(ConfigError) as info:
        load_config()
    assert (
        str(info.value)
        == "CHARGEBACK_CONFIG_FILE is not set; set it to the path of the chargeback YAML config"
    )


def test_config_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(info.value) == f"Config file not found: '{missing}'"
    assert info.value.problems == [f"Config file not found: '{missing}'"]


def test_config_path_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, {"tenants": {"t1": tenant()}})
    monkeypatch.setenv("CHARGEBACK_CONFIG_FILE", str(path))
    app = load_config()
    assert app.config_path == path
    assert app.config_dir == tmp_path
    assert list(app.tenants) == ["t1"]


def test_env_file_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, {})
    monkeypatch.setenv("CHARGEBACK_ENV_FILE", str(tmp_path / "missing.env"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"Env file not found: '{tmp_path / 'missing.env'}'"


def test_malformed_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "tenants: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"Malformed YAML in '{path}': ")


def test_duplicate_tenant_name(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        tenants:
          prod:
            ecosystem: confluent_cloud
            tenant_id: a
          prod:
            ecosystem: confluent_cloud
            tenant_id: b
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"Duplicate key 'prod' at line 5 in '{path}'"


def test_duplicate_nested_key(tmp_path: Path) -> None:
    path = write(tmp_path, "features:\n  refresh_interval: 60\n  refresh_interval: 90\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"Duplicate key 'refresh_interval' at line 3 in '{path}'"


def test_empty_file_is_valid_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="chargeback_dagster.config"):
        app = load(tmp_path, "")
    assert app.tenants == {}
    assert app.warnings == ["No tenants configured"]
    assert "No tenants configured" in caplog.text
    assert app.logging.level == "INFO"
    assert app.features.refresh_interval == 1800
    assert app.features.max_parallel_tenants == 4
    assert app.features.enable_periodic_refresh is True


def test_non_mapping_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "- a\n- b\n")
    assert str(info.value) == "Config root must be a mapping, got list"


# --- interpolation
def test_interpolation_missing_variables_all_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CB_MISSING_KEY", raising=False)
    monkeypatch.delenv("CB_MISSING_SECRET", raising=False)
    t = tenant(ps={"ccloud_api": {"key": "${CB_MISSING_KEY}", "secret": "${CB_MISSING_SECRET}"}})
    assert tenant_problems(tmp_path, t) == [
        "tenants.t1.plugin_settings.ccloud_api.key: Required environment variable 'CB_MISSING_KEY' is not "
        "set. "
        "Set it or provide a default: ${CB_MISSING_KEY:-default}",
        "tenants.t1.plugin_settings.ccloud_api.secret: Required environment variable 'CB_MISSING_SECRET' is "
        "not "
        "set. Set it or provide a default: ${CB_MISSING_SECRET:-default}",
    ]


def test_interpolation_path_in_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CB_OUT", raising=False)
    t = tenant(ps={"emitters": [{"type": "csv", "params": {"output_dir": "${CB_OUT}"}}]})
    assert tenant_problems(tmp_path, t) == [
        "tenants.t1.plugin_settings.emitters[0].params.output_dir: Required environment variable 'CB_OUT' "
        "is not "
        "set. Set it or provide a default: ${CB_OUT:-default}"
    ]


def test_interpolation_defaults_and_coercion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CB_UNSET", raising=False)
    monkeypatch.setenv("CB_EMPTY", "")
    monkeypatch.setenv("CB_LOOKBACK", "90")
    monkeypatch.setenv("CB_HOST", "prom")
    monkeypatch.setenv("CB_PORT", "9090")
    monkeypatch.setenv("CB_ENABLED", "true")
    monkeypatch.setenv("CB_RATIO", "0.65")
    t = tenant(
        lookback_days="${CB_LOOKBACK}",
        tenant_id="acme${CB_EMPTY}-${CB_UNSET:-prod}",
        ps={
            "metrics": {"url": "http://${CB_HOST}:${CB_PORT}/x${CB_UNSET:-}", "auth_type": "none"},
            "allocator_params": {"kafka_cku_usage_ratio": "${CB_RATIO}", "kafka_cku_shared_ratio": "0.35"},
            "topic_attribution": {"enabled": "${CB_ENABLED}"},
        },
    )
    app = load(
        tmp_path, {"tenants": {"t1": t}, "features": {"enable_periodic_refresh": "${CB_UNSET:-false}"}}
    )
    t1 = app.tenants["t1"]
    assert t1.lookback_days == 90
    assert t1.tenant_id == "acme-prod"
    ps = t1.plugin_settings
    assert isinstance(ps, ConfluentCloudSettings)
    assert ps.metrics is not None and ps.metrics.url == "http://prom:9090/x"
    assert ps.topic_attribution.enabled is True
    assert ps.cku_usage_ratio == Decimal("0.65")
    assert app.features.enable_periodic_refresh is False


def test_interpolation_keys_not_substituted_and_dollar_literal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CB_X", "value")
    t = tenant(ps={"allocator_params": {"${CB_X}": "$CB_X"}})
    ps = load(tmp_path, {"tenants": {"t1": t}}).tenants["t1"].plugin_settings
    assert ps.allocator_params == {"${CB_X}": "$CB_X"}


# --- .env
def test_dotenv_beside_config_never_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    track_env(monkeypatch, "CB_DOTENV_KEY", "CB_DOTENV_SECRET")
    monkeypatch.setenv("CB_DOTENV_SECRET", "from-process")
    (tmp_path / ".env").write_text("CB_DOTENV_KEY=from-dotenv\nCB_DOTENV_SECRET=from-dotenv\n")
    t = tenant(ps={"ccloud_api": {"key": "${CB_DOTENV_KEY}", "secret": "${CB_DOTENV_SECRET}"}})
    ps = load(tmp_path, {"tenants": {"t1": t}}).tenants["t1"].plugin_settings
    assert ps.ccloud_api.key.get_secret_value() == "from-dotenv"
    assert ps.ccloud_api.secret.get_secret_value() == "from-process"
    assert os.environ["CB_DOTENV_SECRET"] == "from-process"


def test_env_file_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    track_env(monkeypatch, "CB_ENVFILE_KEY")
    env_file = tmp_path / "other" / "vars.env"
    env_file.parent.mkdir()
    env_file.write_text("CB_ENVFILE_KEY=abc\n")
    (tmp_path / ".env").write_text("CB_ENVFILE_KEY=beside\n")
    monkeypatch.setenv("CHARGEBACK_ENV_FILE", str(env_file))
    t = tenant(ps={"ccloud_api": {"key": "${CB_ENVFILE_KEY}", "secret": "s"}})
    ps = load(tmp_path, {"tenants": {"t1": t}}).tenants["t1"].plugin_settings
    assert ps.ccloud_api.key.get_secret_value() == "abc"


def test_env_file_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    track_env(monkeypatch, "CB_ENVARG_KEY")
    env_file = tmp_path / "arg.env"
    env_file.write_text("CB_ENVARG_KEY=fromarg\n")
    path = write(
        tmp_path, {"tenants": {"t1": tenant(ps={"ccloud_api": {"key": "${CB_ENVARG_KEY}", "secret": "s"}})}}
    )
    app = load_config(path, env_file=env_file)
    assert app.tenants["t1"].plugin_settings.ccloud_api.key.get_secret_value() == "fromarg"
    with pytest.raises(ConfigError) as info:
        load_config(path, env_file=tmp_path / "none.env")
    assert str(info.value) == f"Env file not found: '{tmp_path / 'none.env'}'"


# --- top level
def test_features_bounds(tmp_path: Path) -> None:
    assert problems(tmp_path, {"features": {"max_parallel_tenants": 100, "refresh_interval": 10}}) == [
        "features.max_parallel_tenants: must be between 1 and 64, got 100",
        "features.refresh_interval: must be >= 30, got 10",
    ]


def test_features_types(tmp_path: Path) -> None:
    content = (
        "features:\n  enable_periodic_refresh: maybe\n  max_parallel_tenants: true\n  refresh_interval: 1.5\n"
    )
    assert problems(tmp_path, content) == [
        "features.enable_periodic_refresh: must be a boolean, got 'maybe'",
        "features.max_parallel_tenants: must be an integer, got 'true'",
        "features.refresh_interval: must be an integer, got '1.5'",
    ]


def test_logging_levels(tmp_path: Path) -> None:
    content = {"logging": {"level": "verbose", "per_module_levels": {"chargeback_dagster.ccloud": "loud"}}}
    assert problems(tmp_path, content) == [
        f"logging.level: level must be one of {LEVELS}, got 'verbose'",
        f"logging.per_module_levels['chargeback_dagster.ccloud']: level must be one of {LEVELS}, got 'loud'",
    ]


def test_logging_level_case_insensitive_and_empty(tmp_path: Path) -> None:
    app = load(tmp_path, {"logging": {"level": "debug", "per_module_levels": {"x": "warning"}}})
    assert app.logging.level == "DEBUG"
    assert app.logging.per_module_levels == {"x": "WARNING"}
    assert load(tmp_path, {"logging": {"level": ""}}).logging.level == "INFO"


def test_unknown_keys(tmp_path: Path) -> None:
    content = {"bogus": 1, "features": {"colour": "red"}, "tenants": {"t1": tenant(extra=1)}}
    assert problems(tmp_path, content) == [
        "unknown key 'bogus'",
        "features: unknown key 'colour'",
        f"{CC}unknown key 'extra'",
    ]


def test_wrong_type_mapping(tmp_path: Path) -> None:
    assert problems(tmp_path, {"tenants": [1, 2]}) == ["tenants: must be a mapping, got '[1, 2]'"]


def test_tenant_name_invalid(tmp_path: Path) -> None:
    assert problems(tmp_path, {"tenants": {"1bad-name": tenant()}}) == [
        "tenant name '1bad-name' is invalid: use a letter followed by up to 62 letters, digits or underscores"
    ]


def test_tenant_name_of_the_monthly_reports_is_reserved(tmp_path: Path) -> None:
    assert problems(tmp_path, {"tenants": {"monthly_report": tenant()}}) == [
        "tenant name 'monthly_report' is reserved: the monthly reports' asset keys start with it"
    ]


def test_tenant_ecosystem_missing_and_unknown(tmp_path: Path) -> None:
    content = {"tenants": {"a": {"tenant_id": "x"}, "b": {"ecosystem": "aws", "tenant_id": "y"}}}
    assert problems(tmp_path, content) == [
        "tenant 'a': ecosystem: is required",
        "tenant 'b': unknown ecosystem 'aws'; expected one of: confluent_cloud, generic_metrics_only, "
        "self_managed_kafka",
    ]


# --- tenant fields
def test_tenant_defaults(tmp_path: Path) -> None:
    t1 = load(tmp_path, {"tenants": {"t1": tenant()}}).tenants["t1"]
    assert (t1.name, t1.ecosystem, t1.tenant_id) == ("t1", "confluent_cloud", "acme")
    assert t1.partitions_start_date.isoformat() == "2025-01-01"
    assert (t1.lookback_days, t1.cutoff_days, t1.retention_days) == (200, 5, 250)
    assert (t1.allocation_retry_limit, t1.topic_attribution_retry_limit) == (3, 3)
    assert (t1.zero_gather_deletion_threshold, t1.gather_failure_threshold) == (-1, 5)
    assert (t1.tenant_execution_timeout_seconds, t1.metrics_prefetch_workers) == (3600, 4)
    assert t1.storage.backend == "sqlalchemy"
    assert t1.database_url == f"sqlite:///{tmp_path}/data/t1.db"


def test_tenant_id_required_and_type(tmp_path: Path) -> None:
    assert tenant_problems(tmp_path, tenant(tenant_id=None)) == [f"{CC}tenant_id: is required"]
    assert tenant_problems(tmp_path, tenant(tenant_id=["a"])) == [
        f"{CC}tenant_id: must be a string, got '['a']'"
    ]


def test_tenant_int_rules(tmp_path: Path) -> None:
    t = tenant(
        lookback_days=400,
        cutoff_days=0,
        retention_days="abc",
        allocation_retry_limit=11,
        topic_attribution_retry_limit=0,
        zero_gather_deletion_threshold=-2,
        gather_failure_threshold=0,
        tenant_execution_timeout_seconds=-1,
        metrics_prefetch_workers=21,
    )
    assert tenant_problems(tmp_path, t) == [
        f"{CC}lookback_days: must be between 1 and 364, got 400",
        f"{CC}cutoff_days: must be between 1 and 30, got 0",
        f"{CC}retention_days: must be an integer, got 'abc'",
        f"{CC}allocation_retry_limit: must be between 1 and 10, got 11",
        f"{CC}topic_attribution_retry_limit: must be between 1 and 10, got 0",
        f"{CC}zero_gather_deletion_threshold: must be >= -1, got -2",
        f"{CC}gather_failure_threshold: must be >= 1, got 0",
        f"{CC}tenant_execution_timeout_seconds: must be >= 0, got -1",
        f"{CC}metrics_prefetch_workers: must be between 1 and 20, got 21",
    ]


def test_bool_is_not_an_integer(tmp_path: Path) -> None:
    assert tenant_problems(tmp_path, tenant(lookback_days=True)) == [
        f"{CC}lookback_days: must be an integer, got 'true'"
    ]


def test_lookback_must_exceed_cutoff(tmp_path: Path) -> None:
    assert tenant_problems(tmp_path, tenant(lookback_days=5, cutoff_days=5)) == [
        f"{CC}lookback_days must be > cutoff_days"
    ]


def test_retention_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="chargeback_dagster.config"):
        app = load(tmp_path, {"tenants": {"t1": tenant(retention_days=100, lookback_days=200)}})
    expected = (
        f"{CC}retention_days (100) < lookback_days (200): old dates are re-gathered on every refresh "
        "and purged again"
    )
    assert app.warnings == [expected]
    assert expected in caplog.text


def test_partitions_start_date(tmp_path: Path) -> None:
    today = datetime.now(UTC).date()
    assert tenant_problems(tmp_path, tenant(partitions_start_date=today.isoformat())) == [
        f"{CC}partitions_start_date must be before today, got {today.isoformat()}"
    ]
    assert tenant_problems(tmp_path, tenant(partitions_start_date="01/02/2025")) == [
        f"{CC}partitions_start_date: must be an ISO date (YYYY-MM-DD), got '01/02/2025'"
    ]
    yesterday = today - timedelta(days=1)
    app = load(tmp_path, {"tenants": {"t1": tenant(partitions_start_date=yesterday.isoformat())}})
    assert app.tenants["t1"].partitions_start_date == yesterday


def test_partitions_start_date_unquoted_yaml_date(tmp_path: Path) -> None:
    content = "tenants:\n  t1:\n    ecosystem: confluent_cloud\n    tenant_id: 2024-05-01\n"
    content += "    partitions_start_date: 2024-06-01\n"
    content += "    plugin_settings: {ccloud_api: {key: k, secret: s}}\n"
    t1 = load(tmp_path, content).tenants["t1"]
    assert t1.partitions_start_date.isoformat() == "2024-06-01"
    assert t1.tenant_id == "2024-05-01"


# --- storage
def test_storage_backend(tmp_path: Path) -> None:
    assert tenant_problems(tmp_path, tenant(storage={"backend": "mongo"})) == [
        f"{CC}storage.backend: Unknown storage backend: 'mongo'"
    ]
    app = load(tmp_path, {"tenants": {"t1": tenant(storage={"backend": "sqlmodel"})}})
    assert app.tenants["t1"].storage.backend == "sqlalchemy"


def test_connection_string_scheme(tmp_path: Path) -> None:
    assert tenant_problems(tmp_path, tenant(storage={"connection_string": "mysql://u:p@h/db"})) == [
        f"{CC}storage.connection_string: unsupported database URL scheme 'mysql'; use sqlite:///<path> or "
        "postgresql+psycopg://<user>:<password>@<host>/<db>"
    ]


@pytest.mark.parametrize(
    "url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file:x?mode=memory&cache=shared"]
)
def test_connection_string_in_memory(tmp_path: Path, url: str) -> None:
    assert tenant_problems(tmp_path, tenant(storage={"connection_string": url})) == [
        f"{CC}storage.connection_string: in-memory SQLite is not supported"
    ]


def test_secret_not_echoed(tmp_path: Path) -> None:
    t = tenant(storage={"connection_string": ["postgresql://u:hunter2@h/db"]})
    lines = tenant_problems(tmp_path, t)
    assert lines == [f"{CC}storage.connection_string: must be a string, got '**********'"]
    assert "hunter2" not in "\n".join(lines)


def test_database_url_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg_dir = tmp_path / "conf"
    cfg_dir.mkdir()
    content = {
        "tenants": {
            "rel": tenant(tenant_id="a", storage={"connection_string": "sqlite:///db/rel.db?timeout=5"}),
            "absol": tenant(tenant_id="b", storage={"connection_string": f"sqlite:///{tmp_path}/abs.db"}),
            "pg": tenant(tenant_id="c", storage={"connection_string": "postgresql://u:p@h:5432/db"}),
            "pg2": tenant(tenant_id="d", storage={"connection_string": "postgresql+psycopg2://u:p@h/db2"}),
        }
    }
    app = load(cfg_dir, content)
    assert app.tenants["rel"].database_url == f"sqlite:///{cfg_dir}/db/rel.db?timeout=5"
    assert app.tenants["absol"].database_url == f"sqlite:///{tmp_path}/abs.db"
    assert app.tenants["pg"].database_url == "postgresql+psycopg://u:p@h:5432/db"
    assert app.tenants["pg2"].database_url == "postgresql+psycopg2://u:p@h/db2"


def test_shared_connection_string(tmp_path: Path) -> None:
    content = {
        "tenants": {
            "a": tenant(tenant_id="a", storage={"connection_string": "sqlite:///data/x.db"}),
            "b": tenant(
                tenant_id="b", storage={"connection_string": f"sqlite:///{tmp_path}/data/../data/x.db"}
            ),
            "c": tenant(tenant_id="c", storage={"connection_string": "postgresql://u:p@h/db"}),
            "d": tenant(tenant_id="d", storage={"connection_string": "postgresql+psycopg://u:p@h/db"}),
        }
    }
    assert problems(tmp_path, content) == [
        "tenants 'a' and 'b' share the same storage connection_string — each tenant must use a separate "
        "database",
        "tenants 'c' and 'd' share the same storage connection_string — each tenant must use a separate "
        "database",
    ]


def test_default_databases_are_per_tenant(tmp_path: Path) -> None:
    app = load(tmp_path, {"tenants": {"a": tenant(tenant_id="a"), "b": tenant(tenant_id="b")}})
    assert app.tenants["a"].database_url != app.tenants["b"].database_url


# --- common plugin fields
def test_common_plugin_bounds(tmp_path: Path) -> None:
    t = tenant(ps={"min_refresh_gap_seconds": -1, "metrics_step_seconds": 30})
    assert tenant_problems(tmp_path, t) == [
        f"{CC}plugin_settings.min_refresh_gap_seconds: must be >= 0, got -1",
        f"{CC}plugin_settings.metrics_step_seconds: must be between 60 and 86400, got 30",
    ]


def test_plugin_unknown_key(tmp_path: Path) -> None:
    assert tenant_problems(tmp_path, tenant(ps={"nope": 1})) == [f"{CC}plugin_settings: unknown key 'nope'"]


@pytest.mark.parametrize(("eco", "prefix"), [("self_managed_kafka", SMK), ("generic_metrics_only", GM)])
def test_metrics_required(tmp_path: Path, eco: str, prefix: str) -> None:
    assert tenant_problems(tmp_path, tenant(eco, ps={"metrics": None})) == [
        f"{prefix}plugin_settings.metrics: is required"
    ]


def test_metrics_optional_for_confluent(tmp_path: Path) -> None:
    assert load(tmp_path, {"tenants": {"t1": tenant()}}).tenants["t1"].plugin_settings.metrics is None


def test_metrics_auth_rules(tmp_path: Path) -> None:
    t = {
        "a": tenant(
            tenant_id="a", ps={"metrics": {"url": "http://p", "auth_type": "basic", "username": "u"}}
        ),
        "b": tenant(tenant_id="b", ps={"metrics": {"url": "http://p", "auth_type": "bearer"}}),
        "c": tenant(tenant_id="c", ps={"metrics": {"url": "http://p", "password": "pw"}}),
        "d": tenant(tenant_id="d", ps={"metrics": {"url": "ftp://p", "auth_type": "kerberos"}}),
        "e": tenant(tenant_id="e", ps={"metrics": {"auth_type": "none"}}),
    }
    assert problems(tmp_path, {"tenants": t}) == [
        "tenant 'a' (confluent_cloud): plugin_settings.metrics: username and password required for basic "
        "auth",
        "tenant 'b' (confluent_cloud): plugin_settings.metrics: bearer_token required for bearer auth",
        "tenant 'c' (confluent_cloud): plugin_settings.metrics: credentials provided but auth_type is 'none'",
        "tenant 'd' (confluent_cloud): plugin_settings.metrics.url: must be an http:// or https:// URL, got "
        "'ftp://p'",
        "tenant 'd' (confluent_cloud): plugin_settings.metrics.auth_type: must be one of ['basic', 'bearer', "
        "'none'], got 'kerberos'",
        "tenant 'e' (confluent_cloud): plugin_settings.metrics.url: is required",
    ]


def test_metrics_config_values(tmp_path: Path) -> None:
    metrics = {"url": "https://host/prom", "auth_type": "BASIC", "username": "u", "password": "pw"}
    app = load(tmp_path, {"tenants": {"t1": tenant(ps={"metrics": metrics})}})
    m = app.tenants["t1"].plugin_settings.metrics
    assert m.auth_type == "basic"
    assert m.password.get_secret_value() == "pw"
    assert m.url == "https://host/prom"  # the client keeps the prefix: test_prometheus.py


# --- emitters
def test_emitter_rules(tmp_path: Path) -> None:
    emitters = [
        {"type": "parquet", "params": {"output_dir": "o1"}},
        {"type": "csv", "name": "x", "aggregation": "weekly", "params": {"output_dir": "o2"}},
        {
            "type": "csv",
            "name": "x",
            "params": {"output_dir": "o3", "filename_template": "{tenant}_{date}.csv"},
        },
        {"type": "csv", "name": "y", "params": {"output_dir": "o4", "filename_template": "{tenant_id}.csv"}},
        {"type": "csv", "name": "z"},
    ]
    p = f"{CC}plugin_settings.emitters"
    assert tenant_problems(tmp_path, tenant(ps={"emitters": emitters})) == [
        f"{p}[0].type: Unknown emitter type 'parquet'. Available: csv, prometheus",
        f"{p}[1].aggregation: must be one of ['daily', 'monthly'], got 'weekly'",
        f"{p}: duplicate emitter name 'x'",
        f"{p}[2].params.filename_template: unknown placeholder '{{tenant}}'; allowed: {{tenant_id}}, "
        "{tenant_name}, {date}",
        f"{p}[3].params.filename_template: must contain {{date}}",
        f"{p}[4].params: is required",
    ]


def test_emitter_same_files_within_tenant(tmp_path: Path) -> None:
    emitters = [
        {"type": "csv", "params": {"output_dir": "out"}},
        {"type": "csv", "name": "monthly", "aggregation": "monthly", "params": {"output_dir": "./out"}},
    ]
    assert tenant_problems(tmp_path, tenant(ps={"emitters": emitters})) == [
        f"{CC}plugin_settings: emitters 'csv' and 'monthly' write to the same files "
        f"'{tmp_path}/out/{{tenant_id}}_{{date}}.csv'"
    ]


def test_emitter_same_pattern_across_tenants(tmp_path: Path) -> None:
    e = [{"type": "csv", "params": {"output_dir": "out"}}]
    other = [
        {"type": "csv", "params": {"output_dir": "out", "filename_template": "{tenant_name}_{date}.csv"}}
    ]
    content = {
        "tenants": {
            "a": tenant(tenant_id="acme", ps={"emitters": e}),
            "b": tenant(tenant_id="acme", ps={"emitters": e}),
            "c": tenant(tenant_id="acme", ps={"emitters": other}),
        }
    }
    assert problems(tmp_path, content) == [
        f"tenants 'a' and 'b' write CSV files to the same path pattern '{tmp_path}/out/acme_{{date}}.csv'"
    ]


def test_emitter_output_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    emitters = [
        {"type": "csv", "params": {"output_dir": "output/daily"}},
        {"type": "csv", "name": "m", "aggregation": "monthly", "params": {"output_dir": "/abs/monthly"}},
    ]
    ps = load(tmp_path, {"tenants": {"t1": tenant(ps={"emitters": emitters})}}).tenants["t1"].plugin_settings
    assert ps.emitters[0].name == "csv"
    assert ps.emitters[0].aggregation is None
    assert ps.emitters[0].params.output_dir == tmp_path / "output" / "daily"
    assert ps.emitters[0].params.filename_template == "{tenant_id}_{date}.csv"
    assert ps.emitters[1].params.output_dir == Path("/abs/monthly")
    assert ps.emitters[1].aggregation == "monthly"


# --- overrides
def test_override_messages(tmp_path: Path) -> None:
    overrides = {
        "A": "",
        "B": "no_colon_here",
        "C": "chargeback_dagster_tests.does_not_exist:fn",
        "D": f"{FIX}:missing",
        "E": f"{FIX}:AllocatorClass",
        "F": f"{FIX}:NOT_CALLABLE",
        "G": f"{FIX}:allocator_two_args",
        "H": f"{FIX}:allocator_ok",
        "I": f"{FIX}:allocator_varargs",
        "J": f"{FIX}:allocator_optional_extra",
        "K": f"{FIX}:allocator_instance",
    }
    p = f"{CC}plugin_settings.allocator_overrides"
    assert tenant_problems(tmp_path, tenant(ps={"allocator_overrides": overrides})) == [
        f"{p}['A']: dotted_path must not be empty",
        f"{p}['B']: Expected 'module:attribute' format, got 'no_colon_here'",
        f"{p}['C']: Could not import module 'chargeback_dagster_tests.does_not_exist'",
        f"{p}['D']: Module '{FIX}' has no attribute 'missing'",
        f"{p}['E']: Loaded object '{FIX}:AllocatorClass' is a class; provide a function or callable "
        "instance, "
        "not an uninstantiated class",
        f"{p}['F']: Loaded object '{FIX}:NOT_CALLABLE' is not callable",
        f"{p}['G']: Signature mismatch: protocol Allocator expects 1 positional parameter(s) but "
        f"{FIX}:allocator_two_args accepts 2",
    ]


def test_override_valid_ones_load(tmp_path: Path) -> None:
    ps = {
        "allocator_overrides": {"KAFKA_NUM_CKU": f"{FIX}:allocator_ok", "X": f"{FIX}:allocator_instance"},
        "identity_resolution_overrides": {"kafka": f"{FIX}:resolver_ok"},
    }
    settings = load(tmp_path, {"tenants": {"t1": tenant(ps=ps)}}).tenants["t1"].plugin_settings
    assert settings.allocator_overrides["KAFKA_NUM_CKU"] == f"{FIX}:allocator_ok"
    fn = load_callable(settings.identity_resolution_overrides["kafka"])
    assert fn("t", "r", None, None, {}, None) == ((), (), {})


def test_identity_resolution_overrides(tmp_path: Path) -> None:
    content = {
        "tenants": {
            "t1": tenant(
                ps={"identity_resolution_overrides": {"kafka": f"{FIX}:resolver_short", "bogus": "x:y"}}
            ),
            "t2": tenant(
                "self_managed_kafka", tenant_id="b", ps={"identity_resolution_overrides": {"generic": "x:y"}}
            ),
            "t3": tenant(
                "generic_metrics_only", tenant_id="c", ps={"identity_resolution_overrides": {"kafka": "x:y"}}
            ),
        }
    }
    assert problems(tmp_path, content) == [
        f"{CC}plugin_settings.identity_resolution_overrides['kafka']: Signature mismatch: protocol "
        "IdentityResolver "
        f"expects 6 positional parameter(s) but {FIX}:resolver_short accepts 2",
        f"{CC}plugin_settings.identity_resolution_overrides: unknown service_type 'bogus' for "
        "confluent_cloud; "
        "expected one of ['kafka', 'schema_registry', 'connector', 'ksqldb', 'flink', 'org_wide', 'default']",
        "tenant 't2' (self_managed_kafka): plugin_settings.identity_resolution_overrides: unknown "
        "service_type "
        "'generic' for self_managed_kafka; expected one of ['kafka']",
        "tenant 't3' (generic_metrics_only): plugin_settings.identity_resolution_overrides: unknown "
        "service_type "
        "'kafka' for generic_metrics_only; expected one of ['generic']",
    ]


def test_load_callable_runtime() -> None:
    assert load_callable(f"{FIX}:allocator_ok", "Allocator")(None) == []
    with pytest.raises(OverrideError, match="is not callable"):
        load_callable(f"{FIX}:NOT_CALLABLE")
    with pytest.raises(OverrideError) as info:
        load_callable(f"{FIX}:resolver_ok", "Allocator")
    assert str(info.value) == (
        f"Signature mismatch: protocol Allocator expects 1 positional parameter(s) but {FIX}:resolver_ok "
        "accepts 6"
    )


# --- confluent cloud
def test_confluent_settings_values(tmp_path: Path) -> None:
    ps = {
        "ccloud_api": {"key": "k", "secret": "s", "base_url": "http://localhost:8080/"},
        "billing_api": {"days_per_query": 7},
        "flink": [{"region_id": " US-East-1 ", "key": "fk", "secret": "fs"}],
    }
    settings = load(tmp_path, {"tenants": {"t1": tenant(ps=ps)}}).tenants["t1"].plugin_settings
    assert isinstance(settings, ConfluentCloudSettings)
    assert settings.ccloud_api.base_url == "http://localhost:8080"
    assert settings.ccloud_api.flink_url_template == "https://flink.{region}.{cloud}.confluent.cloud"
    assert settings.billing_api.days_per_query == 7
    assert settings.flink[0].region_id == "us-east-1"
    assert settings.flink_credential("US-EAST-1").key.get_secret_value() == "fk"
    assert settings.cku_usage_ratio == Decimal("0.70")
    assert settings.cku_shared_ratio == Decimal("0.30")
    ta = settings.topic_attribution
    assert ta.enabled is False
    assert ta.exclude_topic_patterns == ["__consumer_offsets", "_schemas", "_confluent-*"]
    assert ta.retention_days == 90


def test_confluent_required_and_bounds(tmp_path: Path) -> None:
    t = tenant(ps={"ccloud_api": None, "billing_api": {"days_per_query": 31}})
    assert tenant_problems(tmp_path, t) == [
        f"{CC}plugin_settings.ccloud_api: is required",
        f"{CC}plugin_settings.billing_api.days_per_query: must be between 1 and 30, got 31",
    ]
    t = tenant(ps={"ccloud_api": {"secret": "s", "base_url": "api.confluent.cloud"}})
    assert tenant_problems(tmp_path, t) == [
        f"{CC}plugin_settings.ccloud_api.key: is required",
        f"{CC}plugin_settings.ccloud_api.base_url: must be an http:// or https:// URL, got "
        "'api.confluent.cloud'",
    ]


def test_cku_ratio_rules(tmp_path: Path) -> None:
    content = {
        "tenants": {
            "a": tenant(
                tenant_id="a", ps={"allocator_params": {"kafka_cku_usage_ratio": "abc", "x_ratio": True}}
            ),
            "b": tenant(tenant_id="b", ps={"allocator_params": {"kafka_cku_shared_ratio": 1.5}}),
            "c": tenant(
                tenant_id="c",
                ps={"allocator_params": {"kafka_cku_usage_ratio": 0.6, "kafka_cku_shared_ratio": 0.5}},
            ),
            "d": tenant(tenant_id="d", ps={"allocator_params": {"kafka_cku_usage_ratio": 0.6}}),
        }
    }
    assert problems(tmp_path, content) == [
        "tenant 'a' (confluent_cloud): plugin_settings.allocator_params.kafka_cku_usage_ratio must be "
        "numeric, "
        "got str",
        "tenant 'a' (confluent_cloud): plugin_settings.allocator_params.x_ratio must be numeric, got bool",
        "tenant 'b' (confluent_cloud): plugin_settings.allocator_params.kafka_cku_shared_ratio must be "
        "between 0 "
        "and 1, got 1.5",
        "tenant 'c' (confluent_cloud): plugin_settings: allocator_params kafka_cku_usage_ratio + "
        "kafka_cku_shared_ratio must sum to 1.0, got 1.1",
        "tenant 'd' (confluent_cloud): plugin_settings: allocator_params kafka_cku_usage_ratio + "
        "kafka_cku_shared_ratio must sum to 1.0, got 0.90",
    ]


def test_cku_ratios_exact_decimal(tmp_path: Path) -> None:
    content = "tenants:\n  t1:\n    ecosystem: confluent_cloud\n    tenant_id: a\n    plugin_settings:\n"
    content += "      ccloud_api: {key: k, secret: s}\n"
    content += "      allocator_params: {kafka_cku_usage_ratio: 0.9, kafka_cku_shared_ratio: 0.1, other: 3}\n"
    settings = load(tmp_path, content).tenants["t1"].plugin_settings
    assert settings.cku_usage_ratio == Decimal("0.9")
    assert settings.cku_shared_ratio == Decimal("0.1")
    assert str(settings.cku_shared_ratio) == "0.1"
    assert settings.allocator_params["other"] == 3


def test_flink_duplicate_region(tmp_path: Path) -> None:
    flink = [
        {"region_id": "us-east-1", "key": "a", "secret": "b"},
        {"region_id": " US-EAST-1", "key": "c", "secret": "d"},
    ]
    assert tenant_problems(tmp_path, tenant(ps={"flink": flink})) == [
        f"{CC}plugin_settings.flink: duplicate region_id 'us-east-1'"
    ]


def test_topic_attribution_requires_metrics(tmp_path: Path) -> None:
    assert tenant_problems(tmp_path, tenant(ps={"topic_attribution": {"enabled": True}})) == [
        f"{CC}plugin_settings.topic_attribution.enabled=True requires a configured metrics source; "
        "set plugin_settings.metrics or disable topic_attribution"
    ]


def test_topic_attribution_settings(tmp_path: Path) -> None:
    ta = {
        "enabled": True,
        "exclude_topic_patterns": [" orders-* ", "", "_schemas"],
        "missing_metrics_behavior": "SKIP",
        "cost_mapping_overrides": {"kafka_partition": "Disabled"},
        "metric_name_overrides": {"topic_bytes_in": "my_bytes_in"},
        "retention_days": 30,
        "emitters": [{"type": "csv", "params": {"output_dir": "ta"}}],
    }
    ps = {"topic_attribution": ta, "metrics": {"url": "http://p"}}
    settings = load(tmp_path, {"tenants": {"t1": tenant(ps=ps)}}).tenants["t1"].plugin_settings
    t = settings.topic_attribution
    assert t.exclude_topic_patterns == ["orders-*", "_schemas"]
    assert t.missing_metrics_behavior == "skip"
    assert t.cost_mapping_overrides == {"KAFKA_PARTITION": "disabled"}
    assert t.metric_name_overrides == {"topic_bytes_in": "my_bytes_in"}
    assert t.emitters[0].params.filename_template == "topic_attr_{tenant_id}_{date}.csv"
    assert t.emitters[0].params.output_dir == tmp_path / "ta"


def test_topic_attribution_enabled_loads_without_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ps = {"topic_attribution": {"enabled": True}, "metrics": {"url": "http://p"}}
    with caplog.at_level(logging.WARNING, logger="chargeback_dagster.config"):
        app = load(tmp_path, {"tenants": {"t1": tenant(ps=ps), "t2": tenant(tenant_id="b")}})
    assert app.tenants["t1"].plugin_settings.topic_attribution.enabled is True
    assert app.warnings == []
    assert "topic_attribution" not in caplog.text


def test_topic_attribution_emitters_are_csv_or_prometheus(tmp_path: Path) -> None:
    ta = {"emitters": [{"type": "json", "params": {"output_dir": "x"}}]}
    assert tenant_problems(
        tmp_path, tenant(ps={"metrics": {"url": "http://p"}, "topic_attribution": ta})
    ) == [
        f"{CC}plugin_settings.topic_attribution.emitters[0].type: Unknown emitter type 'json'. "
        "Available: csv, prometheus"
    ]
    # each type's own default file name
    ta = {
        "emitters": [
            {"type": "csv", "params": {"output_dir": "x"}},
            {"type": "prometheus", "params": {"output_dir": "x"}},
        ]
    }
    loaded = load(
        tmp_path, {"tenants": {"t1": tenant(ps={"metrics": {"url": "http://p"}, "topic_attribution": ta})}}
    )
    emitters = loaded.tenants["t1"].plugin_settings.topic_attribution.emitters
    assert [e.params.filename_template for e in emitters] == [
        "topic_attr_{tenant_id}_{date}.csv",
        "topic_attr_{tenant_id}_{date}.om",
    ]


def test_topic_attribution_invalid(tmp_path: Path) -> None:
    ta = {
        "missing_metrics_behavior": "drop",
        "cost_mapping_overrides": {"KAFKA_BASE": "magic"},
        "metric_name_overrides": {"topic_bytes": "x"},
        "retention_days": 0,
    }
    p = f"{CC}plugin_settings.topic_attribution"
    assert tenant_problems(tmp_path, tenant(ps={"topic_attribution": ta})) == [
        f"{p}.missing_metrics_behavior: must be one of ['even_split', 'skip'], got 'drop'",
        f"{p}.cost_mapping_overrides['KAFKA_BASE']: must be one of ['bytes_ratio', 'disabled', 'even_split', "
        "'retained_bytes_ratio'], got 'magic'",
        f"{p}.metric_name_overrides: unknown key 'topic_bytes'",
        f"{p}.retention_days: must be between 1 and 365, got 0",
    ]


# --- self-managed kafka
def test_self_managed_admin_api_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(self_managed_kafka_config, "_kafka_extra_available", lambda: False)
    rs = {"source": "admin_api", "sasl_mechanism": "PLAIN", "sasl_username": "u"}
    p = f"{SMK}plugin_settings.resource_source"
    assert tenant_problems(tmp_path, tenant("self_managed_kafka", ps={"resource_source": rs})) == [
        f"{p}: bootstrap_servers required when source='admin_api'",
        f"{SMK}plugin_settings.resource_source.source='admin_api' requires the 'kafka' extra: "
        "pip install 'chargeback-dagster[kafka]'",
        f"{p}: sasl_username and sasl_password required when sasl_mechanism is set",
        f"{p}: sasl_mechanism requires security_protocol SASL_PLAINTEXT or SASL_SSL",
    ]


def test_self_managed_admin_api_valid(tmp_path: Path) -> None:
    rs = {
        "source": "admin_api",
        "bootstrap_servers": "b1:9092",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "u",
        "sasl_password": "pw",
    }
    settings = load(tmp_path, {"tenants": {"t1": tenant("self_managed_kafka", ps={"resource_source": rs})}})
    res = settings.tenants["t1"].plugin_settings.resource_source
    assert res.sasl_password.get_secret_value() == "pw"
    assert res.security_protocol == "SASL_SSL"


def test_self_managed_static_and_overrides(tmp_path: Path) -> None:
    ps = {
        "broker_count": 0,
        "identity_source": {"source": "static", "label": "user"},
        "cost_model": {
            "compute_hourly_rate": -1,
            "storage_per_gib_hourly": "0.0001",
            "network_ingress_per_gib": "0.01",
            "network_egress_per_gib": "0.02",
            "region_overrides": {"us-west-2": {"compute_hourly_rate": 0.08, "ram_rate": 1}},
        },
    }
    assert tenant_problems(tmp_path, tenant("self_managed_kafka", ps=ps)) == [
        f"{SMK}plugin_settings.broker_count: must be > 0, got 0",
        f"{SMK}plugin_settings.cost_model.compute_hourly_rate: must be >= 0, got -1",
        f"{SMK}plugin_settings.cost_model.region_overrides['us-west-2']: unknown key 'ram_rate'",
        f"{SMK}plugin_settings.identity_source: static_identities required when source='static'",
        f"{SMK}plugin_settings.identity_source: unknown key 'label'",
    ]


def test_self_managed_effective_rates(tmp_path: Path) -> None:
    content = textwrap.dedent(
        """\
        tenants:
          t1:
            ecosystem: self_managed_kafka
            tenant_id: a
            plugin_settings:
              cluster_id: kafka-cluster-001
              broker_count: 3
              region: us-west-2
              cost_model:
                compute_hourly_rate: 0.10
                storage_per_gib_hourly: 0.0001
                network_ingress_per_gib: 0.01
                network_egress_per_gib: 0.02
                region_overrides: {us-west-2: {compute_hourly_rate: 0.08}}
              metrics: {url: "http://prometheus:9090"}
        """
    )
    settings = load(tmp_path, content).tenants["t1"].plugin_settings
    assert isinstance(settings, SelfManagedKafkaSettings)
    assert settings.cost_model.compute_hourly_rate == Decimal("0.10")
    assert str(settings.cost_model.storage_per_gib_hourly) == "0.0001"
    rates = settings.effective_rates()
    assert rates.compute_hourly_rate == Decimal("0.08")
    assert rates.network_egress_per_gib == Decimal("0.02")
    assert settings.cost_model.effective_rates("eu-west-1").compute_hourly_rate == Decimal("0.10")
    assert settings.identity_source.source == "prometheus"
    assert settings.resource_source.source == "prometheus"
    assert settings.discovery_window_hours == 1


def test_decimal_rate_exact(tmp_path: Path) -> None:
    content = textwrap.dedent(
        """\
        tenants:
          t1:
            ecosystem: self_managed_kafka
            tenant_id: a
            plugin_settings:
              cluster_id: c
              broker_count: 1
              cost_model: {compute_hourly_rate: 0.1, storage_per_gib_hourly: 1e-4,
                           network_ingress_per_gib: 0, network_egress_per_gib: "0.3"}
              metrics: {url: "http://prometheus:9090"}
        """
    )
    cm = load(tmp_path, content).tenants["t1"].plugin_settings.cost_model
    assert cm.compute_hourly_rate == Decimal("0.1")
    assert str(cm.compute_hourly_rate) == "0.1"
    assert cm.storage_per_gib_hourly == Decimal("0.0001")
    assert cm.network_ingress_per_gib == Decimal(0)
    assert cm.network_egress_per_gib == Decimal("0.3")


# --- generic metrics
def test_generic_rules(tmp_path: Path) -> None:
    ps = {
        "identity_source": {"source": "both"},
        "cost_types": [
            {"name": "A", "product_category": "c", "rate": 1, "cost_quantity": {"type": "fixed", "count": 1}},
            {
                "name": "A",
                "product_category": "c",
                "rate": 1,
                "cost_quantity": {"type": "storage_gib", "query": "sum(x)"},
                "allocation_strategy": "usage_ratio",
            },
        ],
    }
    assert tenant_problems(tmp_path, tenant("generic_metrics_only", ps=ps)) == [
        f"{GM}plugin_settings.identity_source: discovery_query required when source includes 'prometheus'",
        f"{GM}plugin_settings.cost_types: duplicate name 'A'",
        f"{GM}plugin_settings.cost_types[1]: allocation_query required when "
        "allocation_strategy='usage_ratio'",
        f"{GM}plugin_settings.cost_types[1]: allocation_label required when "
        "allocation_strategy='usage_ratio'",
    ]


def test_generic_cost_types_required_and_nonempty(tmp_path: Path) -> None:
    assert tenant_problems(tmp_path, tenant("generic_metrics_only", ps={"cost_types": []})) == [
        f"{GM}plugin_settings: cost_types must contain at least one item"
    ]
    assert tenant_problems(tmp_path, tenant("generic_metrics_only", ps={"cost_types": None})) == [
        f"{GM}plugin_settings.cost_types: is required"
    ]


def test_generic_static_and_cost_type_fields(tmp_path: Path) -> None:
    ps = {
        "identity_source": {"source": "static"},
        "discovery_window_hours": 200,
        "cost_types": [
            {"name": "A", "product_category": "c", "rate": -1, "cost_quantity": {"type": "fixed"}},
            {
                "name": "B",
                "rate": "x",
                "cost_quantity": {"type": "disk_gib"},
                "allocation_strategy": "random",
            },
            {
                "name": "C",
                "product_category": "c",
                "rate": 1,
                "cost_quantity": {"type": "network_gib", "count": 2},
            },
        ],
    }
    p = f"{GM}plugin_settings"
    assert tenant_problems(tmp_path, tenant("generic_metrics_only", ps=ps)) == [
        f"{p}.identity_source: static_identities required when source='static'",
        f"{p}.cost_types[0].rate: must be >= 0, got -1",
        f"{p}.cost_types[0].cost_quantity.count: is required",
        f"{p}.cost_types[1].product_category: is required",
        f"{p}.cost_types[1].rate: must be a number, got 'x'",
        f"{p}.cost_types[1].cost_quantity.type: must be one of ['fixed', 'network_gib', 'storage_gib'], "
        "got 'disk_gib'",
        f"{p}.cost_types[1].allocation_strategy: must be one of ['even_split', 'usage_ratio'], got 'random'",
        f"{p}.cost_types[2].cost_quantity.query: is required",
        f"{p}.cost_types[2].cost_quantity.count: only allowed when type is 'fixed'",
        f"{p}.discovery_window_hours: must be between 1 and 168, got 200",
    ]


def test_generic_settings_values(tmp_path: Path) -> None:
    settings = (
        load(tmp_path, {"tenants": {"t1": tenant("generic_metrics_only")}}).tenants["t1"].plugin_settings
    )
    assert isinstance(settings, GenericMetricsSettings)
    assert settings.cost_types[0].rate == Decimal("2.5")
    assert settings.cost_types[0].cost_quantity.count == 3
    assert settings.identity_source.static_identities[0].identity_id == "a"
    assert settings.identity_source.default_team == "UNASSIGNED"
    assert settings.identity_source.label == "principal"


# --- whole-file behaviour
def test_all_problems_at_once_in_file_order(tmp_path: Path) -> None:
    content = textwrap.dedent(
        """\
        features:
          max_parallel_tenants: 0
        tenants:
          first:
            ecosystem: self_managed_kafka
            tenant_id: a
            plugin_settings:
              cluster_id: c
          second:
            ecosystem: confluent_cloud
            lookback_days: 0
            plugin_settings:
              ccloud_api: {key: k, secret: s}
        """
    )
    assert problems(tmp_path, content) == [
        "features.max_parallel_tenants: must be between 1 and 64, got 0",
        "tenant 'first' (self_managed_kafka): plugin_settings.broker_count: is required",
        "tenant 'first' (self_managed_kafka): plugin_settings.cost_model: is required",
        "tenant 'first' (self_managed_kafka): plugin_settings.metrics: is required",
        "tenant 'second' (confluent_cloud): tenant_id: is required",
        "tenant 'second' (confluent_cloud): lookback_days: must be between 1 and 364, got 0",
    ]


def test_redacted_dict(tmp_path: Path) -> None:
    ps = {
        "ccloud_api": {"key": "KEY123", "secret": "SECRET456"},
        "metrics": {"url": "http://p", "auth_type": "bearer", "bearer_token": "TOKEN789"},
        "flink": [{"region_id": "us-east-1", "key": "FKEY", "secret": "FSECRET"}],
        "allocator_params": {"kafka_cku_usage_ratio": "0.6", "kafka_cku_shared_ratio": "0.4"},
    }
    t = tenant(ps=ps, storage={"connection_string": "postgresql://u:DBPASS@h/db"})
    app = load(tmp_path, {"tenants": {"t1": t}})
    data = app.redacted_dict()
    text = json.dumps(data)
    for secret in ("KEY123", "SECRET456", "TOKEN789", "FKEY", "FSECRET", "DBPASS"):
        assert secret not in text
    t1 = data["tenants"]["t1"]
    assert t1["storage"]["connection_string"] == "**********"
    assert t1["plugin_settings"]["ccloud_api"]["key"] == "**********"
    assert t1["plugin_settings"]["metrics"]["bearer_token"] == "**********"
    assert t1["partitions_start_date"] == "2025-01-01"
    assert t1["plugin_settings"]["allocator_params"]["kafka_cku_usage_ratio"] == "0.6"
    assert data["config_path"] == str(tmp_path / "config.yaml")


def test_get_config_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, {"tenants": {"t1": tenant()}})
    monkeypatch.setenv("CHARGEBACK_CONFIG_FILE", str(path))
    first = get_config()
    assert get_config() is first
    path.write_text(yaml.safe_dump({"tenants": {"t2": tenant()}}))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10_000_000))
    second = get_config()
    assert second is not first
    assert list(second.tenants) == ["t2"]


# --- examples from docs/
def test_example_config_md(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CCLOUD_KEY", "key")
    monkeypatch.setenv("CCLOUD_SECRET", "secret")
    monkeypatch.delenv("PROD_DB_URL", raising=False)
    content = """\
    logging: {level: INFO, per_module_levels: {chargeback_dagster.ccloud: DEBUG}}
    features: {refresh_interval: 3600, max_parallel_tenants: 2}
    tenants:
      prod_ccloud:
        ecosystem: confluent_cloud
        tenant_id: acme-prod
        lookback_days: 90
        cutoff_days: 5
        storage: {connection_string: "${PROD_DB_URL:-sqlite:///data/prod_ccloud.db}"}
        plugin_settings:
          ccloud_api: {key: "${CCLOUD_KEY}", secret: "${CCLOUD_SECRET}"}
          metrics: {url: "http://prometheus:9090"}
          allocator_params: {kafka_cku_usage_ratio: 0.6, kafka_cku_shared_ratio: 0.4}
          emitters:
            - {type: csv, params: {output_dir: output/daily}}
            - {type: csv, name: monthly, aggregation: monthly,
               params: {output_dir: output/monthly, filename_template: "{tenant_id}_{date}_month.csv"}}
    """
    app = load(tmp_path, content)
    t = app.tenants["prod_ccloud"]
    assert app.logging.per_module_levels == {"chargeback_dagster.ccloud": "DEBUG"}
    assert app.features.refresh_interval == 3600
    assert t.database_url == f"sqlite:///{tmp_path}/data/prod_ccloud.db"
    assert t.plugin_settings.cku_usage_ratio == Decimal("0.6")
    assert [e.name for e in t.plugin_settings.emitters] == ["csv", "monthly"]
    assert app.warnings == []


def test_example_generic_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROM_TOKEN", "tok")
    content = """\
    tenants:
      search_cluster:
        ecosystem: generic_metrics_only
        tenant_id: search
        plugin_settings:
          cluster_id: opensearch-prod
          metrics: {url: "https://prom.example.com/prometheus", auth_type: bearer,
                    bearer_token: "${PROM_TOKEN}"}
          identity_source:
            source: prometheus
            label: team
            discovery_query: 'group by (team) (search_requests_total)'
          cost_types:
            - {name: NODE_HOURS, product_category: compute, rate: 2.50,
               cost_quantity: {type: fixed, count: 3}}
            - {name: STORAGE, product_category: storage, rate: 0.0001,
               cost_quantity: {type: storage_gib, query: 'sum(index_store_size_bytes)'},
               allocation_strategy: usage_ratio,
               allocation_query: 'sum by (team) (index_store_size_bytes)', allocation_label: team}
          emitters: [{type: csv, params: {output_dir: output}}]
    """
    settings = load(tmp_path, content).tenants["search_cluster"].plugin_settings
    assert isinstance(settings, GenericMetricsSettings)
    assert settings.cost_types[0].rate == Decimal("2.50")
    assert str(settings.cost_types[1].rate) == "0.0001"
    assert settings.metrics.bearer_token.get_secret_value() == "tok"
    assert settings.identity_source.label == "team"


def test_example_self_managed_kafka(tmp_path: Path) -> None:
    content = """\
    tenants:
      onprem_kafka:
        ecosystem: self_managed_kafka
        tenant_id: onprem
        lookback_days: 30
        cutoff_days: 3
        plugin_settings:
          cluster_id: kafka-cluster-001
          broker_count: 3
          region: us-west-2
          cost_model:
            compute_hourly_rate: 0.50
            storage_per_gib_hourly: 0.000125
            network_ingress_per_gib: 0.01
            network_egress_per_gib: 0.09
            region_overrides: {us-west-2: {compute_hourly_rate: 0.45}}
          identity_source:
            source: both
            principal_to_team: {"User:orders-svc": orders}
            static_identities: [{identity_id: "User:batch", identity_type: principal, team: data}]
          resource_source: {source: prometheus}
          metrics: {url: "http://prometheus:9090"}
          emitters: [{type: csv, params: {output_dir: output}}]
    """
    settings = load(tmp_path, content).tenants["onprem_kafka"].plugin_settings
    assert isinstance(settings, SelfManagedKafkaSettings)
    assert settings.effective_rates().compute_hourly_rate == Decimal("0.45")
    assert settings.cost_model.storage_per_gib_hourly == Decimal("0.000125")
    assert settings.identity_source.principal_to_team == {"User:orders-svc": "orders"}
    assert settings.identity_source.static_identities[0].team == "data"


def test_tenant_body_and_list_types(tmp_path: Path) -> None:
    content = {
        "tenants": {
            "empty": None,
            "t1": tenant(ps={"emitters": {"type": "csv"}, "flink": "us-east-1"}),
        }
    }
    assert problems(tmp_path, content) == [
        "tenant 'empty': must be a mapping, got 'null'",
        f"{CC}plugin_settings.emitters: must be a list, got '{{'type': 'csv'}}'",
        f"{CC}plugin_settings.flink: must be a list, got 'us-east-1'",
    ]


def test_interpolated_decimal_rate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CB_RATE", "0.1")
    ps = {
        "cost_model": {**BASE_PLUGIN["self_managed_kafka"]["cost_model"], "compute_hourly_rate": "${CB_RATE}"}
    }
    settings = (
        load(tmp_path, {"tenants": {"t1": tenant("self_managed_kafka", ps=ps)}}).tenants["t1"].plugin_settings
    )
    assert settings.cost_model.compute_hourly_rate == Decimal("0.1")


# --- hostile input (issue 12 §3): each ends fast with one line naming the file, never a traceback
def _alias_bomb(levels: int) -> str:
    """'Billion laughs': each level is a list of ten aliases of the level before (10**levels strings)."""
    lines = ["x-bomb:", "  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]")
    return "\n".join(lines) + "\n"


HOSTILE: dict[str, tuple[bytes, str]] = {
    "alias_bomb": (
        _alias_bomb(6).encode(),
        "Malformed YAML in '{path}': more than 100000 nodes with aliases expanded at line 6, column 47",
    ),
    "deep_flow": (
        b"tenants: " + b"[" * 5000 + b"]" * 5000 + b"\n",
        "Malformed YAML in '{path}': nesting deeper than 100 levels at line 1, column 109",
    ),
    "deep_block": (
        "".join(f"{'  ' * i}k{i}:\n" for i in range(5000)).encode(),
        "Malformed YAML in '{path}': nesting deeper than 100 levels at line 100, column 199",
    ),
    "not_utf8": (
        "tenants: {}\n# caf\xe9\n".encode("latin-1"),
        "Cannot read config file '{path}': not valid UTF-8 (byte 0xe9 at offset 17)",
    ),
    "long_int": (
        b"features:\n  refresh_interval: " + b"9" * 5000 + b"\n",
        "Malformed YAML in '{path}': integer with more than 100 digits at line 2, column 21",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_yaml_fails_fast_with_one_line(tmp_path: Path, case: str) -> None:
    content, expected = HOSTILE[case]
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert time.monotonic() - started < 1.0
    assert str(info.value) == expected.format(path=path)


def _tree(value: Any) -> Any:
    """A parsed document with the source lines the loader recorded, for comparing two loaders."""
    if isinstance(value, dict):
        return ("map", value.line, value.key_lines, {k: _tree(v) for k, v in value.items()})
    if isinstance(value, list):
        return ("seq", value.line, value.item_lines, [_tree(v) for v in value])
    return (type(value).__name__, value)


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML without libyaml: only the pure loader")
@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").glob("*.yaml")))
def test_libyaml_loader_reads_what_the_pure_loader_reads(example: str) -> None:
    """The fast loader (libyaml events) gives the same values, types (Decimal, str dates) and line numbers."""
    text = (ROOT / "examples" / example).read_text()
    assert _tree(yaml.load(text, Loader=loader._FastLoader)) == _tree(yaml.load(text, Loader=loader._Loader))


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML without libyaml: only the pure loader")
@pytest.mark.parametrize("case", sorted(set(HOSTILE) - {"not_utf8"}) + ["deep_million"])
def test_libyaml_loader_stops_hostile_yaml_itself(case: str) -> None:
    """Hostile input stops in the libyaml pass with the pure loader's message; a million nested brackets
    would crash libyaml's own (recursive, C) composer, which is never used."""
    text = "x: " + "[" * 1_000_000 + "]" * 1_000_000 if case == "deep_million" else HOSTILE[case][0].decode()
    messages = []
    for cls in (loader._FastLoader, loader._Loader):
        with pytest.raises(yaml.MarkedYAMLError) as info:
            yaml.load(text, Loader=cls)
        assert type(info.value).__name__ == "_LimitError"
        messages.append(loader._yaml_problem(info.value))
    assert messages[0] == messages[1]


def test_quoted_long_integer_is_a_type_error(tmp_path: Path) -> None:
    started = time.monotonic()
    lines = problems(tmp_path, {"features": {"refresh_interval": "9" * 5000}})
    assert time.monotonic() - started < 1.0
    assert lines == [
        "features.refresh_interval: must be an integer, got '9999999999999999999999999999999999999999... "
        "(5000 characters)'"
    ]


@pytest.mark.parametrize(
    ("rate", "shown"),
    [
        ("1e999999999", "1e999999999"),  # YAML 1.1 reads it as text; the schema coerces it to a Decimal
        ("1.0e+999999999", "1.0E+999999999"),  # a YAML float
        ("'" + "9" * 5000 + "'", "9999999999999999999999999999999999999999... (5000 characters)"),
        ("922337203685477.5808", "922337203685477.5808"),  # one unit above the largest storable amount
    ],
    ids=["1e999999999", "float-1e999999999", "5000-digit-string", "max-plus-one-unit"],
)
def test_amount_that_cannot_be_stored_is_rejected(tmp_path: Path, rate: str, shown: str) -> None:
    cost_type = dict(BASE_PLUGIN["generic_metrics_only"]["cost_types"][0], rate="RATE")
    content = yaml.safe_dump(
        {"tenants": {"t1": tenant("generic_metrics_only", ps={"cost_types": [cost_type]})}}
    )
    assert problems(tmp_path, content.replace("RATE", rate)) == [
        f"{GM}plugin_settings.cost_types[0].rate: must be a number between -922337203685477.5807 and "
        f"922337203685477.5807, got '{shown}'"
    ]


def test_largest_storable_amount_is_the_bound(tmp_path: Path) -> None:
    """The bound is exact: (2**63 - 1) units of 0.0001 load; every configured number above is refused."""
    cost_type = dict(BASE_PLUGIN["generic_metrics_only"]["cost_types"][0], rate="922337203685477.5807")
    app = load(tmp_path, {"tenants": {"t1": tenant("generic_metrics_only", ps={"cost_types": [cost_type]})}})
    assert app.tenants["t1"].plugin_settings.cost_types[0].rate == Decimal("922337203685477.5807")
    smk = tenant("self_managed_kafka")
    smk["plugin_settings"]["cost_model"]["compute_hourly_rate"] = "-922337203685477.5808"
    assert tenant_problems(tmp_path, smk) == [
        f"{SMK}plugin_settings.cost_model.compute_hourly_rate: must be a number between "
        "-922337203685477.5807 and 922337203685477.5807, got '-922337203685477.5808'"
    ]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql+psycopg://u:hunter2@db:99999/x", "port must be a number between 1 and 65535, got 99999"),
        ("postgresql+psycopg://u:hunter2@db:0/x", "port must be a number between 1 and 65535, got 0"),
        ("postgresql://u:hunter2@db:54x2/x", "port must be a number between 1 and 65535"),
    ],
)
def test_postgresql_url_with_bad_port(tmp_path: Path, url: str, problem: str) -> None:
    assert tenant_problems(tmp_path, tenant(storage={"connection_string": url})) == [
        f"{CC}storage.connection_string: invalid database URL: {problem}"
    ]


@pytest.mark.parametrize(
    ("first", "second", "shown"), [("True", "'True'", "True"), ("~", "'None'", "None"), ("1", "'1'", "1")]
)
def test_tenant_keys_equal_as_text_are_duplicates(
    tmp_path: Path, first: str, second: str, shown: str
) -> None:
    path = write(tmp_path, f"tenants:\n  {first}: {{}}\n  {second}: {{}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"Duplicate key '{shown}' at line 3 in '{path}'"


@pytest.mark.parametrize(
    "tenant_id", ["../../x", "a/b", "/abs", "a\\b", "..", "a..b", "tab\there", "nul\x00", "line\nbreak"]
)
def test_tenant_id_unsafe_in_file_names(tmp_path: Path, tenant_id: str) -> None:
    assert tenant_problems(tmp_path, tenant(tenant_id=tenant_id)) == [
        f"{CC}tenant_id: must not contain '/', '\\', '..' or control characters, got {tenant_id!r}"
    ]


def test_yaml_error_in_secret_field_does_not_echo_secret(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'tenants:\n  t1:\n    plugin_settings:\n      ccloud_api: {key: k, secret: "hunter2-secret" x: 1}\n',
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"Malformed YAML in '{path}': while parsing a flow mapping; expected ',' or '}}', but got '<scalar>' "
        "at line 4, column 53"
    )
