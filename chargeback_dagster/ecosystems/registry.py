"""The ecosystems a tenant can use: one entry each, keyed by the tenant's `ecosystem` value.

Adding an ecosystem = its package under ecosystems/<name>/ + one entry here. Entries name their classes as
``"module:attribute"`` and import them on first use: loading the config imports no ecosystem code, and a
tenant only needs its own ecosystem's extras (``confluent-kafka`` for the Kafka Admin API source).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chargeback_dagster.config import PluginSettingsBase, TenantConfig
    from chargeback_dagster.ecosystems.base import Ecosystem


@dataclass(frozen=True)
class EcosystemPlugin:
    ecosystem: str  # "module:Class" of the Ecosystem implementation (ecosystems/base.py)
    settings: str  # "module:Class" of its plugin_settings model, a PluginSettingsBase
    service_types: tuple[str, ...]  # keys of identity_resolution_overrides (docs/configuration.md §10)

    def ecosystem_class(self) -> type[Ecosystem]:
        return _load(self.ecosystem)

    def settings_class(self) -> type[PluginSettingsBase]:
        return _load(self.settings)


def _load(target: str) -> Any:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


_PKG = "chargeback_dagster.ecosystems"

ECOSYSTEMS: dict[str, EcosystemPlugin] = {
    "confluent_cloud": EcosystemPlugin(
        f"{_PKG}.confluent_cloud.ecosystem:ConfluentCloudEcosystem",
        f"{_PKG}.confluent_cloud.config:ConfluentCloudSettings",
        ("kafka", "schema_registry", "connector", "ksqldb", "flink", "org_wide", "default"),
    ),
    "generic_metrics_only": EcosystemPlugin(
        f"{_PKG}.generic_metrics.ecosystem:GenericMetricsEcosystem",
        f"{_PKG}.generic_metrics.config:GenericMetricsSettings",
        ("generic",),
    ),
    "self_managed_kafka": EcosystemPlugin(
        f"{_PKG}.self_managed_kafka.ecosystem:SelfManagedKafkaEcosystem",
        f"{_PKG}.self_managed_kafka.config:SelfManagedKafkaSettings",
        ("kafka",),
    ),
}


def ecosystem_for(tenant: TenantConfig) -> Ecosystem:
    """The tenant's ecosystem (the config layer only accepts registered names)."""
    return ECOSYSTEMS[tenant.ecosystem].ecosystem_class()(tenant)
