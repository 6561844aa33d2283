"""`chargeback-dagster demo`: a generic-metrics tenant end to end on this machine.

Synthetic metrics for three teams of a search cluster are loaded into a real Prometheus (promtool blocks),
the tenant's assets are materialized for the last N days in one run, CSVs are written, and a per-identity
summary is printed.
"""

from __future__ import annotations

import csv
import math
import shutil
import warnings
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import yaml

from chargeback_dagster.config import load_config
from chargeback_dagster.devtools.local_prometheus import LocalPrometheus
from chargeback_dagster.devtools.local_run import materialize_range
from chargeback_dagster.devtools.openmetrics import OpenMetricsWriter

GIB = 2**30
SAMPLE_SECONDS = 300
TEAMS = {"team-search": 60, "team-ads": 30, "team-labs": 10}  # GiB stored; also the traffic weight


def demo_metrics(start: datetime, end: datetime) -> str:
    """Index size per team (gauge) and request/egress counters per team, every 5 minutes."""
    writer = OpenMetricsWriter()
    stamps = [
        start + timedelta(seconds=s) for s in range(0, int((end - start).total_seconds()), SAMPLE_SECONDS)
    ]
    for team, weight in TEAMS.items():
        # storage wiggles a little over the day so every day's mean is slightly different
        size = [(t, weight * GIB * (1 + 0.05 * math.sin(t.timestamp() / 40_000))) for t in stamps]
        writer.add("index_store_size_bytes", {"team": team}, size)
        egress = [(t, float(i * weight * 1_000_000)) for i, t in enumerate(stamps)]
        writer.add("egress_bytes_total", {"team": team}, egress, type="counter")
        requests = [(t, float(i * weight)) for i, t in enumerate(stamps)]
        writer.add("search_requests_total", {"team": team}, requests, type="counter")
    return writer.text()


def demo_config(prometheus_url: str) -> dict:
    start = (datetime.now(UTC).date() - timedelta(days=60)).isoformat()
    return {
        "logging": {"level": "INFO"},
        "tenants": {
            "search_cluster": {
                "ecosystem": "generic_metrics_only",
                "tenant_id": "search",
                "partitions_start_date": start,
                "lookback_days": 30,
                "cutoff_days": 1,
                "storage": {"connection_string": "sqlite:///data/search_cluster.db"},
                "plugin_settings": {
                    "cluster_id": "opensearch-prod",
                    "metrics": {"url": prometheus_url},
                    "identity_source": {
                        "source": "prometheus",
                        "label": "team",
                        "discovery_query": "group by (team) (search_requests_total)",
                    },
                    "discovery_window_hours": 24,
                    "cost_types": [
                        {
                            "name": "NODE_HOURS",
                            "product_category": "compute",
                            "rate": "2.50",
                            "cost_quantity": {"type": "fixed", "count": 3},
                        },
                        {
                            "name": "STORAGE",
                            "product_category": "storage",
                            "rate": "0.0001",
                            "cost_quantity": {"type": "storage_gib", "query": "sum(index_store_size_bytes)"},
                            "allocation_strategy": "usage_ratio",
                            "allocation_query": "sum by (team) (index_store_size_bytes)",
                            "allocation_label": "team",
                        },
                        {
                            "name": "EGRESS",
                            "product_category": "network",
                            "rate": "0.05",
                            "cost_quantity": {
                                "type": "network_gib",
                                "query": "sum(increase(egress_bytes_total[{step}]))",
                            },
                            "allocation_strategy": "usage_ratio",
                            "allocation_query": "sum by (team) (increase(egress_bytes_total[{step}]))",
                            "allocation_label": "team",
                        },
                    ],
                    "emitters": [{"type": "csv", "params": {"output_dir": "output"}}],
                },
            }
        },
    }


def run_demo(workdir: str, days: int = 7) -> int:
    import dagster as dg

    from chargeback_dagster.defs.build import build_definitions

    warnings.filterwarnings("ignore", category=dg.BetaWarning)  # backfill_policy is "beta" in 1.13

    root = Path(workdir).resolve()
    for leftover in ("output", "prometheus", "data"):  # a fresh demo every time
        shutil.rmtree(root / leftover, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    first_day = now.date() - timedelta(days=days)
    last_day = now.date() - timedelta(days=1)
    data_start = datetime.combine(first_day, datetime.min.time(), tzinfo=UTC) - timedelta(hours=1)
    print(f"Loading {days} days of synthetic metrics into a local Prometheus ...")
    with LocalPrometheus(demo_metrics(data_start, now), root / "prometheus") as prom:
        config_path = root / "chargeback.yaml"
        config_path.write_text(yaml.safe_dump(demo_config(prom.url), sort_keys=False))
        app_config = load_config(config_path)
        defs = build_definitions(app_config)
        print(f"Materializing search_cluster for {first_day} .. {last_day} in one run ...")
        result = materialize_range(defs, "search_cluster", first_day, last_day, log_level="WARNING")
        if not result.success:
            print("Run failed; see the log above.")
            return 1
    print_summary(root / "output")
    return 0


def print_summary(output_dir: Path) -> None:
    totals: dict[str, Decimal] = defaultdict(Decimal)
    files = sorted(output_dir.glob("*.csv"))
    for path in files:
        with path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                totals[row["identity_id"]] += Decimal(row["amount"])
    print(f"\nWrote {len(files)} CSV files to {output_dir}")
    print(f"{'identity':<20}{'amount (USD)':>16}")
    for identity, amount in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"{identity:<20}{amount:>16}")
    print(f"{'TOTAL':<20}{sum(totals.values(), Decimal(0)):>16}")
