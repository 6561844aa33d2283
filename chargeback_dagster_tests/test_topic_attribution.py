"""Topic attribution calculation (docs/confluent-cloud.md §9) with per-topic amounts worked out by hand."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime
from decimal import Decimal

from chargeback_dagster.domain import BillingLine, MetricRow
from chargeback_dagster.ecosystems.confluent_cloud.config import TopicAttributionConfig
from chargeback_dagster.ecosystems.confluent_cloud.topics import TopicRow, attribute_date, line_model

D = date(2026, 3, 1)
LKC = "lkc-1"
log = logging.getLogger("test")


def line(product_type: str, total: str, resource_id: str = LKC) -> BillingLine:
    return BillingLine(
        "confluent_cloud", "org-1", D, resource_id, "KAFKA", product_type, Decimal(1), Decimal(total),
        Decimal(total), env_id="env-1",
    )  # fmt: skip


def rows(key: str, values: dict[str, float], retained_max: dict[str, float] | None = None):
    """(cluster, key) -> MetricRows per topic: value_sum = values, value_max = retained_max or values."""
    maxes = retained_max or values
    return {
        (LKC, key): [MetricRow({"kafka_id": LKC, "topic": t}, v, maxes[t], 24) for t, v in values.items()]
    }


METRICS = {
    # bytes in 6/3/1, an internal topic and a topic without traffic
    **rows("topic_bytes_in", {"a": 6.0, "b": 3.0, "c": 1.0, "_confluent-x": 50.0, "z": 0.0}),
    **rows("topic_bytes_out", {"a": 1.0, "b": 1.0, "c": 2.0, "z": 0.0}),
    # retained bytes: the day's max sample (value_max) counts, not the sum
    **rows(
        "topic_retained_bytes",
        {"a": 100.0, "b": 100.0, "c": 100.0, "z": 0.0},
        {"a": 2, "b": 1, "c": 1, "z": 0},
    ),
}  # fmt: skip


def attribute(lines, metrics=METRICS, failed=(), config=None, attempts=None, retry_limit=3, inventory=None):
    config = config or TopicAttributionConfig()
    counts = attempts if attempts is not None else {}

    def record_failure(failed_line: BillingLine) -> int:
        counts[failed_line.product_type] = counts.get(failed_line.product_type, 0) + 1
        return counts[failed_line.product_type]

    return attribute_date(
        D, lines, inventory or {}, metrics, failed, config, retry_limit, record_failure, log
    )


def amounts(result) -> dict[tuple[str, str], tuple[str, str]]:
    """(product_type, topic) -> (amount text, method)."""
    return {
        (r.product_type, r.topic_name): (f"{Decimal(r.amount_units) / 10000:.4f}", r.attribution_method)
        for r in result.rows
    }


def test_ratio_chains_even_split_and_exclusions_by_hand():
    result = attribute(
        [
            line("KAFKA_NETWORK_WRITE", "1.0000"),
            line("KAFKA_NETWORK_READ", "0.4000"),
            line("KAFKA_STORAGE", "0.0100"),
            line("KAFKA_NUM_CKU", "2.0000"),
            line("KAFKA_BASE", "1.0000"),
            line("KAFKA_NETWORK_WRITE", "5.0000", resource_id="lsrc-9"),  # not a cluster: ignored
            line("SUPPORT", "9.0000"),  # no model: ignored
        ]
    )
    assert amounts(result) == {
        # bytes in 6/3/1/0 of 10 (the `_confluent-x` topic is excluded; z has no traffic: 0.0000)
        ("KAFKA_NETWORK_WRITE", "a"): ("0.6000", "bytes_ratio"),
        ("KAFKA_NETWORK_WRITE", "b"): ("0.3000", "bytes_ratio"),
        ("KAFKA_NETWORK_WRITE", "c"): ("0.1000", "bytes_ratio"),
        ("KAFKA_NETWORK_WRITE", "z"): ("0.0000", "bytes_ratio"),
        # bytes out 1/1/2 of 4
        ("KAFKA_NETWORK_READ", "a"): ("0.1000", "bytes_ratio"),
        ("KAFKA_NETWORK_READ", "b"): ("0.1000", "bytes_ratio"),
        ("KAFKA_NETWORK_READ", "c"): ("0.2000", "bytes_ratio"),
        ("KAFKA_NETWORK_READ", "z"): ("0.0000", "bytes_ratio"),
        # retained max 2/1/1 of 4: 100 units → 50/25/25
        ("KAFKA_STORAGE", "a"): ("0.0050", "retained_bytes_ratio"),
        ("KAFKA_STORAGE", "b"): ("0.0025", "retained_bytes_ratio"),
        ("KAFKA_STORAGE", "c"): ("0.0025", "retained_bytes_ratio"),
        ("KAFKA_STORAGE", "z"): ("0.0000", "retained_bytes_ratio"),
        # in + out 7/4/3/0 of 14: 20000 units × 7/14 = 10000, × 4/14 = 5714.28…, × 3/14 = 4285.71…;
        # c has the largest remainder and gets the leftover unit
        ("KAFKA_NUM_CKU", "a"): ("1.0000", "bytes_ratio"),
        ("KAFKA_NUM_CKU", "b"): ("0.5714", "bytes_ratio"),
        ("KAFKA_NUM_CKU", "c"): ("0.4286", "bytes_ratio"),
        ("KAFKA_NUM_CKU", "z"): ("0.0000", "bytes_ratio"),
        # even split over the 4 topics
        ("KAFKA_BASE", "a"): ("0.2500", "even_split"),
        ("KAFKA_BASE", "b"): ("0.2500", "even_split"),
        ("KAFKA_BASE", "c"): ("0.2500", "even_split"),
        ("KAFKA_BASE", "z"): ("0.2500", "even_split"),
    }
    assert result.resolved_clusters == [LKC] and result.pending_clusters == []
    assert {r.env_id for r in result.rows} == {"env-1"}


def test_even_split_of_three_topics_gives_the_extra_unit_to_the_first():
    metrics = rows("topic_bytes_in", {"a": 6.0, "b": 3.0, "c": 1.0})
    result = attribute([line("KAFKA_BASE", "1.0000")], metrics=metrics)
    assert amounts(result) == {
        ("KAFKA_BASE", "a"): ("0.3334", "even_split"),
        ("KAFKA_BASE", "b"): ("0.3333", "even_split"),
        ("KAFKA_BASE", "c"): ("0.3333", "even_split"),
    }


def test_inventory_topics_join_the_metric_topics():
    metrics = rows("topic_bytes_in", {"a": 1.0})
    result = attribute([line("KAFKA_NETWORK_WRITE", "0.5000")], metrics=metrics, inventory={LKC: {"idle"}})
    assert amounts(result) == {
        ("KAFKA_NETWORK_WRITE", "a"): ("0.5000", "bytes_ratio"),
        ("KAFKA_NETWORK_WRITE", "idle"): ("0.0000", "bytes_ratio"),
    }


def test_missing_metrics_even_split_or_skip():
    no_bytes = rows("topic_retained_bytes", {"a": 1.0, "b": 1.0, "c": 1.0})  # topics known, no bytes in
    even = attribute([line("KAFKA_NETWORK_WRITE", "1.0000")], metrics=no_bytes)
    assert amounts(even) == {
        ("KAFKA_NETWORK_WRITE", "a"): ("0.3334", "even_split"),
        ("KAFKA_NETWORK_WRITE", "b"): ("0.3333", "even_split"),
        ("KAFKA_NETWORK_WRITE", "c"): ("0.3333", "even_split"),
    }
    skip = TopicAttributionConfig(missing_metrics_behavior="SKIP")
    skipped = attribute([line("KAFKA_NETWORK_WRITE", "1.0000")], metrics=no_bytes, config=skip)
    assert skipped.rows == [] and skipped.resolved_clusters == [LKC]


def test_no_topics_resolves_the_cluster_without_rows():
    result = attribute([line("KAFKA_BASE", "1.0000")], metrics={})
    assert result.rows == [] and result.resolved_clusters == [LKC]


def test_cost_mapping_overrides():
    config = TopicAttributionConfig(
        cost_mapping_overrides={
            "kafka_network_write": "disabled",
            "KAFKA_NETWORK_READ": "even_split",
            "KAFKA_BASE": "retained_bytes_ratio",
            "TABLEFLOW_STORAGE": "even_split",
        }
    )
    result = attribute(
        [
            line("KAFKA_NETWORK_WRITE", "1.0000"),
            line("KAFKA_NETWORK_READ", "0.3000"),
            line("KAFKA_BASE", "0.0004"),
            line("TABLEFLOW_STORAGE", "0.0002"),
        ],
        config=config,
    )
    assert amounts(result) == {
        ("KAFKA_NETWORK_READ", "a"): ("0.0750", "even_split"),
        ("KAFKA_NETWORK_READ", "b"): ("0.0750", "even_split"),
        ("KAFKA_NETWORK_READ", "c"): ("0.0750", "even_split"),
        ("KAFKA_NETWORK_READ", "z"): ("0.0750", "even_split"),
        ("KAFKA_BASE", "a"): ("0.0002", "retained_bytes_ratio"),
        ("KAFKA_BASE", "b"): ("0.0001", "retained_bytes_ratio"),
        ("KAFKA_BASE", "c"): ("0.0001", "retained_bytes_ratio"),
        ("KAFKA_BASE", "z"): ("0.0000", "retained_bytes_ratio"),
        ("TABLEFLOW_STORAGE", "a"): ("0.0001", "even_split"),
        ("TABLEFLOW_STORAGE", "b"): ("0.0001", "even_split"),
        ("TABLEFLOW_STORAGE", "c"): ("0.0000", "even_split"),
        ("TABLEFLOW_STORAGE", "z"): ("0.0000", "even_split"),
    }


def test_bytes_ratio_override_without_a_chain_warns(caplog):
    warnings: list[str] = []
    assert line_model("KAFKA_BASE", {"KAFKA_BASE": "bytes_ratio"}, warnings.append) == ("even_split", ())
    assert line_model("SUPPORT", {"SUPPORT": "bytes_ratio"}, warnings.append) is None
    assert warnings == [
        "cost_mapping_overrides KAFKA_BASE: bytes_ratio has no default chain for this type",
        "cost_mapping_overrides SUPPORT: bytes_ratio has no default chain for this type",
    ]


def test_metric_name_overrides_change_the_queries():
    from chargeback_dagster.ecosystems.confluent_cloud.topics import topic_query

    config = TopicAttributionConfig(metric_name_overrides={"topic_bytes_in": "my_bytes_in"})
    assert (
        topic_query(config, "topic_bytes_in", LKC)
        == 'sum by (kafka_id, topic) (my_bytes_in{kafka_id="lkc-1"})'
    )
    assert (
        topic_query(config, "topic_bytes_out")
        == "sum by (kafka_id, topic) (confluent_kafka_server_sent_bytes)"
    )


def test_failed_metrics_stay_pending_then_become_attribution_failed_rows():
    lines = [line("KAFKA_NETWORK_WRITE", "1.00004"), line("KAFKA_BASE", "0.5000")]
    failed = [(LKC, "topic_bytes_out")]
    attempts: dict[str, int] = {}
    first = attribute(lines, failed=failed, attempts=attempts, retry_limit=2)
    assert first.rows == [] and first.pending_clusters == [LKC] and first.resolved_clusters == []
    assert attempts == {"KAFKA_NETWORK_WRITE": 1, "KAFKA_BASE": 1}
    second = attribute(lines, failed=failed, attempts=attempts, retry_limit=2)
    assert second.pending_clusters == [] and second.succeeded_lines == []
    failed_row = ("env-1", LKC, "__UNATTRIBUTED__", "KAFKA")
    assert second.rows == [
        TopicRow(*failed_row, "KAFKA_NETWORK_WRITE", "ATTRIBUTION_FAILED", 10000),
        TopicRow(*failed_row, "KAFKA_BASE", "ATTRIBUTION_FAILED", 5000),
    ]
    ok = attribute(lines, attempts=attempts, retry_limit=2)
    assert ok.succeeded_lines == lines and len(ok.rows) == 8


def test_rows_of_each_line_sum_to_the_rounded_line_total():
    lines = [line(pt, "123.45675") for pt in ("KAFKA_NETWORK_WRITE", "KAFKA_NUM_CKUS", "KAFKA_STORAGE")]
    result = attribute(lines)
    for pt in ("KAFKA_NETWORK_WRITE", "KAFKA_NUM_CKUS", "KAFKA_STORAGE"):
        assert sum(r.amount_units for r in result.rows if r.product_type == pt) == 1234568


def test_store_replaces_a_date_keeps_pending_clusters_and_purges(store_url):
    import sqlalchemy as sa

    from chargeback_dagster.store import TenantStore

    store = TenantStore.open(store_url, tenant_name="t", ecosystem="confluent_cloud", tenant_id="org-1")
    write, other = line("KAFKA_NETWORK_WRITE", "1.0000"), line("KAFKA_BASE", "2.0000", resource_id="lkc-2")
    store.billing.replace([write, other], [D], datetime(2026, 3, 2, tzinfo=UTC))
    repo = store.topic_attribution
    head = ("env-1", LKC)
    first = [
        TopicRow(*head, "a", "KAFKA", "KAFKA_NETWORK_WRITE", "bytes_ratio", 6000),
        TopicRow(*head, "a", "KAFKA", "KAFKA_NETWORK_WRITE", "bytes_ratio", 1000),  # same key: summed
        TopicRow(*head, "b", "KAFKA", "KAFKA_NETWORK_WRITE", "bytes_ratio", 3000),
        TopicRow(*head, "z", "KAFKA", "KAFKA_NETWORK_WRITE", "bytes_ratio", 0),
        TopicRow("env-1", "lkc-2", "x", "KAFKA", "KAFKA_BASE", "even_split", 20000),
    ]
    assert repo.replace(D, first, [], []) == 4
    assert repo.rows(D, date(2026, 3, 2)) == [
        (D, "env-1", LKC, "a", "KAFKA", "KAFKA_NETWORK_WRITE", "bytes_ratio", 7000),
        (D, "env-1", LKC, "b", "KAFKA", "KAFKA_NETWORK_WRITE", "bytes_ratio", 3000),
        (D, "env-1", LKC, "z", "KAFKA", "KAFKA_NETWORK_WRITE", "bytes_ratio", 0),
        (D, "env-1", "lkc-2", "x", "KAFKA", "KAFKA_BASE", "even_split", 20000),
    ]
    assert [repo.increment_attempts(write), repo.increment_attempts(write)] == [1, 2]

    # recalculation: lkc-1 replaced (its attempts reset), pending lkc-2 keeps its rows
    again = [TopicRow(*head, "c", "KAFKA", "KAFKA_NETWORK_WRITE", "even_split", 10000)]
    assert repo.replace(D, again, ["lkc-2"], [write]) == 1
    assert repo.totals(D) == {
        ("env-1", LKC, "KAFKA", "KAFKA_NETWORK_WRITE"): 10000,
        ("env-1", "lkc-2", "KAFKA", "KAFKA_BASE"): 20000,
    }
    assert repo.increment_attempts(write) == 1
    with store.engine.connect() as conn:
        view = conn.execute(
            sa.text(
                "SELECT cluster_resource_id, topic_name, attribution_method, amount_units, amount "
                "FROM v_topic_attribution ORDER BY cluster_resource_id"
            )
        ).all()
    assert [tuple(r[:4]) + (Decimal(str(r[4])),) for r in view] == [
        (LKC, "c", "even_split", 10000, Decimal("1")),
        ("lkc-2", "x", "even_split", 20000, Decimal("2")),
    ]

    # retention: facts before the cutoff and the dimensions nothing uses any more
    assert repo.purge(D) == {"topic_attribution_facts": 0, "topic_attribution_dimensions": 3}
    assert repo.purge(date(2026, 3, 2)) == {"topic_attribution_facts": 2, "topic_attribution_dimensions": 2}
    assert repo.rows(D, date(2026, 3, 2)) == []
    store.dispose()


def test_discovery_finds_topics_per_cluster_skips_exclusions_and_failing_clusters(caplog):
    from chargeback_dagster.ecosystems.confluent_cloud.topics import discover_topics

    now = datetime(2026, 3, 2, 12, tzinfo=UTC)
    asked: list[tuple[str, datetime, datetime]] = []
    series = {
        "lkc-1": [
            {"kafka_id": "lkc-1", "topic": "orders"},
            {"kafka_id": "lkc-1", "topic": "__consumer_offsets"},
        ],
        "lkc-3": [{"kafka_id": "lkc-3", "topic": "clicks"}],
    }

    def query_range(promql: str, start: datetime, end: datetime) -> list[dict[str, str]]:
        asked.append((promql, start, end))
        cluster = promql.split('kafka_id="')[1].split('"')[0]
        if cluster == "lkc-2":
            raise RuntimeError("HTTP 503")
        return series[cluster]

    with caplog.at_level(logging.WARNING):
        found = discover_topics(TopicAttributionConfig(), ["lkc-3", "lkc-2", "lkc-1"], query_range, now, log)
    assert [(r.resource_id, r.resource_type, r.display_name, r.parent_id) for r in found] == [
        ("lkc-1:topic:orders", "topic", "orders", "lkc-1"),
        ("lkc-3:topic:clicks", "topic", "clicks", "lkc-3"),
    ]
    assert "Topic discovery for lkc-2 failed: HTTP 503" in caplog.text
    assert asked[0] == (
        'sum by (kafka_id, topic) (confluent_kafka_server_received_bytes{kafka_id="lkc-1"})',
        datetime(2026, 3, 2, 11, tzinfo=UTC),
        now,
    )
    assert len(asked) == 3 + 1 + 3  # three metrics per cluster; lkc-2 stops at its first failure


def test_topic_csv_daily_and_monthly_files(tmp_path):
    import yaml

    from chargeback_dagster.config import load_config
    from chargeback_dagster.outputs.registry import write_outputs
    from chargeback_dagster.outputs.topic_csv import TopicAttributionResult

    emitters = [
        {"type": "csv", "params": {"output_dir": "daily"}},
        {"type": "csv", "name": "monthly", "aggregation": "monthly", "params": {"output_dir": "monthly"}},
    ]
    settings = {
        "ccloud_api": {"key": "k", "secret": "s"},
        "metrics": {"url": "http://prometheus:9090"},
        "topic_attribution": {"enabled": True, "emitters": emitters},
    }
    tenant = {"ecosystem": "confluent_cloud", "tenant_id": "org-1", "plugin_settings": settings}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"tenants": {"t": tenant}}))
    config = load_config(tmp_path / "c.yaml").tenants["t"]
    d2 = date(2026, 3, 2)
    stored = [
        (D, "env-1", LKC, "=cmd", "KAFKA", "KAFKA_BASE", "even_split", 5000),
        (D, "env-1", LKC, "orders", "KAFKA", "KAFKA_BASE", "even_split", -3),
        (d2, "env-1", LKC, "orders", "KAFKA", "KAFKA_BASE", "even_split", 10000),
    ]

    def read(start: date, end: date) -> list:
        return [r for r in stored if start <= r[0] < end]

    written = write_outputs(TopicAttributionResult(config, (D, d2), read))
    assert sorted(written["topic_csv"].items()) == [
        (str(tmp_path / "daily" / "topic_attr_org-1_2026-03-01.csv"), 2),
        (str(tmp_path / "daily" / "topic_attr_org-1_2026-03-02.csv"), 1),
        (str(tmp_path / "monthly" / "topic_attr_org-1_2026-03-01.csv"), 2),
    ]
    header = (
        "ecosystem,tenant_id,timestamp,env_id,cluster_resource_id,topic_name,product_category,product_type,"
        "attribution_method,amount\n"
    )
    assert (tmp_path / "daily" / "topic_attr_org-1_2026-03-01.csv").read_text() == header + (
        "confluent_cloud,org-1,2026-03-01T00:00:00+00:00,env-1,lkc-1,'=cmd,KAFKA,KAFKA_BASE,even_split,0.5000\n"
        "confluent_cloud,org-1,2026-03-01T00:00:00+00:00,env-1,lkc-1,orders,KAFKA,KAFKA_BASE,even_split,-0.0003\n"
    )
    assert (tmp_path / "monthly" / "topic_attr_org-1_2026-03-01.csv").read_text() == header + (
        "confluent_cloud,org-1,2026-03-01T00:00:00+00:00,env-1,lkc-1,'=cmd,KAFKA,KAFKA_BASE,even_split,0.5000\n"
        "confluent_cloud,org-1,2026-03-01T00:00:00+00:00,env-1,lkc-1,orders,KAFKA,KAFKA_BASE,even_split,0.9997\n"
    )
