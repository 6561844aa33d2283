"""Topic attribution (docs/confluent-cloud.md §9): per-topic costs of Kafka clusters, and their view
`v_topic_attribution` for BI tools (docs/outputs.md §3).

`topic_attribution_dimensions` holds each distinct row key once; `topic_attribution_facts` one amount in
units of 0.0001 per (date, dimension).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
DIMENSION_KEY = (
    "env_id",
    "cluster_resource_id",
    "topic_name",
    "product_category",
    "product_type",
    "attribution_method",
)

# dialect name -> (month, amount) expressions of `{x}`, as in the views of migration 0005
EXPRESSIONS = {
    "postgresql": ("to_char({x}, 'YYYY-MM')", "CAST({x} * 0.0001 AS NUMERIC(20, 4))"),
    "sqlite": ("strftime('%Y-%m', {x})", "{x} / 10000.0"),
}


def _view(dialect: str) -> str:
    month_of, amount_of = EXPRESSIONS[dialect]
    month, amount = month_of.format(x="f.date"), amount_of.format(x="f.amount_units")
    return f"""
        SELECT f.ecosystem, f.tenant_id, f.date, {month} AS month,
               d.env_id, d.cluster_resource_id, r.display_name AS cluster_name, d.topic_name,
               d.product_category, d.product_type, d.attribution_method,
               f.amount_units, {amount} AS amount
        FROM topic_attribution_facts f
        JOIN topic_attribution_dimensions d ON d.dimension_id = f.dimension_id
        LEFT JOIN resources r
          ON r.ecosystem = f.ecosystem AND r.tenant_id = f.tenant_id AND r.resource_id = d.cluster_resource_id
    """


def upgrade() -> None:
    op.create_table(
        "topic_attribution_dimensions",
        sa.Column("dimension_id", ID, primary_key=True, autoincrement=True),
        sa.Column("ecosystem", sa.Text, nullable=False),
        sa.Column("tenant_id", sa.Text, nullable=False),
        *(sa.Column(name, sa.Text, nullable=False) for name in DIMENSION_KEY),
        sa.UniqueConstraint(
            "ecosystem", "tenant_id", *DIMENSION_KEY, name="uq_topic_attribution_dimensions_key"
        ),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "topic_attribution_facts",
        sa.Column("ecosystem", sa.Text, nullable=False),
        sa.Column("tenant_id", sa.Text, nullable=False),
        sa.Column("date", sa.Date, nullable=False),
        sa.Column("dimension_id", ID, nullable=False),
        sa.Column("amount_units", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("date", "dimension_id", name="pk_topic_attribution_facts"),
    )
    op.execute(f"CREATE VIEW v_topic_attribution AS {_view(op.get_bind().dialect.name).strip()}")


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS v_topic_attribution")
    op.drop_table("topic_attribution_facts")
    op.drop_table("topic_attribution_dimensions")
