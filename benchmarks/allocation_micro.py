"""Micro-benchmark of the allocation engine alone (not a test).

What is measured: wall time of `allocate_date` for one synthetic date, i.e. routing, active fraction,
tiers, exact money math, the per-line sum check, and merging the rows of the date into the
`DateAllocation.blocks` (decision D2). Identity resolution is a stub that returns a prepared
`Resolution` per resource; metrics fetching, the database and CSV are not involved. The process is
single-threaded, so the rates below are per core. rows/s = merged chargeback rows of the date / seconds
(every line's rows are distinct dimension keys here, so rows produced = rows merged). Each scenario is
run `--repeat` times; best and median are printed (the machine may be shared: trust the best, look at
the median for noise). The previous run's result is released before timing the next one.

Scenarios (default 10,000 lines, each split over 30 identities; weights are `Decimal(str(float))` of
~17 significant digits, the worst case for converting them to exact integers or to floats):

* even split only — every line an even split over merged_active;
* 50% usage ratio — half the product types usage ratio, half even split (the historical mix);
* usage ratio only — every line a usage-ratio split; the lines of a resource share one weights mapping;
* usage ratio, fresh weights — as above but the resolver builds a new weights dict per line (as the
  built-in resolvers do), so the per-mapping cache of prepared weights never hits;
* realistic mix — Confluent Kafka clusters with the real §9.1 tier tables: per cluster one
  KAFKA_NUM_CKU line (70 % usage ratio on bytes_in + bytes_out, 30 % even split: 60 rows),
  KAFKA_NETWORK_READ and KAFKA_NETWORK_WRITE (usage ratio on bytes_out / bytes_in), KAFKA_PARTITION,
  KAFKA_BASE and KAFKA_STORAGE (even split): 3 of 6 lines, 3 of 7 rows by usage ratio. Each weights
  mapping (bytes_in, bytes_out, their sum) is used once per cluster, so here too every usage-ratio line
  converts its 30 weights.

Allocator objects are created anew for every repetition, so no cache survives from one to the next.

    PYTHONPATH=. python benchmarks/allocation_micro.py [--lines 10000] [--identities 30] [--repeat 7]
"""

from __future__ import annotations

import argparse
import functools
import gc
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from decimal import Decimal

from chargeback_dagster.allocation import (
    Allocator,
    Chain,
    DateInputs,
    EvenSplit,
    Handler,
    Resolution,
    Terminal,
    UsageRatio,
    allocate_date,
)
from chargeback_dagster.domain import UNALLOCATED, BillingLine, Identity, Resource
from chargeback_dagster.ecosystems.confluent_cloud.allocators import (
    confluent_allocators,
    confluent_unknown_allocator,
)
from chargeback_dagster.ecosystems.generic_metrics.allocators import generic_unknown_allocator

DAY = date(2026, 3, 10)
PRODUCT_TYPES = [f"PT_{i}" for i in range(10)]
KAFKA_TYPES = [
    "KAFKA_NUM_CKU",
    "KAFKA_NETWORK_READ",
    "KAFKA_NETWORK_WRITE",
    "KAFKA_PARTITION",
    "KAFKA_BASE",
    "KAFKA_STORAGE",
]


def _weights(rng: random.Random, members: list[str]) -> dict[str, Decimal]:
    return {i: Decimal(str(rng.uniform(1, 1e9))) for i in members}


def _lines(resources: list[str], product_types: list[str], n_lines: int, rng: random.Random) -> list:
    return [
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
        for pt in product_types
    ][:n_lines]


def build(n_lines: int, n_identities: int, seed: int = 7) -> tuple[DateInputs, dict[str, Resolution]]:
    """The historical synthetic date: 10 product types per resource, one `bytes` weight per resource."""
    rng = random.Random(seed)
    identity_ids = [f"sa-{i:05d}" for i in range(n_identities * 4)]
    identities = {i: Identity(i, "service_account") for i in identity_ids}
    n_resources = max(1, -(-n_lines // len(PRODUCT_TYPES)))
    resources = {f"lkc-{r:05d}": Resource(f"lkc-{r:05d}", "cluster") for r in range(n_resources)}
    resolutions = {}
    for rid in resources:
        members = rng.sample(identity_ids, n_identities)
        resolutions[rid] = Resolution(
            resource_active=members[: n_identities // 2],
            metrics_derived=members[n_identities // 2 :],
            context={"usage": {"bytes": _weights(rng, members)}},
        )
    inputs = DateInputs(
        date=DAY,
        lines=_lines(list(resources), PRODUCT_TYPES, n_lines, rng),
        resources=resources,
        identities=identities,
        metrics={},
        failed_metrics={},
    )
    return inputs, resolutions


def handler(kind: str, resolutions: dict[str, Resolution]) -> Handler:
    """A handler with new allocator objects (so no state survives from an earlier repetition).

    kind: "even" (every product type even split), "half" (every other one usage ratio), "ratio" (all
    usage ratio) or "fresh" (all usage ratio, the resolver returning a new weights dict per line).
    """
    even = Chain(
        EvenSplit("merged_active", "shared", "even_split_allocation"), Terminal(UNALLOCATED, "shared", "x")
    )
    ratio = Chain(
        UsageRatio("bytes"),
        EvenSplit("merged_active", "shared", "no_metrics_located"),
        Terminal(UNALLOCATED, "shared", "no_identities_located"),
    )
    choice = {
        "even": lambda k: even,
        "half": lambda k: even if k % 2 == 0 else ratio,
        "ratio": lambda k: ratio,
        "fresh": lambda k: ratio,
    }[kind]

    def resolve(line: BillingLine, inputs: DateInputs, metrics: object) -> Resolution:
        return resolutions[line.resource_id]

    def resolve_fresh(line: BillingLine, inputs: DateInputs, metrics: object) -> Resolution:
        r = resolutions[line.resource_id]
        return replace(r, context={"usage": {"bytes": dict(r.context["usage"]["bytes"])}})

    return Handler(
        service_type="bench",
        allocators={pt: choice(k) for k, pt in enumerate(PRODUCT_TYPES)},
        resolve=resolve_fresh if kind == "fresh" else resolve,
        billing_resource_types=frozenset({"cluster"}),
    )


def build_confluent(
    n_lines: int, n_identities: int, seed: int = 11
) -> tuple[DateInputs, dict[str, Resolution]]:
    """Kafka clusters to allocate with the real Confluent tier tables (docs/allocation.md §9.1)."""
    rng = random.Random(seed)
    identity_ids = [f"sa-{i:05d}" for i in range(n_identities * 4)]
    identities = {i: Identity(i, "service_account") for i in identity_ids}
    n_clusters = max(1, -(-n_lines // len(KAFKA_TYPES)))
    resources = {f"lkc-{r:05d}": Resource(f"lkc-{r:05d}", "kafka_cluster") for r in range(n_clusters)}
    resolutions = {}
    for rid in resources:
        members = rng.sample(identity_ids, n_identities)
        resolutions[rid] = Resolution(
            resource_active=members[: n_identities // 2],
            metrics_derived=members,
            context={"usage": {"bytes_in": _weights(rng, members), "bytes_out": _weights(rng, members)}},
        )
    inputs = DateInputs(
        date=DAY,
        lines=_lines(list(resources), KAFKA_TYPES, n_lines, rng),
        resources=resources,
        identities=identities,
        metrics={},
        failed_metrics={},
    )
    return inputs, resolutions


def confluent_handler(resolutions: dict[str, Resolution]) -> Handler:
    table = confluent_allocators()  # new allocator objects
    return Handler(
        service_type="kafka",
        allocators={pt: table[pt] for pt in KAFKA_TYPES},
        resolve=lambda line, inputs, metrics: resolutions[line.resource_id],
        billing_resource_types=frozenset({"kafka_cluster"}),
    )


def _time(
    inputs: DateInputs, make_handler: Callable[[], Handler], unknown: Allocator, repeat: int
) -> tuple[list[float], int]:
    times = []
    n_rows = 0
    for _ in range(repeat):
        handlers = [make_handler()]
        gc.collect()
        t0 = time.perf_counter()
        result = allocate_date(
            inputs,
            tenant_id="t",
            ecosystem="bench",
            handlers=handlers,
            unknown_allocator=unknown,
            params={},
            retry_limit=3,
            record_failure=lambda line: 1,
        )
        times.append(time.perf_counter() - t0)
        assert not result.failed_lines and result.allocated_units == result.billed_units
        n_rows = result.row_count
        del result  # free it outside the timed region
    return times, n_rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--identities", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    inputs, resolutions = build(args.lines, args.identities)
    kafka_inputs, kafka_resolutions = build_confluent(args.lines, args.identities)
    mix = "realistic mix"
    scenarios: dict[str, tuple[DateInputs, Callable[[], Handler], Allocator]] = {
        name: (inputs, functools.partial(handler, kind, resolutions), generic_unknown_allocator)
        for name, kind in (
            ("even split only", "even"),
            ("50% usage ratio", "half"),
            ("usage ratio only", "ratio"),
            ("usage ratio, fresh weights", "fresh"),
        )
    }
    scenarios[mix] = (
        kafka_inputs,
        functools.partial(confluent_handler, kafka_resolutions),
        confluent_unknown_allocator,
    )

    print(
        f"allocate_date, {args.lines} lines, {args.identities} identities per split, "
        f"best / median of {args.repeat}, one core"
    )
    best_mix = 0.0
    for name, (date_inputs, make_handler, unknown) in scenarios.items():
        times, n_rows = _time(date_inputs, make_handler, unknown, args.repeat)
        best, median = min(times), statistics.median(times)
        n_lines = len(date_inputs.lines)
        print(
            f"{name:>27}: {n_rows:>7} rows in {best * 1000:6.1f} ms best / {median * 1000:6.1f} ms median"
            f" = {n_rows / best:>10,.0f} rows/s best, {n_rows / median:>10,.0f} rows/s median"
            f" ({n_lines / best:,.0f} lines/s)"
        )
        if name == mix:
            best_mix = n_rows / best
    print(f"allocation: {best_mix:,.0f} rows/s ({mix}: Confluent Kafka clusters, 3/7 of rows usage ratio)")


if __name__ == "__main__":
    main()
