"""The shipped deployment files: dagster.yaml, deploy/dagster-postgres.yaml, workspace files,
docker-compose.yml, Dockerfile. (Run launchers beyond one machine: test_deployment_launchers.py.)"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.instance.config import dagster_instance_config
from sqlalchemy.engine import make_url

from chargeback_dagster import cli
from chargeback_dagster.config import load_config
from chargeback_dagster.defs.build import build_definitions

REPO = Path(__file__).resolve().parents[1]
PG_ENV = ("DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_DB")


def instance_env(monkeypatch, url: str | None = None) -> None:
    parsed = make_url(url) if url else None
    values = {
        "DAGSTER_PG_USER": (parsed.username if parsed else None) or "postgres",
        "DAGSTER_PG_PASSWORD": (parsed.password if parsed else None) or "unused",
        "DAGSTER_PG_HOST": (parsed.host if parsed else None) or "127.0.0.1",
        "DAGSTER_PG_PORT": str((parsed.port if parsed else None) or 5432),
        "DAGSTER_PG_DB": (parsed.database if parsed else None) or "dagster",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)


def test_dagster_yaml_is_a_valid_instance_config(tmp_path, monkeypatch):
    instance_env(monkeypatch)
    shutil.copy(REPO / "deploy" / "dagster-postgres.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    db = config["storage"]["postgres"]["postgres_db"]
    assert db["scheme"] == "postgresql+psycopg2"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["concurrency"]["runs"]["tag_concurrency_limits"] == [
        {"key": "chargeback/tenant", "value": {"applyLimitPerUniqueValue": True}, "limit": 1},
        {"key": "chargeback/pipeline", "value": "tenant", "limit": 4},
    ]
    assert config["run_monitoring"]["enabled"] is True
    assert config["python_logs"]["managed_python_loggers"] == ["chargeback_dagster"]
    assert config["telemetry"]["enabled"] is False


@pytest.mark.postgres
def test_dagster_yaml_opens_a_postgres_instance(tmp_path, monkeypatch, make_pg_database):
    instance_env(monkeypatch, make_pg_database())
    shutil.copy(REPO / "deploy" / "dagster-postgres.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.run_monitoring_enabled
        assert instance.get_concurrency_config().run_queue_config.tag_concurrency_limits[0]["limit"] == 1


def test_top_level_dagster_yaml_is_a_local_sqlite_instance(tmp_path, monkeypatch):
    """Dagster reads ./dagster.yaml whenever DAGSTER_HOME is unset: the top-level one needs no server and no
    environment variables, and has the same run queue limits as the PostgreSQL one."""
    for name in (*PG_ENV, "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.run_monitoring_enabled
        # many tenants' refresh sensors tick in parallel (docs/operations.md §3)
        assert instance.get_settings("sensors") == {"use_threads": True, "num_workers": 4}
    local = yaml.safe_load((REPO / "dagster.yaml").read_text())
    production = yaml.safe_load((REPO / "deploy" / "dagster-postgres.yaml").read_text())
    assert "storage" not in local and "{env:" not in (REPO / "dagster.yaml").read_text()
    for key in ("concurrency", "python_logs", "telemetry", "run_monitoring", "sensors"):
        assert local[key] == production[key], key
    assert local["telemetry"] == {"enabled": False}


def test_instance_config_command_matches_the_shipped_block(tmp_path, capsys):
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump({"features": {"max_parallel_tenants": 4}, "tenants": {}}))
    assert cli.main(["instance-config", "--config", str(config_path)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    shipped = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert printed["concurrency"] == shipped["concurrency"]
    assert printed["run_monitoring"]["enabled"] == shipped["run_monitoring"]["enabled"]


def test_workspace_files_point_at_the_code_location():
    local = yaml.safe_load((REPO / "workspace.yaml").read_text())["load_from"][0]["python_module"]
    assert local == {"module_name": "chargeback_dagster.definitions", "location_name": "chargeback_dagster"}
    grpc = yaml.safe_load((REPO / "docker" / "workspace.yaml").read_text())["load_from"][0]["grpc_server"]
    assert grpc == {"host": "codeserver", "port": 4000, "location_name": "chargeback_dagster"}
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    command = compose["services"]["codeserver"]["command"]
    assert command[command.index("-m") + 1] == "chargeback_dagster.definitions"
    assert command[command.index("-p") + 1] == "4000"
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'module_name = "chargeback_dagster.definitions"' in pyproject


def test_compose_sets_everything_dagster_yaml_reads():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    needed = set(re.findall(r"\{env: (\w+)\}", (REPO / "docker" / "dagster.yaml").read_text()))
    assert needed == set(PG_ENV)
    assert needed == set(
        re.findall(r"\{env: (\w+)\}", (REPO / "deploy" / "dagster-postgres.yaml").read_text())
    )
    for name in ("codeserver", "webserver", "daemon"):
        service = compose["services"][name]
        assert needed | {"DAGSTER_HOME", "CHARGEBACK_CONFIG_FILE"} <= set(service["environment"]), name
        assert service["image"] == "chargeback-dagster:latest"
    assert {"postgres", "tenant-databases", "codeserver", "webserver", "daemon"} == set(compose["services"])
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY docker/dagster.yaml ${DAGSTER_HOME}/dagster.yaml" in dockerfile
    assert "COPY docker/workspace.yaml ${DAGSTER_HOME}/workspace.yaml" in dockerfile


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_config_accepts_the_file():
    # validates the file without a Docker engine (Debian docker-compose 1.29)
    result = subprocess.run(
        ["docker-compose", "-f", str(REPO / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_definitions_load_completely(tmp_path):
    """Every job, sensor and schedule the code location declares passes Dagster's repository checks."""
    tenant = {
        "ecosystem": "generic_metrics_only",
        "tenant_id": "t1",
        "storage": {"connection_string": "sqlite:///data/a.db"},
        "plugin_settings": {
            "cluster_id": "c1",
            "metrics": {"url": "http://127.0.0.1:9"},
            "identity_source": {
                "source": "static",
                "static_identities": [{"identity_id": "u", "identity_type": "user"}],
            },
            "cost_types": [
                {
                    "name": "x",
                    "product_category": "c",
                    "rate": 1,
                    "cost_quantity": {"type": "fixed", "count": 1},
                }
            ],
        },
    }
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "tenants": {
                    "alpha": tenant,
                    "beta": {**tenant, "storage": {"connection_string": "sqlite:///data/b.db"}},
                }
            }
        )
    )
    repo = build_definitions(load_config(path)).get_repository_def()
    repo.load_all_definitions()
    jobs = {j.name for j in repo.get_all_jobs()}
    assert {"alpha_pipeline", "alpha_retention", "beta_pipeline", "beta_retention", "resume_tenant"} <= jobs
    assert {s.name for s in repo.sensor_defs} == {
        "alpha_refresh",
        "beta_refresh",
        "monthly_report_automation",
        "tenant_run_failure_sensor",
        "tenant_run_success_sensor",
    }
    assert {s.name for s in repo.schedule_defs} == {"alpha_retention_schedule", "beta_retention_schedule"}
