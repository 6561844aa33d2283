"""Per-tenant database (docs/operations.md §13)."""

from chargeback_dagster.store.tenant_store import StoreError, TenantStore, normalize_url

__all__ = ["StoreError", "TenantStore", "normalize_url"]
