"""Plain data types shared by every layer (config excepted).

Amounts are Decimal (billing) or integer units of 0.0001 (chargeback). Never floats.
Metric values are floats: they only ever act as weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, NamedTuple

UNALLOCATED = "UNALLOCATED"
OWNER_TYPES = frozenset({"service_account", "user", "identity_pool", "principal"})


# Dimension key of a chargeback row without (ecosystem, tenant_id) (docs/allocation.md §2 step 7).
DIMENSION_KEY_FIELDS = (
    "env_id",
    "resource_id",
    "product_category",
    "product_type",
    "identity_id",
    "cost_type",
    "allocation_method",
    "allocation_detail",
    "composition_part",
)
IDENTITY_INDEX = DIMENSION_KEY_FIELDS.index("identity_id")
# The dimension key without identity_id. The allocation engine and the store keep a date's rows as
# block key -> identity_id -> amount: the rows of one allocated block share everything but the identity.
BlockKey = tuple[str, ...]


def now_utc() -> datetime:
    """The current UTC time to the second: what every stored timestamp and audit time uses."""
    return datetime.now(UTC).replace(microsecond=0)


def row_key(block_key: BlockKey, identity_id: str) -> tuple[str, ...]:
    """The full dimension key (DIMENSION_KEY_FIELDS order) of one identity's row in a block."""
    return (*block_key[:IDENTITY_INDEX], identity_id, *block_key[IDENTITY_INDEX:])


def blocks_from_rows(rows: Mapping[tuple[str, ...], int]) -> dict[BlockKey, dict[str, int]]:
    """Rows keyed by the full dimension key, regrouped as block key -> identity_id -> amount."""
    out: dict[BlockKey, dict[str, int]] = {}
    for key, units in rows.items():
        block_key = (*key[:IDENTITY_INDEX], *key[IDENTITY_INDEX + 1 :])
        out.setdefault(block_key, {})[key[IDENTITY_INDEX]] = units
    return out


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
        """Processing order and identity of a line within its date (docs/allocation.md §2)."""
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
    team: str | None = None  # resolved at inventory time (chargeback_dagster/teams.py)


@dataclass(frozen=True, slots=True)
class Identity:
    identity_id: str
    identity_type: str
    display_name: str | None = None
    created_at: datetime | None = None
    deleted_at: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    team: str | None = None  # resolved at inventory time (chargeback_dagster/teams.py)

    def existed_between(self, start: datetime, end: datetime) -> bool:
        """Whether the identity existed at some time in [start, end): tenant_period membership of the day
        [start, end) (docs/allocation.md §3)."""
        return (self.created_at is None or self.created_at < end) and (
            self.deleted_at is None or self.deleted_at >= start
        )


class MetricRow(NamedTuple):
    """One label set of one metric query for one (date, resource): samples reduced over the day.

    A named tuple: the store and the metrics fetch build hundreds of thousands per run, and a tuple is
    built several times faster than a frozen dataclass."""

    labels: dict[str, str]
    value_sum: float
    value_max: float
    sample_count: int


@dataclass(frozen=True, slots=True)
class ChargebackRow:
    """One allocated amount of one billing line, before the date's rows are merged (docs/allocation.md §7)."""

    identity_id: str
    cost_type: str
    amount_units: int
    allocation_method: str
    allocation_detail: str
    composition_part: str = ""
