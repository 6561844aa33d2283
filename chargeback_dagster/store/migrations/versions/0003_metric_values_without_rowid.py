"""Usage metric values WITHOUT ROWID on SQLite.

A rowid table stores each row in the table and its key columns (the long label text among them) again in
the primary key's index: inserts write two B-trees and a date's read goes from the index to the table row by
row. WITHOUT ROWID the table is the key's B-tree. Rows are copied unchanged (labels_key stays the canonical
label text). PostgreSQL is unchanged.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = (
    "ecosystem, tenant_id, date, resource_id, query_key, labels_key, labels_json, value_sum, value_max, "
    "sample_count"
)


def _rebuild_sqlite(*, with_rowid: bool) -> None:
    """SQLite cannot change WITHOUT ROWID in place: copy into a new table."""
    op.create_table(
        "usage_metric_values_new",
        sa.Column("ecosystem", sa.Text, nullable=False),
        sa.Column("tenant_id", sa.Text, nullable=False),
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
        sqlite_with_rowid=with_rowid,
    )
    op.execute(f"INSERT INTO usage_metric_values_new ({COLUMNS}) SELECT {COLUMNS} FROM usage_metric_values")
    op.drop_table("usage_metric_values")
    op.rename_table("usage_metric_values_new", "usage_metric_values")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(with_rowid=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(with_rowid=True)
