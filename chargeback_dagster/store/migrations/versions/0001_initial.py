"""Initial tenant schema (docs/operations.md §13).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
DIMENSION_KEY = (
    "env_id",
    "resource_id",
    "product_category",
    "product_type",
    "identity_id",
    "cost_type",
    "allocation_method",
    "allocation_detail",
    "composition_part",
)


def _tenant() -> list[sa.Column]:
    return [sa.Column("ecosystem", sa.Text, nullable=False), sa.Column("tenant_id", sa.Text, nullable=False)]


def upgrade() -> None:
    op.create_table(
        "resources",
        *_tenant(),
        sa.Column("resource_id", sa.Text, nullable=False),
        sa.Column("resource_type", sa.Text, nullable=False),
        sa.Column("display_name", sa.Text),
        sa.Column("parent_id", sa.Text),
        sa.Column("owner_id", sa.Text),
        sa.Column("status", sa.Text, nullable=False, server_default="active"),
        sa.Column("cloud", sa.Text),
        sa.Column("region", sa.Text),
        sa.Column("created_at", TS),
        sa.Column("deleted_at", TS),
        sa.Column("last_seen_at", TS),
        sa.Column("metadata_json", sa.Text, nullable=False, server_default="{}"),
        sa.PrimaryKeyConstraint("ecosystem", "tenant_id", "resource_id", name="pk_resources"),
    )
    op.create_index("ix_resources_type", "resources", ["ecosystem", "tenant_id", "resource_type"])

    op.create_table(
        "identities",
        *_tenant(),
        sa.Column("identity_id", sa.Text, nullable=False),
        sa.Column("identity_type", sa.Text, nullable=False),
        sa.Column("display_name", sa.Text),
        sa.Column("created_at", TS),
        sa.Column("deleted_at", TS),
        sa.Column("last_seen_at", TS),
        sa.Column("metadata_json", sa.Text, nullable=False, server_default="{}"),
        sa.PrimaryKeyConstraint("ecosystem", "tenant_id", "identity_id", name="pk_identities"),
    )

    op.create_table(
        "billing",
        *_tenant(),
        sa.Column("date", sa.Date, nullable=False),
        sa.Column("env_id", sa.Text, nullable=False),
        sa.Column("resource_id", sa.Text, nullable=False),
        sa.Column("product_category", sa.Text, nullable=False),
        sa.Column("product_type", sa.Text, nullable=False),
        sa.Column("timestamp", TS, nullable=False),
        sa.Column("quantity", sa.Text, nullable=False),
        sa.Column("unit_price", sa.Text, nullable=False),
        sa.Column("total_cost", sa.Text, nullable=False),
        sa.Column("currency", sa.Text, nullable=False),
        sa.Column("granularity", sa.Text, nullable=False),
        sa.Column("allocation_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("topic_attribution_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("metadata_json", sa.Text, nullable=False, server_default="{}"),
        sa.Column("gathered_at", TS),
        sa.PrimaryKeyConstraint(
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

    op.create_table(
        "usage_metric_values",
        *_tenant(),
        sa.Column("date", sa.Date, nullable=False),
        sa.Column("resource_id", sa.Text, nullable=False),
        sa.Column("query_key", sa.Text, nullable=False),
        sa.Column("labels_key", sa.Text, nullable=False),
        sa.Column("labels_json", sa.Text, nullable=False),
        sa.Column("value_sum", sa.Float(precision=53), nullable=False),
        sa.Column("value_max", sa.Float(precision=53), nullable=False),
        sa.Column("sample_count", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint(
            "ecosystem",
            "tenant_id",
            "date",
            "resource_id",
            "query_key",
            "labels_key",
            name="pk_usage_metric_values",
        ),
    )

    op.create_table(
        "usage_metric_fetches",
        *_tenant(),
        sa.Column("date", sa.Date, nullable=False),
        sa.Column("resource_id", sa.Text, nullable=False),
        sa.Column("query_key", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("fetched_at", TS, nullable=False),
        sa.PrimaryKeyConstraint(
            "ecosystem", "tenant_id", "date", "resource_id", "query_key", name="pk_usage_metric_fetches"
        ),
    )

    op.create_table(
        "chargeback_dimensions",
        sa.Column("dimension_id", ID, primary_key=True, autoincrement=True),
        *_tenant(),
        *(sa.Column(name, sa.Text, nullable=False) for name in DIMENSION_KEY),
        sa.UniqueConstraint("ecosystem", "tenant_id", *DIMENSION_KEY, name="uq_chargeback_dimensions_key"),
        sqlite_autoincrement=True,
    )

    op.create_table(
        "chargeback_facts",
        *_tenant(),
        sa.Column("date", sa.Date, nullable=False),
        sa.Column(
            "dimension_id",
            ID,
            sa.ForeignKey("chargeback_dimensions.dimension_id", name="fk_chargeback_facts_dimension"),
            nullable=False,
        ),
        sa.Column("timestamp", TS, nullable=False),
        sa.Column("amount_units", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("date", "dimension_id", name="pk_chargeback_facts"),
    )
    op.create_index("ix_chargeback_facts_dimension", "chargeback_facts", ["dimension_id"])

    op.create_table(
        "pipeline_state",
        *_tenant(),
        sa.Column("date", sa.Date, nullable=False),
        sa.Column("billing_gathered_at", TS),
        sa.Column("inventory_gathered_at", TS),
        sa.Column("metrics_fetched_at", TS),
        sa.Column("chargeback_calculated_at", TS),
        sa.Column("calculation_id", sa.Text),
        sa.Column("calculation_run_id", sa.Text),
        sa.Column("last_error", sa.Text),
        sa.PrimaryKeyConstraint("ecosystem", "tenant_id", "date", name="pk_pipeline_state"),
    )

    op.create_table(
        "pipeline_runs",
        *_tenant(),
        sa.Column("dagster_run_id", sa.Text, primary_key=True),
        sa.Column("tenant_name", sa.Text, nullable=False),
        sa.Column("trigger", sa.Text, nullable=False),
        sa.Column("range_start", sa.Date),
        sa.Column("range_end", sa.Date),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("ended_at", TS),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("stage", sa.Text),
        sa.Column("current_date", sa.Date),
        sa.Column("dates_gathered", sa.Integer, nullable=False, server_default="0"),
        sa.Column("dates_calculated", sa.Integer, nullable=False, server_default="0"),
        sa.Column("rows_written", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error_message", sa.Text),
    )

    op.create_table(
        "tenant_status",
        *_tenant(),
        sa.Column("tenant_name", sa.Text, primary_key=True),
        sa.Column("suspended", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("suspended_at", TS),
        sa.Column("suspended_reason", sa.Text),
        sa.Column("consecutive_gather_failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_increment_run_id", sa.Text),
        sa.Column("last_gather_error", sa.Text),
    )

    op.create_table(
        "gather_log",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        *_tenant(),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("run_id", sa.Text),
        sa.Column("trigger", sa.Text),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS),
        sa.Column("range_start", sa.Date),
        sa.Column("range_end", sa.Date),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("error", sa.Text),
        sqlite_autoincrement=True,
    )

    op.create_table(
        "gather_counters",
        *_tenant(),
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("consecutive_zero_gathers", sa.Integer, nullable=False, server_default="0"),
    )

    op.create_table(
        "tenant_run_lock",
        *_tenant(),
        sa.Column("tenant_name", sa.Text, primary_key=True),
        sa.Column("run_id", sa.Text, nullable=False),
        sa.Column("acquired_at", TS, nullable=False),
    )


def downgrade() -> None:
    for name in (
        "tenant_run_lock",
        "gather_counters",
        "gather_log",
        "tenant_status",
        "pipeline_runs",
        "pipeline_state",
        "chargeback_facts",
        "chargeback_dimensions",
        "usage_metric_fetches",
        "usage_metric_values",
        "billing",
        "identities",
        "resources",
    ):
        op.drop_table(name)
