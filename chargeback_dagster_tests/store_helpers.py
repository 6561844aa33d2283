"""What tests read from a tenant database beyond what the product needs: plain SQL through the engine."""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa

from chargeback_dagster.store import TenantStore
from chargeback_dagster.store import tables as t
from chargeback_dagster.store.database import alembic_config


def _mine(store: TenantStore, table: sa.Table) -> sa.ColumnElement[bool]:
    return sa.and_(table.c.ecosystem == store.ecosystem, table.c.tenant_id == store.tenant_id)


def fact_rows(store: TenantStore, d: date) -> list[tuple]:
    """The stored facts of `d` as (dimension key fields..., amount_units), sorted."""
    facts, dim = t.chargeback_facts, t.chargeback_dimensions
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(*(dim.c[c] for c in t.DIMENSION_KEY_COLUMNS), facts.c.amount_units)
            .select_from(facts.join(dim, facts.c.dimension_id == dim.c.dimension_id))
            .where(_mine(store, facts), facts.c.date == d)
        ).all()
    return sorted((*r[:-1], int(r[-1])) for r in rows)


def total_units(store: TenantStore, d: date) -> int:
    """Σ amount_units of the facts of `d` (0 without facts)."""
    facts = t.chargeback_facts
    with store.engine.connect() as conn:
        total = conn.execute(
            sa.select(sa.func.sum(facts.c.amount_units)).where(_mine(store, facts), facts.c.date == d)
        ).scalar_one()
    return int(total or 0)


def csv_rows(store: TenantStore, start: date, end: date) -> list[tuple]:
    """`store.chargeback.csv_groups` as full rows: (ecosystem, tenant_id, timestamp, resource_id,
    product_category, product_type, identity_id, cost_type, amount_units, allocation_method,
    allocation_detail)."""
    eco, tid = store.ecosystem, store.tenant_id
    return [(eco, tid, ts, *f[:5], units, *f[5:]) for ts, f, units in store.chargeback.csv_groups(start, end)]


def billing_dates(store: TenantStore, start: date, end: date) -> list[date]:
    """Dates start ≤ d < end with stored billing lines, ascending."""
    b = t.billing
    with store.engine.connect() as conn:
        dates = conn.execute(
            sa.select(b.c.date).distinct().where(_mine(store, b), b.c.date >= start, b.c.date < end)
        ).scalars()
        return sorted(dates)


def current_revision(store: TenantStore) -> str | None:
    """The migration revision the database is at."""
    with store.engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT version_num FROM {t.VERSION_TABLE}")).scalar_one_or_none()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()
