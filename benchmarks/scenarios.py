"""Benchmark scenarios (issue: "200-day backfill of a large Confluent organisation in one run").

* ``confluent``: the Confluent Cloud simulator (``SimulatedOrg``) sized like the reference workload —
  50 Kafka clusters (plus the simulator's deleted cluster), 500 principals (450 service accounts + 50
  users), 30 API keys per cluster of which 29 carry traffic plus one service account (≈ 30 active
  principals per cluster), no connectors (they would push the line count far above the reference),
  3 ksqlDB clusters and 3 Flink pools per environment: ≈ 277 billing lines per day, ≈ 55,400 over 200
  days.
* ``confluent-20d``: the first 20 days of the same organisation.
* ``self-managed``: one self-managed Kafka cluster with 500 principals (static identity list, usage from
  Prometheus) over 200 days: 4 billing lines per day, usage counters sampled every 30 min.

History is written as one OpenMetrics file per day, streaming, so the 200-day history (≈ 14 M samples,
≈ 1.4 GB of text) never sits in memory and promtool (which re-parses its whole input once per 2-hour
block) imports each day in a single cheap pass set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from chargeback_dagster.devtools.ccloud_simulator import OrgSpec, SimulatedOrg

START = date(2026, 3, 1)
DAY = timedelta(days=1)
GENERATOR_VERSION = 1  # bump when the generated data changes (invalidates cached Prometheus data)


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # "confluent" | "self_managed"
    start: date
    days: int
    spec: OrgSpec | None = None
    principals: int = 0
    topics: int = 0
    brokers: int = 0
    counter_step_seconds: int = 1800
    extra: dict = field(default_factory=dict)

    @property
    def dates(self) -> list[date]:
        return [self.start + i * DAY for i in range(self.days)]

    @property
    def end(self) -> date:
        return self.start + (self.days - 1) * DAY

    def data_key(self) -> str:
        """Identifies the generated history (the 20-day slice shares the 200-day organisation's data)."""
        if self.kind == "confluent":
            text = f"v{GENERATOR_VERSION}|confluent|{self.spec!r}"
        else:
            text = (
                f"v{GENERATOR_VERSION}|self_managed|{self.start}|{self.data_days}|{self.principals}|"
                f"{self.topics}|{self.brokers}|{self.counter_step_seconds}"
            )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def data_days(self) -> int:
        return self.extra.get("data_days", self.days)


def confluent_spec(days: int, small: bool = False) -> OrgSpec:
    if small:
        return OrgSpec(
            environments=2,
            clusters_per_env=2,
            service_accounts=12,
            users=3,
            api_keys_per_cluster=5,
            connectors_per_cluster=0,
            ksqldb_per_env=1,
            flink_pools_per_env=1,
            statements_per_pool=2,
            start_date=START,
            days=days,
        )
    return OrgSpec(
        environments=5,
        clusters_per_env=10,
        service_accounts=450,
        users=50,
        api_keys_per_cluster=30,
        connectors_per_cluster=0,
        ksqldb_per_env=3,
        flink_pools_per_env=3,
        statements_per_pool=4,
        start_date=START,
        days=days,
    )


def scenario(name: str, small: bool = False) -> Scenario:
    if name == "confluent":
        days = 4 if small else 200
        return Scenario(name, "confluent", START, days, spec=confluent_spec(days, small))
    if name == "confluent-20d":
        data_days = 4 if small else 200
        days = 2 if small else 20
        return Scenario(
            name,
            "confluent",
            START,
            days,
            spec=confluent_spec(data_days, small),
            extra={"data_days": data_days},
        )
    if name == "self-managed":
        if small:
            return Scenario(name, "self_managed", START, 3, principals=12, topics=4, brokers=3)
        return Scenario(name, "self_managed", START, 200, principals=500, topics=50, brokers=3)
    raise ValueError(f"unknown scenario {name!r}")


# ------------------------------------------------------------------------------------------ Confluent


def _midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def _ts(t: datetime) -> int:
    return int(t.timestamp())


def _memoize_expected_bytes(org: SimulatedOrg, memo: dict) -> None:
    """The simulator recomputes every sample to price network lines; reuse the sums the writer computed."""
    original = org.expected_bytes

    def expected_bytes(d, kafka_id, direction="request", step_seconds=3600):
        key = (d, kafka_id, direction, step_seconds)
        if key not in memo:
            memo[key] = original(d, kafka_id, direction, step_seconds)
        return memo[key]

    org.expected_bytes = expected_bytes  # type: ignore[method-assign]


class _BlockFiles:
    """Routes one day's lines to one OpenMetrics file per aligned 2-hour block.

    promtool 2.42 writes 2-hour blocks and re-parses its whole input once per block it creates, so
    2-hour files import in one pass each (≈ 0.15 s for 3,000 series)."""

    BLOCK = 7200

    def __init__(self, directory: Path, d: date) -> None:
        self.directory = directory
        self.d = d
        self.chunks: dict[int, list[str]] = {}
        self.family = ""
        self.family_of: dict[int, str] = {}

    def family_line(self, line: str) -> None:
        self.family = line

    def sample(self, line: str, ts: int) -> None:
        block = ts // self.BLOCK
        out = self.chunks.get(block)
        if out is None:
            out = self.chunks[block] = []
        if self.family_of.get(block) != self.family:
            out.append(self.family)
            self.family_of[block] = self.family
        out.append(line)

    def close(self) -> list[Path]:
        paths = []
        for block in sorted(self.chunks):
            path = self.directory / f"{block * self.BLOCK}.om"
            with path.open("w", encoding="utf-8") as fh:
                fh.writelines(self.chunks[block])
                fh.write("# EOF\n")
            paths.append(path)
        return paths


def write_confluent_history(
    org: SimulatedOrg, directory: Path, days: list[date] | None = None
) -> tuple[list[Path], dict]:
    """One OpenMetrics file per 2-hour block (same series, values and formatting as ``org.openmetrics()``).

    Returns the files and the per-(day, cluster, direction) byte sums (see ``install_byte_sums``)."""
    directory.mkdir(parents=True, exist_ok=True)
    memo: dict = {}
    clusters = sorted(org.clusters, key=lambda c: c.id)
    pools = sorted(org.flink_pools, key=lambda p: p["id"])
    paths = []
    for d in days or org.days:
        out = _BlockFiles(directory, d)
        out.family_line("# TYPE confluent_flink_num_cfu gauge\n")
        for pool in pools:
            samples = org.flink_samples(d, pool["id"])
            for name in sorted(samples):
                head = (
                    f'confluent_flink_num_cfu{{compute_pool_id="{pool["id"]}",flink_statement_name="{name}"}}'
                )
                for t, v in samples[name]:
                    ts = _ts(t)
                    out.sample(f"{head} {v} {ts}\n", ts)
        for direction in ("request", "response"):
            metric = f"confluent_kafka_server_{direction}_bytes"
            out.family_line(f"# TYPE {metric} gauge\n")
            for cluster in clusters:
                per_principal = org.kafka_samples(d, cluster.id, direction)
                memo[(d, cluster.id, direction, 3600)] = {
                    p: float(sum(v for _, v in s)) for p, s in per_principal.items()
                }
                for principal in sorted(per_principal):
                    head = f'{metric}{{kafka_id="{cluster.id}",principal_id="{principal}"}}'
                    for t, v in per_principal[principal]:
                        ts = _ts(t)
                        out.sample(f"{head} {v} {ts}\n", ts)
        paths.extend(out.close())
    return paths, memo


def _confluent_worker(spec: OrgSpec, directory: Path, days: list[date]) -> tuple[list[Path], dict]:
    return write_confluent_history(SimulatedOrg(spec), directory, days)


def generate_confluent(org: SimulatedOrg, directory: Path, workers: int = 2) -> list[Path]:
    """Write the history with `workers` processes and memoize the byte sums on `org`."""
    from concurrent.futures import ProcessPoolExecutor

    days = org.days
    parts = [days[i::workers] for i in range(workers)]
    paths: list[Path] = []
    memo: dict = {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for part_paths, part_memo in pool.map(
            _confluent_worker, [org.spec] * workers, [directory] * workers, parts
        ):
            paths.extend(part_paths)
            memo.update(part_memo)
    install_byte_sums(org, memo)
    return sorted(paths, key=lambda p: int(p.stem))


def install_byte_sums(org: SimulatedOrg, memo: dict) -> None:
    """Make ``org.expected_bytes`` answer from precomputed sums (building cost lines is then cheap)."""
    _memoize_expected_bytes(org, memo)


def confluent_org(s: Scenario) -> SimulatedOrg:
    assert s.spec is not None
    return SimulatedOrg(s.spec)


# ------------------------------------------------------------------------------------- self-managed

IN = "kafka_server_brokertopicmetrics_bytesin_total"
OUT = "kafka_server_brokertopicmetrics_bytesout_total"
CLUSTER_ID = "kafka-bench-001"


def principal_names(n: int) -> list[str]:
    return [f"User:app-{i:04d}" for i in range(n)]


def _h(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


def write_self_managed_history(s: Scenario, directory: Path) -> list[Path]:
    """Counters per (broker, topic, principal) every ``counter_step_seconds`` (one series per principal and
    direction), log size per (broker, topic) hourly; one file per day, counters cumulative across files."""
    directory.mkdir(parents=True, exist_ok=True)
    principals = principal_names(s.principals)
    series = []
    for i, p in enumerate(principals):
        labels = f'broker="{1 + i % s.brokers}",principal="{p}",topic="topic-{i % s.topics:03d}"'
        series.append((labels, 1 + _h("rate", p) % 1000))
    series.sort()
    totals = {(direction, labels): 0 for direction in (IN, OUT) for labels, _ in series}
    per_day = 86400 // s.counter_step_seconds
    paths = []
    start = s.start - DAY  # a day of lead-in so that the first day's increase() windows are complete
    for n in range(s.data_days + 1):
        d = start + n * DAY
        base = _ts(_midnight(d))
        out = _BlockFiles(directory, d)
        out.family_line("# TYPE kafka_log_log_size gauge\n")
        for b in range(1, s.brokers + 1):
            for t in range(s.topics):
                if t % s.brokers != b - 1:
                    continue
                size = (10 + _h("size", b, t) % 90) * 2**30
                for h in range(24):
                    ts = base + h * 3600
                    out.sample(
                        f'kafka_log_log_size{{broker="{b}",topic="topic-{t:03d}"}} {size + h * 2**20} {ts}\n',
                        ts,
                    )
        for direction, factor in ((IN, 1_000_000), (OUT, 2_500_000)):
            out.family_line(f"# TYPE {direction[: -len('_total')]} counter\n")
            for labels, rate in series:
                key = (direction, labels)
                value = totals[key]
                for k in range(per_day):
                    value += rate * factor * (1 + (k + n) % 5)
                    ts = base + k * s.counter_step_seconds
                    out.sample(f"{direction}{{{labels}}} {value} {ts}\n", ts)
                totals[key] = value
        paths.extend(out.close())
    return paths


def iter_lines(paths: list[Path]) -> Iterator[str]:
    for path in paths:
        with path.open(encoding="utf-8") as fh:
            yield from fh
