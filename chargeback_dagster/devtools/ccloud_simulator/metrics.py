"""The organisation's Prometheus metrics: hourly samples, their daily sums and OpenMetrics text for promtool.

Per active hour, ``confluent_kafka_server_request_bytes`` / ``_response_bytes`` per (``kafka_id``,
``principal_id``) where the principals are the cluster's API keys except the last one (idle), one service
account directly and, on the first cluster, one identity pool; ``confluent_kafka_server_received_bytes`` /
``_sent_bytes`` / ``_retained_bytes`` per (``kafka_id``, ``topic``) for topic attribution (two to four
topics per cluster plus an internal ``_confluent-`` topic); ``confluent_flink_num_cfu`` per
(``compute_pool_id``, ``flink_statement_name``). Integer values, so sums are exact.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from chargeback_dagster.devtools.ccloud_simulator.common import midnight, stable_hash
from chargeback_dagster.devtools.ccloud_simulator.model import OrgModel
from chargeback_dagster.devtools.openmetrics import OpenMetricsWriter

TOPIC_NAMES = ("orders", "payments", "clickstream", "audit-events")
TOPIC_METRICS = ("received_bytes", "sent_bytes", "retained_bytes")


class OrgMetrics(OrgModel):
    """The metrics part of ``SimulatedOrg``."""

    def _sample_times(self, d: date, step_seconds: int) -> list[datetime]:
        start = midnight(d)
        return [start + timedelta(seconds=i * step_seconds) for i in range(86400 // step_seconds)]

    def kafka_principals(self, kafka_id: str) -> list[str]:
        """Principal ids with traffic on a cluster: its API keys but the last, one SA, maybe one pool."""
        idx = next(i for i, c in enumerate(self.clusters) if c.id == kafka_id)
        keys = [k.id for k in self.api_keys if k.resource_id == kafka_id]
        principals = keys[:-1] if len(keys) > 1 else keys
        if self.service_accounts:
            principals.append(self.service_accounts[(idx * 7 + 3) % len(self.service_accounts)]["id"])
        if idx == 0:
            principals.append(next(iter(self.identity_pools.values()))[0]["id"])
        return list(dict.fromkeys(principals))

    def _bytes_value(self, kafka_id: str, principal: str, direction: str, ts: datetime) -> int:
        scale = 1 + stable_hash(self.spec.seed, "scale", kafka_id, principal, direction) % 50
        return (
            scale * 100_000
            + stable_hash(self.spec.seed, "bytes", kafka_id, principal, direction, ts.timestamp()) % 1_000_000
        )

    def kafka_samples(
        self, d: date, kafka_id: str, direction: str = "request", step_seconds: int = 3600
    ) -> dict[str, list[tuple[datetime, int]]]:
        """``principal_id`` → samples of ``confluent_kafka_server_<direction>_bytes`` on day ``d``."""
        if direction not in ("request", "response"):
            raise ValueError("direction must be 'request' or 'response'")
        cluster = self.cluster(kafka_id)
        times = [t for t in self._sample_times(d, step_seconds) if cluster.exists_at(t)]
        return (
            {
                p: [(t, self._bytes_value(kafka_id, p, direction, t)) for t in times]
                for p in self.kafka_principals(kafka_id)
            }
            if times
            else {}
        )

    def expected_bytes(
        self, d: date, kafka_id: str, direction: str = "request", step_seconds: int = 3600
    ) -> dict[str, float]:
        """Σ over the day's samples per ``principal_id`` (what ``sum by (kafka_id, principal_id)`` gives)."""
        return {
            p: float(sum(v for _, v in samples))
            for p, samples in self.kafka_samples(d, kafka_id, direction, step_seconds).items()
        }

    def kafka_topics(self, kafka_id: str) -> list[str]:
        """Topic names of a cluster with per-topic metrics: 2 to 4 of TOPIC_NAMES and an internal topic."""
        count = 2 + stable_hash(self.spec.seed, "topics", kafka_id) % 3
        return [*TOPIC_NAMES[:count], "_confluent-command"]

    def topic_samples(
        self, d: date, kafka_id: str, metric: str, step_seconds: int = 3600
    ) -> dict[str, list[tuple[datetime, int]]]:
        """``topic`` → samples of ``confluent_kafka_server_<metric>`` (received_bytes, sent_bytes or
        retained_bytes) on day ``d``; retained bytes grow through the day."""
        if metric not in TOPIC_METRICS:
            raise ValueError(f"metric must be one of {TOPIC_METRICS}")
        cluster = self.cluster(kafka_id)
        times = [t for t in self._sample_times(d, step_seconds) if cluster.exists_at(t)]
        out = {}
        for topic in self.kafka_topics(kafka_id):
            scale = 1 + stable_hash(self.spec.seed, "topic-scale", kafka_id, topic, metric) % 20
            if metric == "retained_bytes":
                out[topic] = [(t, scale * 1_000_000 + i * scale * 1_000) for i, t in enumerate(times)]
            else:
                out[topic] = [
                    (
                        t,
                        scale * 10_000
                        + stable_hash(self.spec.seed, metric, kafka_id, topic, t.timestamp()) % 50_000,
                    )
                    for t in times
                ]
        return out

    def flink_samples(
        self, d: date, pool_id: str, step_seconds: int = 3600
    ) -> dict[str, list[tuple[datetime, int]]]:
        """``flink_statement_name`` → samples of ``confluent_flink_num_cfu`` for a pool on day ``d``."""
        times = self._sample_times(d, step_seconds)
        return {
            st["name"]: [
                (t, 1 + stable_hash(self.spec.seed, "cfu", st["uid"], t.timestamp()) % 4) for t in times
            ]
            for st in self.statements
            if st["pool_id"] == pool_id
        }

    def expected_cfu(self, d: date, pool_id: str, step_seconds: int = 3600) -> dict[str, float]:
        return {
            n: float(sum(v for _, v in s)) for n, s in self.flink_samples(d, pool_id, step_seconds).items()
        }

    def openmetrics(self, step_seconds: int = 3600) -> str:
        """OpenMetrics text (gauges) for every day of the period; see the module docstring."""
        if step_seconds <= 0 or 86400 % step_seconds:
            raise ValueError("step_seconds must divide 86400")
        writer = OpenMetricsWriter()
        for d in self.days:
            for cluster in self.clusters:
                for direction in ("request", "response"):
                    for principal, samples in self.kafka_samples(
                        d, cluster.id, direction, step_seconds
                    ).items():
                        writer.add(
                            f"confluent_kafka_server_{direction}_bytes",
                            {"kafka_id": cluster.id, "principal_id": principal},
                            samples,
                        )
                for metric in TOPIC_METRICS:
                    for topic, samples in self.topic_samples(d, cluster.id, metric, step_seconds).items():
                        writer.add(
                            f"confluent_kafka_server_{metric}",
                            {"kafka_id": cluster.id, "topic": topic},
                            samples,
                        )
            for pool in self.flink_pools:
                for name, samples in self.flink_samples(d, pool["id"], step_seconds).items():
                    writer.add(
                        "confluent_flink_num_cfu",
                        {"compute_pool_id": pool["id"], "flink_statement_name": name},
                        samples,
                    )
        return writer.text()
