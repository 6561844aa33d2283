"""Confluent Cloud's tier table (docs/allocation.md §9.1), built from the allocation models.

Usage weights are read from `ctx.context["usage"][<weight name>]` (identity → Decimal); the weight names
below are what the resolvers (resolution.py) fill in.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from chargeback_dagster.allocation.models import (
    Chain,
    Composition,
    EvenSplit,
    Model,
    Terminal,
    UsageRatio,
    to_unallocated,
)

MERGED = "merged_active"
OWNERS = "tenant_period_owners"

# weight names (context["usage"] keys): per owner, from the bytes_in / bytes_out queries (CKU uses their sum)
CONFLUENT_BYTES_IN = "bytes_in"
CONFLUENT_BYTES_OUT = "bytes_out"
CONFLUENT_FLINK_CFU = "stmt_owner_cfu"


def _to_resource(detail: str = "no_identities_located", method: str = "terminal") -> Terminal:
    return Terminal("resource", "shared", detail, method=method)


confluent_unknown_allocator = Terminal("resource", "shared", "using_unknown_allocator", method="unknown")

DEFAULT_CKU_USAGE_RATIO = Decimal("0.70")
DEFAULT_CKU_SHARED_RATIO = Decimal("0.30")


def _ratio(x: Any) -> Decimal:
    return x if isinstance(x, Decimal) else Decimal(str(x))


def confluent_allocators(
    cku_usage_ratio: Any = DEFAULT_CKU_USAGE_RATIO, cku_shared_ratio: Any = DEFAULT_CKU_SHARED_RATIO
) -> dict[str, Model]:
    """product_type → allocator for `confluent_cloud` (docs/allocation.md §9.1); ratios: float or Decimal.

    Org-wide types (`AUDIT_LOG_READ`, `SUPPORT`) use tenant_period owners: Confluent identities are never
    of type `principal`, so this equals "tenant_period of types service_account, user, identity_pool".
    """
    cku = Composition(
        [
            (
                "usage",
                _ratio(cku_usage_ratio),
                Chain(
                    UsageRatio((CONFLUENT_BYTES_IN, CONFLUENT_BYTES_OUT)),
                    EvenSplit(MERGED, "shared", "no_usage_for_active_identities"),
                    EvenSplit(OWNERS, "shared", "no_metrics_no_active_identities_located"),
                    _to_resource(),
                ),
            ),
            (
                "shared",
                _ratio(cku_shared_ratio),
                Chain(
                    EvenSplit(MERGED, "shared", "even_split_allocation"),  # decision D3
                    EvenSplit(OWNERS, "shared", "no_active_identities_located"),
                    _to_resource(),
                ),
            ),
        ]
    )

    def network(weight_name: str) -> Chain:
        return Chain(
            UsageRatio(weight_name),
            EvenSplit(MERGED, "shared", "no_metrics_located"),
            EvenSplit(OWNERS, "shared", "no_active_identities_located"),
            _to_resource(),
        )

    partition = Chain(
        EvenSplit(MERGED, "shared", "no_metrics_located"),
        EvenSplit(OWNERS, "shared", "no_active_identities_located"),
        _to_resource(),
    )
    base_storage = Chain(
        EvenSplit(MERGED, "shared", "no_metrics_located"),
        EvenSplit(OWNERS, "shared", "no_metrics_no_active_identities_located"),
        _to_resource(method="to_resource"),
    )
    schema_registry = Chain(
        EvenSplit(MERGED, "usage", "even_split_allocation"),
        EvenSplit(OWNERS, "shared", "no_active_identities_located"),
        _to_resource(),
    )
    connect_usage = Chain(EvenSplit(MERGED, "usage", "even_split_allocation"), _to_resource())
    connect_shared = Chain(EvenSplit(MERGED, "shared", "even_split_allocation"), _to_resource())
    flink = Chain(
        UsageRatio(CONFLUENT_FLINK_CFU),
        EvenSplit(MERGED, "usage", "no_usage_for_active_identities"),
        EvenSplit(OWNERS, "shared", "no_active_identities_located"),
        _to_resource(),
    )
    org_wide = Chain(EvenSplit(OWNERS, "shared", "even_split_allocation"), to_unallocated())
    default = Terminal("resource", "shared", "using_default_allocator", method="default")
    cluster_linking = Terminal("resource", "usage", "cluster_linking_cost", method="cluster_linking")

    table: dict[str, Model] = {
        "KAFKA_NUM_CKU": cku,
        "KAFKA_NUM_CKUS": cku,
        "KAFKA_NETWORK_READ": network(CONFLUENT_BYTES_OUT),
        "KAFKA_NETWORK_WRITE": network(CONFLUENT_BYTES_IN),
        "KAFKA_PARTITION": partition,
        "KAFKA_BASE": base_storage,
        "KAFKA_STORAGE": base_storage,
        "FLINK_NUM_CFU": flink,
        "FLINK_NUM_CFUS": flink,
        "AUDIT_LOG_READ": org_wide,
        "SUPPORT": org_wide,
    }
    for pt in ("SCHEMA_REGISTRY", "GOVERNANCE_BASE", "NUM_RULES", "KSQL_NUM_CSU", "KSQL_NUM_CSUS"):
        table[pt] = schema_registry
    for pt in (
        "CONNECT_NUM_TASKS",
        "CONNECT_THROUGHPUT",
        "CUSTOM_CONNECT_NUM_TASKS",
        "CUSTOM_CONNECT_THROUGHPUT",
    ):
        table[pt] = connect_usage
    for pt in ("CONNECT_CAPACITY", "CUSTOM_CONNECT_PLUGIN"):
        table[pt] = connect_shared
    for pt in ("TABLEFLOW_DATA_PROCESSED", "TABLEFLOW_NUM_TOPICS", "TABLEFLOW_STORAGE"):
        table[pt] = default
    for pt in ("CLUSTER_LINKING_PER_LINK", "CLUSTER_LINKING_READ", "CLUSTER_LINKING_WRITE"):
        table[pt] = cluster_linking
    return table
