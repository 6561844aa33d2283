"""The monthly report of a tenant (docs/outputs.md §6): a month's totals per team and per identity, its
billed, UNALLOCATED, fallback and credit amounts, each beside the previous month's, and how many of the
month's days were calculated.

Read from the stored facts (never from CSV files) with the same definitions as each date's money metadata
(money_metadata.summarise: row team, UNALLOCATED, fallback; credits are the billed negative lines), in
integer units of 0.0001."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING

from chargeback_dagster.money import format_units
from chargeback_dagster.money_metadata import MoneySummary, summarise
from chargeback_dagster.outputs.csv import first_of_month, first_of_next_month
from chargeback_dagster.store.tenant_store import TenantStore

if TYPE_CHECKING:
    from chargeback_dagster.config import TenantConfig

# The lines of a report, in the order the CSV and the table print them; teams and identities follow.
TOTAL_LINES = ("billed", "allocated", "unallocated", "fallback", "credits")


@dataclass(frozen=True)
class Line:
    line: str  # one of TOTAL_LINES, `team` or `identity`
    key: str  # the team or identity_id ("" on total lines)
    name: str  # an identity's display name ("" otherwise)
    team: str  # an identity's own team ("" otherwise)
    amount: int  # units of 0.0001
    previous: int | None  # the previous month's amount; None when that month has no calculated day

    @property
    def change(self) -> int | None:
        return None if self.previous is None else self.amount - self.previous

    @property
    def change_percent(self) -> str:
        """The change in % of the previous amount (its absolute value), 2 decimals rounded half away from
        zero as all amounts are; "" when there is no previous amount or it is zero."""
        if not self.previous:
            return ""
        percent = Decimal(self.amount - self.previous) * 100 / abs(Decimal(self.previous))
        return str(percent.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


@dataclass(frozen=True)
class MonthReport:
    tenant_id: str
    month: date  # first day
    days_in_month: int  # the month's days that are partitions of the tenant (none before its start date)
    calculated: tuple[date, ...]  # the month's dates with a chargeback calculation, ascending
    previous_days: int  # calculated days of the previous month (0: no previous figures)
    lines: tuple[Line, ...]

    @property
    def label(self) -> str:
        return self.month.strftime("%Y-%m")

    @property
    def days_covered(self) -> int:
        return len(self.calculated)

    @property
    def complete(self) -> bool:
        return self.days_covered == self.days_in_month

    def missing_dates(self, first_day: date) -> list[date]:
        """The month's partition dates (from `first_day`, the tenant's start) not calculated yet."""
        done = set(self.calculated)
        end = first_of_next_month(self.month)
        d = max(self.month, first_day)
        out = []
        while d < end:
            if d not in done:
                out.append(d)
            d += timedelta(days=1)
        return out

    def line(self, name: str) -> Line:
        return next(x for x in self.lines if x.line == name)


class _Month:
    """One month's sums from the store's grouped reads."""

    def __init__(self, summary: MoneySummary, billed: int, credits: int, days: int) -> None:
        self.summary, self.billed, self.credits, self.days = summary, billed, credits, days

    def totals(self) -> dict[str, int]:
        s = self.summary
        return {
            "billed": self.billed,
            "allocated": s.allocated,
            "unallocated": s.unallocated,
            "fallback": s.fallback,
            "credits": self.credits,
        }


def build_report(store: TenantStore, tenant: TenantConfig, month: date) -> MonthReport:
    """The report of the month of `month`, against the month before it: grouped reads of the facts, the
    billing and the calculation state over both months, and the inventory's teams and display names."""
    month = first_of_month(month)
    previous = first_of_month(month - timedelta(days=1))
    end = first_of_next_month(month)
    groups = store.chargeback.money_groups(previous, end)
    billed = store.billing.billed_units(previous, end)
    credits = store.billing.credit_units(previous, end)
    calculated = store.state.calculated_dates(previous, end)
    identities = {i.identity_id: i for i in store.inventory.identities()}
    identity_teams = {i: x.team for i, x in identities.items()}
    resource_teams = {r.resource_id: r.team for r in store.inventory.resources()}

    def sums(first: date, last: date) -> _Month:
        summary = MoneySummary()
        for d, by_group in groups.items():
            if first <= d < last:
                summarise(by_group, resource_teams, identity_teams, into=summary)
        return _Month(
            summary,
            sum(u for d, u in billed.items() if first <= d < last),
            sum(u for d, u in credits.items() if first <= d < last),
            sum(1 for d in calculated if first <= d < last),
        )

    this, before = sums(month, end), sums(previous, month)
    known = before.days > 0  # a previous month without a calculated day has no figures to compare with

    def prev(amounts: dict[str, int], key: str) -> int | None:
        return amounts.get(key, 0) if known else None

    lines = [Line(n, "", "", "", u, prev(before.totals(), n)) for n, u in this.totals().items()]
    for kind, now, then in (
        ("team", this.summary.by_team, before.summary.by_team),
        ("identity", this.summary.by_identity, before.summary.by_identity),
    ):
        keys = set(now) | (set(then) if known else set())  # a team gone this month shows as 0
        for key in sorted(keys, key=lambda k: (-now.get(k, 0), k)):
            name = team = ""
            if kind == "identity":  # one no longer in the inventory shows its id
                identity = identities.get(key)
                name = (identity.display_name if identity else None) or key
                team = (identity.team if identity else None) or ""
            lines.append(Line(kind, key, name, team, now.get(key, 0), prev(then, key)))
    first_day = max(month, tenant.partitions_start_date)
    return MonthReport(
        tenant_id=tenant.tenant_id,
        month=month,
        days_in_month=(end - first_day).days,
        calculated=tuple(d for d in calculated if month <= d < end),
        previous_days=before.days,
        lines=tuple(lines),
    )


def markdown(report: MonthReport, first_day: date, top: int = 10) -> str:
    """A short summary for the UI: coverage, totals with the change, the biggest teams and identities."""
    coverage = f"{report.days_covered} of {report.days_in_month} days calculated"
    if not report.complete:
        missing = report.missing_dates(first_day)
        shown = ", ".join(d.isoformat() for d in missing[:5]) + (" …" if len(missing) > 5 else "")
        coverage = f"**Partial month**: {coverage}; not yet calculated: {shown}"
    out = [f"## {report.label} — tenant `{report.tenant_id}`", "", coverage, ""]
    if report.previous_days == 0:
        out += ["No previous month to compare with (no calculated day).", ""]
    out += ["| line | amount | previous month | change | change % |", "|---|---:|---:|---:|---:|"]
    out += [_md_row(x.line, x) for x in report.lines if x.line in TOTAL_LINES]
    for kind, plural in (("team", "teams"), ("identity", "identities")):
        rows = [x for x in report.lines if x.line == kind]
        if not rows:
            continue
        out += ["", f"Top {plural} ({len(rows)} in all; every one is in the CSV):", ""]
        out += [f"| {kind} | amount | previous month | change | change % |", "|---|---:|---:|---:|---:|"]
        out += [_md_row(x.name or x.key, x) for x in rows[:top]]
    return "\n".join(out) + "\n"


def _md_row(label: str, x: Line) -> str:
    def fmt(u: int | None) -> str:
        return "—" if u is None else format_units(u)

    label = label.replace("|", "\\|")
    return f"| {label} | {fmt(x.amount)} | {fmt(x.previous)} | {fmt(x.change)} | {x.change_percent or '—'} |"
