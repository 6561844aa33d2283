"""Retention (docs/operations.md §9): rows older than the retention window leave the tenant database."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import delete, select

from chargeback_dagster.domain import UNALLOCATED
from chargeback_dagster.store import tables as t
from chargeback_dagster.store.chargeback import ChargebackRepository
from chargeback_dagster.store.database import Database, Repository


class RetentionRepository(Repository):
    """Deletes across every table of the tenant."""

    def __init__(
        self,
        db: Database,
        *,
        tenant_name: str,
        ecosystem: str,
        tenant_id: str,
        chargeback: ChargebackRepository,
    ) -> None:
        super().__init__(db, tenant_name=tenant_name, ecosystem=ecosystem, tenant_id=tenant_id)
        self._chargeback = chargeback

    def purge(self, cutoff_date: date, exact_cutoff: datetime) -> dict[str, int]:
        """docs/operations.md §9, one transaction. Returns rows deleted per table."""
        out: dict[str, int] = {}
        dim, facts = t.chargeback_dimensions, t.chargeback_facts
        with self.db.write() as conn:
            for tab in (t.chargeback_facts, t.billing, t.usage_metric_values, t.usage_metric_fetches):
                out[tab.name] = conn.execute(
                    delete(tab).where(self._mine(tab), tab.c.date < cutoff_date)
                ).rowcount
            out["pipeline_state"] = conn.execute(
                delete(t.pipeline_state).where(
                    self._mine(t.pipeline_state), t.pipeline_state.c.date < cutoff_date
                )
            ).rowcount
            # One anti-join over the facts (they have no index by dimension, see tables.py).
            out["chargeback_dimensions"] = conn.execute(
                delete(dim).where(
                    self._mine(dim), dim.c.dimension_id.not_in(select(facts.c.dimension_id).distinct())
                )
            ).rowcount
            out["resources"] = conn.execute(
                delete(t.resources).where(
                    self._mine(t.resources),
                    t.resources.c.deleted_at.is_not(None),
                    t.resources.c.deleted_at < exact_cutoff,
                )
            ).rowcount
            out["identities"] = conn.execute(
                delete(t.identities).where(
                    self._mine(t.identities),
                    t.identities.c.identity_id != UNALLOCATED,
                    t.identities.c.deleted_at.is_not(None),
                    t.identities.c.deleted_at < exact_cutoff,
                )
            ).rowcount
            out["pipeline_runs"] = conn.execute(
                delete(t.pipeline_runs).where(
                    self._mine(t.pipeline_runs),
                    t.pipeline_runs.c.ended_at.is_not(None),
                    t.pipeline_runs.c.ended_at < exact_cutoff,
                )
            ).rowcount
        self._chargeback.forget_dimensions()
        return out
