"""``chargeback-dagster simulate``: serve a simulated organisation until Ctrl-C."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime

from chargeback_dagster.devtools.ccloud_simulator.common import DAY
from chargeback_dagster.devtools.ccloud_simulator.model import OrgSpec
from chargeback_dagster.devtools.ccloud_simulator.org import SimulatedOrg
from chargeback_dagster.devtools.ccloud_simulator.server import DEFAULT_KEY, DEFAULT_SECRET, CCloudSimulator


def build_parser(prog: str = "chargeback-dagster simulate") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Serve a simulated Confluent Cloud organisation.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--environments", type=int, default=OrgSpec.environments)
    parser.add_argument("--clusters-per-env", type=int, default=OrgSpec.clusters_per_env)
    parser.add_argument("--service-accounts", type=int, default=OrgSpec.service_accounts)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument(
        "--start-date",
        type=date.fromisoformat,
        default=None,
        help="first simulated day YYYY-MM-DD (default: --days days before today, UTC)",
    )
    parser.add_argument("--seed", type=int, default=OrgSpec.seed)
    parser.add_argument("--key", default=DEFAULT_KEY, help="accepted API key (Basic auth user)")
    parser.add_argument("--secret", default=DEFAULT_SECRET, help="accepted API secret")
    parser.add_argument("--write-openmetrics", metavar="PATH", help="also write matching Prometheus history")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    start = args.start_date or (datetime.now(UTC).date() - args.days * DAY)
    org = SimulatedOrg(
        OrgSpec(
            environments=args.environments,
            clusters_per_env=args.clusters_per_env,
            service_accounts=args.service_accounts,
            days=args.days,
            start_date=start,
            seed=args.seed,
        )
    )
    if args.write_openmetrics:
        with open(args.write_openmetrics, "w", encoding="utf-8") as fh:
            fh.write(org.openmetrics())
        print(f"Wrote OpenMetrics history to {args.write_openmetrics}")
    sim = CCloudSimulator(org, host=args.host, port=args.port, key=args.key, secret=args.secret)
    with sim:
        print(f"Confluent Cloud simulator listening on {sim.url}")
        print(f"  organization {org.org_id}; days {start} .. {org.spec.end_date - DAY}")
        print(f"  ccloud_api.base_url: {sim.url}")
        print(f"  ccloud_api.flink_url_template: {sim.url}")
        shown_secret = args.secret if args.secret == DEFAULT_SECRET else "(as given by --secret)"
        print(f"  ccloud_api.key: {args.key}  ccloud_api.secret: {shown_secret}")
        print("Press Ctrl-C to stop.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("Stopped.")
    return 0
