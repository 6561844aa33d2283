"""The contract between ecosystems and the allocation engine.

An ecosystem describes itself as a list of `Handler`s (which product types it claims, which metrics a line
needs, how identities are resolved, which allocator each product type uses) plus an allocator for product
types nobody claims (decision D5). The engine (engine.py) does the rest: active fraction, tiers, checks,
retry limit, merging.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from chargeback_dagster.domain import BillingLine, ChargebackRow, Identity, MetricRow, Resource


@dataclass(frozen=True, slots=True)
class IdentitySets:
    """docs/allocation.md §3. Every tuple is de-duplicated and sorted by identity_id (decision D4)."""

    resource_active: tuple[str, ...] = ()
    metrics_derived: tuple[str, ...] = ()
    merged_active: tuple[str, ...] = ()
    tenant_period: tuple[str, ...] = ()
    tenant_period_owners: tuple[str, ...] = ()


@dataclass(slots=True)
class AllocationContext:
    """What an allocator (built-in or `allocator_overrides`) receives (docs/allocation.md §10)."""

    tenant_id: str
    ecosystem: str
    date: date
    billing_line: BillingLine
    amount: Decimal  # A: the active part of the line, 4 dp
    identities: IdentitySets
    metrics: Mapping[str, list[MetricRow]]  # query key -> rows for this line's resource and date
    metrics_fetch_failed: bool
    params: Mapping[str, Any]  # allocator_params
    # Resolver context. Usage weights live in context["usage"][<weight name>] = {identity_id: Decimal}.
    context: dict[str, Any] = field(default_factory=dict)


Allocator = Callable[[AllocationContext], list[ChargebackRow]]


@dataclass(slots=True)
class Resolution:
    """What an identity resolver returns for one billing line."""

    resource_active: tuple[str, ...] | list[str] = ()
    metrics_derived: tuple[str, ...] | list[str] = ()
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DateInputs:
    """Everything the engine may read for one date; loaded from the tenant store once per date."""

    date: date
    lines: list[BillingLine]
    resources: Mapping[str, Resource]  # resource_id -> resource (all types)
    identities: Mapping[str, Identity]  # identity_id -> identity (UNALLOCATED excluded)
    metrics: Mapping[tuple[str, str], list[MetricRow]]  # (resource_id, query_key) -> rows
    failed_metrics: Mapping[tuple[str, str], str]  # (resource_id, query_key) -> error


# resolve(line, date_inputs, line_metrics) -> Resolution
Resolver = Callable[[BillingLine, DateInputs, Mapping[str, list[MetricRow]]], Resolution]


@dataclass(frozen=True, slots=True)
class Handler:
    service_type: str
    allocators: Mapping[str, Allocator]  # product_type -> allocator; the keys are the claimed types
    resolve: Resolver
    # metric_queries(line) -> {query key: PromQL with `{step}` placeholder}; {} when none needed
    metric_queries: Callable[[BillingLine], dict[str, str]] = lambda line: {}
    billing_resource_types: frozenset[str] = frozenset()

    @property
    def product_types(self) -> frozenset[str]:
        return frozenset(self.allocators)
