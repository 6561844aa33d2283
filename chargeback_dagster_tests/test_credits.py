"""Credits and discounts: lines with a negative amount (docs/allocation.md §12, decision D12).

The day's costs come from a toy handler whose product type `X_<id>` charges the whole line to identity
`<id>`, so each identity's cost per resource and environment is written down in the test.
"""

from __future__ import annotations

import logging
import random
from datetime import date
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from chargeback_dagster.allocation import (
    CREDIT_POLICIES,
    AllocationContext,
    DateInputs,
    Handler,
    Resolution,
    Terminal,
    allocate_date,
)
from chargeback_dagster.domain import UNALLOCATED, BillingLine, ChargebackRow, Identity
from chargeback_dagster.ecosystems.confluent_cloud.allocators import confluent_unknown_allocator
from chargeback_dagster.money import format_units, to_units

DAY = date(2026, 3, 10)
IDS = ("sa-a", "sa-b", "sa-c", "sa-d", "lkc-1")


def line(product_type: str, total: str, resource_id: str = "", env_id: str = "") -> BillingLine:
    return BillingLine(
        ecosystem="test",
        tenant_id="t1",
        date=DAY,
        resource_id=resource_id,
        product_category="test",
        product_type=product_type,
        quantity=Decimal(1),
        unit_price=Decimal(total),
        total_cost=Decimal(total),
        env_id=env_id,
    )


def cost(identity: str, total: str, resource_id: str = "", env_id: str = "") -> BillingLine:
    """A line charged wholly to `identity` (product type `X_<identity>`)."""
    return line(f"X_{identity}", total, resource_id, env_id)


HANDLER = Handler(
    service_type="toy",
    allocators={f"X_{i}": Terminal(i, "usage", "toy_cost") for i in (*IDS, UNALLOCATED)},
    resolve=lambda ln, inputs, metrics: Resolution(),
)


def allocate(lines: list[BillingLine], **kw: Any):
    return allocate_date(
        DateInputs(
            date=DAY,
            lines=lines,
            resources={},
            identities={i: Identity(i, "service_account") for i in IDS if i.startswith("sa-")},
            metrics={},
            failed_metrics={},
        ),
        tenant_id="t1",
        ecosystem="test",
        handlers=[HANDLER],
        unknown_allocator=confluent_unknown_allocator,
        params={},
        retry_limit=3,
        record_failure=lambda ln: 1,
        **kw,
    )


def credit_rows(result, product_type: str = "PROMO_CREDIT") -> list[tuple[str, str, str, str, str]]:
    """(identity, amount, cost_type, method, detail) of one product type's rows, sorted by identity."""
    return sorted(
        (
            r["identity_id"],
            format_units(r["amount_units"]),
            r["cost_type"],
            r["allocation_method"],
            r["allocation_detail"],
        )
        for r in result.row_dicts()
        if r["product_type"] == product_type
    )


CLUSTER_DAY = [
    cost("sa-a", "6.00", "lkc-1", "env-1"),
    cost("sa-b", "3.00", "lkc-1", "env-1"),
    cost("sa-c", "1.00", "lkc-1", "env-1"),
    cost("sa-d", "90.00", "lkc-2", "env-1"),  # same environment, another cluster
    cost("sa-a", "100.00", "lkc-9", "env-2"),  # sa-a's cost elsewhere does not count
]


def test_cluster_credit_in_proportion_to_the_clusters_costs(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        result = allocate([*CLUSTER_DAY, line("PROMO_CREDIT", "-1.00", "lkc-1", "env-1")])
    # 6 : 3 : 1 of lkc-1's 10.00
    assert credit_rows(result) == [
        ("sa-a", "-0.6000", "shared", "credit", "credit_proportional_to_resource_cost"),
        ("sa-b", "-0.3000", "shared", "credit", "credit_proportional_to_resource_cost"),
        ("sa-c", "-0.1000", "shared", "credit", "credit_proportional_to_resource_cost"),
    ]
    # the credit rows keep the line's resource, environment and product
    keys = {(r["env_id"], r["resource_id"], r["product_category"]) for r in result.row_dicts()}
    assert ("env-1", "lkc-1", "test") in keys
    assert result.billed_units == result.allocated_units == 2_000_000 - 10_000
    assert caplog.records == []  # neither "No allocator" (D5) nor any other warning
    assert [ln.product_type for ln in result.succeeded_lines][-1] == "PROMO_CREDIT"


@pytest.mark.parametrize(
    ("costs", "credit", "expected"),
    [
        # −1 unit: all three have the same remainder; the tie goes to the first in sorted order (D4)
        (("1.00", "1.00", "1.00"), "-0.0001", ["-0.0001", "0.0000", "0.0000"]),
        # −10000 / 3 = −3333⅓ each: one unit left over, to sa-a
        (("1.00", "1.00", "1.00"), "-1.00", ["-0.3334", "-0.3333", "-0.3333"]),
        # 3 : 1 : 2 → −5000, −1666⅔, −3333⅓: the leftover unit to sa-b, the largest discarded fraction
        (("3.00", "1.00", "2.00"), "-1.00", ["-0.5000", "-0.1667", "-0.3333"]),
        # a credit larger than the costs it offsets is still split exactly
        (("0.01", "0.02", "0.04"), "-1.00", ["-0.1429", "-0.2857", "-0.5714"]),
    ],
)
def test_largest_remainder_split(costs: tuple[str, str, str], credit: str, expected: list[str]) -> None:
    day = [cost(i, c, "lkc-1") for i, c in zip(("sa-a", "sa-b", "sa-c"), costs, strict=True)]
    result = allocate([*day, line("PROMO_CREDIT", credit, "lkc-1")])
    assert [(r[0], r[1]) for r in credit_rows(result)] == list(
        zip(("sa-a", "sa-b", "sa-c"), expected, strict=True)
    )
    assert sum(to_units(Decimal(a)) for a in expected) == to_units(Decimal(credit))
    assert result.allocated_units == result.billed_units


def test_environment_credit_and_a_resource_without_cost_widens_to_its_environment() -> None:
    result = allocate(
        [
            *CLUSTER_DAY,
            line("PROMO_CREDIT", "-10.00", "", "env-1"),  # env-1: sa-a 6, sa-b 3, sa-c 1, sa-d 90
            line("DISCOUNT", "-2.00", "lkc-gone", "env-1"),  # nothing charged on lkc-gone
        ]
    )
    assert credit_rows(result) == [
        ("sa-a", "-0.6000", "shared", "credit", "credit_proportional_to_env_cost"),
        ("sa-b", "-0.3000", "shared", "credit", "credit_proportional_to_env_cost"),
        ("sa-c", "-0.1000", "shared", "credit", "credit_proportional_to_env_cost"),
        ("sa-d", "-9.0000", "shared", "credit", "credit_proportional_to_env_cost"),
    ]
    # both credits are measured against the costs before any credit: 6 : 3 : 1 : 90 again
    assert credit_rows(result, "DISCOUNT") == [
        ("sa-a", "-0.1200", "shared", "credit", "credit_proportional_to_env_cost"),
        ("sa-b", "-0.0600", "shared", "credit", "credit_proportional_to_env_cost"),
        ("sa-c", "-0.0200", "shared", "credit", "credit_proportional_to_env_cost"),
        ("sa-d", "-1.8000", "shared", "credit", "credit_proportional_to_env_cost"),
    ]
    assert result.allocated_units == result.billed_units


def test_org_credit_spreads_over_every_identity_but_not_unallocated() -> None:
    day = [
        *CLUSTER_DAY,  # sa-a 106, sa-b 3, sa-c 1, sa-d 90
        cost("lkc-1", "50.00", "lkc-1", "env-1"),  # charged to the resource itself (no identities found)
        cost(UNALLOCATED, "40.00", "lkc-1", "env-1"),  # UNALLOCATED carries cost but never takes a share
    ]
    result = allocate([*day, line("PROMO_CREDIT", "-25.00")])
    # −25.00 over 250.00 = 10 %: lkc-1 50 → −5, sa-a 106 → −10.6, sa-b 3 → −0.3, sa-c 1 → −0.1, sa-d 90 → −9
    assert credit_rows(result) == [
        ("lkc-1", "-5.0000", "shared", "credit", "credit_proportional_to_org_cost"),
        ("sa-a", "-10.6000", "shared", "credit", "credit_proportional_to_org_cost"),
        ("sa-b", "-0.3000", "shared", "credit", "credit_proportional_to_org_cost"),
        ("sa-c", "-0.1000", "shared", "credit", "credit_proportional_to_org_cost"),
        ("sa-d", "-9.0000", "shared", "credit", "credit_proportional_to_org_cost"),
    ]
    # an environment nobody was charged in widens to the organisation
    widened = allocate([*day, line("PROMO_CREDIT", "-25.00", "", "env-7")])
    assert credit_rows(widened) == credit_rows(result)
    assert result.allocated_units == result.billed_units == widened.allocated_units


def test_identities_with_no_positive_net_cost_take_no_share() -> None:
    def refund(ctx: AllocationContext) -> list[ChargebackRow]:
        return [ChargebackRow("sa-b", "usage", to_units(ctx.amount), "override", "refund")]

    result = allocate(
        [*CLUSTER_DAY, line("REFUND", "-3.00", "lkc-1"), line("PROMO_CREDIT", "-0.70", "lkc-1")],
        allocator_overrides={"REFUND": refund},
    )
    # an allocator override still decides its product type's negative lines
    assert credit_rows(result, "REFUND") == [("sa-b", "-3.0000", "usage", "override", "refund")]
    # sa-b's net on lkc-1 is 3.00 − 3.00 = 0: the credit goes 6 : 1 to sa-a and sa-c
    assert credit_rows(result) == [
        ("sa-a", "-0.6000", "shared", "credit", "credit_proportional_to_resource_cost"),
        ("sa-c", "-0.1000", "shared", "credit", "credit_proportional_to_resource_cost"),
    ]


def test_negative_line_of_a_claimed_product_type_is_a_credit_too() -> None:
    result = allocate([*CLUSTER_DAY, cost("sa-d", "-5.00", "lkc-1", "env-1")])
    # (sa-d's own 90.00 on lkc-2 stays as it was)
    assert [r for r in credit_rows(result, "X_sa-d") if r[3] == "credit"] == [
        ("sa-a", "-3.0000", "shared", "credit", "credit_proportional_to_resource_cost"),
        ("sa-b", "-1.5000", "shared", "credit", "credit_proportional_to_resource_cost"),
        ("sa-c", "-0.5000", "shared", "credit", "credit_proportional_to_resource_cost"),
    ]


def test_no_cost_to_offset_goes_to_unallocated_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="chargeback_dagster.allocation"):
        result = allocate(
            [cost(UNALLOCATED, "4.00", "lkc-1"), line("PROMO_CREDIT", "-20.00", "lkc-1", "env-1")]
        )
    assert credit_rows(result) == [
        (UNALLOCATED, "-20.0000", "shared", "credit", "credit_no_cost_to_offset"),
    ]
    assert [r.getMessage() for r in caplog.records] == [
        "Credit PROMO_CREDIT on lkc-1 of -20.0000 for 2026-03-10 has no cost to offset "
        "(no identity was charged that day); charged to UNALLOCATED"
    ]
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert result.allocated_units == result.billed_units == -160_000


def test_org_level_policy_keeps_one_unallocated_row(caplog: pytest.LogCaptureFixture) -> None:
    assert CREDIT_POLICIES == ("proportional", "org_level")
    with caplog.at_level(logging.WARNING):
        result = allocate(
            [*CLUSTER_DAY, line("PROMO_CREDIT", "-1.00", "lkc-1", "env-1"), line("DISCOUNT", "-0.5")],
            credit_policy="org_level",
        )
    assert credit_rows(result) == [(UNALLOCATED, "-1.0000", "shared", "credit", "credit_kept_at_org_level")]
    assert credit_rows(result, "DISCOUNT") == [
        (UNALLOCATED, "-0.5000", "shared", "credit", "credit_kept_at_org_level")
    ]
    assert caplog.records == []
    assert result.allocated_units == result.billed_units
    with pytest.raises(
        ValueError, match=r"^Unknown credit_policy 'team'; expected one of proportional, org_l"
    ):
        allocate(CLUSTER_DAY, credit_policy="team")


def _weights(rows: dict[tuple[str, ...], int], in_scope: Any) -> dict[str, int]:
    """Net cost per identity of the rows in scope; the positive ones, UNALLOCATED left out."""
    net: dict[str, int] = {}
    for k, u in rows.items():
        if in_scope(k):
            net[k[4]] = net.get(k[4], 0) + u
    return {i: u for i, u in net.items() if u > 0 and i != UNALLOCATED}


def test_property_credit_rows_sum_to_t_within_one_unit_of_the_proportional_share() -> None:
    rng = random.Random(1214)
    seen: dict[str | None, int] = {}
    for case in range(300):
        lines = [
            cost(
                rng.choice((*IDS, UNALLOCATED)),
                str(Decimal(rng.randint(0, 10**7)).scaleb(-4)),  # a negative one would be a credit
                *rng.choice(SCOPES),
            )
            for _ in range(rng.randint(0, 12))
        ]
        lines = list({ln.key: ln for ln in lines}.values())  # one line per (resource, product type, env)
        credits = [
            line(f"CREDIT_{k}", str(Decimal(-rng.randint(1, 10**6)).scaleb(-4)), *rng.choice(SCOPES))
            for k in range(rng.randint(1, 3))
        ]
        result = allocate(lines + credits)
        assert result.allocated_units == result.billed_units, case
        before = allocate(lines).rows  # every credit is measured against the costs before any credit

        for credit in credits:
            rows = {k[4]: (u, k[7]) for k, u in result.rows.items() if k[3] == credit.product_type}
            t = to_units(credit.total_cost)
            assert sum(u for u, _ in rows.values()) == t, case

            scopes = []  # narrowest first (docs/allocation.md §12)
            if credit.resource_id:
                scopes.append((RESOURCE, lambda k, r=credit.resource_id: k[1] == r))
            if credit.env_id:
                scopes.append((ENV, lambda k, e=credit.env_id: k[0] == e))
            scopes.append((ORG, lambda k: True))
            detail, w = next(
                ((d, w) for d, in_scope in scopes if (w := _weights(before, in_scope))), (None, {})
            )
            seen[detail] = seen.get(detail, 0) + 1
            if detail is None:
                assert rows == {UNALLOCATED: (t, "credit_no_cost_to_offset")}, case
                continue
            assert set(rows) == set(w) and {d for _, d in rows.values()} == {detail}, case
            for i, (u, _) in rows.items():
                assert abs(u - Fraction(t * w[i], sum(w.values()))) < 1, case
    assert min(seen.get(d, 0) for d in (RESOURCE, ENV, ORG, None)) >= 20, seen  # every outcome tested


RESOURCE, ENV, ORG = (f"credit_proportional_to_{s}_cost" for s in ("resource", "env", "org"))
SCOPES = [("", ""), ("", "env-1"), ("lkc-1", "env-1"), ("lkc-2", ""), ("lkc-3", "env-9")]


# --- the tenant's credit_policy, from YAML to the CSV -----------------------------------------------------
@pytest.mark.parametrize(
    ("policy", "expected_credit_rows"),
    [
        (  # default: TOY_CREDIT −1.00 in proportion to the day's costs on toy-1 (3.3334 / 3.3333 / 3.3333)
            None,
            [
                ("team-a", "credit_proportional_to_resource_cost", "-0.3334"),
                ("team-b", "credit_proportional_to_resource_cost", "-0.3333"),
                ("team-c", "credit_proportional_to_resource_cost", "-0.3333"),
            ],
        ),
        ("org_level", [("UNALLOCATED", "credit_kept_at_org_level", "-1.0000")]),
    ],
)
def test_credit_policy_from_config_reaches_the_csv(tmp_path, monkeypatch, policy, expected_credit_rows):
    import csv
    from datetime import date

    import yaml

    from chargeback_dagster.config import load_config
    from chargeback_dagster.defs.build import build_definitions
    from chargeback_dagster.devtools.local_run import materialize_range
    from chargeback_dagster.ecosystems.registry import ECOSYSTEMS
    from chargeback_dagster_tests.toy_ecosystem import TOY_PLUGIN

    monkeypatch.setitem(ECOSYSTEMS, "toy", TOY_PLUGIN)
    tenant = {
        "ecosystem": "toy",
        "tenant_id": "toy-prod",
        "partitions_start_date": "2026-01-01",
        "storage": {"connection_string": "sqlite:///toys.db"},
        "plugin_settings": {
            "cluster_id": "toy-1",
            "compute_rate": "10.00",
            "teams": ["team-a", "team-b", "team-c"],
            "credit": "-1.00",
            "emitters": [{"type": "csv", "params": {"output_dir": "out"}}],
        },
    }
    if policy is not None:
        tenant["credit_policy"] = policy
    config_file = tmp_path / "chargeback.yaml"
    config_file.write_text(yaml.safe_dump({"tenants": {"toys": tenant}}))
    defs = build_definitions(load_config(config_file))
    assert materialize_range(defs, "toys", date(2026, 3, 1), date(2026, 3, 1)).success

    with open(tmp_path / "out" / "toy-prod_2026-03-01.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    credit_rows = [
        (r["identity_id"], r["allocation_detail"], r["amount"])
        for r in rows
        if r["product_type"] == "TOY_CREDIT"
    ]
    assert credit_rows == expected_credit_rows
    # 10.00 compute + 1.50 support − 1.00 credit
    assert sum(int(r["amount"].replace(".", "")) for r in rows) == 105000
