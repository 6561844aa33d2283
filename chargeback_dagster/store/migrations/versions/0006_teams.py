"""Teams: a `team` column on `identities` and `resources`, and `v_chargeback.team` charged per row.

The team of every identity and resource is resolved when the inventory is gathered (docs/configuration.md
§5.1) and stored in the new columns; existing identities start with the `team` of their metadata (what
0005's view showed). `v_chargeback.team` becomes the row's team: the team of its resource, else of its
environment (`env_id`), else of its identity — the rule of chargeback_dagster/teams.py `row_team`, which
the Prometheus emitter uses. As 0005 requires, the views reading these tables are dropped first and
created again afterwards (`v_date_status` reads neither and stays).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

REBUILT = ("v_chargeback", "v_billing")
METADATA_TEAM = {
    "postgresql": "CAST(metadata_json AS jsonb) ->> 'team'",
    "sqlite": "json_extract(metadata_json, '$.team')",
}


def _bi_views(dialect: str) -> dict[str, str]:
    """The SELECTs of revision 0005 (its module, as Alembic loaded it)."""
    return context.script.get_revision("0005").module._views(dialect)


def _chargeback_view(dialect: str) -> str:
    month, amount = (
        context.script.get_revision("0005").module.EXPRESSIONS[dialect][name].format(x=column)
        for name, column in (("month", "f.date"), ("amount", "f.amount_units"))
    )
    return f"""
        SELECT f.ecosystem, f.tenant_id, f.date, {month} AS month, f.timestamp,
               d.env_id, d.resource_id, r.display_name AS resource_name,
               d.product_category, d.product_type,
               d.identity_id, i.display_name, COALESCE(r.team, e.team, i.team) AS team,
               d.cost_type, d.allocation_method, d.allocation_detail, d.composition_part,
               f.amount_units, {amount} AS amount
        FROM chargeback_facts f
        JOIN chargeback_dimensions d ON d.dimension_id = f.dimension_id
        LEFT JOIN identities i
          ON i.ecosystem = f.ecosystem AND i.tenant_id = f.tenant_id AND i.identity_id = d.identity_id
        LEFT JOIN resources r
          ON r.ecosystem = f.ecosystem AND r.tenant_id = f.tenant_id AND r.resource_id = d.resource_id
        LEFT JOIN resources e
          ON e.ecosystem = f.ecosystem AND e.tenant_id = f.tenant_id AND e.resource_id = d.env_id
    """


def _drop_views() -> None:
    for name in REBUILT:
        op.execute(f"DROP VIEW IF EXISTS {name}")


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    _drop_views()
    for table in ("identities", "resources"):
        op.add_column(table, sa.Column("team", sa.Text(), nullable=True))
    op.execute(f"UPDATE identities SET team = {METADATA_TEAM[dialect]}")
    op.execute(f"CREATE VIEW v_chargeback AS {_chargeback_view(dialect).strip()}")
    op.execute(f"CREATE VIEW v_billing AS {_bi_views(dialect)['v_billing'].strip()}")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    _drop_views()
    for table in ("identities", "resources"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("team")
    for name in REBUILT:
        op.execute(f"CREATE VIEW {name} AS {_bi_views(dialect)[name].strip()}")
