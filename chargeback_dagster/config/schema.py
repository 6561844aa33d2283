"""Typed, validated configuration objects (pydantic v2).

These models describe the *result* of loading: every value in them has already been checked by
``chargeback_dagster.config.validation`` (which produces the exact documented error messages), so the models
only carry types, defaults and a few helpers used at runtime.
"""

from __future__ import annotations

import os
import re
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, SerializeAsAny

from chargeback_dagster.ecosystems.confluent_cloud.allocators import (
    DEFAULT_CKU_SHARED_RATIO,
    DEFAULT_CKU_USAGE_RATIO,
)

DEFAULT_LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
DEFAULT_CSV_TEMPLATE = "{tenant_id}_{date}.csv"
DEFAULT_TOPIC_ATTRIBUTION_TEMPLATE = "topic_attr_{tenant_id}_{date}.csv"
DEFAULT_EXCLUDE_TOPIC_PATTERNS = ["__consumer_offsets", "_schemas", "_confluent-*"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- top level
class LoggingConfig(_Model):
    level: str = "INFO"
    format: str = DEFAULT_LOG_FORMAT
    per_module_levels: dict[str, str] = Field(default_factory=dict)


class FeaturesConfig(_Model):
    enable_periodic_refresh: bool = True
    refresh_interval: int = 1800
    max_parallel_tenants: int = 4


class StorageConfig(_Model):
    backend: str = "sqlalchemy"
    connection_string: SecretStr


# --- common plugin
class MetricsConfig(_Model):
    type: Literal["prometheus"] = "prometheus"
    url: str
    auth_type: Literal["basic", "bearer", "none"] = "none"
    username: str | None = None
    password: SecretStr | None = None
    bearer_token: SecretStr | None = None


class EmitterParams(_Model):
    output_dir: Path  # absolute (resolved against the config directory)
    filename_template: str = DEFAULT_CSV_TEMPLATE


class EmitterConfig(_Model):
    type: str
    name: str
    aggregation: Literal["daily", "monthly"] | None = None
    params: EmitterParams


class StaticIdentity(_Model):
    identity_id: str
    identity_type: str
    display_name: str | None = None
    team: str | None = None


class IdentitySourceConfig(_Model):
    """Identity source of ``generic_metrics_only`` and ``self_managed_kafka``.

    ``label`` and ``discovery_query`` are only accepted in YAML for ``generic_metrics_only``; for
    ``self_managed_kafka`` they are rejected as unknown keys and keep their defaults here (the Kafka
    discovery query and the ``principal`` label are fixed by the ecosystem).
    """

    source: Literal["prometheus", "static", "both"] = "prometheus"
    label: str = "principal"
    discovery_query: str | None = None
    principal_to_team: dict[str, str] = Field(default_factory=dict)
    default_team: str = "UNASSIGNED"
    static_identities: list[StaticIdentity] = Field(default_factory=list)

    @property
    def includes_prometheus(self) -> bool:
        return self.source in ("prometheus", "both")

    @property
    def includes_static(self) -> bool:
        return self.source in ("static", "both")


class PluginSettingsBase(_Model):
    allocator_params: dict[str, Any] = Field(default_factory=dict)
    allocator_overrides: dict[str, str] = Field(default_factory=dict)
    identity_resolution_overrides: dict[str, str] = Field(default_factory=dict)
    min_refresh_gap_seconds: int = 1800
    metrics_step_seconds: int = 3600
    metrics: MetricsConfig | None = None
    emitters: list[EmitterConfig] = Field(default_factory=list)


# --- generic
class CostQuantity(_Model):
    type: Literal["fixed", "storage_gib", "network_gib"]
    count: int | None = None
    query: str | None = None


class CostTypeConfig(_Model):
    name: str
    product_category: str
    rate: Decimal
    cost_quantity: CostQuantity
    allocation_strategy: Literal["even_split", "usage_ratio"] = "even_split"
    allocation_query: str | None = None
    allocation_label: str | None = None


class GenericMetricsSettings(PluginSettingsBase):
    cluster_id: str
    display_name: str | None = None
    identity_source: IdentitySourceConfig = Field(default_factory=IdentitySourceConfig)
    discovery_window_hours: int = 1
    cost_types: list[CostTypeConfig]


# --- self-managed
RATE_FIELDS = (
    "compute_hourly_rate",
    "storage_per_gib_hourly",
    "network_ingress_per_gib",
    "network_egress_per_gib",
)


class CostRates(_Model):
    compute_hourly_rate: Decimal
    storage_per_gib_hourly: Decimal
    network_ingress_per_gib: Decimal
    network_egress_per_gib: Decimal


class RateOverrides(_Model):
    compute_hourly_rate: Decimal | None = None
    storage_per_gib_hourly: Decimal | None = None
    network_ingress_per_gib: Decimal | None = None
    network_egress_per_gib: Decimal | None = None


class CostModelConfig(CostRates):
    region_overrides: dict[str, RateOverrides] = Field(default_factory=dict)

    def effective_rates(self, region: str | None = None) -> CostRates:
        """Base rates with ``region_overrides[region]`` applied (missing rates inherit)."""
        values = {f: getattr(self, f) for f in RATE_FIELDS}
        override = self.region_overrides.get(region) if region is not None else None
        if override is not None:
            for f in RATE_FIELDS:
                v = getattr(override, f)
                if v is not None:
                    values[f] = v
        return CostRates(**values)


class ResourceSourceConfig(_Model):
    source: Literal["prometheus", "admin_api"] = "prometheus"
    bootstrap_servers: str | None = None
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None


class SelfManagedKafkaSettings(PluginSettingsBase):
    cluster_id: str
    broker_count: int
    region: str | None = None
    cost_model: CostModelConfig
    identity_source: IdentitySourceConfig = Field(default_factory=IdentitySourceConfig)
    resource_source: ResourceSourceConfig = Field(default_factory=ResourceSourceConfig)
    discovery_window_hours: int = 1

    def effective_rates(self) -> CostRates:
        return self.cost_model.effective_rates(self.region)


# --- confluent
class CCloudApiConfig(_Model):
    key: SecretStr
    secret: SecretStr
    base_url: str = "https://api.confluent.cloud"
    flink_url_template: str = "https://flink.{region}.{cloud}.confluent.cloud"


class BillingApiConfig(_Model):
    days_per_query: int = 15


class FlinkCredential(_Model):
    region_id: str
    key: SecretStr
    secret: SecretStr


class TopicAttributionConfig(_Model):
    enabled: bool = False
    exclude_topic_patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_EXCLUDE_TOPIC_PATTERNS))
    missing_metrics_behavior: Literal["even_split", "skip"] = "even_split"
    cost_mapping_overrides: dict[
        str, Literal["bytes_ratio", "retained_bytes_ratio", "even_split", "disabled"]
    ] = Field(default_factory=dict)
    metric_name_overrides: dict[str, str] = Field(default_factory=dict)
    retention_days: int = 90
    emitters: list[EmitterConfig] = Field(default_factory=list)


class ConfluentCloudSettings(PluginSettingsBase):
    ccloud_api: CCloudApiConfig
    billing_api: BillingApiConfig = Field(default_factory=BillingApiConfig)
    flink: list[FlinkCredential] = Field(default_factory=list)
    topic_attribution: TopicAttributionConfig = Field(default_factory=TopicAttributionConfig)

    @property
    def cku_usage_ratio(self) -> Decimal:
        return _as_decimal(self.allocator_params.get("kafka_cku_usage_ratio"), DEFAULT_CKU_USAGE_RATIO)

    @property
    def cku_shared_ratio(self) -> Decimal:
        return _as_decimal(self.allocator_params.get("kafka_cku_shared_ratio"), DEFAULT_CKU_SHARED_RATIO)

    def flink_credential(self, region_id: str) -> FlinkCredential | None:
        wanted = region_id.strip().lower()
        return next((c for c in self.flink if c.region_id == wanted), None)


def _as_decimal(value: Any, default: Decimal) -> Decimal:
    if value is None:
        return default
    if isinstance(value, Decimal):
        return value
    return Decimal(str(value))


# --- tenant / app
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
SQLITE_SCHEMES = ("sqlite", "sqlite+pysqlite")


def url_scheme(url: str) -> str:
    m = _URL_SCHEME.match(url)
    return m.group(1) if m else ""


def sqlite_file_path(url: str, config_dir: Path | str) -> str | None:
    """Absolute file path of a SQLite URL (relative paths against ``config_dir``); None if not a file."""
    scheme = url_scheme(url)
    if scheme not in SQLITE_SCHEMES:
        return None
    rest = url[len(scheme) + 3 :]
    path_part, _, _query = rest.partition("?")
    if not path_part.startswith("/"):
        return None
    p = path_part[1:]
    if p in ("", ":memory:") or p.startswith("file::memory:"):
        return None
    if not os.path.isabs(p):
        p = os.path.join(str(config_dir), p)
    return os.path.normpath(p)


def resolve_database_url(url: str, config_dir: Path | str) -> str:
    """SQLAlchemy URL to use: relative SQLite paths made absolute, bare ``postgresql`` → psycopg 3."""
    scheme = url_scheme(url)
    if scheme == "postgresql":
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    if scheme in SQLITE_SCHEMES:
        file_path = sqlite_file_path(url, config_dir)
        if file_path is None:
            return url
        _, sep, query = url.partition("?")
        return f"{scheme}:///{file_path}" + (f"?{query}" if sep else "")
    return url


class TenantConfig(_Model):
    name: str
    ecosystem: str  # a name in ecosystems/registry.py
    tenant_id: str
    partitions_start_date: date = date(2025, 1, 1)
    lookback_days: int = 200
    cutoff_days: int = 5
    retention_days: int = 250
    allocation_retry_limit: int = 3
    topic_attribution_retry_limit: int = 3
    zero_gather_deletion_threshold: int = -1
    gather_failure_threshold: int = 5
    tenant_execution_timeout_seconds: int = 3600
    metrics_prefetch_workers: int = 4
    storage: StorageConfig
    # the ecosystem's own settings model (ecosystems/registry.py), dumped with all its fields
    plugin_settings: SerializeAsAny[PluginSettingsBase]
    config_dir: Path = Field(exclude=True)

    @property
    def database_url(self) -> str:
        return resolve_database_url(self.storage.connection_string.get_secret_value(), self.config_dir)


class AppConfig(_Model):
    config_path: Path
    config_dir: Path
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    tenants: dict[str, TenantConfig] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)

    def redacted_dict(self) -> dict[str, Any]:
        """JSON-able dict for ``show-config``: secrets ``**********``, dates ISO, Decimals as strings."""
        return self.model_dump(mode="json")

    def tenant(self, name: str) -> TenantConfig:
        return self.tenants[name]
