"""`confluent_cloud`: billing from the Costs API, inventory from the Confluent Cloud APIs, usage from a
Prometheus scraping the Metrics API export (docs/confluent-cloud.md).

Test-only knob: the environment variable ``CHARGEBACK_CCLOUD_BACKOFF_SCALE`` (a float, default 1) multiplies
the client's exponential backoff for 5xx / transport errors. Provider-given 429 waits (``Retry-After``,
``X-RateLimit-Reset``) are always honoured in full. Never set it in production.
"""

from __future__ import annotations

import os
from datetime import date, datetime
from decimal import Decimal

from chargeback_dagster.allocation.types import Allocator, Handler
from chargeback_dagster.domain import BillingLine, Resource
from chargeback_dagster.ecosystems.base import (
    BillingGather,
    Ecosystem,
    GatherContext,
    GatherError,
    InventoryGather,
)
from chargeback_dagster.ecosystems.confluent_cloud import inventory as inv
from chargeback_dagster.ecosystems.confluent_cloud import resolution as res
from chargeback_dagster.ecosystems.confluent_cloud.allocators import (
    confluent_allocators,
    confluent_unknown_allocator,
)
from chargeback_dagster.ecosystems.confluent_cloud.billing import fetch_billing_lines
from chargeback_dagster.ecosystems.confluent_cloud.client import ConfluentApiError, ConfluentClient
from chargeback_dagster.ecosystems.confluent_cloud.config import TOPIC_METRIC_KEYS, ConfluentCloudSettings
from chargeback_dagster.ecosystems.confluent_cloud.topics import CLUSTER_PREFIX, discover_topics, topic_query
from chargeback_dagster.sources.prometheus import RangeQuery

BACKOFF_SCALE_ENV = "CHARGEBACK_CCLOUD_BACKOFF_SCALE"

# §7: key → (metric, grouping labels, resource label)
METRICS: dict[str, tuple[str, str, str]] = {
    res.BYTES_IN: ("confluent_kafka_server_request_bytes", "kafka_id, principal_id", "kafka_id"),
    res.BYTES_OUT: ("confluent_kafka_server_response_bytes", "kafka_id, principal_id", "kafka_id"),
    res.FLINK_PRIMARY: (
        "confluent_flink_num_cfu",
        "compute_pool_id, flink_statement_name",
        "compute_pool_id",
    ),
    res.FLINK_FALLBACK: (
        "confluent_flink_statement_utilization_cfu_minutes_consumed",
        "compute_pool_id, flink_statement_name",
        "compute_pool_id",
    ),
}

# §8 routing: handler → product types
KAFKA_TYPES = (
    "KAFKA_NUM_CKU",
    "KAFKA_NUM_CKUS",
    "KAFKA_NETWORK_READ",
    "KAFKA_NETWORK_WRITE",
    "KAFKA_PARTITION",
    "KAFKA_BASE",
    "KAFKA_STORAGE",
)
ROUTING: dict[str, tuple[str, ...]] = {
    inv.KAFKA: KAFKA_TYPES,
    inv.SCHEMA_REGISTRY: ("SCHEMA_REGISTRY", "GOVERNANCE_BASE", "NUM_RULES"),
    inv.CONNECTOR: (
        "CONNECT_NUM_TASKS",
        "CONNECT_THROUGHPUT",
        "CUSTOM_CONNECT_NUM_TASKS",
        "CUSTOM_CONNECT_THROUGHPUT",
        "CONNECT_CAPACITY",
        "CUSTOM_CONNECT_PLUGIN",
    ),
    inv.KSQLDB: ("KSQL_NUM_CSU", "KSQL_NUM_CSUS"),
    inv.FLINK: ("FLINK_NUM_CFU", "FLINK_NUM_CFUS"),
    inv.ORG_WIDE: ("AUDIT_LOG_READ", "SUPPORT"),
    inv.DEFAULT: (
        "TABLEFLOW_DATA_PROCESSED",
        "TABLEFLOW_NUM_TOPICS",
        "TABLEFLOW_STORAGE",
        "CLUSTER_LINKING_PER_LINK",
        "CLUSTER_LINKING_READ",
        "CLUSTER_LINKING_WRITE",
    ),
}
RESOLVERS = {
    inv.KAFKA: res.resolve_kafka,
    inv.SCHEMA_REGISTRY: res.resolve_kafka,
    inv.CONNECTOR: res.resolve_connector,
    inv.KSQLDB: res.resolve_ksqldb,
    inv.FLINK: res.resolve_flink,
    inv.ORG_WIDE: res.resolve_empty,
    inv.DEFAULT: res.resolve_empty,
}
LINE_METRICS: dict[str, tuple[str, ...]] = {
    "KAFKA_NUM_CKU": (res.BYTES_IN, res.BYTES_OUT),
    "KAFKA_NUM_CKUS": (res.BYTES_IN, res.BYTES_OUT),
    "KAFKA_NETWORK_READ": (res.BYTES_OUT,),
    "KAFKA_NETWORK_WRITE": (res.BYTES_IN,),
    # For metrics_derived only (decision D11, docs/confluent-cloud.md §8). They share the batched bytes
    # queries (one per key and day for every cluster) that the CKU / network lines already make.
    "KAFKA_PARTITION": (res.BYTES_IN, res.BYTES_OUT),
    "KAFKA_BASE": (res.BYTES_IN, res.BYTES_OUT),
    "KAFKA_STORAGE": (res.BYTES_IN, res.BYTES_OUT),
    "FLINK_NUM_CFU": (res.FLINK_PRIMARY, res.FLINK_FALLBACK),
    "FLINK_NUM_CFUS": (res.FLINK_PRIMARY, res.FLINK_FALLBACK),
}


def _label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def metric_query(key: str, resource_id: str | None = None) -> str:
    """PromQL of §7 for ``key``; with ``resource_id`` None the resource filter is left out (batched)."""
    metric, grouping, label = METRICS[key]
    selector = metric if resource_id is None else f'{metric}{{{label}="{_label_value(resource_id)}"}}'
    return f"sum by ({grouping}) ({selector})"


def backoff_scale() -> float:
    raw = os.environ.get(BACKOFF_SCALE_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        return 1.0
    return value if value >= 0 else 1.0


class ConfluentCloudEcosystem(Ecosystem):
    name = "confluent_cloud"
    settings: ConfluentCloudSettings
    api_pool = "ccloud_api"  # Dagster concurrency pool of Confluent-calling steps (docs/operations.md §5)

    # -- clients --------------------------------------------------------------------------------------
    def _client(self, ctx: GatherContext, *, base_url: str | None = None, key=None, secret=None, **kw):
        api = self.settings.ccloud_api
        return ConfluentClient(
            base_url or api.base_url,
            key if key is not None else api.key.get_secret_value(),
            secret if secret is not None else api.secret.get_secret_value(),
            check_deadline=ctx.check_deadline,
            deadline_left=ctx.deadline_left,
            logger=ctx.logger,
            backoff_scale=backoff_scale(),
            **kw,
        )

    def flink_base_url(self, cloud: str, region: str) -> str:
        return self.settings.ccloud_api.flink_url_template.format(region=region, cloud=cloud).rstrip("/")

    # -- billing --------------------------------------------------------------------------------------
    def gather_billing(self, dates: list[date], ctx: GatherContext) -> BillingGather:
        with self._client(ctx, parse_float=Decimal) as client:
            try:
                lines = fetch_billing_lines(
                    client,
                    dates,
                    self.settings.billing_api.days_per_query,
                    self.tenant.tenant_id,
                    ctx.logger,
                )
            except ConfluentApiError as exc:
                raise GatherError(str(exc)) from exc
        return BillingGather(lines=lines)

    # -- inventory ------------------------------------------------------------------------------------
    def gather_inventory(self, ctx: GatherContext) -> InventoryGather:
        def flink_client(cloud: str, region: str, key: str, secret: str) -> ConfluentClient:
            return self._client(ctx, base_url=self.flink_base_url(cloud, region), key=key, secret=secret)

        with self._client(ctx) as client:
            gathered = inv.gather_inventory(client, self.settings, ctx.logger, flink_client)
        if self.settings.topic_attribution.enabled:
            gathered.resources.extend(self._discover_topics(gathered, ctx))
        return gathered

    def _discover_topics(self, gathered: InventoryGather, ctx: GatherContext) -> list[Resource]:
        """docs/confluent-cloud.md §9 "Discovery": topics with samples in the last hour, per cluster.

        Topics are not in OWNED_TYPES: a topic quiet for an hour is not deleted, and the per-date
        calculation adds the topics of the day's metrics anyway."""
        step = min(self.settings.metrics_step_seconds, 3600)

        def series_labels(promql: str, start: datetime, end: datetime) -> list[dict[str, str]]:
            ctx.check_deadline()
            return [s.labels for s in ctx.prometheus().query_range(RangeQuery(promql, start, end, step))]

        clusters = [r.resource_id for r in gathered.resources if r.resource_type == "kafka_cluster"]
        return discover_topics(self.settings.topic_attribution, clusters, series_labels, ctx.now, ctx.logger)

    # -- allocation -----------------------------------------------------------------------------------
    def handlers(self) -> list[Handler]:
        table = confluent_allocators(self.settings.cku_usage_ratio, self.settings.cku_shared_ratio)
        has_metrics = self.settings.metrics is not None

        def metric_queries(line: BillingLine) -> dict[str, str]:
            if not has_metrics:
                return {}
            return {
                key: metric_query(key, line.resource_id) for key in LINE_METRICS.get(line.product_type, ())
            }

        return [
            Handler(
                service_type=service_type,
                allocators={pt: table[pt] for pt in product_types},
                resolve=RESOLVERS[service_type],
                metric_queries=metric_queries,
                billing_resource_types=inv.BILLING_RESOURCE_TYPES,
            )
            for service_type, product_types in ROUTING.items()
        ]

    def extra_metric_queries(self, line: BillingLine) -> dict[str, str]:
        """The per-topic metrics of a Kafka cluster's lines, with topic attribution enabled (§9)."""
        attribution = self.settings.topic_attribution
        if not attribution.enabled or not line.resource_id.startswith(CLUSTER_PREFIX):
            return {}
        return {key: topic_query(attribution, key, line.resource_id) for key in TOPIC_METRIC_KEYS}

    def batched_query(self, key: str) -> tuple[str, str] | None:
        """One query per key per day for every resource: (PromQL without resource filter, resource label)."""
        if key in TOPIC_METRIC_KEYS:
            return topic_query(self.settings.topic_attribution, key), "kafka_id"
        if key not in METRICS:
            return None
        return metric_query(key), METRICS[key][2]

    def unknown_allocator(self) -> Allocator:
        return confluent_unknown_allocator
