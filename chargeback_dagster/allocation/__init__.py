"""Allocation: models, tier tables and the per-date engine (docs/allocation.md)."""

from chargeback_dagster.allocation.engine import (
    ROW_KEY_FIELDS,
    DateAllocation,
    DateCalculationError,
    allocate_date,
)
from chargeback_dagster.allocation.models import (
    Chain,
    Composition,
    EvenSplit,
    Model,
    Terminal,
    UsageRatio,
    usage_weights,
)
from chargeback_dagster.allocation.tiers import (
    confluent_allocators,
    confluent_unknown_allocator,
    generic_allocator,
    generic_unknown_allocator,
    self_managed_allocators,
    self_managed_unknown_allocator,
)
from chargeback_dagster.allocation.types import (
    AllocationContext,
    Allocator,
    DateInputs,
    Handler,
    IdentitySets,
    Resolution,
    Resolver,
)

__all__ = [
    "ROW_KEY_FIELDS",
    "AllocationContext",
    "Allocator",
    "Chain",
    "Composition",
    "DateAllocation",
    "DateCalculationError",
    "DateInputs",
    "EvenSplit",
    "Handler",
    "IdentitySets",
    "Model",
    "Resolution",
    "Resolver",
    "Terminal",
    "UsageRatio",
    "allocate_date",
    "confluent_allocators",
    "confluent_unknown_allocator",
    "generic_allocator",
    "generic_unknown_allocator",
    "self_managed_allocators",
    "self_managed_unknown_allocator",
    "usage_weights",
]
