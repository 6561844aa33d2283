"""`resource_source: admin_api` against a real Kafka protocol endpoint: librdkafka's built-in mock cluster.

A producer created with `test.mock.num.brokers: 3` starts three mock brokers listening on real TCP ports of
127.0.0.1 (they live as long as the producer). The bootstrap string is read from the cluster metadata the
producer sees; our code then connects with its own `AdminClient`, exactly as it would to a real cluster.
Topics are auto-created by producing to them (the mock answers Metadata requests but has no controller, so
CreateTopics / DescribeCluster time out; the Metadata request we use does not need one). The mock has
PLAINTEXT listeners only: SASL and SSL settings are shown to reach the wire by the handshake errors they get.
"""

from __future__ import annotations

import logging
import socket
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace

import pytest
import yaml

pytest.importorskip("confluent_kafka")

from confluent_kafka import Producer  # noqa: E402

from chargeback_dagster.config import load_config  # noqa: E402
from chargeback_dagster.defs.build import build_definitions  # noqa: E402
from chargeback_dagster.devtools.local_run import materialize_range  # noqa: E402
from chargeback_dagster.devtools.openmetrics import OpenMetricsWriter  # noqa: E402
from chargeback_dagster.ecosystems.base import GatherContext, GatherError  # noqa: E402
from chargeback_dagster.ecosystems.registry import ecosystem_for  # noqa: E402
from chargeback_dagster.ecosystems.self_managed_kafka import ecosystem as smk  # noqa: E402
from chargeback_dagster.ecosystems.self_managed_kafka.kafka_admin import (  # noqa: E402
    Broker,
    KafkaAdminError,
    client_config,
    fetch_cluster_metadata,
)
from chargeback_dagster.sources.prometheus import PrometheusClient  # noqa: E402
from chargeback_dagster.store import TenantStore  # noqa: E402

CLUSTER = "kafka-cluster-001"
TOPICS = ("audit-log", "orders", "payments")
PREFIX = "Failed to gather brokers/topics from Kafka Admin API: "


@pytest.fixture(scope="module")
def mock_cluster():
    producer = Producer({"test.mock.num.brokers": 3, "log_level": 3})
    for topic in TOPICS:
        producer.produce(topic, b"x")
    assert producer.flush(10) == 0
    brokers = producer.list_topics(timeout=10).brokers.values()
    bootstrap = ",".join(f"{b.host}:{b.port}" for b in sorted(brokers, key=lambda b: b.id))
    yield SimpleNamespace(producer=producer, bootstrap=bootstrap, brokers=sorted(brokers, key=lambda b: b.id))
    producer.flush(1)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # released again: nothing listens there


def source(**kw) -> SimpleNamespace:
    base = {
        "source": "admin_api",
        "bootstrap_servers": None,
        "security_protocol": "PLAINTEXT",
        "sasl_mechanism": None,
        "sasl_username": None,
        "sasl_password": None,
    }
    return SimpleNamespace(**(base | kw))


# --- the source module -----------------------------------------------------------------------------
def test_client_config_plaintext_and_sasl():
    assert client_config(source(bootstrap_servers="k1:9092,k2:9092"), timeout_seconds=10) == {
        "bootstrap.servers": "k1:9092,k2:9092",
        "security.protocol": "PLAINTEXT",
        "client.id": "chargeback-dagster",
        "socket.timeout.ms": 10000,
        "socket.connection.setup.timeout.ms": 10000,
    }
    from pydantic import SecretStr

    cfg = client_config(
        source(
            bootstrap_servers="k1:9093",
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            sasl_username="chargeback",
            sasl_password=SecretStr("s3cret-pw"),
        )
    )
    assert {k: cfg[k] for k in ("security.protocol", "sasl.mechanism", "sasl.username", "sasl.password")} == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "chargeback",
        "sasl.password": "s3cret-pw",
    }
    with pytest.raises(KafkaAdminError, match="bootstrap_servers required when source='admin_api'"):
        client_config(source())


def test_brokers_and_topics_from_the_mock_cluster(mock_cluster):
    metadata = fetch_cluster_metadata(source(bootstrap_servers=mock_cluster.bootstrap), timeout_seconds=10)
    assert metadata.brokers == tuple(Broker(b.id, b.host, b.port) for b in mock_cluster.brokers)
    assert [b.node_id for b in metadata.brokers] == [1, 2, 3]
    assert metadata.topics == TOPICS
    assert metadata.cluster_id  # the mock reports an id such as "mockCluster…"


def test_a_new_topic_appears(mock_cluster):
    mock_cluster.producer.produce("late-topic", b"x")
    assert mock_cluster.producer.flush(10) == 0
    metadata = fetch_cluster_metadata(source(bootstrap_servers=mock_cluster.bootstrap), timeout_seconds=10)
    assert "late-topic" in metadata.topics


def test_unreachable_bootstrap():
    with pytest.raises(KafkaAdminError) as err:
        fetch_cluster_metadata(source(bootstrap_servers=f"127.0.0.1:{closed_port()}"), timeout_seconds=1.5)
    text = str(err.value)
    assert text.startswith("Failed to get metadata: Local: Broker transport failure; broker errors: ")
    assert "Connection refused" in text


def test_sasl_settings_reach_the_wire_and_the_password_stays_out(mock_cluster):
    cfg = source(
        bootstrap_servers=mock_cluster.bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="chargeback",
        sasl_password="s3cret-pw",
    )
    with pytest.raises(KafkaAdminError) as err:
        fetch_cluster_metadata(cfg, timeout_seconds=1.5)
    assert "SASL" in str(err.value)  # the mock broker has no SASL handshake: the client tried one
    assert "s3cret-pw" not in str(err.value)


# --- the ecosystem ---------------------------------------------------------------------------------
def settings(bootstrap: str, identity_source: dict, metrics_url: str = "http://127.0.0.1:1") -> dict:
    return {
        "cluster_id": CLUSTER,
        "broker_count": 3,
        "cost_model": {
            "compute_hourly_rate": 0.10,
            "storage_per_gib_hourly": 0.0001,
            "network_ingress_per_gib": 0.01,
            "network_egress_per_gib": 0.02,
        },
        "identity_source": identity_source,
        "resource_source": {"source": "admin_api", "bootstrap_servers": bootstrap},
        "metrics": {"url": metrics_url},
        "emitters": [{"type": "csv", "params": {"output_dir": "out"}}],
    }


STATIC = {
    "source": "static",
    "static_identities": [{"identity_id": "User:batch", "identity_type": "principal"}],
}


def load(tmp_path, plugin_settings: dict):
    doc = {
        "tenants": {
            "onprem": {
                "ecosystem": "self_managed_kafka",
                "tenant_id": "onprem",
                "partitions_start_date": "2026-01-01",
                "storage": {"connection_string": "sqlite:///data/onprem.db"},
                "plugin_settings": plugin_settings,
            }
        }
    }
    path = tmp_path / "chargeback.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_config(path)


def context(tenant, prometheus) -> GatherContext:
    return GatherContext(
        tenant=tenant,
        logger=logging.getLogger("test.kafka_admin"),
        now=datetime.now(UTC).replace(microsecond=0),
        prometheus=prometheus,
    )


def no_prometheus():
    raise AssertionError("static identities + admin_api resources must not query Prometheus")


def test_admin_api_inventory(tmp_path, mock_cluster):
    tenant = load(tmp_path, settings(mock_cluster.bootstrap, STATIC)).tenant("onprem")
    gathered = ecosystem_for(tenant).gather_inventory(context(tenant, no_prometheus))
    assert gathered.handler_errors == {}
    rows = [(r.resource_id, r.resource_type, r.display_name, r.parent_id) for r in gathered.resources]
    assert rows[0] == (CLUSTER, "cluster", CLUSTER, None)
    assert rows[1:4] == [
        (f"{CLUSTER}:broker:{b.id}", "broker", f"127.0.0.1:{b.port}", CLUSTER) for b in mock_cluster.brokers
    ]
    topics = {r[0]: r for r in rows[4:]}
    for t in TOPICS:
        assert topics[f"{CLUSTER}:topic:{t}"] == (f"{CLUSTER}:topic:{t}", "topic", t, CLUSTER)
    assert [i.identity_id for i in gathered.identities] == [
        "User:batch"
    ]  # the Admin API yields no principals
    assert gathered.owned_types == {"kafka": frozenset({"cluster", "broker", "topic"})}


def test_admin_api_failure_is_a_handler_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(smk, "ADMIN_TIMEOUT_SECONDS", 1.5)
    tenant = load(tmp_path, settings(f"127.0.0.1:{closed_port()}", STATIC)).tenant("onprem")
    gathered = ecosystem_for(tenant).gather_inventory(context(tenant, no_prometheus))
    assert gathered.handler_errors["kafka"].startswith(
        PREFIX + "Failed to get metadata: Local: Broker transport failure"
    )
    # the cluster and the identities are still gathered
    assert [r.resource_id for r in gathered.resources] == [CLUSTER]
    assert [i.identity_id for i in gathered.identities] == ["User:batch"]


def test_admin_api_resources_with_prometheus_principals(tmp_path, mock_cluster, local_prometheus_factory):
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    w = OpenMetricsWriter()
    samples = [(now - timedelta(minutes=m), 100 - m) for m in range(0, 60, 5)]
    w.add(
        "kafka_server_brokertopicmetrics_bytesin_total",
        {"broker": "9", "topic": "only-in-prometheus", "principal": "User:orders-svc"},
        samples,
        type="counter",
    )
    prom = local_prometheus_factory(w.text())
    identity_source = {"source": "prometheus", "principal_to_team": {"User:orders-svc": "orders"}}
    tenant = load(tmp_path, settings(mock_cluster.bootstrap, identity_source, prom.url)).tenant("onprem")
    with PrometheusClient(prom.url) as client:
        gathered = ecosystem_for(tenant).gather_inventory(context(tenant, lambda: client))
    # brokers and topics come from the Admin API only; principals from Prometheus
    ids = [r.resource_id for r in gathered.resources]
    assert f"{CLUSTER}:broker:9" not in ids and f"{CLUSTER}:topic:only-in-prometheus" not in ids
    assert f"{CLUSTER}:broker:1" in ids and f"{CLUSTER}:topic:orders" in ids
    assert [(i.identity_id, i.display_name, i.metadata["team"]) for i in gathered.identities] == [
        ("User:orders-svc", "orders", "orders")
    ]

    # and Prometheus discovery is still required: its failure is a gather failure
    with (
        PrometheusClient("http://127.0.0.1:1", sleep=lambda _s: None) as dead,
        pytest.raises(GatherError, match="Prometheus discovery failed"),
    ):
        ecosystem_for(tenant).gather_inventory(context(tenant, lambda: dead))


@pytest.mark.slow
def test_pipeline_inventory_from_admin_api_then_incomplete(
    tmp_path, mock_cluster, local_prometheus_factory, monkeypatch
):
    prom = local_prometheus_factory(None)  # empty: billing constructs no lines, the run still succeeds
    day = date(2026, 2, 1)
    config = load(tmp_path, settings(mock_cluster.bootstrap, STATIC, prom.url))
    assert materialize_range(build_definitions(config), "onprem", day, day).success
    tenant = config.tenant("onprem")
    store = TenantStore(
        tenant.database_url, tenant_name="onprem", ecosystem="self_managed_kafka", tenant_id="onprem"
    )
    try:
        stored = {r.resource_id: r.status for r in store.inventory.resources()}
        assert stored[f"{CLUSTER}:broker:1"] == "active"
        assert stored[f"{CLUSTER}:topic:orders"] == "active"

        # the Admin API goes away: the inventory step fails with the handler error, nothing is deleted
        bad = load(tmp_path, settings(f"127.0.0.1:{closed_port()}", STATIC, prom.url))
        monkeypatch.setattr(smk, "ADMIN_TIMEOUT_SECONDS", 1.5)
        result = materialize_range(build_definitions(bad), "onprem", day, day)
        assert not result.success
        failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert len(failures) == 1 and failures[0].step_key.endswith("inventory")
        message = failures[0].event_specific_data.error.to_string()
        assert "Inventory incomplete: Handler kafka gather failed: " + PREFIX in message
        user = failures[0].step_failure_data.user_failure_data  # a dg.Failure with metadata
        assert user.description.startswith("Inventory incomplete: Handler kafka gather failed: " + PREFIX)
        assert {k: v.value for k, v in user.metadata.items()} == {
            "error_type": "InventoryIncomplete",
            "failed_handlers": "kafka",
        }
        assert {r.resource_id: r.status for r in store.inventory.resources()} == stored
    finally:
        store.dispose()
