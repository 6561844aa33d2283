"""Per-tenant storage (docs/operations.md §13): one database, its rows reached through one repository per
concern.

`store.billing`, `store.inventory`, `store.metrics`, `store.chargeback`, `store.topic_attribution`,
`store.state` (per-date state, tenant status and suspension, gather log, run lock, run audit) and
`store.retention`; they share the engine and transaction helpers of `store.db`.
"""

from __future__ import annotations

from chargeback_dagster.store.billing import BillingRepository
from chargeback_dagster.store.chargeback import ChargebackRepository
from chargeback_dagster.store.database import Database
from chargeback_dagster.store.inventory import InventoryRepository
from chargeback_dagster.store.metrics import MetricsRepository
from chargeback_dagster.store.retention import RetentionRepository
from chargeback_dagster.store.tenant_state import TenantStateRepository
from chargeback_dagster.store.topic_attribution import TopicAttributionRepository


class TenantStore:
    """One tenant database. Thread-safe as far as the SQLAlchemy engine is; cheap to construct."""

    def __init__(self, url: str, *, tenant_name: str, ecosystem: str, tenant_id: str) -> None:
        self.db = Database(url)
        self.url = self.db.url
        self.engine = self.db.engine
        self.tenant_name = tenant_name
        self.ecosystem = ecosystem
        self.tenant_id = tenant_id
        scope = {"tenant_name": tenant_name, "ecosystem": ecosystem, "tenant_id": tenant_id}
        self.billing = BillingRepository(self.db, **scope)
        self.inventory = InventoryRepository(self.db, **scope)
        self.metrics = MetricsRepository(self.db, **scope)
        self.state = TenantStateRepository(self.db, **scope)
        self.chargeback = ChargebackRepository(self.db, **scope, billing=self.billing, state=self.state)
        self.topic_attribution = TopicAttributionRepository(self.db, **scope)
        self.retention = RetentionRepository(self.db, **scope, chargeback=self.chargeback)

    @classmethod
    def open(cls, url: str, *, tenant_name: str, ecosystem: str, tenant_id: str) -> TenantStore:
        """Construct, apply migrations, upsert the `UNALLOCATED` identity."""
        store = cls(url, tenant_name=tenant_name, ecosystem=ecosystem, tenant_id=tenant_id)
        try:
            store.migrate()
            store.inventory.ensure_unallocated()
        except BaseException:
            store.dispose()
            raise
        return store

    def migrate(self) -> None:
        """`upgrade head` (docs/operations.md §13); a revision this version does not know → StoreError."""
        self.db.migrate(self.tenant_name)

    def dispose(self) -> None:
        self.db.dispose()

    def __repr__(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True)
        return f"TenantStore({url!r}, tenant={self.tenant_name!r})"
