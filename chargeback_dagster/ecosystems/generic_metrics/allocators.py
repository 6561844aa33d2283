"""Generic metrics' allocator per cost type (docs/allocation.md §9.3), built from the allocation models."""

from __future__ import annotations

from chargeback_dagster.allocation.models import (
    UNKNOWN_TO_UNALLOCATED,
    Chain,
    EvenSplit,
    UsageRatio,
    to_unallocated,
)

MERGED = "merged_active"

generic_unknown_allocator = UNKNOWN_TO_UNALLOCATED


def generic_allocator(strategy: str, weight_name: str) -> Chain:
    """Allocator of one generic cost type (docs/allocation.md §9.3); `weight_name` is for `usage_ratio`."""
    if strategy == "even_split":
        return Chain(EvenSplit(MERGED, "shared", "even_split_allocation"), to_unallocated())
    if strategy == "usage_ratio":
        return Chain(
            UsageRatio(weight_name),
            EvenSplit(MERGED, "shared", "no_metrics_located"),
            to_unallocated(),
        )
    raise ValueError(f"Unknown allocation_strategy '{strategy}'; expected 'even_split' or 'usage_ratio'")
