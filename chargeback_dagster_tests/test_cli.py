import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

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


# --- issue 12 §3 and §5: run as a user does (a subprocess), so exit codes and tracebacks are real
REPO = Path(__file__).resolve().parent.parent


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHARGEBACK_", "DAGSTER_HOME"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env | extra


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chargeback_dagster.cli", *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=timeout,
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # released again: nothing listens there


def billion_laughs() -> str:
    """10**9 strings once every alias is expanded."""
    lines = ["x-bomb:", "  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 9):
        lines.append(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]")
    return "\n".join(lines) + "\n"


HOSTILE_FILES = {
    "alias_bomb": (
        billion_laughs().encode(),
        "Malformed YAML in '{path}': more than 100000 nodes with aliases expanded at line 6, column 47",
    ),
    "deep": (
        b"tenants: " + b"[" * 5000 + b"]" * 5000 + b"\n",
        "Malformed YAML in '{path}': nesting deeper than 100 levels at line 1, column 109",
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


@pytest.mark.parametrize("command", ["validate", "migrate", "status"])
@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_hostile_config_one_line_no_traceback(tmp_path, command, case):
    content, expected = HOSTILE_FILES[case]
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    result = run_cli(command, "--config", str(path), timeout=20)
    assert (result.returncode, result.stdout, result.stderr) == (1, expected.format(path=path) + "\n", "")


@pytest.mark.parametrize("case", ["alias_bomb", "deep"])
def test_code_location_fails_to_load_with_the_config_error(tmp_path, case):
    content, expected = HOSTILE_FILES[case]
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    result = subprocess.run(
        [sys.executable, "-c", "import chargeback_dagster.definitions"],
        capture_output=True,
        text=True,
        env=cli_env(CHARGEBACK_CONFIG_FILE=str(path)),
        timeout=60,
    )
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == "chargeback_dagster.config.loader.ConfigError: " + expected.format(path=path)


def ccloud_tenant(db_url: str, base_url: str, secret: str, prometheus_url: str) -> dict:
    return {
        "ecosystem": "confluent_cloud",
        "tenant_id": "cc",
        "storage": {"connection_string": db_url},
        "plugin_settings": {
            "ccloud_api": {"key": "CLI-KEY", "secret": secret, "base_url": base_url},
            "metrics": {"url": prometheus_url},
        },
    }


def kafka_tenant(db_url: str, bootstrap: str, prometheus_url: str) -> dict:
    return {
        "ecosystem": "self_managed_kafka",
        "tenant_id": "onprem",
        "storage": {"connection_string": db_url},
        "plugin_settings": {
            "cluster_id": "kafka-1",
            "broker_count": 3,
            "cost_model": {
                "compute_hourly_rate": 0.5,
                "storage_per_gib_hourly": 0.1,
                "network_ingress_per_gib": 0.01,
                "network_egress_per_gib": 0.09,
            },
            "identity_source": {
                "source": "static",
                "static_identities": [{"identity_id": "User:a", "identity_type": "principal"}],
            },
            "resource_source": {"source": "admin_api", "bootstrap_servers": bootstrap},
            "metrics": {"url": prometheus_url},
        },
    }


@pytest.fixture(scope="module")
def remotes(local_prometheus_factory):
    """A real Prometheus, the Confluent Cloud simulator and a librdkafka mock Kafka cluster."""
    from confluent_kafka import Producer

    from chargeback_dagster.devtools.ccloud_simulator import CCloudSimulator, OrgSpec, SimulatedOrg

    prometheus = local_prometheus_factory(None)
    producer = Producer({"test.mock.num.brokers": 1, "log_level": 3})
    broker = next(iter(producer.list_topics(timeout=10).brokers.values()))
    org = SimulatedOrg(OrgSpec(start_date=date(2026, 1, 1), days=1, seed=3))
    with CCloudSimulator(org, key="CLI-KEY", secret="cli-secret") as sim:
        yield SimpleNamespace(
            prometheus=prometheus.url, ccloud=sim.url, bootstrap=f"{broker.host}:{broker.port}"
        )
    producer.flush(1)


def test_check_connections_reaches_every_remote(tmp_path, remotes, make_pg_database):
    config = tmp_path / "c.yaml"
    tenants = {
        "cc": ccloud_tenant("sqlite:///data/cc.db", remotes.ccloud, "cli-secret", remotes.prometheus),
        "kafka": kafka_tenant(make_pg_database(), remotes.bootstrap, remotes.prometheus),
    }
    config.write_text(yaml.safe_dump({"tenants": tenants}, sort_keys=False))
    result = run_cli("validate", "--check-connections", "--config", str(config))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        "tenant 'cc': database: OK",
        "tenant 'cc': Confluent Cloud API: OK",
        "tenant 'cc': Prometheus: OK",
        "tenant 'kafka': database: OK",
        "tenant 'kafka': Prometheus: OK",
        "tenant 'kafka': Kafka bootstrap servers: OK",
        "Config is valid.",
    ]
    assert not (tmp_path / "data" / "cc.db").exists()  # checking never creates a tenant database


def test_check_connections_reports_each_unreachable_remote(tmp_path, remotes):
    port = closed_port()
    closed = f"http://127.0.0.1:{port}"
    config = tmp_path / "c.yaml"
    tenants = {
        "down": ccloud_tenant(f"postgresql+psycopg://postgres@127.0.0.1:{port}/x", closed, "s", closed),
        "badkey": ccloud_tenant(
            "sqlite:///data/badkey.db", remotes.ccloud, "wrong-secret", remotes.prometheus
        ),
        "kafka": kafka_tenant("sqlite:///data/kafka.db", f"127.0.0.1:{port}", remotes.prometheus),
    }
    config.write_text(yaml.safe_dump({"tenants": tenants}, sort_keys=False))
    started = time.monotonic()
    result = run_cli("validate", "--check-connections", "--config", str(config))
    assert time.monotonic() - started < 15  # 5 s per remote at most; refused connections answer at once
    assert (result.returncode, result.stderr) == (1, "")
    lines = result.stdout.splitlines()
    assert lines[:8] == [
        f"tenant 'down': cannot reach database: connection failed: connection to server at \"127.0.0.1\", "
        f"port {port} failed: Connection refused",
        "tenant 'down': cannot reach Confluent Cloud API: GET /org/v2/environments failed after 1 attempts: "
        "[Errno 111] Connection refused",
        "tenant 'down': cannot reach Prometheus: [Errno 111] Connection refused",
        "tenant 'badkey': database: OK",
        "tenant 'badkey': cannot reach Confluent Cloud API: Confluent Cloud API rejected credentials "
        "(HTTP 401) for GET /org/v2/environments; "
        "check ccloud_api.key/secret and the service account's roles",
        "tenant 'badkey': Prometheus: OK",
        "tenant 'kafka': database: OK",
        "tenant 'kafka': Prometheus: OK",
    ]
    assert lines[8].startswith(
        "tenant 'kafka': cannot reach Kafka bootstrap servers: Failed to get metadata: "
    )
    assert f"127.0.0.1:{port}" in lines[8] and "Connection refused" in lines[8]
    assert len(lines) == 9  # no "Config is valid."


def generic_config(tmp_path: Path, db_url: str | None = None, extra: str = "") -> Path:
    text = (
        (EXAMPLES / "generic.yaml")
        .read_text()
        .replace("    cutoff_days: 2\n", f"    cutoff_days: 2\n{extra}")
    )
    if db_url is not None:
        text = text.replace("${SEARCH_DB_URL:-sqlite:///data/search_cluster.db}", db_url)
    config = tmp_path / "c.yaml"
    config.write_text(text)
    return config


def test_migrate_with_invalid_config_prints_the_problem(tmp_path):
    config = generic_config(tmp_path, extra="    retention_days: 0\n")
    result = run_cli("migrate", "--config", str(config))
    assert (result.returncode, result.stderr) == (1, "")
    assert result.stdout.splitlines() == [
        "Config validation failed:",
        "tenant 'search_cluster' (generic_metrics_only): retention_days: must be between 1 and 730, got 0",
    ]


@pytest.mark.parametrize(("command", "verb"), [("status", "open"), ("migrate", "migrate")])
def test_database_down_is_one_line_naming_the_tenant(tmp_path, command, verb):
    port = closed_port()
    config = generic_config(tmp_path, f"postgresql+psycopg://postgres@127.0.0.1:{port}/x")
    result = run_cli(command, "--config", str(config))
    assert (result.returncode, result.stderr) == (1, "")
    assert result.stdout == (
        f"tenant 'search_cluster': cannot {verb} database: connection failed: connection to server at "
        f'"127.0.0.1", port {port} failed: Connection refused\n'
    )


def test_version():
    result = run_cli("--version")
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"chargeback-dagster {importlib.metadata.version('chargeback-dagster')}\n",
        "",
    )


def test_closed_pipe_gives_no_traceback(tmp_path):
    config = generic_config(tmp_path)
    reader = subprocess.Popen(
        [sys.executable, "-m", "chargeback_dagster.cli", "show-config", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    reader.stdout.close()  # like `| head` exiting before the command writes
    stderr = reader.stderr.read().decode()
    assert (reader.wait(timeout=30), stderr) == (1, "")


@pytest.mark.parametrize("command", ["status", "migrate"])
def test_unknown_tenant_lists_configured_tenants(tmp_path, command):
    result = run_cli(command, "--tenant", "nope", "--config", str(generic_config(tmp_path)))
    assert (result.returncode, result.stdout, result.stderr) == (
        1,
        "Unknown tenant 'nope'; configured tenants: search_cluster\n",
        "",
    )
