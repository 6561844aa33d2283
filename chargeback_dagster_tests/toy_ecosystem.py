"""A small ecosystem that lives in the test suite only: adding an ecosystem is a package with its settings
model and `Ecosystem` class plus one registry entry (`TOY_PLUGIN`, registered by the tests).

Per day it bills `compute_rate × day of month` for TOY_COMPUTE, split evenly over the configured teams,
and a flat TOY_SUPPORT line that no handler claims (so it goes to the unknown allocator); optionally a
TOY_CREDIT line and a TOY_UNMETERED line split evenly as the fallback for missing usage
(`no_metrics_located`).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from decimal import Decimal

from chargeback_dagster.allocation.models import UNKNOWN_TO_UNALLOCATED, Chain, EvenSplit, to_unallocated
from chargeback_dagster.allocation.types import Allocator, DateInputs, Handler, Resolution
from chargeback_dagster.config import PluginSettingsBase
from chargeback_dagster.domain import BillingLine, Identity, MetricRow, Resource
from chargeback_dagster.ecosystems.base import BillingGather, Ecosystem, GatherContext, InventoryGather
from chargeback_dagster.ecosystems.registry import EcosystemPlugin

SERVICE_TYPE = "toy"
SUPPORT_COST = Decimal("1.50")


class ToySettings(PluginSettingsBase):
    cluster_id: str
    compute_rate: Decimal
    teams: list[str]
    credit: Decimal | None = None  # a daily TOY_CREDIT line of this (negative) amount
    unmetered: Decimal | None = None  # a daily TOY_UNMETERED line of this amount, split as a fallback


class ToyEcosystem(Ecosystem):
    name = "toy"
    settings: ToySettings

    def gather_billing(self, dates: list[date], ctx: GatherContext) -> BillingGather:
        return BillingGather(lines=[line for d in dates for line in self._lines(d)])

    def _lines(self, d: date) -> list[BillingLine]:
        priced = (
            ("TOY_COMPUTE", Decimal(d.day), self.settings.compute_rate),
            ("TOY_SUPPORT", 1, SUPPORT_COST),
        ) + tuple(
            (product_type, 1, amount)
            for product_type, amount in (
                ("TOY_CREDIT", self.settings.credit),
                ("TOY_UNMETERED", self.settings.unmetered),
            )
            if amount is not None
        )
        return [
            BillingLine(
                ecosystem=self.name,
                tenant_id=self.tenant.tenant_id,
                date=d,
                resource_id=self.settings.cluster_id,
                product_category="toy",
                product_type=product_type,
                quantity=Decimal(quantity),
                unit_price=price,
                total_cost=quantity * price,
            )
            for product_type, quantity, price in priced
        ]

    def gather_inventory(self, ctx: GatherContext) -> InventoryGather:
        return InventoryGather(
            resources=[Resource(resource_id=self.settings.cluster_id, resource_type="cluster")],
            identities=[Identity(identity_id=team, identity_type="team") for team in self.settings.teams],
            owned_types={SERVICE_TYPE: frozenset({"cluster"})},
        )

    def handlers(self) -> list[Handler]:
        def resolve(
            line: BillingLine, inputs: DateInputs, metrics: Mapping[str, list[MetricRow]]
        ) -> Resolution:
            return Resolution()  # the even split below uses the tenant's identities of the day

        even = Chain(EvenSplit("tenant_period", "shared", "even_split_allocation"), to_unallocated())
        fallback = Chain(EvenSplit("tenant_period", "shared", "no_metrics_located"), to_unallocated())
        return [
            Handler(
                service_type=SERVICE_TYPE,
                allocators={"TOY_COMPUTE": even, "TOY_UNMETERED": fallback},
                resolve=resolve,
                billing_resource_types=frozenset({"cluster"}),
            )
        ]

    def unknown_allocator(self) -> Allocator:
        return UNKNOWN_TO_UNALLOCATED


TOY_PLUGIN = EcosystemPlugin(f"{__name__}:ToyEcosystem", f"{__name__}:ToySettings", (SERVICE_TYPE,))
