"""Confluent Cloud billing ingestion (docs/confluent-cloud.md §4): windows, row mapping, exact Decimals, tier
collapsing, malformed rows, out-of-window rows, per-date replacement with revisions."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import yaml

from chargeback_dagster import pipeline
from chargeback_dagster.config import load_config
from chargeback_dagster.devtools.ccloud_simulator import (
    DEFAULT_KEY,
    DEFAULT_SECRET,
    CCloudSimulator,
    OrgSpec,
    SimulatedOrg,
)
from chargeback_dagster.ecosystems.base import GatherContext
from chargeback_dagster.ecosystems.confluent_cloud.billing import (
    MALFORMED,
    billing_windows,
    collapse_tiers,
    fetch_billing_lines,
    map_cost_row,
)
from chargeback_dagster.ecosystems.confluent_cloud.client import ConfluentClient
from chargeback_dagster.ecosystems.registry import ecosystem_for
from chargeback_dagster.store import TenantStore

LOG = logging.getLogger("test.confluent.billing")
D = date(2026, 1, 5)


def row(**kw) -> dict:
    base = {
        "id": "cost-1",
        "start_date": "2026-01-05",
        "end_date": "2026-01-06",
        "product": "KAFKA",
        "line_type": "KAFKA_NUM_CKU",
        "quantity": Decimal("24"),
        "unit": "CKU-Hour",
        "price": Decimal("2.25"),
        "original_amount": Decimal("54.00"),
        "discount_amount": Decimal("4.00"),
        "amount": Decimal("50.00"),
        "resource": {"id": "lkc-1", "display_name": "prod", "environment": {"id": "env-1"}},
    }
    base.update(kw)
    return {k: v for k, v in base.items() if v is not ...}


# ------------------------------------------------------------ windows
def test_windows_spec_example():
    dates = [date(2026, 1, 1) + timedelta(days=i) for i in range(45)]  # 01-01 .. 02-14
    assert billing_windows(dates, 15) == [
        (date(2026, 1, 1), date(2026, 1, 16)),
        (date(2026, 1, 16), date(2026, 1, 31)),
        (date(2026, 1, 31), date(2026, 2, 15)),
    ]
    assert billing_windows(dates, 30) == [
        (date(2026, 1, 1), date(2026, 1, 31)),
        (date(2026, 1, 31), date(2026, 2, 15)),
    ]
    assert billing_windows([D], 15) == [(D, D + timedelta(days=1))]
    assert billing_windows([], 15) == []


# ------------------------------------------------------------ mapping
def test_row_mapping_fields():
    ln = map_cost_row(row(network_access_type="INTERNET", description="Kafka CKUs"), D, "acme", LOG)
    assert (ln.date, ln.env_id, ln.resource_id, ln.product_category, ln.product_type) == (
        D,
        "env-1",
        "lkc-1",
        "KAFKA",
        "KAFKA_NUM_CKU",
    )
    assert (ln.quantity, ln.unit_price, ln.total_cost) == (Decimal("24"), Decimal("2.25"), Decimal("50.00"))
    assert (ln.currency, ln.granularity, ln.ecosystem, ln.tenant_id) == (
        "USD",
        "daily",
        "confluent_cloud",
        "acme",
    )
    assert ln.timestamp == datetime(2026, 1, 5, tzinfo=UTC)
    assert ln.metadata == {
        "resource_name": "prod",
        "line_id": "cost-1",
        "unit": "CKU-Hour",
        "network_access_type": "INTERNET",
        "description": "Kafka CKUs",
        "original_amount": "54.00",
        "discount_amount": "4.00",
    }


def test_env_id_sources():
    top = row(resource={"id": "lkc-1"}, environment={"id": "env-old"})
    assert map_cost_row(top, D, "acme", LOG).env_id == "env-old"
    assert map_cost_row(row(resource={"id": "lkc-1"}), D, "acme", LOG).env_id == ""
    none = map_cost_row(row(resource=...), D, "acme", LOG)
    assert (none.resource_id, none.env_id) == ("", "")


def test_amount_derived_and_missing(caplog):
    derived = map_cost_row(row(amount=...), D, "acme", LOG)
    assert derived.total_cost == Decimal("50.00") and derived.metadata["amount_derived"] is True
    no_discount = map_cost_row(row(amount=..., discount_amount=...), D, "acme", LOG)
    assert no_discount.total_cost == Decimal("54.00")
    with caplog.at_level(logging.WARNING):
        missing = map_cost_row(row(amount=..., original_amount=..., quantity=..., price=...), D, "acme", LOG)
    assert (missing.total_cost, missing.quantity, missing.unit_price) == (0, 0, 0)
    assert missing.metadata["amount_missing"] is True
    assert "neither amount nor original_amount" in caplog.text


def test_numbers_are_exact_decimals_from_the_json_text():
    body = (
        '{"data": [{"id": "c1", "start_date": "2026-01-05", "product": "KAFKA", "line_type": "KAFKA_STORAGE",'
        ' "quantity": 1234.567890123456789, "price": 0.0001389, "amount": 0.171481234567890123,'
        ' "resource": {"id": "lkc-1", "environment": {"id": "env-1"}}},'
        ' {"id": "c2", "start_date": "2026-01-05", "product": "KAFKA", "line_type": "KAFKA_BASE",'
        ' "quantity": "24", "price": "0.75", "amount": "18.000000", "resource": {"id": "lkc-1"}}],'
        ' "metadata": {}}'
    )
    client = ConfluentClient(
        "http://ccloud.test",
        "k",
        "s",
        min_interval=0,
        parse_float=Decimal,
        transport=httpx.MockTransport(lambda request: httpx.Response(200, text=body)),
    )
    lines = {ln.product_type: ln for ln in fetch_billing_lines(client, [D], 15, "acme", LOG)}
    assert lines["KAFKA_STORAGE"].total_cost == Decimal("0.171481234567890123")
    assert lines["KAFKA_STORAGE"].quantity == Decimal("1234.567890123456789")
    assert lines["KAFKA_BASE"].total_cost == Decimal("18.000000")  # string numbers accepted too


# ------------------------------------------------------------ tiers
def test_tier_collapsing():
    a = row(
        id="cost-b",
        quantity=Decimal("10"),
        price=Decimal("0.05"),
        amount=Decimal("0.50"),
        network_access_type="INTERNET",
        line_type="KAFKA_NETWORK_READ",
    )
    b = row(
        id="cost-a",
        quantity=Decimal("5.5"),
        price=Decimal("0.03"),
        amount=Decimal("0.165"),
        network_access_type="PRIVATE_LINK",
        line_type="KAFKA_NETWORK_READ",
    )
    single = row(id="cost-z", line_type="KAFKA_NETWORK_WRITE", amount=Decimal("1.25"))
    other_cluster = row(
        id="cost-c", line_type="KAFKA_NETWORK_READ", resource={"id": "lkc-2", "environment": {"id": "env-1"}}
    )
    lines = collapse_tiers(map_cost_row(r, D, "acme", LOG) for r in (a, b, single, other_cluster))
    assert len(lines) == 3
    read = next(ln for ln in lines if ln.product_type == "KAFKA_NETWORK_READ" and ln.resource_id == "lkc-1")
    assert (read.quantity, read.total_cost, read.unit_price) == (
        Decimal("15.5"),
        Decimal("0.665"),
        Decimal(0),
    )
    assert read.metadata["tiers"] == [
        {
            "line_id": "cost-a",
            "price": "0.03",
            "quantity": "5.5",
            "amount": "0.165",
            "network_access_type": "PRIVATE_LINK",
        },
        {
            "line_id": "cost-b",
            "price": "0.05",
            "quantity": "10",
            "amount": "0.50",
            "network_access_type": "INTERNET",
        },
    ]
    write = next(ln for ln in lines if ln.product_type == "KAFKA_NETWORK_WRITE")
    assert write == map_cost_row(single, D, "acme", LOG) and "tiers" not in write.metadata


# ------------------------------------------------------------ malformed
@pytest.mark.parametrize(
    ("item", "date_", "category", "amount", "error"),
    [
        ("not an object", D - timedelta(days=2), "MALFORMED", Decimal(0), "row is not an object"),
        (row(resource="lkc-1"), D, "KAFKA", Decimal("50.00"), "resource is not an object"),
        (row(environment="env-1"), D, "KAFKA", Decimal("50.00"), "environment is not an object"),
        (row(start_date=...), D - timedelta(days=2), "KAFKA", Decimal("50.00"), "start_date missing"),
        (row(start_date="yesterday"), D - timedelta(days=2), "KAFKA", Decimal("50.00"), "start_date missing"),
        (row(quantity="lots"), D, "KAFKA", Decimal("50.00"), "quantity is not a number"),
        (row(amount="n/a"), D, "KAFKA", Decimal("50.00"), "amount is not a number"),
        (row(amount="n/a", original_amount="x", product=...), D, "MALFORMED", Decimal(0), "amount is not"),
        # a valid amount beside an unparseable original/discount amount: still malformed, never an error
        (row(original_amount="x"), D, "KAFKA", Decimal("50.00"), "original_amount is not a number"),
        (row(discount_amount="-"), D, "KAFKA", Decimal("50.00"), "discount_amount is not a number"),
    ],
)
def test_malformed_rows_are_kept(item, date_, category, amount, error):
    ln = map_cost_row(item, D - timedelta(days=2), "acme", LOG)
    assert (ln.product_type, ln.product_category, ln.resource_id, ln.date) == (MALFORMED, category, "", date_)
    assert ln.total_cost == amount
    assert ln.metadata["malformed"] is True and error in ln.metadata["parse_error"]
    assert ln.metadata["raw_line_type"] == (None if isinstance(item, str) else "KAFKA_NUM_CKU")


# ------------------------------------------------------------ against the simulator
def make_tenant(tmp_path: Path, sim_url: str, days_per_query: int = 15):
    cfg = {
        "tenants": {
            "cc": {
                "ecosystem": "confluent_cloud",
                "tenant_id": "acme",
                "storage": {"connection_string": "sqlite:///data/cc.db"},
                "plugin_settings": {
                    "ccloud_api": {"key": DEFAULT_KEY, "secret": DEFAULT_SECRET, "base_url": sim_url},
                    "billing_api": {"days_per_query": days_per_query},
                },
            }
        }
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    return load_config(tmp_path / "c.yaml").tenants["cc"]


def ctx_for(tenant) -> GatherContext:
    return GatherContext(tenant, LOG, datetime.now(UTC).replace(microsecond=0), lambda: None)


def test_windows_fetched_in_order_with_pagination(tmp_path):
    org = SimulatedOrg(OrgSpec(start_date=date(2026, 1, 1), days=45, environments=1, clusters_per_env=2))
    dates = org.days
    with CCloudSimulator(org) as sim:
        tenant = make_tenant(tmp_path, sim.url)
        lines = ecosystem_for(tenant).gather_billing(dates, ctx_for(tenant)).lines
        queries = [q for *_, q, _ in sim.requests_to("/billing/v1/costs")]
    windows = [tuple(re.findall(r"(?:start|end)_date=([\d-]+)", q)) for q in queries]
    assert windows == [
        ("2026-01-01", "2026-01-16"),
        ("2026-01-16", "2026-01-31"),
        ("2026-01-31", "2026-02-15"),
    ]
    assert all("page_size=2000" in q for q in queries)
    for d in dates:
        assert sum(ln.total_cost for ln in lines if ln.date == d) == org.billed_total(d)


def test_rows_outside_the_window_are_ignored(caplog):
    items = [row(id="in"), row(id="late", start_date="2026-01-09")]
    body = json.dumps(
        {"data": [{k: str(v) if isinstance(v, Decimal) else v for k, v in i.items()} for i in items]}
    )
    client = ConfluentClient(
        "http://ccloud.test",
        "k",
        "s",
        min_interval=0,
        parse_float=Decimal,
        transport=httpx.MockTransport(lambda request: httpx.Response(200, text=body)),
    )
    with caplog.at_level(logging.WARNING):
        lines = fetch_billing_lines(client, [D], 15, "acme", LOG)
    assert [ln.metadata["line_id"] for ln in lines] == ["in"]
    assert (
        "Ignoring billing row late dated 2026-01-09 outside its request window [2026-01-05, 2026-01-06)"
        in caplog.text
    )


def test_per_date_replacement_is_idempotent_and_logs_revisions(tmp_path, caplog):
    org = SimulatedOrg(OrgSpec(start_date=date(2026, 1, 1), days=3, environments=1, clusters_per_env=2))
    dates = org.days
    with CCloudSimulator(org) as sim:
        tenant = make_tenant(tmp_path, sim.url)
        eco = ecosystem_for(tenant)
        store = TenantStore.open(
            tenant.database_url, tenant_name="cc", ecosystem=tenant.ecosystem, tenant_id="acme"
        )
        pipeline.gather_billing(store, eco, dates, ctx_for(tenant))
        first = {d: [(ln.key, ln.total_cost) for ln in store.billing.lines(d)] for d in dates}
        pipeline.gather_billing(store, eco, dates, ctx_for(tenant))
        assert {d: [(ln.key, ln.total_cost) for ln in store.billing.lines(d)] for d in dates} == first

        # the provider restates day 2: one amount changes, one line vanishes; day 3 returns nothing
        day2 = org._day_lines(dates[1])
        changed = next(i for i in day2 if i["line_type"] == "KAFKA_BASE")
        changed["amount"] = Decimal("99.5")
        vanished = day2.pop(next(n for n, i in enumerate(day2) if i["line_type"] == "SUPPORT"))
        org._cost_cache[dates[2]] = []
        with caplog.at_level(logging.INFO):
            pipeline.gather_billing(store, eco, dates, ctx_for(tenant))
    assert f"Billing revision {dates[1]} {changed['resource']['id']} KAFKA_BASE: " in caplog.text
    assert "-> 99.5" in caplog.text
    assert f"Billing line removed by provider: {dates[1]}  SUPPORT" in caplog.text
    assert (
        f"Provider returned no billing lines for {dates[2]}; keeping {len(first[dates[2]])} stored lines"
        in caplog.text
    )
    assert len(store.billing.lines(dates[1])) == len(first[dates[1]]) - 1
    assert vanished["line_type"] not in {ln.product_type for ln in store.billing.lines(dates[1])}
    assert [(ln.key, ln.total_cost) for ln in store.billing.lines(dates[2])] == first[dates[2]]
    assert [(ln.key, ln.total_cost) for ln in store.billing.lines(dates[0])] == first[dates[0]]
    store.dispose()


# ------------------------------------------------------------ fast path
class _Obj(dict):
    pass


def _full(line) -> tuple:
    """Every field with its type and str(), plus the metadata (BillingLine equality ignores metadata)."""
    fields = [(f, type(getattr(line, f)), str(getattr(line, f))) for f in line.__slots__ if f != "metadata"]
    return (*fields, repr(line.metadata), [type(v) for v in line.metadata.values()])


@pytest.mark.parametrize(
    "item",
    [
        row(),
        row(network_access_type="INTERNET", description="Kafka", unit=...),
        row(quantity=Decimal("0.00"), price=Decimal("0E-7")),  # zeros become Decimal(0), as `or ZERO` does
        row(quantity=24, price=3, amount=72, original_amount=80, discount_amount=8),  # JSON integers
        row(quantity=..., price=..., original_amount=..., discount_amount=...),
        row(amount=Decimal("-0.00"), id=17),
        row(amount=...),  # derived amount: general path
        row(amount=Decimal("NaN")),
        row(quantity=True),
        row(price=" 2.50 "),
        row(start_date="2026-01-05T00:00:00Z"),
        row(start_date="not a date"),
        row(resource=None, environment={"id": "env-old"}),
        row(resource={"id": "lkc-1", "environment": {"id": ""}}, environment={"id": "env-old"}),
        row(resource={"id": 5, "display_name": 7, "environment": "env-1"}, product=None, line_type=3),
        row(resource=_Obj(id="lkc-1", environment=_Obj(id="env-1"))),
        row(environment="env-1"),
        _Obj(row()),
    ],
)
def test_fast_mapping_matches_the_general_mapping(item):
    from chargeback_dagster.ecosystems.confluent_cloud.billing import _map_general

    assert _full(map_cost_row(item, D, "acme", LOG)) == _full(_map_general(item, D, "acme", LOG))


def test_collapse_tiers_groups_a_repeated_line_object():
    ln = map_cost_row(row(), D, "acme", LOG)
    (merged,) = collapse_tiers([ln, ln])
    assert merged.total_cost == Decimal("100.00")
    assert [t["line_id"] for t in merged.metadata["tiers"]] == ["cost-1", "cost-1"]
