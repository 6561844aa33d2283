"""The one small interface every ecosystem implements.

The Dagster assets (defs/assets.py) are ecosystem-agnostic: they call `gather_billing`, `gather_inventory`
and the allocation `handlers()` of the tenant's ecosystem, and do the storing, metric fetching, allocation
and CSV writing themselves.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime

from chargeback_dagster.allocation.types import Allocator, Handler
from chargeback_dagster.config import TenantConfig
from chargeback_dagster.domain import BillingLine, Identity, Resource
from chargeback_dagster.sources.prometheus import PrometheusClient


class GatherError(Exception):
    """A gather failure (docs/operations.md §7): counts towards suspension."""


@dataclass
class GatherContext:
    """What a gather may use. Clients are created lazily so an ecosystem that needs none opens none."""

    tenant: TenantConfig
    logger: logging.Logger
    now: datetime
    prometheus: Callable[[], PrometheusClient]
    check_deadline: Callable[[], None] = lambda: None
    deadline_left: Callable[[], float | None] = lambda: None  # seconds to the run's deadline (None: none)


@dataclass
class BillingGather:
    lines: list[BillingLine]
    failed_dates: dict[date, str] = field(default_factory=dict)


@dataclass
class InventoryGather:
    resources: list[Resource]
    identities: list[Identity]
    # service_type -> resource types it owns (deletion detection is done per type)
    owned_types: dict[str, frozenset[str]] = field(default_factory=dict)
    # service_type -> error text of a handler that failed (inventory incomplete)
    handler_errors: dict[str, str] = field(default_factory=dict)


class Ecosystem(ABC):
    name: str
    # Dagster concurrency pool for the steps that call the provider's API (None: no pool).
    api_pool: str | None = None

    def __init__(self, tenant: TenantConfig):
        self.tenant = tenant
        self.settings = tenant.plugin_settings

    @abstractmethod
    def gather_billing(self, dates: list[date], ctx: GatherContext) -> BillingGather:
        """Billing lines of `dates`; raise GatherError when nothing could be gathered."""

    @abstractmethod
    def gather_inventory(self, ctx: GatherContext) -> InventoryGather:
        """Resources and identities; raise GatherError when the shared context fails."""

    @abstractmethod
    def handlers(self) -> list[Handler]:
        """Allocation handlers: claimed product types, metric queries, identity resolution."""

    @abstractmethod
    def unknown_allocator(self) -> Allocator:
        """Allocator for product types no handler claims (decision D5)."""

    def extra_metric_queries(self, line: BillingLine) -> dict[str, str]:
        """Optional: queries the usage_metrics step fetches and stores for `line` beyond its handler's, for
        steps other than the allocation (Confluent topic attribution). Their failures never fail the line's
        allocation. Keys must not collide with the handlers' keys."""
        return {}

    def batched_query(self, key: str) -> tuple[str, str | None] | None:
        """Optional: a metric query key that can be fetched for all resources at once.

        Returns ``(promql without the resource filter, resource label)``: the usage_metrics step then sends
        one query per key for up to pipeline.BATCH_DAYS consecutive days, slices it by day and splits the
        series by that label into per-resource results (label None: every series belongs to every resource
        asking for the key). None (the default) keeps one query per (date, resource, key).
        """
        return None
