"""Self-managed Kafka's tier table (docs/allocation.md §9.2), built from the allocation models.

Usage weights are read from `ctx.context["usage"][<weight name>]` (principal → Decimal), filled in from the
usage queries of the same name.
"""

from __future__ import annotations

from chargeback_dagster.allocation.models import (
    UNKNOWN_TO_UNALLOCATED,
    Chain,
    EvenSplit,
    Model,
    UsageRatio,
    to_unallocated,
)

SELF_KAFKA_BYTES_IN = "bytes_in_per_principal"
SELF_KAFKA_BYTES_OUT = "bytes_out_per_principal"

self_managed_unknown_allocator = UNKNOWN_TO_UNALLOCATED


def self_managed_allocators() -> dict[str, Model]:
    """product_type → allocator for `self_managed_kafka` (docs/allocation.md §9.2)."""
    even = Chain(
        EvenSplit("metrics_derived", "usage", "even_split_allocation"),
        EvenSplit("resource_active", "shared", "no_active_identities_located"),
        to_unallocated(),
    )

    def network(weight_name: str) -> Chain:
        return Chain(
            UsageRatio(weight_name),
            EvenSplit("resource_active", "shared", "no_metrics_located"),
            to_unallocated(),
        )

    return {
        "SELF_KAFKA_COMPUTE": even,
        "SELF_KAFKA_STORAGE": even,
        "SELF_KAFKA_NETWORK_INGRESS": network(SELF_KAFKA_BYTES_IN),
        "SELF_KAFKA_NETWORK_EGRESS": network(SELF_KAFKA_BYTES_OUT),
    }
