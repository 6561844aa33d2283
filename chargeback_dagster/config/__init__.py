"""Configuration layer: YAML loading, interpolation, validation and typed settings (docs/configuration.md)."""

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

__all__ = [
    "AppConfig",
    "ConfigError",
    "EmitterConfig",
    "EmitterParams",
    "FeaturesConfig",
    "IdentitySourceConfig",
    "LoggingConfig",
    "MetricsConfig",
    "OverrideError",
    "PluginSettingsBase",
    "StaticIdentity",
    "StorageConfig",
    "TenantConfig",
    "clear_config_cache",
    "get_config",
    "load_callable",
    "load_config",
    "resolve_database_url",
]
