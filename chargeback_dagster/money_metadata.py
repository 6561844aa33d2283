"""Per-date money metadata of the `chargeback` asset (issue 14): totals, shares, top teams and identities.

Built from grouped reads of the tenant store (never per CSV row), one entry per partition date."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import dagster as dg

from chargeback_dagster.domain import UNALLOCATED
from chargeback_dagster.money import format_units
from chargeback_dagster.store.tenant_store import TenantStore
from chargeback_dagster.teams import row_team

# allocation_detail values of rows split evenly because the usage that should have driven them was missing
FALLBACK_DETAILS = frozenset({"no_metrics_located"})
TOP_N = 10
CSV_COLUMNS = (
    "ecosystem",
    "tenant_id",
    "timestamp",
    "resource_id",
    "product_category",
    "product_type",
    "identity_id",
    "cost_type",
    "amount",
    "allocation_method",
    "allocation_detail",
)
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


def per_date_metadata(
    store: TenantStore, dates: list[date], csv_paths: dict[date, list[str]]
) -> dict[date, dict[str, object]]:
    """Metadata of each of `dates` (ascending) from grouped reads."""
    if not dates:
        return {}
    start, end = dates[0], dates[-1] + timedelta(days=1)
    billed = store.billing.billed_units(start, end)
    credits = store.billing.credit_units(start, end)
    groups = store.chargeback.money_groups(start, end)
    row_counts = store.chargeback.csv_row_counts(start, end)
    identity_teams = {i.identity_id: i.team for i in store.inventory.identities()}
    resource_teams = {r.resource_id: r.team for r in store.inventory.resources()}
    schema = dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in CSV_COLUMNS])
    out: dict[date, dict[str, object]] = {}
    for d in dates:
        by_team: dict[str, int] = {}
        by_identity: dict[str, int] = {}
        unallocated = fallback = 0
        for env, resource, identity, detail, units in groups.get(d, []):
            team = row_team(resource, env, identity, resource_teams, identity_teams) or "(no team)"
            by_team[team] = by_team.get(team, 0) + units
            by_identity[identity] = by_identity.get(identity, 0) + units
            unallocated += units if identity == UNALLOCATED else 0
            fallback += units if detail in FALLBACK_DETAILS else 0
        allocated = sum(by_identity.values())
        out[d] = {
            "billed_total": dg.MetadataValue.float(float(Decimal(format_units(billed.get(d, 0))))),
            "billed_total_exact": format_units(billed.get(d, 0)),
            "allocated_total": dg.MetadataValue.float(float(Decimal(format_units(allocated)))),
            "allocated_total_exact": format_units(allocated),
            "unallocated_share": dg.MetadataValue.float(_share(unallocated, allocated)),
            "fallback_share": dg.MetadataValue.float(_share(fallback, allocated)),
            "credits_total_exact": format_units(credits.get(d, 0)),
            "dagster/row_count": row_counts.get(d, 0),
            "top_teams": _top(by_team, allocated),
            "top_identities": _top(by_identity, allocated),
            "dagster/column_schema": schema,
            **{f"csv_path_{i}": dg.MetadataValue.path(p) for i, p in enumerate(csv_paths.get(d, []))},
        }
    return out
