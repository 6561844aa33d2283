"""SQLAlchemy Core schema of a tenant database (docs/operations.md §13).

One MetaData. Every table carries `ecosystem` and `tenant_id`. Column types:

* `UTCDateTime` — timezone-aware UTC, whole seconds; `timestamptz` on PostgreSQL, text on SQLite (read back
  tz-aware UTC on both).
* `DecimalText` — exact decimal stored as plain text (no exponent), read back as `Decimal`.
* `JSONText` — JSON stored as TEXT (`sort_keys=True`), parsed in Python.

The migration scripts (migrations/versions) spell the schema out on their own; keep them in step.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.types import TypeDecorator

from chargeback_dagster.domain import DIMENSION_KEY_FIELDS

VERSION_TABLE = "chargeback_alembic_version"


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes with whole seconds on every backend.

    Naive values are taken as UTC. SQLite returns naive values; they are re-tagged as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected datetime, got {type(value).__name__}")
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        value = value.replace(microsecond=0)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # defensive: raw text from SQLite
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def decimal_to_text(value: Decimal) -> str:
    if not isinstance(value, Decimal):
        value = Decimal(str(value))
    if not value.is_finite():
        raise ValueError(f"non-finite decimal {value!r}")
    return format(value, "f")


class DecimalText(TypeDecorator):
    """Exact decimals as text, e.g. '0.00009', '1234567.123456789'."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        return None if value is None else decimal_to_text(value)

    def process_result_value(self, value: Any, dialect: Any) -> Decimal | None:
        return None if value is None else Decimal(value)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


class JSONText(TypeDecorator):
    """JSON stored as TEXT (sort_keys), `{}`-like values parsed back in Python."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        return None if value is None else json.dumps(value, sort_keys=True, default=str)

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return None
        try:
            return orjson.loads(value)  # several times faster; same values for what json.dumps wrote
        except orjson.JSONDecodeError:  # e.g. an integer beyond 64 bits, NaN
            return json.loads(value)


DIMENSION_KEY_COLUMNS = DIMENSION_KEY_FIELDS

metadata = MetaData()


def _tenant_cols() -> list[Column]:
    return [Column("ecosystem", Text, nullable=False), Column("tenant_id", Text, nullable=False)]


resources = Table(
    "resources",
    metadata,
    *_tenant_cols(),
    Column("resource_id", Text, nullable=False),
    Column("resource_type", Text, nullable=False),
    Column("display_name", Text),
    Column("parent_id", Text),
    Column("owner_id", Text),
    Column("status", Text, nullable=False, server_default="active"),
    Column("cloud", Text),
    Column("region", Text),
    Column("created_at", UTCDateTime),
    Column("deleted_at", UTCDateTime),
    Column("last_seen_at", UTCDateTime),
    Column("metadata_json", JSONText, nullable=False, server_default="{}"),
    Column("team", Text),  # resolved at inventory time (chargeback_dagster/teams.py), migration 0006
    PrimaryKeyConstraint("ecosystem", "tenant_id", "resource_id", name="pk_resources"),
    Index("ix_resources_type", "ecosystem", "tenant_id", "resource_type"),
)

identities = Table(
    "identities",
    metadata,
    *_tenant_cols(),
    Column("identity_id", Text, nullable=False),
    Column("identity_type", Text, nullable=False),
    Column("display_name", Text),
    Column("created_at", UTCDateTime),
    Column("deleted_at", UTCDateTime),
    Column("last_seen_at", UTCDateTime),
    Column("metadata_json", JSONText, nullable=False, server_default="{}"),
    Column("team", Text),  # resolved at inventory time (chargeback_dagster/teams.py), migration 0006
    PrimaryKeyConstraint("ecosystem", "tenant_id", "identity_id", name="pk_identities"),
)

billing = Table(
    "billing",
    metadata,
    *_tenant_cols(),
    Column("date", Date, nullable=False),
    Column("env_id", Text, nullable=False),
    Column("resource_id", Text, nullable=False),
    Column("product_category", Text, nullable=False),
    Column("product_type", Text, nullable=False),
    Column("timestamp", UTCDateTime, nullable=False),
    Column("quantity", DecimalText, nullable=False),
    Column("unit_price", DecimalText, nullable=False),
    Column("total_cost", DecimalText, nullable=False),
    Column("currency", Text, nullable=False),
    Column("granularity", Text, nullable=False),
    Column("allocation_attempts", Integer, nullable=False, server_default="0"),
    Column("topic_attribution_attempts", Integer, nullable=False, server_default="0"),
    Column("metadata_json", JSONText, nullable=False, server_default="{}"),
    Column("gathered_at", UTCDateTime),
    PrimaryKeyConstraint(
        "ecosystem",
        "tenant_id",
        "date",
        "env_id",
        "resource_id",
        "product_category",
        "product_type",
        name="pk_billing",
    ),
)

usage_metric_values = Table(
    "usage_metric_values",
    metadata,
    *_tenant_cols(),
    Column("date", Date, nullable=False),
    Column("resource_id", Text, nullable=False),
    Column("query_key", Text, nullable=False),
    Column("labels_key", Text, nullable=False),
    Column("labels_json", Text, nullable=False),
    Column("value_sum", Float(precision=53), nullable=False),
    Column("value_max", Float(precision=53), nullable=False),
    Column("sample_count", Integer, nullable=False),
    PrimaryKeyConstraint(
        "ecosystem",
        "tenant_id",
        "date",
        "resource_id",
        "query_key",
        "labels_key",
        name="pk_usage_metric_values",
    ),
    sqlite_with_rowid=False,  # migration 0003: the rows live in the key's B-tree only
)

usage_metric_fetches = Table(
    "usage_metric_fetches",
    metadata,
    *_tenant_cols(),
    Column("date", Date, nullable=False),
    Column("resource_id", Text, nullable=False),
    Column("query_key", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("error", Text),
    Column("fetched_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint(
        "ecosystem", "tenant_id", "date", "resource_id", "query_key", name="pk_usage_metric_fetches"
    ),
)

chargeback_dimensions = Table(
    "chargeback_dimensions",
    metadata,
    Column(
        "dimension_id",
        BigInteger().with_variant(Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    *_tenant_cols(),
    *(Column(name, Text, nullable=False) for name in DIMENSION_KEY_COLUMNS),
    UniqueConstraint("ecosystem", "tenant_id", *DIMENSION_KEY_COLUMNS, name="uq_chargeback_dimensions_key"),
    sqlite_autoincrement=True,
)

# No foreign key to chargeback_dimensions and no dimension_id index: both doubled the cost of writing
# facts, and only retention needs the relation (migration 0002). SQLite keeps the rows in the key's B-tree.
chargeback_facts = Table(
    "chargeback_facts",
    metadata,
    *_tenant_cols(),
    Column("date", Date, nullable=False),
    Column("dimension_id", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    Column("timestamp", UTCDateTime, nullable=False),
    Column("amount_units", BigInteger, nullable=False),
    PrimaryKeyConstraint("date", "dimension_id", name="pk_chargeback_facts"),
    sqlite_with_rowid=False,
)

# Topic attribution (docs/confluent-cloud.md §9, migration 0007)
TOPIC_DIMENSION_KEY_COLUMNS = (
    "env_id",
    "cluster_resource_id",
    "topic_name",
    "product_category",
    "product_type",
    "attribution_method",
)

topic_attribution_dimensions = Table(
    "topic_attribution_dimensions",
    metadata,
    Column(
        "dimension_id",
        BigInteger().with_variant(Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    *_tenant_cols(),
    *(Column(name, Text, nullable=False) for name in TOPIC_DIMENSION_KEY_COLUMNS),
    UniqueConstraint(
        "ecosystem", "tenant_id", *TOPIC_DIMENSION_KEY_COLUMNS, name="uq_topic_attribution_dimensions_key"
    ),
    sqlite_autoincrement=True,
)

topic_attribution_facts = Table(
    "topic_attribution_facts",
    metadata,
    *_tenant_cols(),
    Column("date", Date, nullable=False),
    Column("dimension_id", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    Column("amount_units", BigInteger, nullable=False),
    PrimaryKeyConstraint("date", "dimension_id", name="pk_topic_attribution_facts"),
)

pipeline_state = Table(
    "pipeline_state",
    metadata,
    *_tenant_cols(),
    Column("date", Date, nullable=False),
    Column("billing_gathered_at", UTCDateTime),
    Column("inventory_gathered_at", UTCDateTime),
    Column("metrics_fetched_at", UTCDateTime),
    Column("chargeback_calculated_at", UTCDateTime),
    Column("calculation_id", Text),
    Column("calculation_run_id", Text),
    Column("last_error", Text),
    PrimaryKeyConstraint("ecosystem", "tenant_id", "date", name="pk_pipeline_state"),
)

pipeline_runs = Table(
    "pipeline_runs",
    metadata,
    *_tenant_cols(),
    Column("dagster_run_id", Text, primary_key=True),
    Column("tenant_name", Text, nullable=False),
    Column("trigger", Text, nullable=False),
    Column("range_start", Date),
    Column("range_end", Date),
    Column("started_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime),
    Column("status", Text, nullable=False),
    Column("stage", Text),
    Column("current_date", Date),
    Column("dates_gathered", Integer, nullable=False, server_default="0"),
    Column("dates_calculated", Integer, nullable=False, server_default="0"),
    Column("rows_written", Integer, nullable=False, server_default="0"),
    Column("error_message", Text),
)

tenant_status = Table(
    "tenant_status",
    metadata,
    *_tenant_cols(),
    Column("tenant_name", Text, primary_key=True),
    Column("suspended", Boolean, nullable=False, server_default=false()),
    Column("suspended_at", UTCDateTime),
    Column("suspended_reason", Text),
    Column("consecutive_gather_failures", Integer, nullable=False, server_default="0"),
    Column("last_increment_run_id", Text),
    Column("last_gather_error", Text),
)

gather_log = Table(
    "gather_log",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    *_tenant_cols(),
    Column("kind", Text, nullable=False),
    Column("run_id", Text),
    Column("trigger", Text),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("range_start", Date),
    Column("range_end", Date),
    Column("status", Text, nullable=False),
    Column("error", Text),
    sqlite_autoincrement=True,
)

gather_counters = Table(
    "gather_counters",
    metadata,
    *_tenant_cols(),
    Column("key", Text, primary_key=True),
    Column("consecutive_zero_gathers", Integer, nullable=False, server_default="0"),
)

tenant_run_lock = Table(
    "tenant_run_lock",
    metadata,
    *_tenant_cols(),
    Column("tenant_name", Text, primary_key=True),
    Column("run_id", Text, nullable=False),
    Column("acquired_at", UTCDateTime, nullable=False),
    # refreshed by the holder while it runs (docs/operations.md §4); nullable as added by migration 0004
    Column("heartbeat_at", UTCDateTime, nullable=True),
)

__all__ = [
    "DIMENSION_KEY_COLUMNS",
    "VERSION_TABLE",
    "DecimalText",
    "JSONText",
    "UTCDateTime",
    "billing",
    "canonical_json",
    "chargeback_dimensions",
    "chargeback_facts",
    "gather_counters",
    "gather_log",
    "identities",
    "metadata",
    "pipeline_runs",
    "pipeline_state",
    "resources",
    "tenant_run_lock",
    "tenant_status",
    "usage_metric_values",
    "usage_metric_fetches",
]
