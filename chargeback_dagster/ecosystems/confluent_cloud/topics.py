"""Topic attribution (docs/confluent-cloud.md §9): each Kafka cluster's daily lines split across its topics.

Pure calculation: the caller (defs/topic_assets.py through `attribute_topics`) reads the date's billing
lines, the cluster's inventory topics and the per-topic metrics fetched by the usage_metrics step, and stores
the rows this module returns. Chargeback rows are never touched.
"""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from chargeback_dagster.domain import BillingLine, MetricRow, Resource
from chargeback_dagster.ecosystems.confluent_cloud.config import TOPIC_METRIC_KEYS, TopicAttributionConfig
from chargeback_dagster.money import (
    decimal_weights_to_ints,
    even_split_units,
    round4_units,
    split_units,
)

BYTES_IN, BYTES_OUT, RETAINED = TOPIC_METRIC_KEYS
DEFAULT_METRIC_NAMES = {
    BYTES_IN: "confluent_kafka_server_received_bytes",
    BYTES_OUT: "confluent_kafka_server_sent_bytes",
    RETAINED: "confluent_kafka_server_retained_bytes",
}
TOPIC_RESOURCE_TYPE = "topic"
CLUSTER_PREFIX = "lkc-"
UNATTRIBUTED = "__UNATTRIBUTED__"
ATTRIBUTION_FAILED = "ATTRIBUTION_FAILED"
EVEN_SPLIT = "even_split"
BYTES_RATIO = "bytes_ratio"
RETAINED_BYTES_RATIO = "retained_bytes_ratio"

# A model: (name, metric keys whose per-topic values are added into the weight; () = even split)
Model = tuple[str, tuple[str, ...]]
DEFAULT_MODELS: dict[str, Model] = {
    "KAFKA_NETWORK_WRITE": (BYTES_RATIO, (BYTES_IN,)),
    "KAFKA_NETWORK_READ": (BYTES_RATIO, (BYTES_OUT,)),
    "KAFKA_STORAGE": (RETAINED_BYTES_RATIO, (RETAINED,)),
    "KAFKA_NUM_CKU": (BYTES_RATIO, (BYTES_IN, BYTES_OUT)),
    "KAFKA_NUM_CKUS": (BYTES_RATIO, (BYTES_IN, BYTES_OUT)),
    "KAFKA_PARTITION": (EVEN_SPLIT, ()),
    "KAFKA_BASE": (EVEN_SPLIT, ()),
}


@dataclass(frozen=True)
class TopicRow:
    """One stored row of a date (amount in units of 0.0001)."""

    env_id: str
    cluster_resource_id: str
    topic_name: str
    product_category: str
    product_type: str
    attribution_method: str
    amount_units: int


@dataclass
class DateAttribution:
    rows: list[TopicRow] = field(default_factory=list)
    resolved_clusters: list[str] = field(default_factory=list)  # their stored rows are replaced by `rows`
    pending_clusters: list[str] = field(default_factory=list)  # metrics failed below the retry limit
    succeeded_lines: list[BillingLine] = field(default_factory=list)  # attempt counters reset


def metric_name(config: TopicAttributionConfig, key: str) -> str:
    return config.metric_name_overrides.get(key) or DEFAULT_METRIC_NAMES[key]


def topic_query(config: TopicAttributionConfig, key: str, cluster_id: str | None = None) -> str:
    """`sum by (kafka_id, topic) (<metric>{kafka_id="<lkc>"})`; without a cluster, for all (batched)."""
    selector = metric_name(config, key)
    if cluster_id is not None:
        escaped = cluster_id.replace("\\", "\\\\").replace('"', '\\"')
        selector += f'{{kafka_id="{escaped}"}}'
    return f"sum by (kafka_id, topic) ({selector})"


def excluded(config: TopicAttributionConfig, topic: str) -> bool:
    return any(fnmatch.fnmatchcase(topic, pattern) for pattern in config.exclude_topic_patterns)


def topic_resource(cluster_id: str, topic: str) -> Resource:
    return Resource(
        resource_id=f"{cluster_id}:topic:{topic}",
        resource_type=TOPIC_RESOURCE_TYPE,
        display_name=topic,
        parent_id=cluster_id,
    )


def discover_topics(
    config: TopicAttributionConfig,
    cluster_ids: Iterable[str],
    query_range: Callable[[str, datetime, datetime], Iterable[dict[str, str]]],
    now: datetime,
    logger: logging.Logger | logging.LoggerAdapter,
) -> list[Resource]:
    """Topic resources of each cluster seen in the three metrics over the last hour before `now`.

    `query_range(promql, start, end)` returns the label sets of the series; a failing cluster is logged and
    skipped (docs/confluent-cloud.md §9, "Discovery")."""
    found: list[Resource] = []
    for cluster_id in sorted(cluster_ids):
        topics: set[str] = set()
        try:
            for key in TOPIC_METRIC_KEYS:
                for labels in query_range(
                    topic_query(config, key, cluster_id), now - timedelta(hours=1), now
                ):
                    if labels.get("topic"):
                        topics.add(labels["topic"])
        except Exception as exc:  # any failure of one cluster's queries: the others still count
            logger.warning(f"Topic discovery for {cluster_id} failed: {exc}")
            continue
        found.extend(topic_resource(cluster_id, t) for t in sorted(topics) if not excluded(config, t))
    return found


def line_model(product_type: str, overrides: Mapping[str, str], warn: Callable[[str], None]) -> Model | None:
    """The model of a product type after `cost_mapping_overrides`; None: the line is not attributed."""
    default = DEFAULT_MODELS.get(product_type)
    mode = overrides.get(product_type)
    if mode is None:
        return default
    if mode == "disabled":
        return None
    if mode == EVEN_SPLIT:
        return (EVEN_SPLIT, ())
    if mode == RETAINED_BYTES_RATIO:
        return (RETAINED_BYTES_RATIO, (RETAINED,))
    # bytes_ratio: the type's default chain
    if default is None or default[0] == EVEN_SPLIT:
        warn(f"cost_mapping_overrides {product_type}: bytes_ratio has no default chain for this type")
    return default


def _value(row: MetricRow, key: str) -> Decimal:
    """Bytes in/out: the day's sum; retained bytes: the day's max sample. Not finite or < 0 → 0."""
    value = row.value_max if key == RETAINED else row.value_sum
    return Decimal(str(value)) if math.isfinite(value) and value > 0 else Decimal(0)


def topic_values(
    cluster_id: str, metrics: Mapping[tuple[str, str], list[MetricRow]]
) -> dict[str, dict[str, Decimal]]:
    """key → topic → value of the cluster's day (only topics with a series)."""
    out: dict[str, dict[str, Decimal]] = {}
    for key in TOPIC_METRIC_KEYS:
        per_topic = out.setdefault(key, {})
        for row in metrics.get((cluster_id, key), []):
            topic = row.labels.get("topic")
            if topic:
                per_topic[topic] = per_topic.get(topic, Decimal(0)) + _value(row, key)
    return out


def attribute_date(
    d: date,
    lines: list[BillingLine],
    inventory_topics: Mapping[str, set[str]],
    metrics: Mapping[tuple[str, str], list[MetricRow]],
    failed_metrics: Iterable[tuple[str, str]],
    config: TopicAttributionConfig,
    retry_limit: int,
    record_failure: Callable[[BillingLine], int],
    logger: logging.Logger | logging.LoggerAdapter,
) -> DateAttribution:
    """The rows of date `d` (docs/confluent-cloud.md §9, "Per date").

    `inventory_topics`: cluster → topic names existing that day; `metrics`: (cluster, key) → rows of the
    ok fetches; `failed_metrics`: (cluster, key) of failed fetches; `record_failure(line)` increments the
    line's topic_attribution_attempts in its own transaction and returns the new count."""
    warned: set[str] = set()

    def warn(message: str) -> None:
        if message not in warned:
            warned.add(message)
            logger.warning(message)

    failed = set(failed_metrics)
    clusters: dict[tuple[str, str], list[tuple[BillingLine, Model]]] = {}
    for line in lines:
        if not line.resource_id.startswith(CLUSTER_PREFIX):
            continue
        model = line_model(line.product_type, config.cost_mapping_overrides, warn)
        if model is not None:
            clusters.setdefault((line.resource_id, line.env_id or ""), []).append((line, model))

    out = DateAttribution()
    for (cluster_id, env_id), group in sorted(clusters.items()):
        if any((cluster_id, key) in failed for key in TOPIC_METRIC_KEYS):
            counts = [record_failure(line) for line, _ in group]
            if min(counts) < retry_limit:
                out.pending_clusters.append(cluster_id)
                continue
            logger.warning(
                f"Topic attribution of {cluster_id} on {d} failed {min(counts)} times; unattributed"
            )
            out.resolved_clusters.append(cluster_id)
            out.rows.extend(
                TopicRow(
                    env_id,
                    cluster_id,
                    UNATTRIBUTED,
                    line.product_category,
                    line.product_type,
                    ATTRIBUTION_FAILED,
                    round4_units(line.total_cost),
                )
                for line, _ in group
            )
            continue
        values = topic_values(cluster_id, metrics)
        names = set(inventory_topics.get(cluster_id, set()))
        for per_topic in values.values():
            names.update(per_topic)
        topics = sorted(t for t in names if not excluded(config, t))
        out.resolved_clusters.append(cluster_id)
        out.succeeded_lines.extend(line for line, _ in group)
        for line, model in group:
            for topic, method, units in _split_line(line, model, topics, values, config):
                out.rows.append(
                    TopicRow(
                        env_id, cluster_id, topic, line.product_category, line.product_type, method, units
                    )
                )
    return out


def _split_line(
    line: BillingLine,
    model: Model,
    topics: list[str],
    values: dict[str, dict[str, Decimal]],
    config: TopicAttributionConfig,
) -> list[tuple[str, str, int]]:
    """(topic, attribution_method, units) of one line; every topic kept, weight 0 → 0.0000."""
    if not topics:
        return []
    total = round4_units(line.total_cost)
    name, keys = model
    if keys:
        weights = [sum((values[k].get(t, Decimal(0)) for k in keys), Decimal(0)) for t in topics]
        if sum(weights) > 0:
            shares = split_units(total, decimal_weights_to_ints(weights))
            return list(zip(topics, [name] * len(topics), shares, strict=True))
        if config.missing_metrics_behavior == "skip":
            return []
    return list(zip(topics, [EVEN_SPLIT] * len(topics), even_split_units(total, len(topics)), strict=True))
