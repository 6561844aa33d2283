"""Allocation: models and the per-date engine (docs/allocation.md); the tier tables live with their
ecosystems (ecosystems/<name>/allocators.py)."""

from chargeback_dagster.allocation.credits import (
    CREDIT_METHOD,
    CREDIT_POLICIES,
    DEFAULT_CREDIT_POLICY,
    CreditPolicy,
)
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
    "CREDIT_METHOD",
    "CREDIT_POLICIES",
    "DEFAULT_CREDIT_POLICY",
    "ROW_KEY_FIELDS",
    "AllocationContext",
    "Allocator",
    "Chain",
    "Composition",
    "CreditPolicy",
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
    "usage_weights",
]
