"""Alembic environment: always driven programmatically with a connection in `config.attributes`."""

from __future__ import annotations

from alembic import context

from chargeback_dagster.store.tables import VERSION_TABLE

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only TenantStore.migrate runs these scripts
    raise RuntimeError("chargeback-dagster migrations run via TenantStore.migrate (no connection given)")

context.configure(
    connection=connection,
    target_metadata=None,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
