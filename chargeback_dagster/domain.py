"""Plain data types shared by every layer (config excepted).

Amounts are Decimal (billing) or integer units of 0.0001 (chargeback). Never floats.
Metric values are floats: they only ever act as weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

UNALLOCATED = "UNALLOCATED"
OWNER_TYPES = frozenset({"service_account", "user", "identity_pool", "principal"})


def day_start(d: date) -> datetime:
    """UTC midnight that opens the billing day `d` (decision D6)."""
    return datetime.combine(d, time(0), tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class BillingLine:
    ecosystem: str
    tenant_id: str
    date: date
    resource_id: str
    product_category: str
    product_type: str
    quantity: Decimal
    unit_price: Decimal
    total_cost: Decimal
    env_id: str = ""
    currency: str = "USD"
    granularity: str = "daily"
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    allocation_attempts: int = 0

    @property
    def key(self) -> tuple[str, str, str]:
        """Processing order and identity of a line within its date (allocation.md §2)."""
        return (self.resource_id, self.product_type, self.env_id)

    @property
    def timestamp(self) -> datetime:
        return day_start(self.date)


@dataclass(frozen=True, slots=True)
class Resource:
    resource_id: str
    resource_type: str
    display_name: str | None = None
    parent_id: str | None = None
    owner_id: str | None = None
    status: str = "active"
    cloud: str | None = None
    region: str | None = None
    created_at: datetime | None = None
    deleted_at: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class Identity:
    identity_id: str
    identity_type: str
    display_name: str | None = None
    created_at: datetime | None = None
    deleted_at: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def existed_during(self, d: date) -> bool:
        """tenant_period membership (allocation.md §3)."""
        start = day_start(d)
        end = day_start(date.fromordinal(d.toordinal() + 1))
        return (self.created_at is None or self.created_at < end) and (
            self.deleted_at is None or self.deleted_at >= start
        )


@dataclass(frozen=True, slots=True)
class MetricRow:
    """One label set of one metric query for one (date, resource): samples reduced over the day."""

    labels: dict[str, str]
    value_sum: float
    value_max: float
    sample_count: int


@dataclass(frozen=True, slots=True)
class ChargebackRow:
    """One allocated amount of one billing line, before the date's rows are merged (allocation.md §7)."""

    identity_id: str
    cost_type: str
    amount_units: int
    allocation_method: str
    allocation_detail: str
    composition_part: str = ""
