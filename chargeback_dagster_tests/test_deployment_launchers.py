"""Beyond one machine: docker/dagster.yaml + docker-compose.yml (DockerRunLauncher) and
deploy/helm/values.yaml (K8sRunLauncher), validated statically through Dagster's own config schemas
(docs/deployment.md).

No Docker engine, Kubernetes cluster or Helm binary is needed: the Docker instance yaml is loaded the way
Dagster loads an instance (top-level schema, then each configurable class from its own schema); the Helm
values' instance sections are rendered the way the chart's instance ConfigMap template renders them and go
through the same schemas (dagster-k8s's K8sRunLauncher, the QueuedRunCoordinator); Kubernetes objects in the
values are built with dagster-k8s's own model parser, which rejects unknown keys.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import dagster as dg
import docker.models.containers
import pytest
import yaml
from dagster._config import process_config
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from dagster._core.launcher import RunLauncher
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._serdes.config_class import ConfigurableClassData
from dagster_docker import DockerRunLauncher
from dagster_k8s import K8sRunLauncher
from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict
from kubernetes import client as k8s
from kubernetes.utils import parse_quantity
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url

from chargeback_dagster import cli
from chargeback_dagster.config import load_config

REPO = Path(__file__).resolve().parents[1]
PG_ENV = ("DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_DB")
RELEASE_NAMESPACE = "chargeback"


def read_yaml(relative: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / relative).read_text())


def pg_env(monkeypatch, url: str | None = None) -> None:
    parsed = make_url(url) if url else None
    monkeypatch.setenv("DAGSTER_PG_USER", (parsed.username if parsed else None) or "postgres")
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", (parsed.password if parsed else None) or "unused")
    monkeypatch.setenv("DAGSTER_PG_HOST", (parsed.host if parsed else None) or "127.0.0.1")
    monkeypatch.setenv("DAGSTER_PG_PORT", str((parsed.port if parsed else None) or 5432))
    monkeypatch.setenv("DAGSTER_PG_DB", (parsed.database if parsed else None) or "dagster")


# ---------------------------------------------------------------- Docker


# container_kwargs is free-form to Dagster (Permissive) and handed to docker-py's containers.create: these
# are the keyword arguments that accepts, plus the two the launcher itself takes out.
DOCKER_CREATE_KWARGS = (
    set(docker.models.containers.RUN_CREATE_KWARGS)
    | set(docker.models.containers.RUN_HOST_CONFIG_KWARGS)
    | {"labels", "stop_timeout"}
)


def docker_instance_problems(instance: dict[str, Any], folder: Path) -> list[str]:
    """Every reason Dagster (or docker-py, for container_kwargs) would refuse this instance config."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dagster.yaml").write_text(yaml.safe_dump(instance))
    try:
        config, _ = dagster_instance_config(str(folder))
    except DagsterInvalidConfigError as exc:
        return [str(exc)]
    launcher_data = config["run_launcher"]
    try:
        ConfigurableClassData(
            launcher_data["module"], launcher_data["class"], yaml.safe_dump(launcher_data["config"])
        ).rehydrate(RunLauncher)
    except Exception as exc:  # noqa: BLE001 - the launcher's own checks raise plain Exceptions
        return [str(exc)]
    unknown = set(launcher_data["config"].get("container_kwargs", {})) - DOCKER_CREATE_KWARGS
    return [f"container_kwargs: docker-py does not take {sorted(unknown)}"] if unknown else []


def docker_launcher() -> DockerRunLauncher:
    data = read_yaml("docker/dagster.yaml")["run_launcher"]
    return ConfigurableClassData(data["module"], data["class"], yaml.safe_dump(data["config"])).rehydrate(
        DockerRunLauncher
    )


def resolved_compose() -> dict[str, Any]:
    """The compose file as docker-compose itself resolves it (anchors, merge keys, ${X:-default})."""
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose not installed")
    result = subprocess.run(
        ["docker-compose", "-f", str(REPO / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={
            k: v
            for k, v in os.environ.items()
            if k not in ("DAGSTER_PG_PASSWORD", "CHARGEBACK_TENANT_DATABASES")
        },
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_docker_instance_yaml_is_valid_with_its_docker_run_launcher(tmp_path, monkeypatch):
    pg_env(monkeypatch)
    assert docker_instance_problems(read_yaml("docker/dagster.yaml"), tmp_path) == []
    launcher = docker_launcher()
    assert launcher.networks == ["chargeback"]
    assert launcher.env_vars == [*PG_ENV, "CHARGEBACK_CONFIG_FILE", "CHARGEBACK_PG_URL"]
    assert launcher.container_kwargs == {
        "volumes_from": ["chargeback-codeserver"],
        "mem_limit": "1g",
        "auto_remove": True,
    }
    # the image is the code server's (DAGSTER_CURRENT_IMAGE), not fixed here
    assert launcher.image is None


def test_docker_instance_yaml_is_the_postgres_one_plus_the_launcher():
    """docker/dagster.yaml keeps the tenant limits, run monitoring and logging of the single-host file."""
    docker_yaml = read_yaml("docker/dagster.yaml")
    assert docker_yaml.pop("run_launcher")["class"] == "DockerRunLauncher"
    assert docker_yaml == read_yaml("deploy/dagster-postgres.yaml")
    assert docker_yaml["concurrency"]["runs"]["tag_concurrency_limits"] == [
        {"key": "chargeback/tenant", "value": {"applyLimitPerUniqueValue": True}, "limit": 1},
        {"key": "chargeback/pipeline", "value": "tenant", "limit": 4},
    ]
    assert docker_yaml["run_monitoring"] == {"enabled": True, "poll_interval_seconds": 30}


@pytest.mark.postgres
def test_docker_instance_yaml_opens_an_instance_with_the_docker_launcher(
    tmp_path, monkeypatch, make_pg_database
):
    pg_env(monkeypatch, make_pg_database())
    shutil.copy(REPO / "docker" / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_launcher) is DockerRunLauncher
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.run_monitoring_enabled
        limits = instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        assert [limit["limit"] for limit in limits] == [1, 4]


def test_compose_file_fits_the_docker_run_launcher():
    compose = resolved_compose()
    services = compose["services"]
    launcher = docker_launcher()
    codeserver, daemon, webserver = services["codeserver"], services["daemon"], services["webserver"]
    # run containers join the compose network under its fixed name and take the code server's mounts
    assert compose["networks"]["default"]["name"] == launcher.networks[0]
    assert codeserver["container_name"] == launcher.container_kwargs["volumes_from"][0]
    assert {v.split(":")[1] for v in codeserver["volumes"]} == {
        "/opt/chargeback/config",
        "/opt/chargeback/output",
        "/opt/chargeback/data",
        "/opt/dagster/home/storage",
    }
    # ... in the code server's image, and with the daemon's values of every variable they are given
    assert codeserver["environment"]["DAGSTER_CURRENT_IMAGE"] == codeserver["image"] == daemon["image"]
    assert set(launcher.env_vars) <= set(daemon["environment"])
    assert daemon["environment"]["CHARGEBACK_PG_URL"] == "postgresql+psycopg://dagster:dagster@postgres:5432"
    # the daemon launches and health-checks run containers, the webserver stops them
    for service in (daemon, webserver):
        assert "/var/run/docker.sock:/var/run/docker.sock:rw" in service["volumes"]
    assert "/var/run/docker.sock:/var/run/docker.sock:rw" not in codeserver["volumes"]
    # tenant databases exist before the code location loads
    assert codeserver["depends_on"]["tenant-databases"] == {"condition": "service_completed_successfully"}
    assert services["tenant-databases"]["environment"]["CHARGEBACK_TENANT_DATABASES"] == "chargeback_search"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        # a misspelt launcher key: the DockerRunLauncher's own config schema
        (
            lambda c: c["run_launcher"]["config"].update(env_var=["X"]),
            'Received unexpected config entry "env_var"',
        ),
        # a misspelt top-level key: Dagster's instance schema
        (
            lambda c: c.update(run_launchr=c.pop("run_launcher")),
            'Received unexpected config entry "run_launchr"',
        ),
        # container_kwargs the launcher forbids
        (
            lambda c: c["run_launcher"]["config"]["container_kwargs"].update(environment={"A": "1"}),
            "'environment' cannot be used in 'container_kwargs'",
        ),
        # container_kwargs docker-py does not know
        (
            lambda c: c["run_launcher"]["config"]["container_kwargs"].update(
                volume_from=c["run_launcher"]["config"]["container_kwargs"].pop("volumes_from")
            ),
            "container_kwargs: docker-py does not take ['volume_from']",
        ),
    ],
    ids=["launcher-key", "top-level-key", "forbidden-kwarg", "unknown-kwarg"],
)
def test_docker_instance_validation_rejects_wrong_keys(tmp_path, monkeypatch, edit, expected):
    pg_env(monkeypatch)
    instance = read_yaml("docker/dagster.yaml")
    edit(instance)
    problems = docker_instance_problems(instance, tmp_path)
    assert len(problems) == 1 and expected in problems[0], problems


@pytest.mark.postgres
def test_compose_tenant_databases_and_example_config(tmp_path, monkeypatch, pg_base_url, make_pg_database):
    """docker/create-tenant-databases.sh creates the databases a compose config names (once; a second `up`
    leaves them), and docker/chargeback.example.yaml's tenant store migrates in the database it names."""
    if shutil.which("psql") is None:
        pytest.skip("psql not installed")
    base = make_url(pg_base_url)
    name = make_url(make_pg_database()).database  # a unique name the session drops again
    admin = create_engine(pg_base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE "{name}"')  # the script is to create it
    env = {
        **os.environ,
        "PGHOST": base.host or "127.0.0.1",
        "PGPORT": str(base.port or 5432),
        "PGUSER": base.username or "postgres",
        "PGPASSWORD": base.password or "",
        "PGDATABASE": base.database or "postgres",
        "CHARGEBACK_TENANT_DATABASES": name,
    }
    script = str(REPO / "docker" / "create-tenant-databases.sh")
    first = subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=60)
    second = subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=60)
    assert (first.returncode, first.stdout) == (0, f"tenant database {name}: created\n"), first.stderr
    assert (second.returncode, second.stdout) == (0, f"tenant database {name}: exists\n"), second.stderr
    bad = subprocess.run(
        ["sh", script],
        env={**env, "CHARGEBACK_TENANT_DATABASES": "ok_db,Bad-Name"},
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "tenant database name 'Bad-Name'" in bad.stderr
    with admin.connect() as conn:
        assert conn.exec_driver_sql("SELECT 1 FROM pg_database WHERE datname = 'ok_db'").first() is None
    admin.dispose()

    # the example's tenant database is the compose default; here it is the database just created
    example = (REPO / "docker" / "chargeback.example.yaml").read_text()
    assert '"${CHARGEBACK_PG_URL}/chargeback_search"' in example
    config = tmp_path / "chargeback.yaml"
    config.write_text(example.replace("/chargeback_search", f"/{name}"))
    server = base.render_as_string(hide_password=False).rsplit("/", 1)[0]  # the URL without its database
    monkeypatch.setenv("CHARGEBACK_PG_URL", server)
    assert cli.main(["migrate", "--config", str(config)]) == 0
    tenant_engine = create_engine(base.set(database=name))
    try:
        assert {"billing", "chargeback_facts", "tenant_run_lock"} <= set(
            inspect(tenant_engine).get_table_names()
        )
    finally:
        tenant_engine.dispose()


# ---------------------------------------------------------------- Kubernetes (Helm)

# Field names of the chart's values for the sections rendered below, as its values models (which forbid
# other keys there) and instance templates name them. The chart's values.schema.json ships with the chart
# only, not in any PyPI package, so it is not used here.
CHART_K8S_RUN_LAUNCHER_FIELDS = {
    "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile", "envConfigMaps",
    "envSecrets", "envVars", "volumeMounts", "volumes", "labels", "failPodOnRunFailure", "resources",
    "schedulerName", "securityContext", "runK8sConfig",
}  # fmt: skip
CHART_QUEUED_RUN_COORDINATOR_FIELDS = {
    "maxConcurrentRuns", "tagConcurrencyLimits", "dequeueIntervalSeconds", "dequeueNumWorkers",
    "dequeueUseThreads", "blockOpConcurrencyLimitedRuns",
}  # fmt: skip
CHART_TAG_CONCURRENCY_LIMIT_FIELDS = {"key", "value", "limit"}
CHART_RUN_MONITORING_FIELDS = {
    "enabled",
    "startTimeoutSeconds",
    "pollIntervalSeconds",
    "maxResumeRunAttempts",
}


def render_instance(values: dict[str, Any]) -> dict[str, Any]:
    """The dagster.yaml of the chart's instance ConfigMap for these values, for the sections this project
    sets (templates/configmap-instance.yaml and helpers/instance/*.tpl of the chart)."""
    pg = values["postgresql"]
    postgres_db = {
        "username": pg["postgresqlUsername"],
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "hostname": pg["postgresqlHost"],
        "db_name": pg["postgresqlDatabase"],
        "port": pg["service"]["port"],
        "params": pg.get("postgresqlParams", {}),
        **({"scheme": pg["postgresqlScheme"]} if pg.get("postgresqlScheme") else {}),
    }
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    launcher_config: dict[str, Any] = {
        "load_incluster_config": launcher["loadInclusterConfig"],
        "job_namespace": launcher.get("jobNamespace") or RELEASE_NAMESPACE,
        "image_pull_policy": launcher["imagePullPolicy"],
        "service_account_name": "chargeback-dagster",
        "dagster_home": "/opt/dagster/dagster_home",
        "instance_config_map": "chargeback-dagster-instance",
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
    }
    simple = {
        "envVars": "env_vars",
        "volumeMounts": "volume_mounts",
        "volumes": "volumes",
        "labels": "labels",
        "resources": "resources",
        "schedulerName": "scheduler_name",
        "securityContext": "security_context",
    }
    for key, rendered in simple.items():
        if launcher.get(key):
            launcher_config[rendered] = launcher[key]
    for key, rendered in (("envConfigMaps", "env_config_maps"), ("envSecrets", "env_secrets")):
        names = [item["name"] for item in launcher.get(key) or [] if "name" in item]
        if launcher.get(key):
            launcher_config[rendered] = names
    if launcher.get("failPodOnRunFailure"):
        launcher_config["fail_pod_on_run_failure"] = True
    run_k8s = launcher.get("runK8sConfig") or {}
    snake = {
        "containerConfig": "container_config",
        "podSpecConfig": "pod_spec_config",
        "podTemplateSpecMetadata": "pod_template_spec_metadata",
        "jobSpecConfig": "job_spec_config",
        "jobMetadata": "job_metadata",
    }
    if run_k8s:
        launcher_config["run_k8s_config"] = {snake.get(k, k): v for k, v in run_k8s.items() if v}

    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    coordinator_config: dict[str, Any] = {
        "max_concurrent_runs": queued["maxConcurrentRuns"]
        if queued.get("maxConcurrentRuns") is not None
        else -1
    }
    for key, rendered in (
        ("tagConcurrencyLimits", "tag_concurrency_limits"),
        ("dequeueIntervalSeconds", "dequeue_interval_seconds"),
        ("dequeueUseThreads", "dequeue_use_threads"),
        ("dequeueNumWorkers", "dequeue_num_workers"),
    ):
        if queued.get(key):
            coordinator_config[rendered] = queued[key]
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    return {
        "scheduler": {"module": "dagster.core.scheduler", "class": "DagsterDaemonScheduler"},
        "schedule_storage": {
            "module": "dagster_postgres.schedule_storage",
            "class": "PostgresScheduleStorage",
            "config": {"postgres_db": postgres_db},
        },
        "run_launcher": {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": launcher_config},
        "run_storage": {
            "module": "dagster_postgres.run_storage",
            "class": "PostgresRunStorage",
            "config": {"postgres_db": postgres_db},
        },
        "event_log_storage": {
            "module": "dagster_postgres.event_log",
            "class": "PostgresEventLogStorage",
            "config": {"postgres_db": postgres_db},
        },
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": coordinator_config,
        },
        "python_logs": {"managed_python_loggers": values["pythonLogs"]["managedPythonLoggers"]},
        "run_monitoring": {
            "enabled": monitoring["enabled"],
            "start_timeout_seconds": monitoring["startTimeoutSeconds"],
            "poll_interval_seconds": monitoring["pollIntervalSeconds"],
        },
        "telemetry": {"enabled": values["telemetry"]["enabled"]},
    }


def k8s_object_problems(model: type, items: list[dict[str, Any]], where: str) -> list[str]:
    """Parse each as dagster-k8s does before it creates a Job (camelCase → snake_case, then the model)."""
    problems = []
    for item in items:
        try:
            k8s_model_from_dict(model, k8s_snake_case_dict(model, item))
        except Exception as exc:  # noqa: BLE001 - dagster-k8s raises a plain Exception for unknown keys
            problems.append(f"{where}: {exc}")
    return problems


def resources_problems(resources: dict[str, Any], where: str) -> list[str]:
    problems = []
    for kind in ("requests", "limits"):
        for resource, quantity in (resources.get(kind) or {}).items():
            try:
                parse_quantity(quantity)
            except ValueError as exc:
                problems.append(f"{where}.{kind}.{resource}: {exc}")
    for resource, limit in (resources.get("limits") or {}).items():
        request = (resources.get("requests") or {}).get(resource)
        if request is not None and not problems and parse_quantity(request) > parse_quantity(limit):
            problems.append(f"{where}: {resource} request {request} is above its limit {limit}")
    return problems


def helm_values_problems(values: dict[str, Any], folder: Path) -> list[str]:
    """Every reason the chart (its values models) or Dagster (the rendered instance config) would refuse
    these values, and the Kubernetes objects in them that the Kubernetes API would not parse."""
    problems: list[str] = []
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    for where, given, allowed in (
        ("runLauncher.config.k8sRunLauncher", launcher, CHART_K8S_RUN_LAUNCHER_FIELDS),
        ("queuedRunCoordinator", queued, CHART_QUEUED_RUN_COORDINATOR_FIELDS),
        (
            "dagsterDaemon.runMonitoring",
            values["dagsterDaemon"]["runMonitoring"],
            CHART_RUN_MONITORING_FIELDS,
        ),
        *(
            (f"tagConcurrencyLimits[{i}]", limit, CHART_TAG_CONCURRENCY_LIMIT_FIELDS)
            for i, limit in enumerate(queued.get("tagConcurrencyLimits") or [])
        ),
    ):
        if set(given) - allowed:
            problems.append(f"{where}: not a chart value: {sorted(set(given) - allowed)}")
    if problems:
        return problems

    instance = render_instance(values)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dagster.yaml").write_text(yaml.safe_dump(instance))
    try:
        dagster_instance_config(str(folder))
        coordinator = instance["run_coordinator"]
        ConfigurableClassData(
            coordinator["module"], coordinator["class"], yaml.safe_dump(coordinator["config"])
        ).rehydrate(QueuedRunCoordinator)
    except DagsterInvalidConfigError as exc:
        return [str(exc)]
    # K8sRunLauncher is validated without being built: building it loads the in-cluster Kubernetes config
    result = process_config(K8sRunLauncher.config_type(), instance["run_launcher"]["config"])
    if not result.success:
        return [f"K8sRunLauncher: {error.message}" for error in result.errors or []]

    deployment = values["dagster-user-deployments"]["deployments"][0]
    for where, spec in (("runLauncher", launcher), ("dagster-user-deployments", deployment)):
        problems += k8s_object_problems(k8s.V1Volume, spec.get("volumes") or [], f"{where}.volumes")
        problems += k8s_object_problems(
            k8s.V1VolumeMount, spec.get("volumeMounts") or [], f"{where}.volumeMounts"
        )
        problems += resources_problems(spec.get("resources") or {}, f"{where}.resources")
    problems += k8s_object_problems(k8s.V1EnvVar, deployment.get("env") or [], "dagster-user-deployments.env")
    if "container_config" in instance["run_launcher"]["config"].get("run_k8s_config", {}):
        container = instance["run_launcher"]["config"]["run_k8s_config"]["container_config"]
        problems += k8s_object_problems(k8s.V1Container, [container], "runK8sConfig.containerConfig")
    return problems


def test_helm_values_render_to_a_valid_instance_config(tmp_path):
    values = read_yaml("deploy/helm/values.yaml")
    assert helm_values_problems(values, tmp_path) == []
    instance = render_instance(values)
    launcher = instance["run_launcher"]["config"]
    assert launcher["resources"] == {"requests": {"cpu": "1", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}
    assert instance["run_storage"]["config"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    # the chart refuses values with both this and the top-level `concurrency` block
    assert "concurrency" not in values


def test_helm_values_carry_the_docker_instance_limits():
    """The same queue, tenant limits, run monitoring and logging as docker/dagster.yaml."""
    instance = render_instance(read_yaml("deploy/helm/values.yaml"))
    docker_yaml = read_yaml("docker/dagster.yaml")
    coordinator = instance["run_coordinator"]["config"]
    assert (
        coordinator["tag_concurrency_limits"] == docker_yaml["concurrency"]["runs"]["tag_concurrency_limits"]
    )
    assert (
        coordinator["max_concurrent_runs"] == docker_yaml["concurrency"]["runs"]["max_concurrent_runs"] == 20
    )
    shipped_coordinator = docker_yaml["run_coordinator"]["config"]
    assert {k: v for k, v in coordinator.items() if k.startswith("dequeue")} == shipped_coordinator
    assert (
        instance["run_monitoring"]["poll_interval_seconds"]
        == docker_yaml["run_monitoring"]["poll_interval_seconds"]
    )
    assert instance["run_monitoring"]["enabled"] is True
    assert instance["python_logs"] == docker_yaml["python_logs"]
    assert instance["telemetry"] == docker_yaml["telemetry"] == {"enabled": False}


def test_helm_run_pods_get_the_code_servers_config_and_secrets():
    values = read_yaml("deploy/helm/values.yaml")
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "chargeback_dagster.definitions"]
    # off, so the code server's resources do not become the run pods' (docs/deployment.md §3)
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": False}
    config_file = {e["name"]: e["value"] for e in deployment["env"]}["CHARGEBACK_CONFIG_FILE"]
    assert launcher["envVars"] == [f"CHARGEBACK_CONFIG_FILE={config_file}"]
    for key in ("volumes", "volumeMounts", "envSecrets"):
        assert launcher[key] == deployment[key], key
    # the config file comes from the ConfigMap volume mounted at its folder
    config_volume = next(v for v in launcher["volumes"] if "configMap" in v)
    mount = next(m for m in launcher["volumeMounts"] if m["name"] == config_volume["name"])
    assert Path(config_file).parent == Path(mount["mountPath"]) and mount["readOnly"] is True
    # the user-code image carries both launchers and the Dockerfile installs them
    assert "'.[kafka,docker,k8s]'" in (REPO / "Dockerfile").read_text()


def test_instance_config_helm_prints_the_values_limits(tmp_path, capsys, monkeypatch):
    """`instance-config --helm` prints the shipped values' run queue for max_parallel_tenants 4, the cap for
    another, and `validate`'s check reads the instance the chart renders from them."""
    values = read_yaml("deploy/helm/values.yaml")
    shipped = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    config_path = tmp_path / "c.yaml"
    for cap in (4, 7):
        config_path.write_text(yaml.safe_dump({"features": {"max_parallel_tenants": cap}, "tenants": {}}))
        assert cli.main(["instance-config", "--helm", "--config", str(config_path)]) == 0
        printed = yaml.safe_load(capsys.readouterr().out)
        queued = printed["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
        assert queued["tagConcurrencyLimits"][1] == {
            "key": "chargeback/pipeline",
            "value": "tenant",
            "limit": cap,
        }
        if cap == 4:
            assert queued == {k: shipped[k] for k in ("maxConcurrentRuns", "tagConcurrencyLimits")}

    # values with the printed cap 7 → the chart's instance config → no warning for a config asking for 7,
    # a warning for the shipped values' 4
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    config = load_config(config_path)
    for values_queued, expected in ((queued, []), (shipped, ["is 4, features.max_parallel_tenants is 7"])):
        edited = copy.deepcopy(values)
        edited["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"].update(values_queued)
        (home / "dagster.yaml").write_text(yaml.safe_dump(render_instance(edited)))
        warnings = cli.concurrency_warnings(config)
        assert len(warnings) == len(expected) and all(e in w for e, w in zip(expected, warnings, strict=True))


def _set(path: str, value: Any):
    def edit(values: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = values
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        # a misspelt chart value
        (
            _set("runLauncher.config.k8sRunLauncher.envVar", ["X=1"]),
            "runLauncher.config.k8sRunLauncher: not a chart value: ['envVar']",
        ),
        (
            _set(
                "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.tagConcurrencyLimits.0",
                {"key": "a", "limt": 1},
            ),
            "tagConcurrencyLimits[0]: not a chart value: ['limt']",
        ),
        # a wrong key inside run resources: K8sRunLauncher's own schema
        (
            _set("runLauncher.config.k8sRunLauncher.resources", {"limit": {"memory": "1Gi"}}),
            'K8sRunLauncher: Received unexpected config entry "limit"',
        ),
        # a wrong key inside a Kubernetes object: dagster-k8s's model parser
        (
            _set("runLauncher.config.k8sRunLauncher.volumeMounts", [{"name": "x", "mountpath": "/x"}]),
            "Unexpected keys in model class V1VolumeMount: {'mountpath'}",
        ),
        (
            _set(
                "runLauncher.config.k8sRunLauncher.resources",
                {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}},
            ),
            "runLauncher.resources: memory request 2Gi is above its limit 1Gi",
        ),
    ],
    ids=["launcher-key", "tag-limit-key", "resources-key", "volume-mount-key", "request-above-limit"],
)
def test_helm_values_validation_rejects_wrong_keys(tmp_path, edit, expected):
    values = copy.deepcopy(read_yaml("deploy/helm/values.yaml"))
    edit(values)
    problems = helm_values_problems(values, tmp_path)
    assert any(expected in problem for problem in problems), problems
