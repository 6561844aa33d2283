"""Credits and discounts: billing lines with a negative amount (docs/allocation.md §12, decision D12).

The engine allocates every other line of the date first, then hands the negative lines here. Each credit is
spread over the identities in proportion to their allocated cost in the scope the line names, so the
credit follows the costs it offsets; or, with policy `org_level`, kept as one row on `UNALLOCATED`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from enum import StrEnum
from typing import Any

from chargeback_dagster.allocation.models import Block
from chargeback_dagster.domain import DIMENSION_KEY_FIELDS, UNALLOCATED, BillingLine, BlockKey
from chargeback_dagster.money import apportion_units, format_units


class CreditPolicy(StrEnum):
    """How a tenant's negative lines are allocated (docs/allocation.md §12)."""

    PROPORTIONAL = "proportional"  # in proportion to each identity's cost in the line's scope
    ORG_LEVEL = "org_level"  # one row on UNALLOCATED per credit line


CREDIT_POLICIES = tuple(policy.value for policy in CreditPolicy)
DEFAULT_CREDIT_POLICY = CreditPolicy.PROPORTIONAL

CREDIT_METHOD = "credit"
CREDIT_COST_TYPE = "shared"
RESOURCE_DETAIL = "credit_proportional_to_resource_cost"
ENV_DETAIL = "credit_proportional_to_env_cost"
ORG_DETAIL = "credit_proportional_to_org_cost"
NO_COST_DETAIL = "credit_no_cost_to_offset"
ORG_LEVEL_DETAIL = "credit_kept_at_org_level"

# env_id and resource_id come before identity_id in the dimension key, so a block key has them at the
# same positions.
_ENV = DIMENSION_KEY_FIELDS.index("env_id")
_RESOURCE = DIMENSION_KEY_FIELDS.index("resource_id")

Costs = tuple[tuple[str, ...], list[int]]  # identities (sorted) with a positive cost, and those costs


def check_credit_policy(policy: str) -> CreditPolicy:
    if policy not in CREDIT_POLICIES:
        raise ValueError(f"Unknown credit_policy '{policy}'; expected one of {', '.join(CREDIT_POLICIES)}")
    return CreditPolicy(policy)


class _ScopeCosts:
    """Each identity's net allocated cost per scope, from the date's rows before any credit."""

    def __init__(self, blocks: Mapping[BlockKey, Mapping[str, int]], excluded: frozenset[str]) -> None:
        self.blocks = blocks
        self.excluded = excluded
        self._cache: dict[tuple[int | None, str], Costs] = {}

    def of(self, field: int | None, value: str) -> Costs:
        """Costs of the rows whose block key has `value` at position `field` (None: every row)."""
        costs = self._cache.get((field, value))
        if costs is None:
            totals: dict[str, int] = {}
            get = totals.get
            for block_key, per_identity in self.blocks.items():
                if field is None or block_key[field] == value:
                    for identity_id, units in per_identity.items():
                        totals[identity_id] = get(identity_id, 0) + units
            # UNALLOCATED and other system identities never share a split (docs/allocation.md §3)
            ids = tuple(sorted(i for i, u in totals.items() if u > 0 and i not in self.excluded))
            costs = self._cache[(field, value)] = (ids, [totals[i] for i in ids])
        return costs


def credit_blocks(
    credits: Sequence[tuple[BillingLine, int]],
    blocks: Mapping[BlockKey, Mapping[str, int]],
    *,
    policy: CreditPolicy,
    excluded: frozenset[str],
    day: date,
    log: Any,
) -> list[tuple[BillingLine, list[Block]]]:
    """The rows of each credit `(line, T < 0)`, against the date's rows of every other line (`blocks`).

    Every credit is measured against the costs before any credit, so their order does not matter.
    """
    if policy is CreditPolicy.ORG_LEVEL:
        return [
            (line, [((UNALLOCATED,), (t,), CREDIT_COST_TYPE, CREDIT_METHOD, ORG_LEVEL_DETAIL, "")])
            for line, t in credits
        ]
    costs = _ScopeCosts(blocks, excluded)
    result = []
    for line, t in credits:
        scopes: list[tuple[int | None, str, str]] = []
        if line.resource_id:
            scopes.append((_RESOURCE, line.resource_id, RESOURCE_DETAIL))
        if line.env_id:
            scopes.append((_ENV, line.env_id, ENV_DETAIL))
        scopes.append((None, "", ORG_DETAIL))
        for field, value, detail in scopes:  # the named scope first, then wider ones
            ids, weights = costs.of(field, value)
            if ids:
                shares = apportion_units(t, weights, sum(weights))
                result.append((line, [(ids, shares, CREDIT_COST_TYPE, CREDIT_METHOD, detail, "")]))
                break
        else:
            where = f" on {line.resource_id}" if line.resource_id else ""
            log.warning(
                f"Credit {line.product_type}{where} of {format_units(t)} for {day} has no cost to offset "
                f"(no identity was charged that day); charged to {UNALLOCATED}"
            )
            result.append(
                (line, [((UNALLOCATED,), (t,), CREDIT_COST_TYPE, CREDIT_METHOD, NO_COST_DETAIL, "")])
            )
    return result
