"""Allocation models, tier tables, engine (docs/allocation.md, docs/self-managed-kafka.md §6,
docs/generic-metrics.md §6)."""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from chargeback_dagster.allocation import (
    ROW_KEY_FIELDS,
    AllocationContext,
    Chain,
    Composition,
    DateCalculationError,
    DateInputs,
    EvenSplit,
    Handler,
    IdentitySets,
    Resolution,
    Terminal,
    UsageRatio,
    allocate_date,
    usage_weights,
)
from chargeback_dagster.domain import UNALLOCATED, BillingLine, ChargebackRow, Identity, MetricRow, Resource
from chargeback_dagster.ecosystems.confluent_cloud.allocators import (
    confluent_allocators,
    confluent_unknown_allocator,
)
from chargeback_dagster.ecosystems.generic_metrics.allocators import (
    generic_allocator,
    generic_unknown_allocator,
)
from chargeback_dagster.ecosystems.self_managed_kafka.allocators import (
    self_managed_allocators,
    self_managed_unknown_allocator,
)
from chargeback_dagster.money import format_units, round4, to_units

DAY = date(2026, 3, 10)
DAY_START = datetime(2026, 3, 10, tzinfo=UTC)


# ---- helpers ---


def line(
    product_type: str, total: str, resource_id: str = "lkc-abc", env_id: str = "", category: str = "kafka"
) -> BillingLine:
    return BillingLine(
        ecosystem="test",
        tenant_id="t1",
        date=DAY,
        resource_id=resource_id,
        product_category=category,
        product_type=product_type,
        quantity=Decimal(1),
        unit_price=Decimal(total),
        total_cost=Decimal(total),
        env_id=env_id,
    )


def sa(*ids: str, identity_type: str = "service_account", **kw: Any) -> dict[str, Identity]:
    return {i: Identity(i, identity_type, **kw) for i in ids}


def mrows(label: str, values: dict[str, float]) -> list[MetricRow]:
    return [MetricRow({label: k}, v, v, 1) for k, v in values.items()]


def inputs(
    lines: list[BillingLine],
    *,
    resources: dict[str, Resource] | None = None,
    identities: dict[str, Identity] | None = None,
    metrics: dict[tuple[str, str], list[MetricRow]] | None = None,
    failed: dict[tuple[str, str], str] | None = None,
) -> DateInputs:
    return DateInputs(
        date=DAY,
        lines=lines,
        resources=resources or {},
        identities=identities or {},
        metrics=metrics or {},
        failed_metrics=failed or {},
    )


class Counter:
    """Fake `record_failure`: consecutive failure count per line key, like the tenant store."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = defaultdict(int)

    def __call__(self, ln: BillingLine) -> int:
        self.counts[ln.key] += 1
        return self.counts[ln.key]


def run(
    date_inputs: DateInputs,
    handlers: list[Handler],
    *,
    unknown: Any = confluent_unknown_allocator,
    retry_limit: int = 3,
    record_failure: Any = None,
    **kw: Any,
):
    return allocate_date(
        date_inputs,
        tenant_id="t1",
        ecosystem="test",
        handlers=handlers,
        unknown_allocator=unknown,
        params=kw.pop("params", {}),
        retry_limit=retry_limit,
        record_failure=record_failure or Counter(),
        **kw,
    )


def rows(result, product_type: str | None = None) -> list[tuple[str, str, str, str, str, str]]:
    """(identity, amount, cost_type, method, detail, composition_part), in sorted order."""
    out = []
    for r in result.row_dicts():
        if product_type is None or r["product_type"] == product_type:
            out.append(
                (
                    r["identity_id"],
                    format_units(r["amount_units"]),
                    r["cost_type"],
                    r["allocation_method"],
                    r["allocation_detail"],
                    r["composition_part"],
                )
            )
    return sorted(out)


def check_totals(result) -> None:
    assert sum(result.rows.values()) == result.billed_units


# ---- a Confluent-like Kafka handler built from the §9.1 tables ---

CONFLUENT = confluent_allocators()
KAFKA_TYPES = {pt: CONFLUENT[pt] for pt in CONFLUENT if pt.startswith("KAFKA_")}


def kafka_queries(ln: BillingLine) -> dict[str, str]:
    return {
        "KAFKA_NUM_CKU": {"bytes_in": "q_in", "bytes_out": "q_out"},
        "KAFKA_NUM_CKUS": {"bytes_in": "q_in", "bytes_out": "q_out"},
        "KAFKA_NETWORK_WRITE": {"bytes_in": "q_in"},
        "KAFKA_NETWORK_READ": {"bytes_out": "q_out"},
    }.get(ln.product_type, {})


def kafka_handler(owners: dict[str, list[str]], allocators: dict[str, Any] | None = None) -> Handler:
    def resolve(ln: BillingLine, store: DateInputs, line_metrics: dict[str, list[MetricRow]]) -> Resolution:
        usage = {key: usage_weights(rows_, "principal_id") for key, rows_ in line_metrics.items()}
        derived = {i for weights in usage.values() for i, w in weights.items() if w > 0}
        return Resolution(owners.get(ln.resource_id, []), sorted(derived), {"usage": usage})

    return Handler(
        service_type="kafka",
        allocators=allocators if allocators is not None else KAFKA_TYPES,
        resolve=resolve,
        metric_queries=kafka_queries,
        billing_resource_types=frozenset({"kafka_cluster"}),
    )


def org_wide_handler() -> Handler:
    return Handler(
        service_type="org_wide",
        allocators={pt: CONFLUENT[pt] for pt in ("AUDIT_LOG_READ", "SUPPORT")},
        resolve=lambda ln, store, m: Resolution(),
    )


# ---- §11 worked examples ---


def cku_inputs(total: str = "100.00") -> DateInputs:
    return inputs(
        [line("KAFKA_NUM_CKU", total, "lkc-abc")],
        identities=sa("sa-1", "sa-2"),
        metrics={
            ("lkc-abc", "bytes_in"): mrows("principal_id", {"sa-1": 300.0}),
            ("lkc-abc", "bytes_out"): mrows("principal_id", {"sa-2": 700.0}),
        },
    )


def test_example_1_cku_70_30() -> None:
    result = run(cku_inputs(), [kafka_handler({"lkc-abc": ["sa-1", "sa-2"]})])
    assert rows(result) == [
        ("sa-1", "15.0000", "shared", "even_split", "even_split_allocation", "shared"),
        ("sa-1", "21.0000", "usage", "usage_ratio", "usage_ratio_allocation", "usage"),
        ("sa-2", "15.0000", "shared", "even_split", "even_split_allocation", "shared"),
        ("sa-2", "49.0000", "usage", "usage_ratio", "usage_ratio_allocation", "usage"),
    ]
    check_totals(result)
    assert result.billed_units == 1_000_000
    assert result.succeeded_lines == cku_inputs().lines


@pytest.mark.parametrize(
    ("usage_ratio", "shared_ratio"), [(0.6, 0.4), (Decimal("0.60"), Decimal("0.40")), ("0.6", "0.4")]
)
def test_example_1_cku_params_60_40(usage_ratio: Any, shared_ratio: Any) -> None:
    allocators = confluent_allocators(usage_ratio, shared_ratio)
    handler = kafka_handler({"lkc-abc": ["sa-1", "sa-2"]}, {"KAFKA_NUM_CKU": allocators["KAFKA_NUM_CKU"]})
    result = run(cku_inputs(), [handler])
    parts: dict[str, int] = defaultdict(int)
    for r in result.row_dicts():
        parts[r["composition_part"]] += r["amount_units"]
    assert {k: format_units(v) for k, v in parts.items()} == {"usage": "60.0000", "shared": "40.0000"}
    assert ("sa-1", "18.0000", "usage", "usage_ratio", "usage_ratio_allocation", "usage") in rows(result)
    assert ("sa-2", "42.0000", "usage", "usage_ratio", "usage_ratio_allocation", "usage") in rows(result)


def test_example_1_cku_no_identities_no_metrics() -> None:
    result = run(inputs([line("KAFKA_NUM_CKU", "100.00", "lkc-abc")]), [kafka_handler({})])
    assert rows(result) == [
        ("lkc-abc", "30.0000", "shared", "terminal", "no_identities_located", "shared"),
        ("lkc-abc", "70.0000", "shared", "terminal", "no_identities_located", "usage"),
    ]
    check_totals(result)


def test_cku_usage_part_falls_back_to_merged_then_period_owners() -> None:
    # owners but no usage: U1 merged → no_usage_for_active_identities
    result = run(
        inputs([line("KAFKA_NUM_CKU", "10.00")], identities=sa("sa-1")),
        [kafka_handler({"lkc-abc": ["sa-1"]})],
    )
    assert rows(result) == [
        ("sa-1", "3.0000", "shared", "even_split", "even_split_allocation", "shared"),
        ("sa-1", "7.0000", "shared", "even_split", "no_usage_for_active_identities", "usage"),
    ]
    # nobody tied to the resource, but tenant owners exist: U2 / S1 period owners
    ids = {**sa("sa-9"), **sa("key-1", identity_type="api_key")}
    result = run(inputs([line("KAFKA_NUM_CKU", "10.00")], identities=ids), [kafka_handler({})])
    assert rows(result) == [
        ("sa-9", "3.0000", "shared", "even_split", "no_active_identities_located", "shared"),
        ("sa-9", "7.0000", "shared", "even_split", "no_metrics_no_active_identities_located", "usage"),
    ]


def network_write_inputs(**kw: Any) -> DateInputs:
    return inputs(
        [line("KAFKA_NETWORK_WRITE", "24.00", "lkc-1")],
        resources={
            "lkc-1": Resource("lkc-1", "kafka_cluster", created_at=datetime(2026, 3, 10, 6, tzinfo=UTC))
        },
        identities=sa("sa-a", "sa-b"),
        metrics={("lkc-1", "bytes_in"): mrows("principal_id", {"sa-a": 2.0, "sa-b": 1.0})},
        **kw,
    )


def test_example_2_active_fraction() -> None:
    result = run(network_write_inputs(), [kafka_handler({"lkc-1": ["sa-a", "sa-b"]})])
    assert rows(result) == [
        ("UNALLOCATED", "6.0000", "shared", "terminal", "resource_inactive_fraction", ""),
        ("sa-a", "12.0000", "usage", "usage_ratio", "usage_ratio_allocation", ""),
        ("sa-b", "6.0000", "usage", "usage_ratio", "usage_ratio_allocation", ""),
    ]
    check_totals(result)


def test_example_3_metrics_down_d9() -> None:
    result = run(
        network_write_inputs(failed={("lkc-1", "bytes_in"): "HTTP 503"}),
        [kafka_handler({"lkc-1": ["sa-a", "sa-b"]})],
    )
    assert rows(result) == [
        ("UNALLOCATED", "6.0000", "shared", "terminal", "resource_inactive_fraction", ""),
        ("sa-a", "9.0000", "shared", "even_split", "metrics_fetch_failed", ""),
        ("sa-b", "9.0000", "shared", "even_split", "metrics_fetch_failed", ""),
    ]


def test_d9_marks_both_composition_parts_and_spares_lines_without_metrics() -> None:
    date_inputs = inputs(
        [line("KAFKA_NUM_CKU", "10.00", "lkc-1"), line("KAFKA_PARTITION", "1.00", "lkc-1")],
        identities=sa("sa-a"),
        metrics={("lkc-1", "bytes_in"): mrows("principal_id", {"sa-a": 5.0})},
        failed={("lkc-1", "bytes_out"): "timeout"},
    )
    result = run(date_inputs, [kafka_handler({"lkc-1": ["sa-a"]})])
    assert rows(result, "KAFKA_NUM_CKU") == [
        ("sa-a", "3.0000", "shared", "even_split", "metrics_fetch_failed", "shared"),
        ("sa-a", "7.0000", "shared", "even_split", "metrics_fetch_failed", "usage"),
    ]
    assert rows(result, "KAFKA_PARTITION") == [
        ("sa-a", "1.0000", "shared", "even_split", "no_metrics_located", ""),
    ]


def test_example_4_org_wide() -> None:
    lines = [line("AUDIT_LOG_READ", "100.00", "org-1", category="audit")]
    result = run(inputs(lines, identities=sa("sa-1", "sa-2", "sa-3", "sa-4")), [org_wide_handler()])
    assert rows(result) == [
        (f"sa-{i}", "25.0000", "shared", "even_split", "even_split_allocation", "") for i in range(1, 5)
    ]
    result = run(inputs(lines), [org_wide_handler()])
    assert rows(result) == [("UNALLOCATED", "100.0000", "shared", "terminal", "no_identities_located", "")]


def test_tenant_period_membership_and_owner_types() -> None:
    identities = {
        **sa("sa-old", deleted_at=DAY_START - timedelta(seconds=1)),  # gone before the day
        **sa("sa-late", created_at=DAY_START + timedelta(days=1)),  # created at day end
        **sa("sa-edge", deleted_at=DAY_START),  # deleted exactly at day start: still counts
        **sa("u-1", identity_type="user", created_at=DAY_START + timedelta(hours=23)),
        **sa("pool-1", identity_type="identity_pool"),
        **sa("p-1", identity_type="principal"),
        **sa("key-1", identity_type="api_key"),
        **sa("SYS", identity_type="system"),
    }
    seen: list[IdentitySets] = []

    def spy(ctx: AllocationContext) -> list[ChargebackRow]:
        seen.append(ctx.identities)
        return [ChargebackRow(UNALLOCATED, "shared", to_units(ctx.amount), "terminal", "spy")]

    run(
        inputs([line("SUPPORT", "1.00", "")], identities=identities),
        [org_wide_handler()],
        allocator_overrides={"SUPPORT": spy},
    )
    assert seen[0].tenant_period == ("key-1", "p-1", "pool-1", "sa-edge", "u-1")
    assert seen[0].tenant_period_owners == ("p-1", "pool-1", "sa-edge", "u-1")
    assert seen[0].resource_active == seen[0].metrics_derived == seen[0].merged_active == ()


def test_example_5_unknown_product_types(caplog: pytest.LogCaptureFixture) -> None:
    lines = [
        line("KAFKA_REST_PRODUCE", "5.00", "lkc-9"),
        line("KAFKA_REST_PRODUCE", "1.00", "lkc-8"),
        line("PROMO_CREDIT", "-20.00", ""),
    ]
    warned: set[str] = set()
    with caplog.at_level(logging.WARNING, logger="chargeback_dagster.allocation"):
        result = run(inputs(lines), [kafka_handler({})], warned=warned)
    assert rows(result, "KAFKA_REST_PRODUCE") == [
        ("lkc-8", "1.0000", "shared", "unknown", "using_unknown_allocator", ""),
        ("lkc-9", "5.0000", "shared", "unknown", "using_unknown_allocator", ""),
    ]
    # decision D12, not D5: the credit is spread over the day's costs, 1.00 : 5.00 (docs/allocation.md §12)
    assert rows(result, "PROMO_CREDIT") == [
        ("lkc-8", "-3.3333", "shared", "credit", "credit_proportional_to_org_cost", ""),
        ("lkc-9", "-16.6667", "shared", "credit", "credit_proportional_to_org_cost", ""),
    ]
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["No allocator for product_type 'KAFKA_REST_PRODUCE'; charged to lkc-8"]
    assert warned == {"KAFKA_REST_PRODUCE"}
    check_totals(result)
    # the same run (same `warned` set) does not warn again
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="chargeback_dagster.allocation"):
        run(inputs(lines), [kafka_handler({})], warned=warned)
    assert caplog.records == []


def test_example_6_failure_and_retry_limit() -> None:
    def boom(ctx: AllocationContext) -> list[ChargebackRow]:
        raise RuntimeError("boom")

    date_inputs = inputs(
        [line("KAFKA_PARTITION", "7.00", "lkc-1"), line("KAFKA_BASE", "3.00", "lkc-1")], identities=sa("sa-1")
    )
    counter = Counter()
    handlers = [kafka_handler({"lkc-1": ["sa-1"]})]
    for attempt in (1, 2):
        with pytest.raises(DateCalculationError) as info:
            run(date_inputs, handlers, allocator_overrides={"KAFKA_PARTITION": boom}, record_failure=counter)
        assert str(info.value) == "Calculate failed for date 2026-03-10: boom"
        assert info.value.date == DAY and info.value.error == "boom"
        assert counter.counts[("lkc-1", "KAFKA_PARTITION", "")] == attempt
    result = run(date_inputs, handlers, allocator_overrides={"KAFKA_PARTITION": boom}, record_failure=counter)
    assert rows(result, "KAFKA_PARTITION") == [
        ("UNALLOCATED", "7.0000", "shared", "ALLOCATION_FAILED", "Failed after 3 attempts: boom", "")
    ]
    assert rows(result, "KAFKA_BASE") == [
        ("sa-1", "3.0000", "shared", "even_split", "no_metrics_located", "")
    ]
    assert [ln.product_type for ln in result.succeeded_lines] == ["KAFKA_BASE"]
    assert [(ln.product_type, n, e) for ln, n, e in result.failed_lines] == [("KAFKA_PARTITION", 3, "boom")]
    check_totals(result)


def test_failure_fallback_has_no_inactive_row_and_cuts_error_to_200() -> None:
    def long_error(ctx: AllocationContext) -> list[ChargebackRow]:
        raise ValueError("x" * 300)

    result = run(
        network_write_inputs(),
        [kafka_handler({"lkc-1": ["sa-a"]})],
        allocator_overrides={"KAFKA_NETWORK_WRITE": long_error},
        retry_limit=1,
    )
    assert rows(result) == [
        ("UNALLOCATED", "24.0000", "shared", "ALLOCATION_FAILED", "Failed after 1 attempts: " + "x" * 200, "")
    ]


def test_resolver_failure_counts_and_record_failure_failure_fails_date() -> None:
    def bad_resolve(ln: BillingLine, store: DateInputs, m: Any) -> Resolution:
        raise KeyError("resolver exploded")

    handler = Handler("kafka", KAFKA_TYPES, bad_resolve)
    result = run(inputs([line("KAFKA_PARTITION", "1.00")]), [handler], retry_limit=1)
    assert rows(result)[0][3:5] == ("ALLOCATION_FAILED", "Failed after 1 attempts: 'resolver exploded'")

    def broken_store(ln: BillingLine) -> int:
        raise OSError("database is locked")

    with pytest.raises(
        DateCalculationError, match=r"^Calculate failed for date 2026-03-10: 'resolver exploded'$"
    ):
        run(inputs([line("KAFKA_PARTITION", "1.00")]), [handler], retry_limit=1, record_failure=broken_store)


def test_sum_check_message_with_override() -> None:
    def wrong(ctx: AllocationContext) -> list[ChargebackRow]:
        return [ChargebackRow("sa-1", "shared", 90000, "custom", "custom_detail")]

    with pytest.raises(DateCalculationError) as info:
        run(
            inputs([line("KAFKA_PARTITION", "10.00")]),
            [kafka_handler({})],
            allocator_overrides={"KAFKA_PARTITION": wrong},
        )
    assert str(info.value) == (
        "Calculate failed for date 2026-03-10: "
        "Allocator for 'KAFKA_PARTITION' returned rows summing to 9.0000, expected 10.0000"
    )


# ---- routing, overrides, active fraction ---


def test_allocator_override_precedence_and_context() -> None:
    seen: list[AllocationContext] = []

    def custom(ctx: AllocationContext) -> list[ChargebackRow]:
        seen.append(ctx)
        half = to_units(ctx.amount) // 2
        return [
            ChargebackRow("team-x", "usage", half, "my_method", "my_detail"),
            ChargebackRow("team-y", "usage", to_units(ctx.amount) - half, "my_method", "my_detail"),
        ]

    date_inputs = inputs(
        [line("KAFKA_NETWORK_READ", "3.0001", "lkc-1"), line("MY_TYPE", "2.00", "x-1")],
        identities=sa("sa-1"),
        metrics={("lkc-1", "bytes_out"): mrows("principal_id", {"sa-1": 1.0})},
    )
    result = run(
        date_inputs,
        [kafka_handler({"lkc-1": ["sa-1"]})],
        allocator_overrides={"KAFKA_NETWORK_READ": custom, "MY_TYPE": custom},
        params={"k": 1},
    )
    assert rows(result, "KAFKA_NETWORK_READ") == [
        ("team-x", "1.5000", "usage", "my_method", "my_detail", ""),
        ("team-y", "1.5001", "usage", "my_method", "my_detail", ""),
    ]
    ctx = seen[0]
    assert ctx.amount == Decimal("3.0001") and ctx.params == {"k": 1} and ctx.tenant_id == "t1"
    assert ctx.identities.merged_active == ("sa-1",)
    assert set(ctx.metrics) == {"bytes_out"} and ctx.metrics_fetch_failed is False
    assert ctx.context["usage"]["bytes_out"] == {"sa-1": Decimal("1.0")}
    # unclaimed type routed to an override: empty resolved sets, tenant_period still supplied
    assert seen[1].identities == IdentitySets(tenant_period=("sa-1",), tenant_period_owners=("sa-1",))


def test_resolver_override_six_positional_args_and_tuple_result() -> None:
    calls: list[tuple[Any, ...]] = []

    def resolver(tenant_id, resource_id, billing_timestamp, billing_duration, metrics_data, store):
        calls.append((tenant_id, resource_id, billing_timestamp, billing_duration, set(metrics_data), store))
        return (["sa-z", "sa-y", "sa-y", UNALLOCATED], [], {})

    date_inputs = inputs([line("KAFKA_BASE", "1.00", "lkc-1")])
    result = run(date_inputs, [kafka_handler({"lkc-1": ["sa-1"]})], resolver_overrides={"kafka": resolver})
    assert calls == [("t1", "lkc-1", DAY_START, timedelta(days=1), set(), date_inputs)]
    assert rows(result) == [
        ("sa-y", "0.5000", "shared", "even_split", "no_metrics_located", ""),
        ("sa-z", "0.5000", "shared", "even_split", "no_metrics_located", ""),
    ]


def test_identity_sets_sorted_deduplicated_system_excluded() -> None:
    seen: list[IdentitySets] = []

    def spy(ctx: AllocationContext) -> list[ChargebackRow]:
        seen.append(ctx.identities)
        return [ChargebackRow(UNALLOCATED, "shared", to_units(ctx.amount), "terminal", "spy")]

    handler = Handler(
        "kafka",
        {"KAFKA_BASE": spy},
        lambda ln, s, m: Resolution(["sa-b", "sa-a", "sa-b", "SYS", UNALLOCATED], ("sa-c", "sa-a"), {}),
    )
    identities = {**sa("sa-a", "sa-b"), **sa("SYS", identity_type="system")}
    run(inputs([line("KAFKA_BASE", "1.00")], identities=identities), [handler])
    assert seen[0] == IdentitySets(
        resource_active=("sa-a", "sa-b"),
        metrics_derived=("sa-a", "sa-c"),
        merged_active=("sa-a", "sa-b", "sa-c"),
        tenant_period=("sa-a", "sa-b"),
        tenant_period_owners=("sa-a", "sa-b"),
    )


@pytest.mark.parametrize(
    ("resource", "expected_active"),
    [
        (None, "8.0000"),  # not found → f = 1
        (
            Resource("lkc-1", "environment", created_at=DAY_START + timedelta(hours=12)),
            "8.0000",
        ),  # not billing type
        (Resource("lkc-1", "kafka_cluster", deleted_at=DAY_START + timedelta(hours=6)), "2.0000"),
        (Resource("lkc-1", "kafka_cluster", created_at=DAY_START - timedelta(days=3)), "8.0000"),
        (
            Resource(
                "lkc-1",
                "kafka_cluster",
                created_at=DAY_START + timedelta(hours=3),
                deleted_at=DAY_START + timedelta(hours=9),
            ),
            "2.0000",
        ),
        (Resource("lkc-1", "kafka_cluster", created_at=datetime(2026, 3, 10, 18)), "2.0000"),  # naive = UTC
    ],
)
def test_active_fraction(resource: Resource | None, expected_active: str) -> None:
    date_inputs = inputs(
        [line("KAFKA_BASE", "8.00", "lkc-1")],
        resources={"lkc-1": resource} if resource else {},
        identities=sa("sa-1"),
    )
    result = run(date_inputs, [kafka_handler({"lkc-1": ["sa-1"]})])
    amounts = {r[0]: r[1] for r in rows(result)}
    assert amounts["sa-1"] == expected_active
    inactive = Decimal("8.00") - Decimal(expected_active)
    if inactive:
        assert rows(result)[0] == (
            "UNALLOCATED",
            f"{inactive:.4f}",
            "shared",
            "terminal",
            "resource_inactive_fraction",
            "",
        )
    check_totals(result)


def test_active_fraction_zero_skips_allocator() -> None:
    def never(ctx: AllocationContext) -> list[ChargebackRow]:
        raise AssertionError("allocator must not be called when f = 0")

    resources = {"lkc-1": Resource("lkc-1", "kafka_cluster", deleted_at=DAY_START - timedelta(hours=1))}
    result = run(
        inputs([line("KAFKA_BASE", "-8.00", "lkc-1")], resources=resources),
        [kafka_handler({})],
        allocator_overrides={"KAFKA_BASE": never},
    )
    assert rows(result) == [
        ("UNALLOCATED", "-8.0000", "shared", "terminal", "resource_inactive_fraction", "")
    ]


def test_active_fraction_rounds_total_cost_times_f_half_up() -> None:
    # total_cost 0.00015 (T = 0.0002), f = 0.5 → A = round4(0.000075) = 0.0001, R = 0.0001
    resources = {"lkc-1": Resource("lkc-1", "kafka_cluster", created_at=DAY_START + timedelta(hours=12))}
    result = run(inputs([line("KAFKA_BASE", "0.00015", "lkc-1")], resources=resources), [kafka_handler({})])
    assert rows(result) == [
        ("UNALLOCATED", "0.0001", "shared", "terminal", "resource_inactive_fraction", ""),
        ("lkc-1", "0.0001", "shared", "to_resource", "no_identities_located", ""),
    ]


def test_zero_amount_even_split_yields_zero_rows() -> None:
    result = run(inputs([line("KAFKA_BASE", "0")]), [kafka_handler({"lkc-abc": ["sa-1", "sa-2", "sa-3"]})])
    assert [r[1] for r in rows(result)] == ["0.0000"] * 3


# ---- D2 merge of identical dimension keys ---


def test_d2_rows_with_identical_keys_are_summed() -> None:
    def twice(ctx: AllocationContext) -> list[ChargebackRow]:
        u = to_units(ctx.amount)
        return [
            ChargebackRow("sa-1", "usage", u // 4, "m", "d"),
            ChargebackRow("sa-1", "usage", u - u // 4, "m", "d"),
        ]

    lines = [line("X", "4.00", "r-1"), line("X", "6.00", "r-1"), line("X", "1.00", "r-1", env_id="env-2")]
    result = run(inputs(lines), [], allocator_overrides={"X": twice})
    assert result.rows == {
        ("", "r-1", "kafka", "X", "sa-1", "usage", "m", "d", ""): 100000,
        ("env-2", "r-1", "kafka", "X", "sa-1", "usage", "m", "d", ""): 10000,
    }
    assert ROW_KEY_FIELDS[4] == "identity_id"
    assert result.line_count == 3 and result.billed_units == 110000


def test_d2_composition_parts_stay_distinct_rows() -> None:
    handler = kafka_handler({"lkc-abc": ["sa-1"]})
    result = run(inputs([line("KAFKA_NUM_CKU", "10.00"), line("KAFKA_NUM_CKU", "10.00")]), [handler])
    assert rows(result) == [
        ("sa-1", "14.0000", "shared", "even_split", "no_usage_for_active_identities", "usage"),
        ("sa-1", "6.0000", "shared", "even_split", "even_split_allocation", "shared"),
    ]


def test_override_row_validation() -> None:
    def decimal_amount(ctx: AllocationContext) -> list[ChargebackRow]:
        return [ChargebackRow("sa-1", "usage", ctx.amount, "m", "d")]  # type: ignore[arg-type]

    with pytest.raises(DateCalculationError, match="non-integer amount_units"):
        run(inputs([line("X", "1.00")]), [], allocator_overrides={"X": decimal_amount})

    def empty_detail(ctx: AllocationContext) -> list[ChargebackRow]:
        return [ChargebackRow("sa-1", "usage", to_units(ctx.amount), "m", "")]

    with pytest.raises(
        DateCalculationError, match="empty identity_id, allocation_method or allocation_detail"
    ):
        run(inputs([line("X", "1.00")]), [], allocator_overrides={"X": empty_detail})


# ---- models ---


def ctx_for(
    amount: str, *, identities: IdentitySets | None = None, usage: dict | None = None, failed: bool = False
):
    return AllocationContext(
        tenant_id="t1",
        ecosystem="test",
        date=DAY,
        billing_line=line("X", amount, "res-1"),
        amount=round4(Decimal(amount)),
        identities=identities or IdentitySets(),
        metrics={},
        metrics_fetch_failed=failed,
        params={},
        context={"usage": usage or {}},
    )


def test_chain_validation_messages() -> None:
    with pytest.raises(ValueError, match=r"^Chain requires at least one tier$"):
        Chain()
    with pytest.raises(ValueError, match=r"^Chain last tier must be a Terminal; got EvenSplit$"):
        Chain(Terminal("UNALLOCATED", "shared", "x"), EvenSplit("merged_active", "shared", "y"))
    with pytest.raises(ValueError, match=r"^Chain last tier must be a Terminal; got function$"):
        Chain(lambda ctx: [])


def test_composition_ratio_message() -> None:
    chain = Chain(Terminal("resource", "shared", "x"))
    with pytest.raises(ValueError, match=r"^Composition ratios must sum to 1\.0, got 0\.9$"):
        Composition([("usage", Decimal("0.6"), chain), ("shared", Decimal("0.3"), chain)])
    Composition([("usage", Decimal("0.7"), chain), ("shared", Decimal("0.3001"), chain)])  # within 0.0001
    with pytest.raises(ValueError, match=r"^Composition ratios must sum to 1\.0, got 1\.0002$"):
        Composition([("usage", Decimal("0.7"), chain), ("shared", Decimal("0.3002"), chain)])


def test_models_as_plain_allocators() -> None:
    sets = IdentitySets(merged_active=("a", "b", "c"))
    rows_ = EvenSplit("merged_active", "shared", "even_split_allocation")(ctx_for("10.00", identities=sets))
    assert [r.amount_units for r in rows_] == [33334, 33333, 33333]
    assert rows_[0] == ChargebackRow("a", "shared", 33334, "even_split", "even_split_allocation", "")
    assert EvenSplit("merged_active", "shared", "x")(ctx_for("1.00")) == []
    picker = EvenSplit(lambda ctx: ["z", "y", "z"], "usage", "custom")
    assert [(r.identity_id, r.amount_units) for r in picker(ctx_for("1.00"))] == [("y", 5000), ("z", 5000)]
    with pytest.raises(ValueError, match="Unknown identity set"):
        EvenSplit("everyone", "shared", "x")

    ratio = UsageRatio("w")
    usage = {"w": {"c": Decimal(2), "a": Decimal(3), "b": Decimal(1), "d": Decimal(0), "e": Decimal(-5)}}
    assert [(r.identity_id, r.amount_units) for r in ratio(ctx_for("0.0100", usage=usage))] == [
        ("a", 50),
        ("b", 17),
        ("c", 33),
    ]
    assert ratio(ctx_for("0.0100", usage=usage, failed=True)) == []
    assert ratio(ctx_for("0.0100", usage={"w": {"a": Decimal(0)}})) == []
    assert ratio(ctx_for("0.0100")) == []
    assert [r.amount_units for r in ratio(ctx_for("1.00", usage={"w": {"a": 0.25, "b": 0.75}}))] == [
        2500,
        7500,
    ]
    summed = UsageRatio(("in", "out"))
    usage = {"in": {"a": Decimal(300)}, "out": {"b": Decimal(700), "a": Decimal(0)}}
    assert [(r.identity_id, r.amount_units) for r in summed(ctx_for("1.00", usage=usage))] == [
        ("a", 3000),
        ("b", 7000),
    ]

    assert Terminal("resource", "shared", "d")(ctx_for("1.00"))[0].identity_id == "res-1"
    no_res = ctx_for("1.00")
    no_res.billing_line = line("X", "1.00", "")
    assert Terminal("resource", "shared", "d")(no_res)[0].identity_id == UNALLOCATED
    assert Terminal("team-q", "usage", "d", method="custom")(no_res)[0] == ChargebackRow(
        "team-q", "usage", 10000, "custom", "d"
    )


def test_chain_accepts_plain_callable_tiers_with_part_amounts() -> None:
    amounts: list[Decimal] = []

    def custom(ctx: AllocationContext) -> list[ChargebackRow]:
        amounts.append(ctx.amount)
        return [ChargebackRow("sa-c", "usage", to_units(ctx.amount), "custom", "d")]

    comp = Composition(
        [
            ("usage", Decimal("0.7"), Chain(custom, Terminal("resource", "shared", "x"))),
            ("shared", Decimal("0.3"), Chain(Terminal("resource", "shared", "x"))),
        ]
    )
    out = comp(ctx_for("10.00"))
    assert amounts == [Decimal("7.0000")]
    assert [(r.identity_id, r.amount_units, r.composition_part) for r in out] == [
        ("sa-c", 70000, "usage"),
        ("res-1", 30000, "shared"),
    ]


def test_usage_weights_helper() -> None:
    metric_rows = [
        MetricRow({"principal": "alice"}, 0.1, 0.1, 1),
        MetricRow({"principal": "alice"}, 0.2, 0.2, 1),
        MetricRow({"principal": "bob"}, 0.0, 0.0, 1),
        MetricRow({"principal": ""}, 5.0, 5.0, 1),
        MetricRow({"other": "x"}, 5.0, 5.0, 1),
        MetricRow({"principal": "nan"}, float("nan"), 0.0, 1),
    ]
    assert usage_weights(metric_rows, "principal") == {"alice": Decimal("0.3"), "bob": Decimal("0.0")}


# ---- docs/self-managed-kafka.md §6 ---

CLUSTER = "kafka-cluster-001"


def self_managed_handler(static: list[str]) -> Handler:
    def resolve(ln: BillingLine, store: DateInputs, line_metrics: dict[str, list[MetricRow]]) -> Resolution:
        usage = {key: usage_weights(rows_, "principal") for key, rows_ in line_metrics.items()}
        derived = sorted({i for weights in usage.values() for i, w in weights.items() if w > 0})
        return Resolution(static, derived, {"usage": usage})

    return Handler(
        service_type="kafka",
        allocators=self_managed_allocators(),
        resolve=resolve,
        metric_queries=lambda ln: {"bytes_in_per_principal": "q1", "bytes_out_per_principal": "q2"},
        billing_resource_types=frozenset({"cluster", "broker", "topic"}),
    )


def self_managed(pt: str, total: str, *, static: list[str] = (), bytes_in=None, bytes_out=None):
    metrics = {}
    if bytes_in is not None:
        metrics[(CLUSTER, "bytes_in_per_principal")] = mrows("principal", bytes_in)
    if bytes_out is not None:
        metrics[(CLUSTER, "bytes_out_per_principal")] = mrows("principal", bytes_out)
    date_inputs = inputs(
        [line(pt, total, CLUSTER)],
        resources={CLUSTER: Resource(CLUSTER, "cluster")},
        identities=sa(*static, identity_type="principal"),
        metrics=metrics,
    )
    result = run(date_inputs, [self_managed_handler(list(static))], unknown=self_managed_unknown_allocator)
    check_totals(result)
    return rows(result)


def test_self_managed_compute_metrics_principals() -> None:
    assert self_managed("SELF_KAFKA_COMPUTE", "7.20", bytes_in={"alice": 5.0}, bytes_out={"bob": 1.0}) == [
        ("alice", "3.6000", "usage", "even_split", "even_split_allocation", ""),
        ("bob", "3.6000", "usage", "even_split", "even_split_allocation", ""),
    ]


def test_self_managed_compute_static_only() -> None:
    assert self_managed("SELF_KAFKA_COMPUTE", "7.20", static=["alice", "bob"]) == [
        ("alice", "3.6000", "shared", "even_split", "no_active_identities_located", ""),
        ("bob", "3.6000", "shared", "even_split", "no_active_identities_located", ""),
    ]


def test_self_managed_ingress_700_300() -> None:
    assert self_managed("SELF_KAFKA_NETWORK_INGRESS", "0.10", bytes_in={"alice": 700.0, "bob": 300.0}) == [
        ("alice", "0.0700", "usage", "usage_ratio", "usage_ratio_allocation", ""),
        ("bob", "0.0300", "usage", "usage_ratio", "usage_ratio_allocation", ""),
    ]


def test_self_managed_ingress_500_300_200() -> None:
    got = self_managed("SELF_KAFKA_NETWORK_INGRESS", "1.00", bytes_in={"p1": 500.0, "p2": 300.0, "p3": 200.0})
    assert [(r[0], r[1]) for r in got] == [("p1", "0.5000"), ("p2", "0.3000"), ("p3", "0.2000")]
    assert {r[2:5] for r in got} == {("usage", "usage_ratio", "usage_ratio_allocation")}


def test_self_managed_egress_no_usage_static() -> None:
    got = self_managed(
        "SELF_KAFKA_NETWORK_EGRESS", "0.10", static=["a", "b", "c"], bytes_in={"a": 9.0}, bytes_out={}
    )
    assert got == [
        ("a", "0.0334", "shared", "even_split", "no_metrics_located", ""),
        ("b", "0.0333", "shared", "even_split", "no_metrics_located", ""),
        ("c", "0.0333", "shared", "even_split", "no_metrics_located", ""),
    ]


def test_self_managed_storage_no_identities() -> None:
    assert self_managed("SELF_KAFKA_STORAGE", "0.12") == [
        ("UNALLOCATED", "0.1200", "shared", "terminal", "no_identities_located", "")
    ]


def test_self_managed_unknown_type() -> None:
    assert self_managed("SELF_KAFKA_OTHER", "1.00", static=["alice"]) == [
        ("UNALLOCATED", "1.0000", "shared", "unknown", "using_unknown_allocator", "")
    ]


# ---- docs/generic-metrics.md §6 ---

GENERIC_CLUSTER = "opensearch-prod"
STRATEGIES = {"broker_hours": "even_split", "storage": "usage_ratio", "egress": "even_split"}


def generic_handler(static: list[str], prometheus: bool = True) -> Handler:
    def queries(ln: BillingLine) -> dict[str, str]:
        if STRATEGIES[ln.product_type] == "usage_ratio":
            return {f"alloc_{ln.product_type}": "sum by (team) (x)"}
        return {"discovery": "group by (team) (y)"} if prometheus else {}

    def resolve(ln: BillingLine, store: DateInputs, line_metrics: dict[str, list[MetricRow]]) -> Resolution:
        usage = {key: usage_weights(rows_, "team") for key, rows_ in line_metrics.items()}
        derived = sorted({i for weights in usage.values() for i, w in weights.items() if w > 0})
        return Resolution(static, derived, {"usage": usage})

    return Handler(
        service_type="generic",
        allocators={
            name: generic_allocator(strategy, f"alloc_{name}") for name, strategy in STRATEGIES.items()
        },
        resolve=resolve,
        metric_queries=queries,
        billing_resource_types=frozenset({"cluster"}),
    )


def generic(pt: str, total: str, *, static: list[str] = (), metrics=None, failed=None, prometheus=True):
    date_inputs = inputs(
        [line(pt, total, GENERIC_CLUSTER)],
        resources={GENERIC_CLUSTER: Resource(GENERIC_CLUSTER, "cluster")},
        metrics={(GENERIC_CLUSTER, k): mrows("team", v) for k, v in (metrics or {}).items()},
        failed={(GENERIC_CLUSTER, k): "HTTP 500" for k in (failed or [])},
    )
    result = run(date_inputs, [generic_handler(list(static), prometheus)], unknown=generic_unknown_allocator)
    check_totals(result)
    return rows(result)


def test_generic_even_split_discovered() -> None:
    got = generic(
        "broker_hours", "180.00", metrics={"discovery": {"team-a": 1.0, "team-b": 1.0, "team-c": 1.0}}
    )
    assert got == [
        (f"team-{x}", "60.0000", "shared", "even_split", "even_split_allocation", "") for x in "abc"
    ]


def test_generic_usage_ratio() -> None:
    assert generic("storage", "0.24", metrics={"alloc_storage": {"team-a": 3.0, "team-b": 1.0}}) == [
        ("team-a", "0.1800", "usage", "usage_ratio", "usage_ratio_allocation", ""),
        ("team-b", "0.0600", "usage", "usage_ratio", "usage_ratio_allocation", ""),
    ]


def test_generic_usage_ratio_all_zero_static() -> None:
    got = generic(
        "storage", "0.24", static=["team-x"], metrics={"alloc_storage": {"team-a": 0.0, "team-b": 0.0}}
    )
    assert got == [("team-x", "0.2400", "shared", "even_split", "no_metrics_located", "")]


def test_generic_nobody() -> None:
    assert generic("egress", "0.50", prometheus=False) == [
        ("UNALLOCATED", "0.5000", "shared", "terminal", "no_identities_located", "")
    ]


def test_generic_metrics_failed_d9() -> None:
    assert generic("storage", "0.24", static=["team-x"], failed=["alloc_storage"]) == [
        ("team-x", "0.2400", "shared", "even_split", "metrics_fetch_failed", "")
    ]


def test_generic_unknown_type_and_strategy() -> None:
    assert generic("not_configured", "1.00", static=["team-x"]) == [
        ("UNALLOCATED", "1.0000", "shared", "unknown", "using_unknown_allocator", "")
    ]
    with pytest.raises(ValueError, match="Unknown allocation_strategy 'fifo'"):
        generic_allocator("fifo", "alloc_x")


# ---- Confluent table spot checks ---


def test_confluent_table_covers_all_listed_types() -> None:
    expected = {
        "KAFKA_NUM_CKU", "KAFKA_NUM_CKUS", "KAFKA_NETWORK_READ", "KAFKA_NETWORK_WRITE", "KAFKA_PARTITION",
        "KAFKA_BASE", "KAFKA_STORAGE", "SCHEMA_REGISTRY", "GOVERNANCE_BASE", "NUM_RULES", "KSQL_NUM_CSU",
        "KSQL_NUM_CSUS", "CONNECT_NUM_TASKS", "CONNECT_THROUGHPUT", "CUSTOM_CONNECT_NUM_TASKS",
        "CUSTOM_CONNECT_THROUGHPUT", "CONNECT_CAPACITY", "CUSTOM_CONNECT_PLUGIN", "FLINK_NUM_CFU",
        "FLINK_NUM_CFUS", "AUDIT_LOG_READ", "SUPPORT", "TABLEFLOW_DATA_PROCESSED", "TABLEFLOW_NUM_TOPICS",
        "TABLEFLOW_STORAGE", "CLUSTER_LINKING_PER_LINK", "CLUSTER_LINKING_READ", "CLUSTER_LINKING_WRITE",
    }  # fmt: skip
    assert set(CONFLUENT) == expected


@pytest.mark.parametrize(
    ("pt", "expected"),
    [
        ("TABLEFLOW_STORAGE", ("lkc-abc", "1.0000", "shared", "default", "using_default_allocator", "")),
        (
            "CLUSTER_LINKING_READ",
            ("lkc-abc", "1.0000", "usage", "cluster_linking", "cluster_linking_cost", ""),
        ),
        ("KAFKA_STORAGE", ("lkc-abc", "1.0000", "shared", "to_resource", "no_identities_located", "")),
        ("CONNECT_CAPACITY", ("lkc-abc", "1.0000", "shared", "terminal", "no_identities_located", "")),
        ("FLINK_NUM_CFU", ("lkc-abc", "1.0000", "shared", "terminal", "no_identities_located", "")),
    ],
)
def test_confluent_terminal_rows(pt: str, expected: tuple[str, ...]) -> None:
    handler = Handler("any", {pt: CONFLUENT[pt]}, lambda ln, s, m: Resolution())
    assert rows(run(inputs([line(pt, "1.00")]), [handler])) == [expected]


def test_confluent_first_tiers_cost_types() -> None:
    def first(pt: str, usage: dict | None = None) -> tuple[str, ...]:
        handler = Handler(
            "any", {pt: CONFLUENT[pt]}, lambda ln, s, m: Resolution(["sa-1"], [], {"usage": usage or {}})
        )
        return rows(run(inputs([line(pt, "1.00")]), [handler]))[0]

    assert first("SCHEMA_REGISTRY")[2:5] == ("usage", "even_split", "even_split_allocation")
    assert first("CONNECT_NUM_TASKS")[2:5] == ("usage", "even_split", "even_split_allocation")
    assert first("CONNECT_CAPACITY")[2:5] == ("shared", "even_split", "even_split_allocation")
    assert first("FLINK_NUM_CFU")[2:5] == ("usage", "even_split", "no_usage_for_active_identities")
    assert first("FLINK_NUM_CFU", {"stmt_owner_cfu": {"sa-2": Decimal(1)}})[:5] == (
        "sa-2", "1.0000", "usage", "usage_ratio", "usage_ratio_allocation",
    )  # fmt: skip


# ---- property test: exact sums, shares within one unit ---


def test_property_rows_sum_to_t_and_shares_within_one_unit() -> None:
    rng = random.Random(424242)
    for case in range(300):
        # T >= 0: a negative line is a credit (decision D12), not allocated by the tier chain
        total = Decimal(rng.randint(0, 10**9)).scaleb(-rng.randint(0, 6))
        n = rng.randint(1, 12)
        ids = [f"id-{rng.randint(0, 99):02d}" for _ in range(n)]
        weights = {
            i: Decimal(str(rng.choice([0.0, -1.0, rng.uniform(0, 1e6), float(rng.randint(1, 9))])))
            for i in ids
        }
        created = (
            DAY_START + timedelta(seconds=rng.randint(-3600, 86400 + 3600)) if rng.random() < 0.5 else None
        )
        handler = Handler(
            "h",
            {
                "P": Chain(
                    UsageRatio("w"),
                    EvenSplit("merged_active", "shared", "even"),
                    Terminal("resource", "shared", "t"),
                )
            },
            lambda ln, s, m, ids=ids, weights=weights: Resolution(ids, [], {"usage": {"w": weights}}),
            billing_resource_types=frozenset({"c"}),
        )
        resources = {"r": Resource("r", "c", created_at=created)}
        result = run(inputs([line("P", str(total), "r")], resources=resources), [handler])
        t_units = to_units(round4(total))
        assert sum(result.rows.values()) == t_units == result.billed_units, case

        inactive = sum(u for k, u in result.rows.items() if k[7] == "resource_inactive_fraction")
        a_units = t_units - inactive
        positive = {i: w for i, w in weights.items() if w > 0}
        allocated = {k[4]: u for k, u in result.rows.items() if k[7] != "resource_inactive_fraction"}
        if not a_units and not allocated:
            continue  # f = 0
        if positive:
            wsum = sum(positive.values())
            assert set(allocated) == set(positive), case
            for i, u in allocated.items():
                exact = Fraction(a_units) * Fraction(positive[i]) / Fraction(wsum)
                assert abs(u - exact) < 1, (case, i, u, exact)
        else:
            members = sorted(set(ids))
            assert list(allocated) == members
            for u in allocated.values():
                assert abs(u - Fraction(a_units, len(members))) < 1


# ---- fast paths: weight cache, block merging ---


def _reference_split(units: int, weights: dict[str, Any]) -> list[tuple[str, int]]:
    """docs/allocation.md §1 with Fractions: trunc, then largest remainder, ties to the earlier identity."""
    items = sorted((i, Fraction(Decimal(str(w)) if isinstance(w, float) else w)) for i, w in weights.items())
    items = [(i, w) for i, w in items if w > 0]
    wsum = sum(w for _, w in items)
    exact = [Fraction(units) * w / wsum for _, w in items]
    shares = [int(q) for q in exact]  # int() truncates toward zero
    k = units - sum(shares)
    order = sorted(range(len(items)), key=lambda j: -abs(exact[j] - shares[j]))  # stable: ties in order
    for j in order[: abs(k)]:
        shares[j] += 1 if k > 0 else -1
    return [(i, s) for (i, _), s in zip(items, shares, strict=True)]


def test_usage_ratio_cache_matches_reference_and_sees_mutation() -> None:
    rng = random.Random(5)
    ratio = UsageRatio("w")
    weights = {f"u-{j:02d}": Decimal(str(rng.uniform(0, 1e9))) for j in range(25)}
    weights["u-00"] = Decimal(0)
    weights["u-01"] = Decimal(-3)
    usage = {"w": weights}
    for _ in range(50):  # the same mapping object: cache hits after the first line
        units = rng.randint(-(10**9), 10**9)
        amount = format_units(units)
        got = [(r.identity_id, r.amount_units) for r in ratio(ctx_for(amount, usage=usage))]
        assert got == _reference_split(units, weights)
    # a mutated mapping (same object) is prepared again
    weights["u-02"] = Decimal("1E+20")
    got = [(r.identity_id, r.amount_units) for r in ratio(ctx_for("100.00", usage=usage))]
    assert got == _reference_split(1000000, weights)
    del weights["u-02"]
    weights["u-03"] = Decimal("sNaN")  # dropped like any non-finite weight
    got = [(r.identity_id, r.amount_units) for r in ratio(ctx_for("100.00", usage=usage))]
    assert "u-03" not in dict(got) and sum(u for _, u in got) == 1000000
    weights.clear()
    weights["a"] = Decimal(0)
    assert ratio(ctx_for("1.00", usage=usage)) == []  # nothing positive left


def test_usage_ratio_summed_cache_and_mixed_types() -> None:
    summed = UsageRatio(("in", "out"))
    bytes_in = {"a": Decimal(300), "b": Decimal("0.5")}
    bytes_out = {"b": Decimal(700), "c": 2}
    usage = {"in": bytes_in, "out": bytes_out}
    expected = _reference_split(10000, {"a": 300, "b": Fraction(1401, 2), "c": 2})
    for _ in range(3):
        assert [(r.identity_id, r.amount_units) for r in summed(ctx_for("1.00", usage=usage))] == expected
    bytes_out["c"] = Decimal(1000)  # one source mutated: recomputed
    expected = _reference_split(10000, {"a": 300, "b": Fraction(1401, 2), "c": 1000})
    assert [(r.identity_id, r.amount_units) for r in summed(ctx_for("1.00", usage=usage))] == expected
    mixed = {"w": {"a": 1, "b": 2.5, "c": Decimal("0.25"), "d": float("nan")}}
    got = [(r.identity_id, r.amount_units) for r in UsageRatio("w")(ctx_for("0.0101", usage=mixed))]
    assert got == _reference_split(101, {"a": 1, "b": 2.5, "c": Decimal("0.25")})


def _random_weights(rng: random.Random, ids: list[str]) -> dict[str, Any]:
    shape = rng.randrange(6)
    if shape == 0:
        return {i: Decimal(str(rng.uniform(1, 1e9))) for i in ids}  # 17 digits: the float fast path
    if shape == 1:
        return {i: Decimal(rng.randint(1, 3)) for i in ids}  # ties: the exact path
    if shape == 2:
        return {i: Decimal(str(rng.choice([0.0, -2.0, rng.uniform(0, 1e-6)]))) for i in ids}  # some dropped
    if shape == 3:  # tiny, huge and beyond 28 digits
        return {i: Decimal(rng.randint(1, 10**30)).scaleb(rng.randint(-440, 400)) for i in ids}
    if shape == 4:
        return {i: rng.choice([rng.randint(0, 10**6), rng.uniform(0, 10), Decimal("0.5")]) for i in ids}
    return {i: Decimal(str(rng.uniform(1, 1e9))) for i in ids} | {ids[0]: Decimal("NaN")}


def test_usage_ratio_fast_paths_match_reference() -> None:
    """Float fast path, summed sources and the weight cache against the Fraction reference (§1)."""
    rng = random.Random(31337)
    single, summed = UsageRatio("w"), UsageRatio(("in", "out"))
    for case in range(400):
        ids = [f"sa-{j:03d}" for j in rng.sample(range(200), rng.choice([1, 2, 5, 30]))]
        weights = _random_weights(rng, ids)
        other_ids = ids if rng.random() < 0.7 else ids[: len(ids) // 2] + ["sa-999"]
        other = {i: Decimal(str(rng.uniform(1, 1e9))) for i in other_ids}
        usage = {"w": weights, "in": weights, "out": other}
        for _ in range(rng.choice([1, 3])):  # the same mappings again: the cache
            units = rng.choice([rng.randint(-(10**9), 10**9), rng.randint(-50, 50), 10**17 + 1])
            amount = format_units(units)
            got = [(r.identity_id, r.amount_units) for r in single(ctx_for(amount, usage=usage))]
            finite = {i: w for i, w in weights.items() if not (isinstance(w, Decimal) and w.is_nan())}
            expected = _reference_split(units, finite) if any(w > 0 for w in finite.values()) else []
            assert got == expected, case
            if not all(isinstance(w, Decimal) for w in weights.values()):
                continue  # the sum of mixed types is covered by test_usage_ratio_summed_cache_and_mixed_types
            total: dict[str, Decimal] = {}
            for source in (weights, other):  # docs/allocation.md: summed per identity, Decimal context as-is
                for i, w in source.items():
                    total[i] = total.get(i, Decimal(0)) + w
            finite = {i: w for i, w in total.items() if w.is_finite()}
            got = [(r.identity_id, r.amount_units) for r in summed(ctx_for(amount, usage=usage))]
            expected = _reference_split(units, finite) if any(w > 0 for w in finite.values()) else []
            assert got == expected, case


class _RawBlocks(EvenSplit):
    """A built-in-style model returning fixed blocks (repeated identities, mismatched lengths)."""

    def __init__(self, ids: tuple[str, ...], shares: tuple[int, ...]) -> None:
        super().__init__("merged_active", "usage", "d")
        self.raw = (ids, shares)

    def blocks(self, ctx: AllocationContext, units: int, part: str) -> list:
        ids, shares = self.raw
        return [(ids, (units - sum(shares[1:]), *shares[1:]), "usage", "m", "d", part)]


def test_merge_repeated_identity_in_block_and_repeated_block_keys() -> None:
    model = _RawBlocks(("sa-1", "sa-2", "sa-1"), (0, 3, 4))
    lines = [line("X", "0.0010", "r-1"), line("X", "0.0020", "r-1", env_id="e"), line("X", "0.0010", "r-1")]
    result = run(inputs(lines), [], allocator_overrides={}, unknown=model)
    assert result.rows == {
        ("", "r-1", "kafka", "X", "sa-1", "usage", "m", "d", ""): 2 * (3 + 4),  # two lines, sa-1 twice each
        ("", "r-1", "kafka", "X", "sa-2", "usage", "m", "d", ""): 2 * 3,
        ("e", "r-1", "kafka", "X", "sa-1", "usage", "m", "d", ""): 13 + 4,
        ("e", "r-1", "kafka", "X", "sa-2", "usage", "m", "d", ""): 3,
    }
    check_totals(result)
    bad = _RawBlocks(("sa-1", "sa-2"), (0, 1, 2))
    with pytest.raises(DateCalculationError, match="block with 2 identities and 3 amounts"):
        run(inputs([line("X", "1.00", "r-1")]), [], unknown=bad)
