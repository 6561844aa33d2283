"""``plugin_settings`` of a ``self_managed_kafka`` tenant (docs/self-managed-kafka.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from chargeback_dagster.config.fields import (
    AS_TEXT,
    ConfigModel,
    Int,
    Key,
    Number,
    Secret,
    Str,
    normalized,
    problem,
    raise_all,
)
from chargeback_dagster.config.models import IdentitySourceConfig, MetricsConfig, PluginSettingsBase

RATE_FIELDS = (
    "compute_hourly_rate",
    "storage_per_gib_hourly",
    "network_ingress_per_gib",
    "network_egress_per_gib",
)


def _kafka_extra_available() -> bool:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return False
    return True


class CostRates(ConfigModel):
    compute_hourly_rate: Number = Field(ge=0)
    storage_per_gib_hourly: Number = Field(ge=0)
    network_ingress_per_gib: Number = Field(ge=0)
    network_egress_per_gib: Number = Field(ge=0)


class RateOverrides(ConfigModel):
    compute_hourly_rate: Number | None = Field(None, ge=0)
    storage_per_gib_hourly: Number | None = Field(None, ge=0)
    network_ingress_per_gib: Number | None = Field(None, ge=0)
    network_egress_per_gib: Number | None = Field(None, ge=0)


class CostModelConfig(CostRates):
    region_overrides: dict[Key, RateOverrides] = Field(default_factory=dict)

    def effective_rates(self, region: str | None = None) -> CostRates:
        """Base rates with ``region_overrides[region]`` applied (missing rates inherit)."""
        values = {f: getattr(self, f) for f in RATE_FIELDS}
        override = self.region_overrides.get(region) if region is not None else None
        if override is not None:
            for f in RATE_FIELDS:
                v = getattr(override, f)
                if v is not None:
                    values[f] = v
        return CostRates.model_construct(**values)


class ResourceSourceConfig(ConfigModel):
    source: Annotated[Literal["prometheus", "admin_api"], AS_TEXT] = "prometheus"
    bootstrap_servers: Str | None = None
    security_protocol: Annotated[
        Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"], normalized(str.upper)
    ] = "PLAINTEXT"
    sasl_mechanism: (
        Annotated[Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"], normalized(str.upper)] | None
    ) = None
    sasl_username: Str | None = None
    sasl_password: Secret | None = Field(None, validate_default=True)

    @field_validator("sasl_password")
    @classmethod
    def _connection_rules(cls, password: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        d, found = info.data, []
        if d.get("source") == "admin_api":
            if "bootstrap_servers" in d and d["bootstrap_servers"] is None:
                found.append(
                    problem("bootstrap_servers required when source='admin_api'", up=1, line_at=("source",))
                )
            if not _kafka_extra_available():
                message = (
                    "plugin_settings.resource_source.source='admin_api' requires the 'kafka' extra: "
                    "pip install 'chargeback-dagster[kafka]'"
                )
                found.append(problem(message, up=1, line_at=("source",), bare=True))
        if d.get("sasl_mechanism") is not None:
            at_mechanism = {"up": 1, "line_at": ("sasl_mechanism",)}
            if d.get("sasl_username", "") is None or password is None:
                found.append(
                    problem(
                        "sasl_username and sasl_password required when sasl_mechanism is set", **at_mechanism
                    )
                )
            if d.get("security_protocol", "SASL_SSL") not in ("SASL_PLAINTEXT", "SASL_SSL"):
                found.append(
                    problem(
                        "sasl_mechanism requires security_protocol SASL_PLAINTEXT or SASL_SSL", **at_mechanism
                    )
                )
        raise_all([((), p) for p in found], password)
        return password


class SelfManagedKafkaSettings(PluginSettingsBase):
    cluster_id: Str
    broker_count: Int = Field(gt=0)
    region: Str | None = None
    cost_model: CostModelConfig
    identity_source: IdentitySourceConfig = Field(default_factory=IdentitySourceConfig)
    resource_source: ResourceSourceConfig = Field(default_factory=ResourceSourceConfig)
    discovery_window_hours: Int = Field(1, ge=1, le=168)
    metrics: MetricsConfig  # required: usage comes from Prometheus

    def effective_rates(self) -> CostRates:
        return self.cost_model.effective_rates(self.region)
