"""Leaner chargeback facts: no foreign key and no dimension_id index; SQLite stores them WITHOUT ROWID.

A chargeback run inserts millions of facts; each insert paid for the secondary index and (PostgreSQL) the
foreign-key trigger, about half of the write cost. Only retention reads facts by dimension (it deletes
dimensions no fact references) and it now does so with one anti-join instead of an index lookup per
dimension. On SQLite the table keyed by (date, dimension_id) becomes that key's B-tree itself.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
COLUMNS = "ecosystem, tenant_id, date, dimension_id, timestamp, amount_units"


def _facts_table(name: str, *, foreign_key: bool, **kwargs: object) -> None:
    dimension = [sa.ForeignKey("chargeback_dimensions.dimension_id", name="fk_chargeback_facts_dimension")]
    op.create_table(
        name,
        sa.Column("ecosystem", sa.Text, nullable=False),
        sa.Column("tenant_id", sa.Text, nullable=False),
        sa.Column("date", sa.Date, nullable=False),
        sa.Column("dimension_id", ID, *(dimension if foreign_key else []), nullable=False),
        sa.Column("timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("amount_units", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("date", "dimension_id", name="pk_chargeback_facts"),
        **kwargs,
    )


def _rebuild_sqlite(*, lean: bool) -> None:
    """SQLite cannot drop a foreign key or change WITHOUT ROWID in place: copy into a new table."""
    op.execute("DROP INDEX IF EXISTS ix_chargeback_facts_dimension")
    _facts_table("chargeback_facts_new", foreign_key=not lean, sqlite_with_rowid=not lean)
    op.execute(f"INSERT INTO chargeback_facts_new ({COLUMNS}) SELECT {COLUMNS} FROM chargeback_facts")
    op.drop_table("chargeback_facts")
    op.rename_table("chargeback_facts_new", "chargeback_facts")
    if not lean:
        op.create_index("ix_chargeback_facts_dimension", "chargeback_facts", ["dimension_id"])


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(lean=True)
        return
    op.drop_constraint("fk_chargeback_facts_dimension", "chargeback_facts", type_="foreignkey")
    op.drop_index("ix_chargeback_facts_dimension", table_name="chargeback_facts")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(lean=False)
        return
    op.create_foreign_key(
        "fk_chargeback_facts_dimension",
        "chargeback_facts",
        "chargeback_dimensions",
        ["dimension_id"],
        ["dimension_id"],
    )
    op.create_index("ix_chargeback_facts_dimension", "chargeback_facts", ["dimension_id"])
