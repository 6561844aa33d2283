"""Configuration layer: YAML loading, interpolation, validation and typed settings (docs/configuration.md)."""

import importlib
from typing import Any

from .loader import ConfigError, clear_config_cache, get_config, load_config
from .models import (
    AppConfig,
    EmitterConfig,
    EmitterParams,
    FeaturesConfig,
    IdentitySourceConfig,
    LoggingConfig,
    MetricsConfig,
    PluginSettingsBase,
    StaticIdentity,
    StorageConfig,
    TenantConfig,
    resolve_database_url,
)
from .overrides import OverrideError, load_callable

# The ecosystems' settings models live in ecosystems/<name>/config.py (which import this package); they are
# re-exported here lazily for existing imports.
_ECOSYSTEM_MODELS = {
    "chargeback_dagster.ecosystems.confluent_cloud.config": (
        "BillingApiConfig",
        "CCloudApiConfig",
        "ConfluentCloudSettings",
        "FlinkCredential",
        "TopicAttributionConfig",
    ),
    "chargeback_dagster.ecosystems.generic_metrics.config": (
        "CostQuantity",
        "CostTypeConfig",
        "GenericMetricsSettings",
    ),
    "chargeback_dagster.ecosystems.self_managed_kafka.config": (
        "CostModelConfig",
        "CostRates",
        "RateOverrides",
        "ResourceSourceConfig",
        "SelfManagedKafkaSettings",
    ),
}


def __getattr__(name: str) -> Any:
    for module, names in _ECOSYSTEM_MODELS.items():
        if name in names:
            return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AppConfig",
    "BillingApiConfig",
    "CCloudApiConfig",
    "ConfigError",
    "ConfluentCloudSettings",
    "CostModelConfig",
    "CostQuantity",
    "CostRates",
    "CostTypeConfig",
    "EmitterConfig",
    "EmitterParams",
    "FeaturesConfig",
    "FlinkCredential",
    "GenericMetricsSettings",
    "IdentitySourceConfig",
    "LoggingConfig",
    "MetricsConfig",
    "OverrideError",
    "PluginSettingsBase",
    "RateOverrides",
    "ResourceSourceConfig",
    "SelfManagedKafkaSettings",
    "StaticIdentity",
    "StorageConfig",
    "TenantConfig",
    "TopicAttributionConfig",
    "clear_config_cache",
    "get_config",
    "load_callable",
    "load_config",
    "resolve_database_url",
]
