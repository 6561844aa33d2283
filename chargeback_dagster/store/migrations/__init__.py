"""Alembic scripts of the tenant database (run programmatically by TenantStore.migrate)."""
