"""Brokers and topics of a self-managed cluster from the Kafka Admin API (docs/self-managed-kafka.md §3).

Uses confluent-kafka (the optional `kafka` extra), imported lazily so that tenants without
`resource_source.source: admin_api` never need it. One Metadata request (`AdminClient.list_topics`)
returns both the brokers (node id, host, port) and the topic names; it is answered by any broker and needs
no controller, so it also works against librdkafka's built-in mock cluster used in the tests.

librdkafka retries connections in the background until the timeout; its log lines go to this module's
logger at DEBUG, and the broker errors it reports (connection refused, SASL or TLS handshake failures, …)
are appended to the error text so a failure says *why* the metadata could not be fetched. Credentials never
appear in error text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("chargeback_dagster.sources.kafka_admin")

DEFAULT_TIMEOUT_SECONDS = 30.0
CLIENT_ID = "chargeback-dagster"
EXTRA_MISSING = (
    "resource_source.source='admin_api' requires the 'kafka' extra: pip install 'chargeback-dagster[kafka]'"
)
MAX_BROKER_ERRORS = 3


class KafkaAdminError(Exception):
    """The Admin API could not be reached or answered wrongly. Never contains credentials."""


@dataclass(frozen=True, slots=True)
class Broker:
    node_id: int
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class KafkaClusterMetadata:
    brokers: tuple[Broker, ...]  # sorted by node id
    topics: tuple[str, ...]  # sorted by name
    cluster_id: str | None = None  # as reported by the brokers (informational)


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    get = getattr(value, "get_secret_value", None)
    return get() if callable(get) else str(value)


def client_config(resource_source: Any, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS) -> dict[str, Any]:
    """librdkafka configuration from a `resource_source` block (bootstrap, protocol, SASL, timeouts)."""
    if not resource_source.bootstrap_servers:
        raise KafkaAdminError("bootstrap_servers required when source='admin_api'")
    timeout_ms = max(1000, int(timeout_seconds * 1000))
    config: dict[str, Any] = {
        "bootstrap.servers": resource_source.bootstrap_servers,
        "security.protocol": resource_source.security_protocol or "PLAINTEXT",
        "client.id": CLIENT_ID,
        "socket.timeout.ms": timeout_ms,
        "socket.connection.setup.timeout.ms": timeout_ms,
    }
    if resource_source.sasl_mechanism:
        config["sasl.mechanism"] = resource_source.sasl_mechanism
        config["sasl.username"] = resource_source.sasl_username or ""
        config["sasl.password"] = _secret(resource_source.sasl_password) or ""
    return config


class _DebugLogger:
    """librdkafka `logger`: forwards its (often repetitive) log lines at DEBUG."""

    def log(self, level: int, msg: str, *args: Any) -> None:
        log.debug(msg, *args)


def fetch_cluster_metadata(
    resource_source: Any, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
) -> KafkaClusterMetadata:
    """Brokers and topics via one Metadata request; raises KafkaAdminError on any failure."""
    try:
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient
    except ImportError as exc:
        raise KafkaAdminError(EXTRA_MISSING) from exc

    config = client_config(resource_source, timeout_seconds)
    secrets = [s for s in (config.get("sasl.password"),) if s and len(s) >= 3]

    def scrub(text: str) -> str:
        for s in secrets:
            text = text.replace(s, "***")
        return text

    broker_errors: list[str] = []

    def on_error(err: Any) -> None:
        text = err.str() if hasattr(err, "str") else str(err)
        if text not in broker_errors:
            broker_errors.append(text)

    try:
        admin = AdminClient({**config, "error_cb": on_error, "logger": _DebugLogger()})
    except (KafkaException, ValueError, TypeError) as exc:
        raise KafkaAdminError(scrub(f"invalid client configuration: {_kafka_text(exc)}")) from exc
    try:
        metadata = admin.list_topics(timeout=timeout_seconds)
    except KafkaException as exc:
        admin.poll(0)  # serve error_cb: the per-broker reasons behind the failure
        text = _kafka_text(exc)
        if broker_errors:
            text += "; broker errors: " + "; ".join(broker_errors[:MAX_BROKER_ERRORS])
        raise KafkaAdminError(scrub(text)) from exc
    finally:
        admin.poll(0)

    brokers = tuple(
        sorted(
            (Broker(int(b.id), str(b.host), int(b.port)) for b in metadata.brokers.values()),
            key=lambda b: b.node_id,
        )
    )
    unknown = KafkaError.UNKNOWN_TOPIC_OR_PART
    topics = tuple(
        sorted(
            name
            for name, topic in metadata.topics.items()
            if name and (topic.error is None or topic.error.code() != unknown)
        )
    )
    if not brokers:
        raise KafkaAdminError("metadata response listed no brokers")
    return KafkaClusterMetadata(brokers=brokers, topics=topics, cluster_id=metadata.cluster_id)


def _kafka_text(exc: BaseException) -> str:
    """`KafkaException(KafkaError)` → the error's own text; anything else → str(exc)."""
    if exc.args and hasattr(exc.args[0], "str"):
        return exc.args[0].str()
    return str(exc) or type(exc).__name__
