"""``plugin_settings`` of a ``generic_metrics_only`` tenant (docs/generic-metrics.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, ValidatorFunctionWrapHandler, field_validator

from chargeback_dagster.config.fields import (
    AS_TEXT,
    ConfigModel,
    Int,
    Number,
    Str,
    errors_of,
    problem,
    raise_all,
    read_str,
)
from chargeback_dagster.config.models import IdentitySourceConfig, MetricsConfig, PluginSettingsBase


class GenericIdentitySourceConfig(IdentitySourceConfig):
    label: Str = "principal"
    # a label of the discovery series naming the identity's team (docs/generic-metrics.md §4)
    team_label: Str | None = None
    discovery_query: Str | None = Field(None, validate_default=True)

    @field_validator("discovery_query")
    @classmethod
    def _prometheus_needs_query(cls, query: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("source") in ("prometheus", "both") and query is None:
            raise problem(
                "discovery_query required when source includes 'prometheus'", up=1, line_at=("source",)
            )
        return query


class CostQuantity(ConfigModel):
    type: Annotated[Literal["fixed", "storage_gib", "network_gib"], AS_TEXT]
    count: Int | None = Field(None, gt=0)
    query: Str | None = Field(None, validate_default=True)

    @field_validator("query")
    @classmethod
    def _fields_of_type(cls, query: str | None, info: ValidationInfo) -> str | None:
        kind, found = info.data.get("type"), []
        if kind == "fixed":
            if "count" in info.data and info.data["count"] is None:
                found.append(problem("is required", up=1, at=("count",)))
            if query is not None:
                found.append(problem("only allowed when type is 'storage_gib' or 'network_gib'"))
        elif kind is not None:
            if query is None:
                found.append(problem("is required"))
            if info.data.get("count") is not None:
                found.append(problem("only allowed when type is 'fixed'", up=1, at=("count",)))
        raise_all([((), p) for p in found], query)
        return query


class CostTypeConfig(ConfigModel):
    name: Str = Field(max_length=128)
    product_category: Str
    rate: Number = Field(ge=0)
    cost_quantity: CostQuantity
    allocation_strategy: Annotated[Literal["even_split", "usage_ratio"], AS_TEXT] = "even_split"
    allocation_query: Str | None = None
    allocation_label: Str | None = Field(None, validate_default=True)

    @field_validator("allocation_label")
    @classmethod
    def _usage_ratio_needs_query(cls, label: str | None, info: ValidationInfo) -> str | None:
        found = []
        if info.data.get("allocation_strategy") == "usage_ratio":
            for key, value in (
                ("allocation_query", info.data.get("allocation_query", "")),
                ("allocation_label", label),
            ):
                if value is None:
                    message = f"{key} required when allocation_strategy='usage_ratio'"
                    found.append(problem(message, up=1, line_at=("allocation_strategy",)))
        raise_all([((), p) for p in found], label)
        return label


class GenericMetricsSettings(PluginSettingsBase):
    cluster_id: Str
    display_name: Str | None = None
    identity_source: GenericIdentitySourceConfig = Field(
        default_factory=dict,
        validate_default=True,  # the default (prometheus) needs a discovery_query
    )
    discovery_window_hours: Int = Field(1, ge=1, le=168)
    cost_types: list[CostTypeConfig]
    metrics: MetricsConfig  # required: usage comes from Prometheus

    @field_validator("cost_types", mode="wrap")
    @classmethod
    def _cost_types(cls, raw: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """At least one cost type, names unique."""
        found = []
        try:
            cost_types = handler(raw)
        except ValidationError as exc:
            cost_types, found = None, errors_of(exc)
        if isinstance(raw, list) and not raw:
            found.append(
                ((), problem("cost_types must contain at least one item", up=1, line_at=("cost_types",)))
            )
        seen: set[str] = set()
        for i, item in enumerate(raw if isinstance(raw, list) else []):
            name = _name(item)
            if name is not None and name in seen:
                found.append(((), problem(f"duplicate name '{name}'", line_at=(i,))))
            seen.add(name)
        raise_all(found, raw)
        return cost_types


def _name(item: Any) -> str | None:
    try:
        name = read_str(item.get("name")) if isinstance(item, dict) else None
    except ValueError:
        return None
    return name if name and len(name) <= 128 else None
