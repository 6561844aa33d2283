"""Per-date money metadata of the `chargeback` asset (issue 14): totals, shares, top teams and identities.

Built from grouped reads of the tenant store (never per CSV row), one entry per partition date."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

import dagster as dg

from chargeback_dagster.domain import UNALLOCATED, BlockKey
from chargeback_dagster.money import format_units
from chargeback_dagster.outputs.csv import COLUMNS as CSV_COLUMNS
from chargeback_dagster.store.tenant_store import TenantStore
from chargeback_dagster.teams import row_team

# allocation_detail values of rows split evenly because the usage that should have driven them was missing
FALLBACK_DETAILS = frozenset({"no_metrics_located"})
NO_TEAM = "(no team)"  # the team of rows whose resource, environment and identity have none
TOP_N = 10
Group = tuple[str, str, str, str]  # (env_id, resource_id, identity_id, allocation_detail)
TOP_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("name", "string"),
        dg.TableColumn("amount", "string", description="exact, currency units"),
        dg.TableColumn("share", "float", description="of the allocated total"),
    ]
)


def _share(part: int, whole: int) -> float:
    return round(part / whole, 6) if whole else 0.0


def _top(totals: dict[str, int], whole: int) -> dg.MetadataValue:
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_N]
    return dg.MetadataValue.table(
        [
            dg.TableRecord({"name": n, "amount": format_units(u), "share": _share(u, whole)})
            for n, u in ranked
        ],
        schema=TOP_SCHEMA,
    )


def groups_of(blocks: Mapping[BlockKey, Mapping[str, int]]) -> tuple[dict[Group, int], int]:
    """A date's allocation summed by (env_id, resource_id, identity_id, allocation_detail), and its CSV row
    count (rows differing only in env_id or composition_part print as one, docs/outputs.md §1)."""
    groups: dict[Group, int] = defaultdict(int)
    csv_keys: set[tuple] = set()
    for key, per_identity in blocks.items():
        key = tuple("" if x is None else x for x in key)  # as stored (the columns are NOT NULL)
        env, resource, detail, csv_block = key[0], key[1], key[6], key[1:7]
        for identity, units in per_identity.items():
            groups[(env, resource, identity, detail)] += units
            csv_keys.add((csv_block, identity))
    return groups, len(csv_keys)


@dataclass
class MoneySummary:
    """Allocated units of some rows by team (teams.row_team) and identity, and how much of them is on
    UNALLOCATED or an even split for missing usage (FALLBACK_DETAILS). The monthly report sums the same."""

    by_team: dict[str, int] = field(default_factory=dict)
    by_identity: dict[str, int] = field(default_factory=dict)
    unallocated: int = 0
    fallback: int = 0

    @property
    def allocated(self) -> int:
        return sum(self.by_identity.values())


def summarise(
    groups: Mapping[Group, int],
    resource_teams: Mapping[str, str | None],
    identity_teams: Mapping[str, str | None],
    into: MoneySummary | None = None,
) -> MoneySummary:
    """Add `groups` to `into` (a new summary when None) and return it."""
    out = MoneySummary() if into is None else into
    by_team, by_identity = out.by_team, out.by_identity
    for (env, resource, identity, detail), units in groups.items():
        team = row_team(resource, env, identity, resource_teams, identity_teams) or NO_TEAM
        by_team[team] = by_team.get(team, 0) + units
        by_identity[identity] = by_identity.get(identity, 0) + units
        out.unallocated += units if identity == UNALLOCATED else 0
        out.fallback += units if detail in FALLBACK_DETAILS else 0
    return out


class MoneyMetadata:
    """Builds each date's metadata as soon as its allocation is known (`add`, from the calculation's
    in-memory blocks) and keeps only that; `finish` adds the dates the run did not calculate, from grouped
    reads of the store (a failed date keeps its earlier rows)."""

    def __init__(self, store: TenantStore, dates: list[date], csv_paths: dict[date, list[str]]) -> None:
        self.store, self.dates, self.csv_paths = store, dates, csv_paths
        self.by_date: dict[date, dict[str, object]] = {}
        if dates:
            start, end = dates[0], dates[-1] + timedelta(days=1)
            self.billed = store.billing.billed_units(start, end)
            self.credits = store.billing.credit_units(start, end)
        self.identity_teams = {i.identity_id: i.team for i in store.inventory.identities()}
        self.resource_teams = {r.resource_id: r.team for r in store.inventory.resources()}
        self.schema = dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in CSV_COLUMNS])

    def add(self, d: date, blocks: Mapping[BlockKey, Mapping[str, int]]) -> None:
        groups, row_count = groups_of(blocks)
        self.by_date[d] = self._metadata(d, groups, row_count)

    def finish(self) -> dict[date, dict[str, object]]:
        others = [d for d in self.dates if d not in self.by_date]
        if others:
            first, last = others[0], others[-1] + timedelta(days=1)
            stored = self.store.chargeback.money_groups(first, last)
            counts = self.store.chargeback.csv_row_counts(first, last)
            for d in others:
                self.by_date[d] = self._metadata(d, stored.get(d, {}), counts.get(d, 0))
        return {d: self.by_date[d] for d in self.dates}

    def _metadata(self, d: date, groups: Mapping[Group, int], row_count: int) -> dict[str, object]:
        summary = summarise(groups, self.resource_teams, self.identity_teams)
        allocated = summary.allocated
        billed = self.billed.get(d, 0)
        return {
            "billed_total": dg.MetadataValue.float(float(Decimal(format_units(billed)))),
            "billed_total_exact": format_units(billed),
            "allocated_total": dg.MetadataValue.float(float(Decimal(format_units(allocated)))),
            "allocated_total_exact": format_units(allocated),
            "unallocated_share": dg.MetadataValue.float(_share(summary.unallocated, allocated)),
            "fallback_share": dg.MetadataValue.float(_share(summary.fallback, allocated)),
            "credits_total_exact": format_units(self.credits.get(d, 0)),
            "dagster/row_count": row_count,
            "top_teams": _top(summary.by_team, allocated),
            "top_identities": _top(summary.by_identity, allocated),
            "dagster/column_schema": self.schema,
            **{f"csv_path_{i}": dg.MetadataValue.path(p) for i, p in enumerate(self.csv_paths.get(d, []))},
        }
