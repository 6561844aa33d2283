"""`chargeback-dagster` command line (operations.md §12)."""

from __future__ import annotations

import argparse
import json
import sys

from chargeback_dagster.config import ConfigError, load_config


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="path of the chargeback YAML (default: $CHARGEBACK_CONFIG_FILE)")
    parser.add_argument("--env-file", help="a .env file to load (default: .env beside the config)")


def cmd_validate(args) -> int:
    try:
        config = load_config(args.config, args.env_file)
    except ConfigError as exc:
        print(str(exc))
        return 1
    for warning in config.warnings:
        print(f"WARNING: {warning}")
    if args.check_connections:
        problems = check_connections(config)
        if problems:
            print("\n".join(problems))
            return 1
    print("Config is valid.")
    return 0


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


def cmd_demo(args) -> int:
    from chargeback_dagster.devtools.demo import run_demo

    return run_demo(args.workdir, days=args.days)


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

    p = sub.add_parser("demo", help="run the local demo: Prometheus + a generic tenant + CSVs")
    p.add_argument("--workdir", default=".demo", help="folder for the demo's config, data and CSVs")
    p.add_argument("--days", type=int, default=7, help="how many past days to materialize")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
