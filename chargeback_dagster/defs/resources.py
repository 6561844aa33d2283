"""Dagster resources over the tenant config the code location loaded (docs/configuration.md §1).

They never read the config file: each step passes the TenantConfig it was built with, so a run uses one
config snapshot — the one its process loaded with the code location. Config edits reach the code server on
a code-location reload, and every run worker loads the location (and so the file) when its run starts.
"""

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import dagster as dg

from chargeback_dagster import tenant_ops
from chargeback_dagster.config import TenantConfig
from chargeback_dagster.sources.prometheus import PrometheusClient
from chargeback_dagster.store import TenantStore

# The process's open tenant stores, one per configured tenant, never evicted: a long-lived process (the code
# server evaluating every tenant's sensor each tick) must not re-open, re-migrate and re-upsert a store per
# tick, which a cache smaller than the fleet did. A process serves one config, so this holds at most one
# store per tenant (docs/operations.md §13).
_StoreKey = tuple[str, str, str, str]
_stores: dict[_StoreKey, TenantStore] = {}
_opening: dict[_StoreKey, threading.Lock] = {}
_opening_guard = threading.Lock()


def _open_store(url: str, tenant_name: str, ecosystem: str, tenant_id: str) -> TenantStore:
    key = (url, tenant_name, ecosystem, tenant_id)
    store = _stores.get(key)
    if store is not None:
        return store
    with _opening_guard:
        lock = _opening.setdefault(key, threading.Lock())
    with lock:  # sensors may tick in threads: one migration per store, other tenants open in parallel
        store = _stores.get(key)
        if store is None:
            store = TenantStore.open(url, tenant_name=tenant_name, ecosystem=ecosystem, tenant_id=tenant_id)
            _stores[key] = store
    return store


def close_stores() -> None:
    """Dispose of every open tenant store's engine (its connections); the next use opens it again."""
    with _opening_guard:
        stores = list(_stores.values())
        _stores.clear()
    for store in stores:
        store.dispose()


class TenantStoreResource(dg.ConfigurableResource):
    """Opens (and migrates, once per process) a tenant's database (`tenant_store`)."""

    def open(self, tenant: TenantConfig) -> TenantStore:
        return _open_store(tenant.database_url, tenant.name, tenant.ecosystem, tenant.tenant_id)

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator["TenantStoreResource"]:
        # Resources of a run live as long as the run (the code location's executor is in-process), so
        # their teardown is the run's end: stop its lock heartbeats and release its tenant locks.
        try:
            yield self
        finally:
            if context.dagster_run is not None:
                tenant_ops.end_run(context.dagster_run.run_id)


class PrometheusResource(dg.ConfigurableResource):
    """Builds a tenant's Prometheus client from its `plugin_settings.metrics` (`prometheus`)."""

    def client(
        self,
        tenant: TenantConfig,
        sleep: Callable[[float], None] = time.sleep,
        deadline_left: Callable[[], float | None] = lambda: None,
    ) -> PrometheusClient:
        """`sleep` waits between retries; a run passes one bounded by its deadline, and `deadline_left`
        (seconds to that deadline) to cut in-flight requests short."""
        metrics = tenant.plugin_settings.metrics
        if metrics is None:
            raise dg.Failure(f"Tenant {tenant.name} has no plugin_settings.metrics configured")
        return PrometheusClient.from_config(
            metrics, max_workers=tenant.metrics_prefetch_workers, sleep=sleep, deadline_left=deadline_left
        )
