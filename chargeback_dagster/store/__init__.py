"""Per-tenant database (docs/operations.md §13)."""

from chargeback_dagster.store.database import StoreError, normalize_url
from chargeback_dagster.store.tenant_state import RunLock
from chargeback_dagster.store.tenant_store import TenantStore

__all__ = ["RunLock", "StoreError", "TenantStore", "normalize_url"]
