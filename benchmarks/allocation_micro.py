"""Micro-benchmark of the allocation engine (not a test).

Builds one synthetic date of 10,000 billing lines over 1,000 resources, each line allocated over 30
identities, and prints lines/second and rows/second of `allocate_date` for three allocator mixes: even split
only, half usage ratio, usage ratio only (30 weights of ~17 significant digits each, the worst case).

    PYTHONPATH=. python benchmarks/allocation_micro.py [--lines 10000] [--identities 30] [--repeat 5]
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace
from datetime import date
from decimal import Decimal

from chargeback_dagster.allocation import (
    Chain,
    DateAllocation,
    DateInputs,
    EvenSplit,
    Handler,
    Resolution,
    Terminal,
    UsageRatio,
    allocate_date,
    generic_unknown_allocator,
)
from chargeback_dagster.domain import UNALLOCATED, BillingLine, Identity, Resource

DAY = date(2026, 3, 10)
PRODUCT_TYPES = [f"PT_{i}" for i in range(10)]


def build(n_lines: int, n_identities: int, seed: int = 7) -> tuple[DateInputs, list[Handler]]:
    rng = random.Random(seed)
    identity_ids = [f"sa-{i:05d}" for i in range(n_identities * 4)]
    identities = {i: Identity(i, "service_account") for i in identity_ids}
    n_resources = max(1, n_lines // len(PRODUCT_TYPES))
    resources = {f"lkc-{r:05d}": Resource(f"lkc-{r:05d}", "cluster") for r in range(n_resources)}
    resolutions = {}
    for rid in resources:
        members = rng.sample(identity_ids, n_identities)
        weights = {i: Decimal(str(rng.uniform(1, 1e9))) for i in members}
        resolutions[rid] = Resolution(
            resource_active=members[: n_identities // 2],
            metrics_derived=members[n_identities // 2 :],
            context={"usage": {"bytes": weights}},
        )

    even = Chain(
        EvenSplit("merged_active", "shared", "even_split_allocation"), Terminal(UNALLOCATED, "shared", "x")
    )
    ratio = Chain(
        UsageRatio("bytes"),
        EvenSplit("merged_active", "shared", "no_metrics_located"),
        Terminal(UNALLOCATED, "shared", "no_identities_located"),
    )
    allocators = {pt: (even if k % 2 == 0 else ratio) for k, pt in enumerate(PRODUCT_TYPES)}
    handler = Handler(
        service_type="bench",
        allocators=allocators,
        resolve=lambda line, inputs, metrics: resolutions[line.resource_id],
        billing_resource_types=frozenset({"cluster"}),
    )
    lines = [
        BillingLine(
            ecosystem="bench",
            tenant_id="t",
            date=DAY,
            resource_id=rid,
            product_category="kafka",
            product_type=pt,
            quantity=Decimal(1),
            unit_price=Decimal(1),
            total_cost=Decimal(rng.randint(-(10**6), 10**9)) / Decimal(10**5),
        )
        for rid in resources
        for pt in PRODUCT_TYPES
    ][:n_lines]
    inputs = DateInputs(
        date=DAY, lines=lines, resources=resources, identities=identities, metrics={}, failed_metrics={}
    )
    return inputs, [handler]


def _time(inputs: DateInputs, handlers: list[Handler], repeat: int) -> tuple[float, DateAllocation]:
    best = float("inf")
    result = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = allocate_date(
            inputs,
            tenant_id="t",
            ecosystem="bench",
            handlers=handlers,
            unknown_allocator=generic_unknown_allocator,
            params={},
            retry_limit=3,
            record_failure=lambda line: 1,
        )
        best = min(best, time.perf_counter() - t0)
    assert result is not None and sum(result.rows.values()) == result.billed_units
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--identities", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    inputs, handlers = build(args.lines, args.identities)
    base = handlers[0]
    scenarios = {
        "even split only": [
            replace(base, allocators=dict.fromkeys(base.allocators, base.allocators["PT_0"]))
        ],
        "50% usage ratio": handlers,
        "usage ratio only": [
            replace(base, allocators=dict.fromkeys(base.allocators, base.allocators["PT_1"]))
        ],
    }
    for name, scenario_handlers in scenarios.items():
        best, result = _time(inputs, scenario_handlers, args.repeat)
        rows = args.lines * args.identities
        print(
            f"{name:>17}: {args.lines} lines x {args.identities} identities in {best * 1000:.0f} ms "
            f"(best of {args.repeat}) = {args.lines / best:,.0f} lines/s, {rows / best:,.0f} rows/s; "
            f"{len(result.rows)} merged rows"
        )


if __name__ == "__main__":
    main()
