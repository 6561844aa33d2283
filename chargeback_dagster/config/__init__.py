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

# The ecosystems' settings models live in ecosystems/<name>/config.py (which import this package); re-exported
# lazily for existing imports (test_config.py).
_SETTINGS_MODULES = {
    "ConfluentCloudSettings": "chargeback_dagster.ecosystems.confluent_cloud.config",
    "GenericMetricsSettings": "chargeback_dagster.ecosystems.generic_metrics.config",
    "SelfManagedKafkaSettings": "chargeback_dagster.ecosystems.self_managed_kafka.config",
}


def __getattr__(name: str) -> Any:
    if name in _SETTINGS_MODULES:
        return getattr(importlib.import_module(_SETTINGS_MODULES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AppConfig",
    "ConfigError",
    "ConfluentCloudSettings",
    "EmitterConfig",
    "EmitterParams",
    "FeaturesConfig",
    "GenericMetricsSettings",
    "IdentitySourceConfig",
    "LoggingConfig",
    "MetricsConfig",
    "OverrideError",
    "PluginSettingsBase",
    "SelfManagedKafkaSettings",
    "StaticIdentity",
    "StorageConfig",
    "TenantConfig",
    "clear_config_cache",
    "get_config",
    "load_callable",
    "load_config",
    "resolve_database_url",
]
