"""``plugin_settings`` of a ``confluent_cloud`` tenant (docs/confluent-cloud.md, docs/configuration.md)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from chargeback_dagster.config.fields import (
    MAX_AMOUNT,
    Bool,
    ConfigModel,
    HttpUrl,
    Int,
    Key,
    Secret,
    Str,
    errors_of,
    fmt,
    normalized,
    parse_number,
    problem,
    raise_all,
    read_str,
    type_name,
)
from chargeback_dagster.config.models import (
    EmitterConfig,
    EmitterParams,
    PluginSettingsBase,
    emitter_params_in,
)
from chargeback_dagster.ecosystems.confluent_cloud.allocators import (
    DEFAULT_CKU_SHARED_RATIO,
    DEFAULT_CKU_USAGE_RATIO,
)

CKU_RATIOS = {
    "kafka_cku_usage_ratio": DEFAULT_CKU_USAGE_RATIO,
    "kafka_cku_shared_ratio": DEFAULT_CKU_SHARED_RATIO,
}
# file names of topic attribution emitters that give none, by emitter type (docs/confluent-cloud.md §9)
TOPIC_ATTRIBUTION_TEMPLATES = {
    "csv": "topic_attr_{tenant_id}_{date}.csv",
    "prometheus": "topic_attr_{tenant_id}_{date}.om",
}
DEFAULT_EXCLUDE_TOPIC_PATTERNS = ["__consumer_offsets", "_schemas", "_confluent-*"]
TOPIC_METRIC_KEYS = ("topic_bytes_in", "topic_bytes_out", "topic_retained_bytes")


class CCloudApiConfig(ConfigModel):
    key: Secret
    secret: Secret
    base_url: HttpUrl = "https://api.confluent.cloud"
    flink_url_template: Str = "https://flink.{region}.{cloud}.confluent.cloud"

    @field_validator("base_url")
    @classmethod
    def _no_trailing_slash(cls, url: str) -> str:
        return url.rstrip("/")


class BillingApiConfig(ConfigModel):
    days_per_query: Int = Field(15, ge=1, le=30)


class FlinkCredential(ConfigModel):
    region_id: Annotated[str, normalized(lambda region: region.strip().lower())]
    key: Secret
    secret: Secret


class TopicEmitterParams(EmitterParams):
    @classmethod
    def default_template(cls, kind: str) -> str:
        return TOPIC_ATTRIBUTION_TEMPLATES[kind]


class TopicEmitterConfig(EmitterConfig):
    params: TopicEmitterParams

    @field_validator("type")
    @classmethod
    def _topic_types(cls, kind: str) -> str:
        if kind not in TOPIC_ATTRIBUTION_TEMPLATES:
            allowed = "' or '".join(TOPIC_ATTRIBUTION_TEMPLATES)
            raise problem(f"topic attribution emitters must be of type '{allowed}', got '{kind}'")
        return kind


class TopicAttributionConfig(ConfigModel):
    """Topic attribution of a Confluent Cloud tenant (docs/confluent-cloud.md §9)."""

    enabled: Bool = False
    exclude_topic_patterns: list[Str] = Field(default_factory=lambda: list(DEFAULT_EXCLUDE_TOPIC_PATTERNS))
    missing_metrics_behavior: Annotated[Literal["even_split", "skip"], normalized(str.lower)] = "even_split"
    cost_mapping_overrides: dict[
        Annotated[str, BeforeValidator(lambda key: str(key).strip().upper())],
        Annotated[
            Literal["bytes_ratio", "retained_bytes_ratio", "even_split", "disabled"],
            BeforeValidator(lambda mode: fmt(mode).strip().lower()),
        ],
    ] = Field(default_factory=dict)
    metric_name_overrides: dict[Key, str] = Field(default_factory=dict)
    retention_days: Int = Field(90, ge=1, le=365)
    emitters: list[TopicEmitterConfig] = Field(default_factory=list)

    @field_validator("exclude_topic_patterns")
    @classmethod
    def _strip(cls, patterns: list[str]) -> list[str]:
        return [p.strip() for p in patterns if p.strip()]

    @field_validator("metric_name_overrides", mode="before")
    @classmethod
    def _metric_names(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        found, out = [], {}
        for key, value in raw.items():
            if key not in TOPIC_METRIC_KEYS:
                found.append(((), problem(f"unknown key '{key}'", line_at=(key,))))
            elif name := _metric_name(value):
                out[key] = name
            else:
                found.append(((key,), problem(f"must be a string, got '{fmt(value)}'")))
        raise_all(found, raw)
        return out

    @field_validator("emitters", mode="wrap")
    @classmethod
    def _emitters(cls, raw: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return EmitterConfig.check_list(raw, handler, "emitters")


class ConfluentCloudSettings(PluginSettingsBase):
    ccloud_api: CCloudApiConfig
    billing_api: BillingApiConfig = Field(default_factory=BillingApiConfig)
    flink: list[FlinkCredential] = Field(default_factory=list)
    topic_attribution: TopicAttributionConfig = Field(default_factory=TopicAttributionConfig)

    @field_validator("allocator_params")
    @classmethod
    def _ratios(cls, params: dict[str, Any]) -> dict[str, Any]:
        """``*_ratio`` values are numbers; the CKU ratios lie in [0, 1] and sum to 1 (docs/allocation.md)."""
        found, ratios = [], {}
        for key, value in params.items():
            if not key.endswith("_ratio"):
                continue
            number = parse_number(value)
            where = {"line_at": (key,), "bare": True}
            if number is None or number.copy_abs() > MAX_AMOUNT:  # as any configured number
                message = f"plugin_settings.allocator_params.{key} must be numeric, got {type_name(value)}"
                found.append(((), problem(message, **where)))
                continue
            params[key] = number
            if key in CKU_RATIOS and not 0 <= number <= 1:
                message = f"plugin_settings.allocator_params.{key} must be between 0 and 1, got {value}"
                found.append(((), problem(message, **where)))
            elif key in CKU_RATIOS:
                ratios[key] = number
        given = [key for key in CKU_RATIOS if key in params]
        if given and all(key in ratios for key in given):
            total = sum(ratios.get(key, default) for key, default in CKU_RATIOS.items())
            if abs(total - 1) > Decimal("0.0001"):
                message = (
                    "allocator_params kafka_cku_usage_ratio + kafka_cku_shared_ratio must sum to 1.0, "
                    f"got {total}"
                )
                found.append(((), problem(message, up=1, line_at=("allocator_params",))))
        raise_all(found, params)
        return params

    @field_validator("flink", mode="wrap")
    @classmethod
    def _one_credential_per_region(cls, raw: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        found = []
        try:
            credentials = handler(raw)
        except ValidationError as exc:  # re-raised below, with the duplicate check's problems
            credentials, found = None, errors_of(exc)
        seen: set[str] = set()
        for i, item in enumerate(raw if isinstance(raw, list) else []):
            region = item.get("region_id") if isinstance(item, dict) else None
            if isinstance(region, str):
                region = region.strip().lower()
                if region in seen:
                    found.append(((), problem(f"duplicate region_id '{region}'", line_at=(i,))))
                seen.add(region)
        raise_all(found, raw)
        return credentials

    @field_validator("topic_attribution")
    @classmethod
    def _needs_metrics(cls, ta: TopicAttributionConfig, info: ValidationInfo) -> TopicAttributionConfig:
        if ta.enabled and "metrics" in info.data and info.data["metrics"] is None:
            raise problem(
                "plugin_settings.topic_attribution.enabled=True requires a configured metrics source; "
                "set plugin_settings.metrics or disable topic_attribution",
                line_at=("enabled",),
                bare=True,
            )
        return ta

    @classmethod
    def emitter_params(cls, raw: Any) -> list[tuple[type[EmitterParams], Any, Any]]:
        topic_attribution = raw.get("topic_attribution") if isinstance(raw, dict) else None
        topic_params = emitter_params_in(topic_attribution, "emitters")
        topic = [(TopicEmitterParams, kind, params) for kind, params in topic_params]
        return [*super().emitter_params(raw), *topic]

    @property
    def cku_usage_ratio(self) -> Decimal:
        return self.allocator_params.get("kafka_cku_usage_ratio", DEFAULT_CKU_USAGE_RATIO)

    @property
    def cku_shared_ratio(self) -> Decimal:
        return self.allocator_params.get("kafka_cku_shared_ratio", DEFAULT_CKU_SHARED_RATIO)

    def flink_credential(self, region_id: str) -> FlinkCredential | None:
        wanted = region_id.strip().lower()
        return next((c for c in self.flink if c.region_id == wanted), None)


def _metric_name(value: Any) -> str:
    """The metric name written (stripped), or "" when it is not a non-empty string."""
    try:
        return read_str(value).strip()
    except ValueError:
        return ""
