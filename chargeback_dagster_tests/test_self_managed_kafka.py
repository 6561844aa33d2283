"""self_managed_kafka against a real Prometheus (Debian package, history loaded with promtool).

History (all counters sampled every 60 s, linear within each minute, traffic only in (d 01:00, d 22:00] so
that every step from 60 s to 3600 s sees the same bytes of a day):

| day | bytes in (principal) | bytes out (principal) | storage |
|---|---|---|---|
| 2026-02-01 | alice 7, bob 3 GiB (= 10 GiB) | alice 5, bob 15 GiB (= 20 GiB) | 30 + 20 GiB × 24 samples |
| 2026-02-02 | alice 50, bob 30, carol 20 GiB (= 100 GiB) | 5 GiB on a series without `principal` | 50 GiB |
| 2026-02-03 | — (no counter samples at all: no principals) | — | 50 GiB |
| 2026-02-04 | — | — | — (no lines) |

With broker_count 3 and rates compute 0.10, storage 0.0001, ingress 0.01, egress 0.02 this is the worked
example of docs/self-managed-kafka.md §2 on 2026-02-01 and gives the §6 allocation rows on the other days.
Recent traffic (the last two hours before now, every 5 min) feeds inventory discovery; it adds the
principal `User:dave` on broker 2, topic `audit`.
"""

from __future__ import annotations

import csv
import logging
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from chargeback_dagster.config import load_config
from chargeback_dagster.defs.build import build_definitions
from chargeback_dagster.devtools.local_run import materialize_range
from chargeback_dagster.devtools.openmetrics import OpenMetricsWriter
from chargeback_dagster.ecosystems.base import GatherContext, GatherError
from chargeback_dagster.ecosystems.registry import ecosystem_for
from chargeback_dagster.ecosystems.self_managed_kafka.ecosystem import SelfManagedKafkaEcosystem
from chargeback_dagster.sources.prometheus import MetricsQueryError, PrometheusClient, day_window

GIB = 2**30
D1, D2, D3, D4 = (date(2026, 2, day) for day in (1, 2, 3, 4))
IN = "kafka_server_brokertopicmetrics_bytesin_total"
OUT = "kafka_server_brokertopicmetrics_bytesout_total"
CLUSTER = "kafka-cluster-001"
HEADER = (
    "ecosystem,tenant_id,timestamp,resource_id,product_category,product_type,identity_id,cost_type,"
    "amount,allocation_method,allocation_detail"
)
COMPUTE, STORAGE, INGRESS, EGRESS = (
    "SELF_KAFKA_COMPUTE",
    "SELF_KAFKA_STORAGE",
    "SELF_KAFKA_NETWORK_INGRESS",
    "SELF_KAFKA_NETWORK_EGRESS",
)


def midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def counter(per_day: dict[date, int]) -> list[tuple[datetime, int]]:
    """A counter sampled every minute from D1 − 2 h to D2 23:00; each day's bytes are spread in whole bytes
    over the minutes of (d 01:00, d 22:00]."""
    increments: dict[datetime, int] = {}
    for d, total in per_day.items():
        minutes = [midnight(d) + timedelta(minutes=m) for m in range(61, 22 * 60 + 1)]
        q, r = divmod(total, len(minutes))
        for i, t in enumerate(minutes):
            increments[t] = q + (1 if i < r else 0)
    t, end, value, samples = midnight(D1) - timedelta(hours=2), midnight(D2) + timedelta(hours=23), 0, []
    while t <= end:
        value += increments.get(t, 0)
        samples.append((t, value))
        t += timedelta(minutes=1)
    return samples


def recent(now: datetime) -> list[tuple[datetime, int]]:
    return [(now - timedelta(minutes=m), 1000 * (24 - m // 5)) for m in range(0, 120, 5)]


def kafka_history(now: datetime) -> str:
    w = OpenMetricsWriter()
    inbound = [
        ({"broker": "1", "topic": "orders", "principal": "alice"}, {D1: 7 * GIB, D2: 50 * GIB}),
        ({"broker": "2", "topic": "payments", "principal": "bob"}, {D1: 3 * GIB, D2: 30 * GIB}),
        ({"broker": "3", "topic": "payments", "principal": "carol"}, {D2: 20 * GIB}),
    ]
    outbound = [
        ({"broker": "1", "topic": "orders", "principal": "alice"}, {D1: 5 * GIB}),
        ({"broker": "2", "topic": "payments", "principal": "bob"}, {D1: 15 * GIB}),
        ({"broker": "3", "topic": "orders"}, {D2: 5 * GIB}),  # an exporter series without `principal`
    ]
    for labels, per_day in inbound:
        w.add(IN, labels, counter(per_day) + recent(now), type="counter")
    w.add(IN, {"broker": "2", "topic": "audit", "principal": "User:dave"}, recent(now), type="counter")
    for labels, per_day in outbound:
        w.add(OUT, labels, counter(per_day), type="counter")
    for labels, size in (
        ({"broker": "1", "topic": "orders"}, 30),
        ({"broker": "2", "topic": "payments"}, 20),
    ):
        samples = [(midnight(d) + timedelta(hours=h), size * GIB) for d in (D1, D2, D3) for h in range(24)]
        w.add("kafka_log_log_size", labels, samples)
    return w.text()


@pytest.fixture(scope="module")
def prometheus(local_prometheus_factory):
    return local_prometheus_factory(kafka_history(datetime.now(UTC).replace(second=0, microsecond=0)))


@pytest.fixture(scope="module")
def client(prometheus):
    with PrometheusClient(prometheus.url) as c:
        yield c


def dead_client() -> PrometheusClient:
    """Nothing listens on port 1: every request fails fast (no retry waits)."""
    return PrometheusClient("http://127.0.0.1:1", sleep=lambda _s: None)


# --- configuration helpers -------------------------------------------------------------------------
def plugin_settings(prometheus_url: str, **overrides) -> dict:
    settings = {
        "cluster_id": CLUSTER,
        "broker_count": 3,
        "cost_model": {
            "compute_hourly_rate": 0.10,
            "storage_per_gib_hourly": 0.0001,
            "network_ingress_per_gib": 0.01,
            "network_egress_per_gib": 0.02,
        },
        "metrics": {"url": prometheus_url},
        "emitters": [{"type": "csv", "params": {"output_dir": "out"}}],
    }
    settings.update(overrides)
    return settings


def write_config(tmp_path: Path, tenants: dict[str, dict]) -> Path:
    doc = {
        "tenants": {
            name: {
                "ecosystem": "self_managed_kafka",
                "tenant_id": name.replace("_", "-"),
                "partitions_start_date": "2026-01-01",
                "storage": {"connection_string": f"sqlite:///data/{name}.db"},
                "plugin_settings": settings,
            }
            for name, settings in tenants.items()
        }
    }
    path = tmp_path / "chargeback.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def make_ecosystem(tmp_path: Path, prometheus_url: str, **overrides) -> SelfManagedKafkaEcosystem:
    config = load_config(write_config(tmp_path, {"onprem": plugin_settings(prometheus_url, **overrides)}))
    eco = ecosystem_for(config.tenant("onprem"))
    assert isinstance(eco, SelfManagedKafkaEcosystem)
    return eco


def context(eco, client: PrometheusClient, now: datetime | None = None) -> GatherContext:
    return GatherContext(
        tenant=eco.tenant,
        logger=logging.getLogger("test.self_managed_kafka"),
        now=now or datetime.now(UTC).replace(microsecond=0),
        prometheus=lambda: client,
    )


def table(lines) -> list[tuple]:
    return [(ln.product_type, ln.quantity, ln.unit_price, ln.total_cost) for ln in lines]


# --- 1. cost construction --------------------------------------------------------------------------
def test_worked_example_lines(tmp_path, client):
    eco = make_ecosystem(tmp_path, client.url)
    gathered = eco.gather_billing([D1], context(eco, client))
    assert gathered.failed_dates == {}
    assert table(gathered.lines) == [
        (COMPUTE, Decimal(72), Decimal("0.1"), Decimal("7.20")),
        (STORAGE, Decimal(1200), Decimal("0.0001"), Decimal("0.12")),
        (INGRESS, Decimal(10), Decimal("0.01"), Decimal("0.10")),
        (EGRESS, Decimal(20), Decimal("0.02"), Decimal("0.40")),
    ]
    for line in gathered.lines:
        assert (line.resource_id, line.product_category, line.env_id) == (CLUSTER, "kafka", "")
        assert (line.currency, line.granularity, line.metadata["hours"]) == ("USD", "daily", 24)
        assert line.date == D1 and line.timestamp == midnight(D1)
        assert (line.ecosystem, line.tenant_id) == ("self_managed_kafka", "onprem")


def test_region_override_changes_only_the_overridden_rate(tmp_path, client):
    cost_model = plugin_settings(client.url)["cost_model"] | {
        "region_overrides": {"us-west-2": {"compute_hourly_rate": 0.08}}
    }
    eco = make_ecosystem(tmp_path, client.url, region="us-west-2", cost_model=cost_model)
    assert table(eco.gather_billing([D1], context(eco, client)).lines) == [
        (COMPUTE, Decimal(72), Decimal("0.08"), Decimal("5.76")),
        (STORAGE, Decimal(1200), Decimal("0.0001"), Decimal("0.12")),
        (INGRESS, Decimal(10), Decimal("0.01"), Decimal("0.10")),
        (EGRESS, Decimal(20), Decimal("0.02"), Decimal("0.40")),
    ]
    # a region without an override uses the base rates
    eco = make_ecosystem(tmp_path, client.url, region="eu-west-1", cost_model=cost_model)
    assert table(eco.gather_billing([D1], context(eco, client)).lines)[0][3] == Decimal("7.20")


@pytest.mark.parametrize("step", [60, 300, 3600])
def test_no_double_counting_at_any_step(tmp_path, client, step):
    eco = make_ecosystem(tmp_path, client.url, metrics_step_seconds=step)
    lines = eco.gather_billing([D1, D2], context(eco, client)).lines
    quantities = {(ln.date, ln.product_type): ln.quantity for ln in lines if ln.product_type != COMPUTE}
    assert quantities == {
        (D1, STORAGE): Decimal(1200),
        (D1, INGRESS): Decimal(10),
        (D1, EGRESS): Decimal(20),
        (D2, STORAGE): Decimal(1200),
        (D2, INGRESS): Decimal(100),
        (D2, EGRESS): Decimal(5),
    }


def test_multi_day_construction_and_empty_day(tmp_path, client):
    eco = make_ecosystem(tmp_path, client.url)
    gathered = eco.gather_billing([D1, D2, D3, D4], context(eco, client))
    assert gathered.failed_dates == {}
    by_day = {}
    for line in gathered.lines:
        by_day.setdefault(line.date, []).append(line)
    assert sorted(by_day) == [D1, D2, D3]  # 2026-02-04 has no samples in any series: no lines
    assert table(by_day[D2]) == [
        (COMPUTE, Decimal(72), Decimal("0.1"), Decimal("7.20")),
        (STORAGE, Decimal(1200), Decimal("0.0001"), Decimal("0.12")),
        (INGRESS, Decimal(100), Decimal("0.01"), Decimal("1.00")),
        (EGRESS, Decimal(5), Decimal("0.02"), Decimal("0.10")),
    ]
    # storage only: four lines, the network ones with quantity 0
    assert table(by_day[D3]) == [
        (COMPUTE, Decimal(72), Decimal("0.1"), Decimal("7.20")),
        (STORAGE, Decimal(1200), Decimal("0.0001"), Decimal("0.12")),
        (INGRESS, Decimal(0), Decimal("0.01"), Decimal(0)),
        (EGRESS, Decimal(0), Decimal("0.02"), Decimal(0)),
    ]


class OneDayDown(PrometheusClient):
    """The real client, except that every query over 2026-02-02 fails as an HTTP 503 would (a whole-range
    query covering that day too: the ecosystem then falls back to one query per day)."""

    def query_range(self, q):
        d2_start, d2_end = day_window(D2)
        if q.start < d2_end and q.end > d2_start:
            raise MetricsQueryError("HTTP 503: down for maintenance")
        return super().query_range(q)


def test_failed_day_is_listed_and_other_days_kept(tmp_path, prometheus):
    with OneDayDown(prometheus.url) as flaky:
        eco = make_ecosystem(tmp_path, prometheus.url)
        gathered = eco.gather_billing([D1, D2, D3], context(eco, flaky))
    assert gathered.failed_dates == {D2: "HTTP 503: down for maintenance"}
    assert sorted({ln.date for ln in gathered.lines}) == [D1, D3]


def test_all_days_failed_is_a_gather_failure(tmp_path):
    eco = make_ecosystem(tmp_path, "http://127.0.0.1:1")
    with dead_client() as dead, pytest.raises(GatherError) as err:
        eco.gather_billing([D1, D2], context(eco, dead))
    assert str(err.value).startswith("Billing construction failed for all 2 dates: Exhausted 4 attempts for")


# --- 2. discovery ----------------------------------------------------------------------------------
def summary(gathered):
    return (
        [(r.resource_id, r.resource_type, r.display_name, r.parent_id) for r in gathered.resources],
        [(i.identity_id, i.identity_type, i.display_name, i.metadata) for i in gathered.identities],
    )


def test_prometheus_discovery_resources_and_mapped_principals(tmp_path, client):
    eco = make_ecosystem(
        tmp_path,
        client.url,
        region="us-west-2",
        identity_source={"principal_to_team": {"alice": "orders"}, "default_team": "platform"},
    )
    # discovery looks at [now − 1 h, now): 2026-02-01 11:00–12:00 has alice, bob and carol's (idle) series
    gathered = eco.gather_inventory(context(eco, client, now=midnight(D1) + timedelta(hours=12)))
    resources, identities = summary(gathered)
    assert resources == [
        (CLUSTER, "cluster", CLUSTER, None),
        (f"{CLUSTER}:broker:1", "broker", "1", CLUSTER),
        (f"{CLUSTER}:broker:2", "broker", "2", CLUSTER),
        (f"{CLUSTER}:broker:3", "broker", "3", CLUSTER),
        (f"{CLUSTER}:topic:orders", "topic", "orders", CLUSTER),
        (f"{CLUSTER}:topic:payments", "topic", "payments", CLUSTER),
    ]
    assert gathered.resources[0].metadata == {"broker_count": 3, "region": "us-west-2"}
    assert identities == [
        ("alice", "principal", "orders", {"raw_principal": "alice", "team": "orders"}),
        ("bob", "principal", "bob", {"raw_principal": "bob", "team": "platform"}),
        ("carol", "principal", "carol", {"raw_principal": "carol", "team": "platform"}),
    ]
    assert gathered.owned_types == {"kafka": frozenset({"cluster", "broker", "topic"})}
    assert gathered.handler_errors == {}


def test_discovery_window_hours_against_recent_traffic(tmp_path, client):
    eco = make_ecosystem(
        tmp_path,
        client.url,
        discovery_window_hours=2,
        identity_source={"principal_to_team": {"User:dave": "payments"}},
    )
    resources, identities = summary(eco.gather_inventory(context(eco, client)))
    assert [r[0] for r in resources if r[1] == "topic"] == [
        f"{CLUSTER}:topic:audit",
        f"{CLUSTER}:topic:orders",
        f"{CLUSTER}:topic:payments",
    ]
    assert identities[0] == (
        "User:dave",
        "principal",
        "payments",
        {"raw_principal": "User:dave", "team": "payments"},
    )
    assert [i[0] for i in identities] == ["User:dave", "alice", "bob", "carol"]


STATIC = [
    {"identity_id": "alice", "identity_type": "principal", "team": "data"},
    {"identity_id": "svc-batch", "identity_type": "principal", "display_name": "Batch jobs"},
]


def test_static_identity_source(tmp_path, client):
    eco = make_ecosystem(
        tmp_path,
        client.url,
        identity_source={"source": "static", "static_identities": STATIC, "default_team": "platform"},
    )
    gathered = eco.gather_inventory(context(eco, client, now=midnight(D1) + timedelta(hours=12)))
    assert summary(gathered)[1] == [
        ("alice", "principal", "alice", {"team": "data"}),
        ("svc-batch", "principal", "Batch jobs", {"team": "platform"}),
    ]
    # brokers and topics still come from Prometheus (resource_source prometheus)
    assert len(gathered.resources) == 6
    # static-only tenants request no metrics
    assert eco.handlers()[0].metric_queries(eco.gather_billing([D1], context(eco, client)).lines[0]) == {}


def test_both_identity_sources_static_wins(tmp_path, client):
    eco = make_ecosystem(
        tmp_path,
        client.url,
        identity_source={
            "source": "both",
            "static_identities": STATIC,
            "principal_to_team": {"alice": "orders", "bob": "payments"},
        },
    )
    gathered = eco.gather_inventory(context(eco, client, now=midnight(D1) + timedelta(hours=12)))
    assert summary(gathered)[1] == [
        ("alice", "principal", "alice", {"team": "data"}),  # the static entry wins over the mapped one
        ("bob", "principal", "payments", {"raw_principal": "bob", "team": "payments"}),
        ("carol", "principal", "carol", {"raw_principal": "carol", "team": "UNASSIGNED"}),
        ("svc-batch", "principal", "Batch jobs", {"team": "UNASSIGNED"}),
    ]


def test_no_principals_in_prometheus_warns_and_uses_static(tmp_path, client, caplog):
    eco = make_ecosystem(
        tmp_path, client.url, identity_source={"source": "both", "static_identities": STATIC}
    )
    quiet = midnight(D4) + timedelta(hours=12)  # no samples at all in the window
    with caplog.at_level(logging.WARNING, logger="test.self_managed_kafka"):
        gathered = eco.gather_inventory(context(eco, client, now=quiet))
    assert f"No principals found in Prometheus for cluster {CLUSTER}" in caplog.messages
    assert [i.identity_id for i in gathered.identities] == ["alice", "svc-batch"]
    assert [r.resource_id for r in gathered.resources] == [CLUSTER]


def test_discovery_failure_is_a_gather_failure(tmp_path):
    eco = make_ecosystem(tmp_path, "http://127.0.0.1:1")
    with (
        dead_client() as dead,
        pytest.raises(GatherError, match=f"Prometheus discovery failed for cluster {CLUSTER}: "),
    ):
        eco.gather_inventory(context(eco, dead))


# --- 3. usage metrics and allocation through the Dagster pipeline ---------------------------------
def read_csv(path: Path) -> list[tuple]:
    with path.open(newline="") as fh:
        return [
            (
                r["product_type"],
                r["identity_id"],
                r["amount"],
                r["cost_type"],
                r["allocation_method"],
                r["allocation_detail"],
            )
            for r in csv.DictReader(fh)
        ]


def day_total(path: Path) -> Decimal:
    return sum((Decimal(row[2]) for row in read_csv(path)), Decimal(0))


USAGE_EVEN = ("usage", "even_split", "even_split_allocation")
USAGE_RATIO = ("usage", "usage_ratio", "usage_ratio_allocation")
NO_ACTIVE = ("shared", "even_split", "no_active_identities_located")
NO_METRICS = ("shared", "even_split", "no_metrics_located")
TERMINAL = ("shared", "terminal", "no_identities_located")


def test_handler_queries_and_resolution(tmp_path, client):
    eco = make_ecosystem(tmp_path, client.url)
    (handler,) = eco.handlers()
    assert handler.service_type == "kafka"
    assert handler.product_types == {COMPUTE, STORAGE, INGRESS, EGRESS}
    line = eco.gather_billing([D1], context(eco, client)).lines[0]
    assert handler.metric_queries(line) == {
        "bytes_in_per_principal": (
            "sum by (principal) (increase(kafka_server_brokertopicmetrics_bytesin_total[{step}]))"
        ),
        "bytes_out_per_principal": (
            "sum by (principal) (increase(kafka_server_brokertopicmetrics_bytesout_total[{step}]))"
        ),
    }


@pytest.mark.slow
def test_pipeline_both_sources_over_four_days(tmp_path, prometheus, client):
    settings = plugin_settings(
        prometheus.url,
        discovery_window_hours=2,
        identity_source={
            "source": "both",
            "principal_to_team": {"User:dave": "payments"},
            "static_identities": [
                {"identity_id": p, "identity_type": "principal"} for p in ("alice", "bob", "carol")
            ],
        },
    )
    config = load_config(write_config(tmp_path, {"onprem": settings}))
    result = materialize_range(build_definitions(config), "onprem", D1, D4)
    assert result.success
    out = tmp_path / "out"

    # metrics principals alice, bob: the worked example's lines split by usage
    assert read_csv(out / "onprem_2026-02-01.csv") == [
        (COMPUTE, "alice", "3.6000", *USAGE_EVEN),
        (COMPUTE, "bob", "3.6000", *USAGE_EVEN),
        (EGRESS, "alice", "0.1000", *USAGE_RATIO),
        (EGRESS, "bob", "0.3000", *USAGE_RATIO),
        (INGRESS, "alice", "0.0700", *USAGE_RATIO),
        (INGRESS, "bob", "0.0300", *USAGE_RATIO),
        (STORAGE, "alice", "0.0600", *USAGE_EVEN),
        (STORAGE, "bob", "0.0600", *USAGE_EVEN),
    ]
    # ingress 1.00 by 50/30/20 GiB; egress 0.10 without any principal usage → the static a, b, c
    assert read_csv(out / "onprem_2026-02-02.csv") == [
        (COMPUTE, "alice", "2.4000", *USAGE_EVEN),
        (COMPUTE, "bob", "2.4000", *USAGE_EVEN),
        (COMPUTE, "carol", "2.4000", *USAGE_EVEN),
        (EGRESS, "alice", "0.0334", *NO_METRICS),
        (EGRESS, "bob", "0.0333", *NO_METRICS),
        (EGRESS, "carol", "0.0333", *NO_METRICS),
        (INGRESS, "alice", "0.5000", *USAGE_RATIO),
        (INGRESS, "bob", "0.3000", *USAGE_RATIO),
        (INGRESS, "carol", "0.2000", *USAGE_RATIO),
        (STORAGE, "alice", "0.0400", *USAGE_EVEN),
        (STORAGE, "bob", "0.0400", *USAGE_EVEN),
        (STORAGE, "carol", "0.0400", *USAGE_EVEN),
    ]
    # no principals in Prometheus that day: the static identities (resource_active) take the cost
    # (the 0.00 network lines still get their zero rows from the fallback tier)
    assert read_csv(out / "onprem_2026-02-03.csv") == [
        (COMPUTE, "alice", "2.4000", *NO_ACTIVE),
        (COMPUTE, "bob", "2.4000", *NO_ACTIVE),
        (COMPUTE, "carol", "2.4000", *NO_ACTIVE),
        (EGRESS, "alice", "0.0000", *NO_METRICS),
        (EGRESS, "bob", "0.0000", *NO_METRICS),
        (EGRESS, "carol", "0.0000", *NO_METRICS),
        (INGRESS, "alice", "0.0000", *NO_METRICS),
        (INGRESS, "bob", "0.0000", *NO_METRICS),
        (INGRESS, "carol", "0.0000", *NO_METRICS),
        (STORAGE, "alice", "0.0400", *NO_ACTIVE),
        (STORAGE, "bob", "0.0400", *NO_ACTIVE),
        (STORAGE, "carol", "0.0400", *NO_ACTIVE),
    ]
    # no samples at all: no billing lines, a header-only file
    assert (out / "onprem_2026-02-04.csv").read_text() == HEADER + "\n"

    # every day's CSV total equals the constructed bill exactly
    eco = ecosystem_for(config.tenant("onprem"))
    bill = eco.gather_billing([D1, D2, D3, D4], context(eco, client)).lines
    for d, expected in ((D1, "7.82"), (D2, "8.42"), (D3, "7.32"), (D4, "0")):
        billed = sum((ln.total_cost for ln in bill if ln.date == d), Decimal(0))
        assert billed == Decimal(expected)
        assert day_total(out / f"onprem_{d}.csv") == billed


@pytest.mark.slow
def test_pipeline_static_and_no_identities(tmp_path, prometheus):
    static = plugin_settings(
        prometheus.url,
        identity_source={
            "source": "static",
            "static_identities": [{"identity_id": p, "identity_type": "principal"} for p in ("alice", "bob")],
        },
    )
    static["emitters"] = [{"type": "csv", "params": {"output_dir": "out-static"}}]
    config = load_config(write_config(tmp_path, {"static_only": static}))
    assert materialize_range(build_definitions(config), "static_only", D1, D1).success
    assert read_csv(tmp_path / "out-static" / "static-only_2026-02-01.csv") == [
        (COMPUTE, "alice", "3.6000", *NO_ACTIVE),
        (COMPUTE, "bob", "3.6000", *NO_ACTIVE),
        (EGRESS, "alice", "0.2000", *NO_METRICS),
        (EGRESS, "bob", "0.2000", *NO_METRICS),
        (INGRESS, "alice", "0.0500", *NO_METRICS),
        (INGRESS, "bob", "0.0500", *NO_METRICS),
        (STORAGE, "alice", "0.0600", *NO_ACTIVE),
        (STORAGE, "bob", "0.0600", *NO_ACTIVE),
    ]

    # prometheus identities only, on the day without principals: nobody to charge → UNALLOCATED
    prom_only = plugin_settings(prometheus.url)
    prom_only["emitters"] = [{"type": "csv", "params": {"output_dir": "out-prom"}}]
    config = load_config(write_config(tmp_path, {"prom_only": prom_only}))
    assert materialize_range(build_definitions(config), "prom_only", D3, D3).success
    assert read_csv(tmp_path / "out-prom" / "prom-only_2026-02-03.csv") == [
        (COMPUTE, "UNALLOCATED", "7.2000", *TERMINAL),
        (EGRESS, "UNALLOCATED", "0.0000", *TERMINAL),
        (INGRESS, "UNALLOCATED", "0.0000", *TERMINAL),
        (STORAGE, "UNALLOCATED", "0.1200", *TERMINAL),
    ]
