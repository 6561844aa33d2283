"""`chargeback-dagster` command line (docs/operations.md §12)."""

from __future__ import annotations

import argparse
import json
import sys

from chargeback_dagster.config import ConfigError, load_config
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
        problems = check_connections(config)
        if problems:
            print("\n".join(problems))
            return 1
    print("Config is valid.")
    return 0


def instance_concurrency_block(config) -> str:
    """The dagster.yaml `concurrency` block of docs/operations.md §5 for this config."""
    cap = config.features.max_parallel_tenants
    return (
        "# dagster.yaml: per-tenant serialisation and the tenant-run cap (features.max_parallel_tenants)\n"
        "concurrency:\n"
        "  runs:\n"
        "    max_concurrent_runs: 20\n"
        "    tag_concurrency_limits:\n"
        "      - {key: chargeback/tenant, value: {applyLimitPerUniqueValue: true}, limit: 1}\n"
        f"      - {{key: chargeback/pipeline, value: tenant, limit: {cap}}}\n"
        "run_coordinator: {module: dagster.core.run_coordinator, class: QueuedRunCoordinator}\n"
        "run_monitoring: {enabled: true}\n"
        "python_logs: {managed_python_loggers: [chargeback_dagster]}\n"
    )


def concurrency_warnings(config) -> list[str]:
    """§5: warn when $DAGSTER_HOME/dagster.yaml caps tenant runs differently from max_parallel_tenants."""
    import os
    from pathlib import Path

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
            if item.get("key") == "chargeback/pipeline" and item.get("value") == "tenant"
        ),
        None,
    )
    wanted = config.features.max_parallel_tenants
    if limit == wanted:
        return []
    shown = "not set" if limit is None else limit
    return [
        f"dagster.yaml concurrency.runs limit for chargeback/pipeline=tenant is {shown}, "
        f"features.max_parallel_tenants is {wanted}"
    ]


def check_connections(config) -> list[str]:
    from chargeback_dagster.sources.prometheus import MetricsQueryError, PrometheusClient

    problems = []
    for name, tenant in config.tenants.items():
        metrics = tenant.plugin_settings.metrics
        if metrics is not None:
            client = PrometheusClient.from_config(metrics, max_workers=1)
            try:
                client.check()
            except MetricsQueryError as exc:
                problems.append(f"tenant '{name}': cannot reach Prometheus: {exc}")
            finally:
                client.close()
    return problems


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

    config = load_config(args.config, args.env_file)
    names = [args.tenant] if args.tenant else list(config.tenants)
    for name in names:
        if name not in config.tenants:
            print(f"Unknown tenant '{name}'")
            return 1
        tenant = config.tenants[name]
        store = TenantStore(
            tenant.database_url, tenant_name=name, ecosystem=tenant.ecosystem, tenant_id=tenant.tenant_id
        )
        store.migrate()
        store.dispose()
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
    stores = {}
    for name in names:
        if name not in config.tenants:
            print(f"Unknown tenant '{name}'")
            return None
        t = config.tenants[name]
        stores[name] = TenantStore.open(
            t.database_url, tenant_name=name, ecosystem=t.ecosystem, tenant_id=t.tenant_id
        )
    return config, stores


def cmd_resume(args) -> int:
    from chargeback_dagster import suspension

    opened = _open_stores(args)
    if opened is None:
        return 1
    for store in opened[1].values():
        print(suspension.resume(store).message)
        store.dispose()
    return 0


def cmd_status(args) -> int:
    from chargeback_dagster import suspension

    opened = _open_stores(args)
    if opened is None:
        return 1
    for store in opened[1].values():
        print("\n".join(suspension.status_lines(store)))
        store.dispose()
    return 0


def cmd_instance_config(args) -> int:
    try:
        config = load_config(args.config, args.env_file)
    except ConfigError as exc:
        print(str(exc))
        return 1
    print(instance_concurrency_block(config), end="")
    return 0


def cmd_demo(args) -> int:
    from chargeback_dagster.devtools.demo import run_demo

    return run_demo(args.workdir, days=args.days)


def cmd_simulate(args) -> int:
    from chargeback_dagster.devtools.ccloud_simulator import main as simulate

    return simulate(args.simulator_args)


def _simulate_argv(argv: list[str] | None) -> list[str] | None:
    """`simulate` hands every following argument to the simulator's own parser (options included)."""
    args = sys.argv[1:] if argv is None else list(argv)
    return args[1:] if args[:1] == ["simulate"] else None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chargeback-dagster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="validate the config file")
    _config_args(p)
    p.add_argument("--check-connections", action="store_true", help="also reach each tenant's Prometheus")
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
    p.set_defaults(func=cmd_instance_config)

    p = sub.add_parser(
        "demo", help="run the local demo: Prometheus + Confluent Cloud simulator + two tenants + CSVs"
    )
    p.add_argument("--workdir", default=".demo", help="folder for the demo's config, data and CSVs")
    p.add_argument("--days", type=int, default=7, help="how many past days to materialize")
    p.set_defaults(func=cmd_demo)

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
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
