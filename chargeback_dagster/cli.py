"""`chargeback-dagster` command line (docs/operations.md §12)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from importlib.metadata import version
from pathlib import Path

from chargeback_dagster.config import ConfigError, load_config
from chargeback_dagster.defs.tags import PIPELINE_TAG, TENANT_TAG
from chargeback_dagster.logging_setup import apply_logging


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="path of the chargeback YAML (default: $CHARGEBACK_CONFIG_FILE)")
    parser.add_argument("--env-file", help="a .env file to load (default: .env beside the config)")


def cmd_validate(args) -> int:
    try:
        config = load_config(args.config, args.env_file)
    except ConfigError as exc:
        print(str(exc))
        return 1
    for warning in [*config.warnings, *concurrency_warnings(config)]:
        print(f"WARNING: {warning}")
    if args.check_connections:
        results = check_connections(config)
        for _ok, line in results:
            print(line)
        if not all(ok for ok, _ in results):
            return 1
    print("Config is valid.")
    return 0


MAX_CONCURRENT_RUNS = 20  # all runs; tenant runs are capped by the tag limits below


def _tag_limits(config) -> str:
    """The two run-queue tag limits (docs/operations.md §5) as YAML list items, to indent where they go."""
    cap = config.features.max_parallel_tenants
    return (
        f"- {{key: {TENANT_TAG}, value: {{applyLimitPerUniqueValue: true}}, limit: 1}}\n"
        f"- {{key: {PIPELINE_TAG}, value: tenant, limit: {cap}}}\n"
    )


def _indented(text: str, spaces: int) -> str:
    return "".join(" " * spaces + line for line in text.splitlines(keepends=True))


def instance_concurrency_block(config) -> str:
    """The dagster.yaml `concurrency` block of docs/operations.md §5 for this config."""
    return (
        "# dagster.yaml: per-tenant serialisation and the tenant-run cap (features.max_parallel_tenants)\n"
        "concurrency:\n"
        "  runs:\n"
        f"    max_concurrent_runs: {MAX_CONCURRENT_RUNS}\n"
        "    tag_concurrency_limits:\n"
        + _indented(_tag_limits(config), 6)
        + "run_coordinator: {module: dagster.core.run_coordinator, class: QueuedRunCoordinator}\n"
        "run_monitoring: {enabled: true}\n"
        "python_logs: {managed_python_loggers: [chargeback_dagster]}\n"
    )


def helm_run_queue_values(config) -> str:
    """The same run limits as values for Dagster's Helm chart (deploy/helm/values.yaml; docs/deployment.md §4)
    — the chart renders them into the instance's run_coordinator config."""
    return (
        "# Helm values: per-tenant serialisation and the tenant-run cap (features.max_parallel_tenants)\n"
        "dagsterDaemon:\n"
        "  runCoordinator:\n"
        "    config:\n"
        "      queuedRunCoordinator:\n"
        f"        maxConcurrentRuns: {MAX_CONCURRENT_RUNS}\n"
        "        tagConcurrencyLimits:\n" + _indented(_tag_limits(config), 10)
    )


def concurrency_warnings(config) -> list[str]:
    """§5: warn when $DAGSTER_HOME/dagster.yaml caps tenant runs differently from max_parallel_tenants."""
    import yaml

    home = os.environ.get("DAGSTER_HOME")
    if not home:
        return []
    try:
        instance = yaml.safe_load((Path(home) / "dagster.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    limits = ((instance.get("concurrency") or {}).get("runs") or {}).get("tag_concurrency_limits")
    if limits is None:  # older layout: run_coordinator.config.tag_concurrency_limits
        limits = ((instance.get("run_coordinator") or {}).get("config") or {}).get("tag_concurrency_limits")
    limit = next(
        (
            item.get("limit")
            for item in limits or []
            if item.get("key") == PIPELINE_TAG and item.get("value") == "tenant"
        ),
        None,
    )
    wanted = config.features.max_parallel_tenants
    if limit == wanted:
        return []
    shown = "not set" if limit is None else limit
    return [
        f"dagster.yaml concurrency.runs limit for {PIPELINE_TAG}=tenant is {shown}, "
        f"features.max_parallel_tenants is {wanted}"
    ]


CHECK_TIMEOUT_SECONDS = 5.0


def check_connections(config) -> list[tuple[bool, str]]:
    """Reach every remote each tenant names (docs/operations.md §12): one (ok, line) per remote."""
    results = []
    for name, tenant in config.tenants.items():
        ps = tenant.plugin_settings
        checks = [("database", lambda t=tenant: _check_database(t.database_url))]
        if getattr(ps, "ccloud_api", None) is not None:
            checks.append(("Confluent Cloud API", lambda api=ps.ccloud_api: _check_confluent(api)))
        if ps.metrics is not None:
            checks.append(("Prometheus", lambda m=ps.metrics: _check_prometheus(m)))
        source = getattr(ps, "resource_source", None)
        if source is not None and source.bootstrap_servers:
            checks.append(("Kafka bootstrap servers", lambda rs=source: _check_kafka(rs)))
        for remote, check in checks:
            try:
                check()
            except Exception as exc:  # noqa: BLE001 - every failure is reported as one line, never raised
                results.append((False, f"tenant '{name}': cannot reach {remote}: {_one_line(exc)}"))
            else:
                results.append((True, f"tenant '{name}': {remote}: OK"))
    return results


def _check_database(url: str) -> None:
    from sqlalchemy import create_engine

    from chargeback_dagster.store import normalize_url

    url = normalize_url(url)
    if url.startswith("sqlite"):
        return _check_sqlite(url)
    engine = create_engine(url, connect_args={"connect_timeout": int(CHECK_TIMEOUT_SECONDS)})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    finally:
        engine.dispose()


def _check_sqlite(url: str) -> None:
    """Read-only, so checking never creates the file; a missing file is fine if its folder can hold it."""
    import sqlite3

    from sqlalchemy.engine import make_url

    path = Path(make_url(url).database or "")
    if not path.exists():
        folder = next(p for p in path.parents if p.exists())
        if not os.access(folder, os.W_OK):
            raise OSError(f"cannot create '{path}': folder '{folder}' is not writable")
        return
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=CHECK_TIMEOUT_SECONDS)
    try:
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1")
    finally:
        conn.close()


def _check_confluent(api) -> None:
    from chargeback_dagster.ecosystems.confluent_cloud.client import ConfluentClient

    client = ConfluentClient(
        api.base_url,
        api.key.get_secret_value(),
        api.secret.get_secret_value(),
        timeout=CHECK_TIMEOUT_SECONDS,
        max_attempts=1,
    )
    try:
        client.get("/org/v2/environments", params={"page_size": 1})
    finally:
        client.close()


def _check_prometheus(metrics) -> None:
    """One instant query ``1`` (the pipeline's client would retry with backoff for many seconds)."""
    import httpx

    from chargeback_dagster.sources import http

    url = httpx.URL(str(metrics.url))
    headers, auth = {}, None
    if metrics.auth_type == "basic":
        auth = httpx.BasicAuth(metrics.username or "", metrics.password.get_secret_value())
    elif metrics.auth_type == "bearer":
        headers["Authorization"] = f"Bearer {metrics.bearer_token.get_secret_value()}"
    elif url.username or url.password:  # user-info becomes Basic auth, as in the pipeline's client
        auth = httpx.BasicAuth(url.username, url.password)
    base = str(url.copy_with(username=None, password=None)).rstrip("/")
    with httpx.Client(headers=headers, auth=auth, timeout=CHECK_TIMEOUT_SECONDS) as client:
        request = client.build_request("POST", f"{base}/api/v1/query", data={"query": "1"})
        response = http.send(client, request, CHECK_TIMEOUT_SECONDS)  # a total limit, however slow
    if response.status_code != 200:
        raise RuntimeError(f"POST /api/v1/query answered HTTP {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("status") != "success":
        raise RuntimeError("POST /api/v1/query did not answer a Prometheus query result")


def _check_kafka(resource_source) -> None:
    from chargeback_dagster.ecosystems.self_managed_kafka.kafka_admin import fetch_cluster_metadata

    fetch_cluster_metadata(resource_source, timeout_seconds=CHECK_TIMEOUT_SECONDS)


def _one_line(exc: BaseException) -> str:
    """The first line of an error (SQLAlchemy's own text adds SQL and a help link on further lines)."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _unknown_tenant(name: str, config) -> str:
    return f"Unknown tenant '{name}'; configured tenants: {', '.join(config.tenants) or 'none'}"


def cmd_show_config(args) -> int:
    try:
        config = load_config(args.config, args.env_file)
    except ConfigError as exc:
        print(str(exc))
        return 1
    print(json.dumps(config.redacted_dict(), indent=2))
    return 0


def cmd_migrate(args) -> int:
    from chargeback_dagster.store import TenantStore

    try:
        config = load_config(args.config, args.env_file)
    except ConfigError as exc:
        print(str(exc))
        return 1
    names = [args.tenant] if args.tenant else list(config.tenants)
    for name in names:
        if name not in config.tenants:
            print(_unknown_tenant(name, config))
            return 1
        tenant = config.tenants[name]
        try:
            store = TenantStore(
                tenant.database_url, tenant_name=name, ecosystem=tenant.ecosystem, tenant_id=tenant.tenant_id
            )
            try:
                store.migrate()
            finally:
                store.dispose()
        except Exception as exc:  # noqa: BLE001 - one line naming the tenant instead of a traceback
            print(f"tenant '{name}': cannot migrate database: {_one_line(exc)}")
            return 1
        print(f"tenant '{name}': database is up to date")
    return 0


def _open_stores(args):
    """(config, {name: TenantStore}) for --tenant or every tenant; prints and returns None on errors."""
    from chargeback_dagster.store import TenantStore

    try:
        config = load_config(args.config, args.env_file)
    except ConfigError as exc:
        print(str(exc))
        return None
    apply_logging(config.logging)
    tenant = getattr(args, "tenant", None)
    names = [tenant] if tenant else list(config.tenants)
    unknown = [name for name in names if name not in config.tenants]
    if unknown:
        print(_unknown_tenant(unknown[0], config))
        return None
    stores = {}
    for name in names:
        t = config.tenants[name]
        try:
            stores[name] = TenantStore.open(
                t.database_url, tenant_name=name, ecosystem=t.ecosystem, tenant_id=t.tenant_id
            )
        except Exception as exc:  # noqa: BLE001 - one line naming the tenant instead of a traceback
            print(f"tenant '{name}': cannot open database: {_one_line(exc)}")
            for store in stores.values():
                store.dispose()
            return None
    return config, stores


def cmd_resume(args) -> int:
    from chargeback_dagster import tenant_ops

    opened = _open_stores(args)
    if opened is None:
        return 1
    for store in opened[1].values():
        print(tenant_ops.resume(store).message)
        store.dispose()
    return 0


def cmd_status(args) -> int:
    from chargeback_dagster import tenant_ops

    opened = _open_stores(args)
    if opened is None:
        return 1
    with contextlib.ExitStack() as stack:
        lookup = _dagster_run_lookup(stack)
        for store in opened[1].values():
            print("\n".join(tenant_ops.status_lines(store, tenant_ops.takeover_seconds(), lookup)))
            store.dispose()
    return 0


def _dagster_run_lookup(stack: contextlib.ExitStack):
    """Runs as the Dagster instance of $DAGSTER_HOME reports them; None without one (status then judges
    unclosed audit rows by the tenant lock alone)."""
    if not os.environ.get("DAGSTER_HOME"):
        return None
    import dagster as dg

    from chargeback_dagster.defs.guard import run_lookup

    try:
        instance = stack.enter_context(dg.DagsterInstance.get())
    except Exception as exc:  # noqa: BLE001 - status still works from the tenant databases
        print(f"WARNING: cannot open the Dagster instance of DAGSTER_HOME: {_one_line(exc)}")
        return None
    return run_lookup(instance)


def cmd_instance_config(args) -> int:
    try:
        config = load_config(args.config, args.env_file)
    except ConfigError as exc:
        print(str(exc))
        return 1
    print((helm_run_queue_values if args.helm else instance_concurrency_block)(config), end="")
    return 0


def cmd_demo(args) -> int:
    from chargeback_dagster.devtools.demo import run_demo

    return run_demo(args.workdir, days=args.days, ui=args.ui, host=args.host, port=args.port)


def cmd_ui_screenshot(args) -> int:
    from chargeback_dagster.devtools.ui_screenshot import main as ui_screenshot

    return ui_screenshot(args)


def cmd_simulate(args) -> int:
    from chargeback_dagster.devtools.ccloud_simulator import main as simulate

    return simulate(args.simulator_args)


def _simulate_argv(argv: list[str] | None) -> list[str] | None:
    """`simulate` hands every following argument to the simulator's own parser (options included)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return args[1:] if args[:1] == ["simulate"] else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chargeback-dagster", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('chargeback-dagster')}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="validate the config file")
    _config_args(p)
    p.add_argument(
        "--check-connections",
        action="store_true",
        help="also reach each tenant's database, Confluent Cloud API, Prometheus and Kafka bootstrap servers",
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("show-config", help="print the resolved config as JSON, secrets hidden")
    _config_args(p)
    p.set_defaults(func=cmd_show_config)

    p = sub.add_parser("migrate", help="apply database migrations to one or all tenant databases")
    _config_args(p)
    p.add_argument("--tenant")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("resume", help="clear a tenant's suspension")
    _config_args(p)
    p.add_argument("tenant")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("status", help="suspension, gather failures, last gather/date/run per tenant")
    _config_args(p)
    p.add_argument("--tenant")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("instance-config", help="print the dagster.yaml concurrency block for this config")
    _config_args(p)
    p.add_argument("--helm", action="store_true", help="the same limits as values for Dagster's Helm chart")
    p.set_defaults(func=cmd_instance_config)

    p = sub.add_parser(
        "demo", help="run the local demo: Prometheus + Confluent Cloud simulator + two tenants + CSVs"
    )
    p.add_argument("--workdir", default=".demo", help="folder for the demo's config, data and CSVs")
    p.add_argument("--days", type=int, default=7, help="how many past days to materialize")
    p.add_argument(
        "--ui",
        action="store_true",
        help="then keep Prometheus and the simulator up and serve the Dagster UI on the runs until Ctrl-C",
    )
    p.add_argument("--host", default="127.0.0.1", help="with --ui: the webserver's address")
    p.add_argument("--port", type=int, default=3000, help="with --ui: the webserver's port")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "ui-screenshot",
        help="PNG of one date of <tenant>/chargeback in the Dagster UI (money metadata), headless Chromium",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", default="http://127.0.0.1:3000", help="a running Dagster UI")
    where.add_argument("--demo", action="store_true", help="start `demo --ui` on a free port, then stop it")
    p.add_argument("--workdir", help="with --demo: the demo's work folder (default: a temporary one)")
    p.add_argument("--days", type=int, default=2, help="with --demo: how many past days to materialize")
    # the demo tenant whose service accounts carry teams, so top_teams has named rows
    p.add_argument("--asset", default="confluent_org/chargeback", help="the asset key path")
    p.add_argument("--partition", help="the date (required with --url; with --demo: yesterday, UTC)")
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--dom", help="also write the rendered DOM (HTML) here")
    p.add_argument("--timeout", type=float, default=90, help="seconds to wait for the metadata to render")
    p.set_defaults(func=cmd_ui_screenshot)

    p = sub.add_parser(
        "simulate",
        help="serve a simulated Confluent Cloud organisation (see: chargeback-dagster simulate --help)",
        add_help=False,
    )
    p.add_argument("simulator_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    simulator_args = _simulate_argv(argv)
    if simulator_args is not None:
        return cmd_simulate(argparse.Namespace(simulator_args=simulator_args))
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader left (e.g. `| head`): stop quietly; stdout goes to devnull so the exit flush cannot fail
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
