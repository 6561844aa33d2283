"""SQL views for BI tools (docs/outputs.md §3): v_chargeback, v_billing, v_date_status.

Read-only views with stable column names so a dashboard can query the tenant database with plain SQL.
The SELECTs are the same on both backends except for a few expressions: exact NUMERIC amounts and
`metadata_json ->> 'team'` on PostgreSQL; REAL amounts (plus the exact integer `amount_units`) and
`json_extract` on SQLite, which has no exact decimal type.

A later migration that rebuilds, renames or changes a column of a table these views read must drop the
views first and create them again afterwards: PostgreSQL refuses to alter a column a view uses, and SQLite
refuses to rename a table while a view names a table that does not exist.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

VIEWS = ("v_chargeback", "v_billing", "v_date_status")

# dialect name -> expressions that differ; `{x}` is the column expression they apply to
EXPRESSIONS = {
    "postgresql": {
        "month": "to_char({x}, 'YYYY-MM')",
        "amount": "CAST({x} * 0.0001 AS NUMERIC(20, 4))",
        "decimal": "CAST({x} AS NUMERIC)",
        "team": "CAST({x} AS jsonb) ->> 'team'",
    },
    "sqlite": {
        "month": "strftime('%Y-%m', {x})",
        "amount": "{x} / 10000.0",
        "decimal": "CAST({x} AS REAL)",
        "team": "json_extract({x}, '$.team')",
    },
}


def _views(dialect: str) -> dict[str, str]:
    def e(name: str, column: str) -> str:
        return EXPRESSIONS[dialect][name].format(x=column)

    return {
        # One row per stored fact. Summed over env_id and composition_part they are the CSV rows.
        "v_chargeback": f"""
            SELECT f.ecosystem, f.tenant_id, f.date, {e("month", "f.date")} AS month, f.timestamp,
                   d.env_id, d.resource_id, r.display_name AS resource_name,
                   d.product_category, d.product_type,
                   d.identity_id, i.display_name, {e("team", "i.metadata_json")} AS team,
                   d.cost_type, d.allocation_method, d.allocation_detail, d.composition_part,
                   f.amount_units, {e("amount", "f.amount_units")} AS amount
            FROM chargeback_facts f
            JOIN chargeback_dimensions d ON d.dimension_id = f.dimension_id
            LEFT JOIN identities i
              ON i.ecosystem = f.ecosystem AND i.tenant_id = f.tenant_id AND i.identity_id = d.identity_id
            LEFT JOIN resources r
              ON r.ecosystem = f.ecosystem AND r.tenant_id = f.tenant_id AND r.resource_id = d.resource_id
        """,
        "v_billing": f"""
            SELECT b.ecosystem, b.tenant_id, b.date, {e("month", "b.date")} AS month, b.timestamp,
                   b.env_id, b.resource_id, r.display_name AS resource_name,
                   b.product_category, b.product_type,
                   {e("decimal", "b.quantity")} AS quantity, {e("decimal", "b.unit_price")} AS unit_price,
                   {e("decimal", "b.total_cost")} AS total_cost, b.currency, b.granularity, b.gathered_at
            FROM billing b
            LEFT JOIN resources r
              ON r.ecosystem = b.ecosystem AND r.tenant_id = b.tenant_id AND r.resource_id = b.resource_id
        """,
        "v_date_status": """
            SELECT ecosystem, tenant_id, date,
                   CASE WHEN billing_gathered_at IS NULL THEN 0 ELSE 1 END AS billing_gathered,
                   CASE WHEN chargeback_calculated_at IS NULL THEN 0 ELSE 1 END AS calculated,
                   billing_gathered_at, inventory_gathered_at, metrics_fetched_at, chargeback_calculated_at,
                   calculation_id, calculation_run_id, last_error
            FROM pipeline_state
        """,
    }


def upgrade() -> None:
    for name, select in _views(op.get_bind().dialect.name).items():
        op.execute(f"CREATE VIEW {name} AS {select.strip()}")


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
