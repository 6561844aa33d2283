"""Dagster resources built from the validated config file.

Resources hold only the config file path (Dagster config must be plain values); each process loads and
validates the file once per modification (docs/configuration.md §1) and opens each tenant store once.
"""

import functools
import os
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from chargeback_dagster.config import AppConfig, TenantConfig, load_config
from chargeback_dagster.sources.prometheus import PrometheusClient
from chargeback_dagster.store import TenantStore


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, env_file: str | None) -> AppConfig:
    return load_config(path, env_file)


@functools.lru_cache(maxsize=64)
def _open_store(url: str, tenant_name: str, ecosystem: str, tenant_id: str) -> TenantStore:
    return TenantStore.open(url, tenant_name=tenant_name, ecosystem=ecosystem, tenant_id=tenant_id)


class AppConfigResource(dg.ConfigurableResource):
    """The chargeback YAML config (`app_config`)."""

    config_file: str
    env_file: str | None = None

    def load(self) -> AppConfig:
        path = str(Path(self.config_file).resolve())
        return _load(path, os.stat(path).st_mtime_ns, self.env_file)

    def tenant(self, tenant_name: str) -> TenantConfig:
        tenants = self.load().tenants
        if tenant_name not in tenants:
            raise dg.Failure(f"Unknown tenant '{tenant_name}'")
        return tenants[tenant_name]


class TenantStoreResource(dg.ConfigurableResource):
    """Opens (and migrates, once per process) a tenant's database (`tenant_store`)."""

    app_config: AppConfigResource

    def open(self, tenant_name: str) -> TenantStore:
        tenant = self.app_config.tenant(tenant_name)
        return _open_store(tenant.database_url, tenant.name, tenant.ecosystem, tenant.tenant_id)


class PrometheusResource(dg.ConfigurableResource):
    """Builds a tenant's Prometheus client from its `plugin_settings.metrics` (`prometheus`)."""

    app_config: AppConfigResource

    def client(
        self,
        tenant_name: str,
        sleep: Callable[[float], None] = time.sleep,
        deadline_left: Callable[[], float | None] = lambda: None,
    ) -> PrometheusClient:
        """`sleep` waits between retries; a run passes one bounded by its deadline, and `deadline_left`
        (seconds to that deadline) to cut in-flight requests short."""
        tenant = self.app_config.tenant(tenant_name)
        metrics = tenant.plugin_settings.metrics
        if metrics is None:
            raise dg.Failure(f"Tenant {tenant_name} has no plugin_settings.metrics configured")
        return PrometheusClient.from_config(
            metrics, max_workers=tenant.metrics_prefetch_workers, sleep=sleep, deadline_left=deadline_left
        )
