"""Per-tenant database (docs/operations.md §13)."""

from chargeback_dagster.store.tenant_store import RunLock, StoreError, TenantStore, normalize_url

__all__ = ["RunLock", "StoreError", "TenantStore", "normalize_url"]
