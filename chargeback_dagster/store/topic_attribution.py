"""Topic attribution rows of a tenant (docs/confluent-cloud.md §9 "Storage") and the billing lines'
`topic_attribution_attempts` counters."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import date
from typing import TYPE_CHECKING

from sqlalchemy import delete, select, update

from chargeback_dagster.domain import BillingLine
from chargeback_dagster.store import tables as t
from chargeback_dagster.store.database import Repository, StoreError
from chargeback_dagster.store.tables import TOPIC_DIMENSION_KEY_COLUMNS

if TYPE_CHECKING:
    from chargeback_dagster.ecosystems.confluent_cloud.topics import TopicRow

# A CSV row: (date, env_id, cluster_resource_id, topic_name, product_category, product_type,
# attribution_method, amount_units)
TopicCsvRow = tuple[date, str, str, str, str, str, str, int]


class TopicAttributionRepository(Repository):
    """Tables `topic_attribution_dimensions` and `topic_attribution_facts`."""

    def replace(
        self, d: date, rows: Iterable[TopicRow], keep_clusters: Iterable[str], lines: list[BillingLine]
    ) -> int:
        """In one transaction: the date's rows become `rows` (identical keys summed) except those of
        `keep_clusters` (pending, docs/confluent-cloud.md §9 "Failures"), which stay; the
        topic_attribution_attempts of `lines` go back to 0. Returns the facts written."""
        dim, facts = t.topic_attribution_dimensions, t.topic_attribution_facts
        units: dict[tuple[str, ...], int] = defaultdict(int)
        for row in rows:
            key = (
                row.env_id,
                row.cluster_resource_id,
                row.topic_name,
                row.product_category,
                row.product_type,
                row.attribution_method,
            )
            units[key] += row.amount_units
        keep = sorted(set(keep_clusters))
        with self.db.write() as conn:
            stale = delete(facts).where(self._mine(facts), facts.c.date == d)
            if keep:
                kept = select(dim.c.dimension_id).where(self._mine(dim), dim.c.cluster_resource_id.in_(keep))
                stale = stale.where(facts.c.dimension_id.not_in(kept))
            conn.execute(stale)
            if units:
                conn.execute(
                    self.db.insert(dim).on_conflict_do_nothing(),
                    [
                        {**self._tenant(), **dict(zip(TOPIC_DIMENSION_KEY_COLUMNS, key, strict=True))}
                        for key in units
                    ],
                )
                ids = {
                    tuple(r[1:]): int(r[0])
                    for r in conn.execute(
                        select(dim.c.dimension_id, *(dim.c[c] for c in TOPIC_DIMENSION_KEY_COLUMNS)).where(
                            self._mine(dim), dim.c.cluster_resource_id.in_(sorted({k[1] for k in units}))
                        )
                    )
                }
                conn.execute(
                    facts.insert(),
                    [
                        {**self._tenant(), "date": d, "dimension_id": ids[key], "amount_units": amount}
                        for key, amount in units.items()
                    ],
                )
            if lines:
                b = t.billing
                for line in lines:
                    conn.execute(
                        update(b)
                        .where(*self._line_where(line), b.c.topic_attribution_attempts != 0)
                        .values(topic_attribution_attempts=0)
                    )
        return len(units)

    def increment_attempts(self, line: BillingLine) -> int:
        """Own transaction, committed at once (docs/confluent-cloud.md §9 "Failures"). Returns the new
        count."""
        b = t.billing
        with self.db.write() as conn:
            res = conn.execute(
                update(b)
                .where(*self._line_where(line))
                .values(topic_attribution_attempts=b.c.topic_attribution_attempts + 1)
            )
            if res.rowcount == 0:
                raise StoreError(
                    f"Billing line not stored: {line.date} {line.resource_id} {line.product_type}"
                )
            return int(
                conn.execute(
                    select(b.c.topic_attribution_attempts).where(*self._line_where(line))
                ).scalar_one()
            )

    def _line_where(self, line: BillingLine) -> list:
        b = t.billing
        return [
            self._mine(b),
            b.c.date == line.date,
            b.c.env_id == (line.env_id or ""),
            b.c.resource_id == line.resource_id,
            b.c.product_category == line.product_category,
            b.c.product_type == line.product_type,
        ]

    def rows(self, start: date, end: date) -> list[TopicCsvRow]:
        """Rows of start ≤ date < end, ordered by date then the key columns (code-point order)."""
        dim, facts = t.topic_attribution_dimensions, t.topic_attribution_facts
        with self.db.read() as conn:
            found = conn.execute(
                select(facts.c.date, *(dim.c[c] for c in TOPIC_DIMENSION_KEY_COLUMNS), facts.c.amount_units)
                .join(dim, dim.c.dimension_id == facts.c.dimension_id)
                .where(self._mine(facts), facts.c.date >= start, facts.c.date < end)
            ).all()
        return sorted((r[0], *r[1:7], int(r[7])) for r in found)  # Python sort: code points on both backends

    def totals(self, d: date) -> dict[tuple[str, str, str, str], int]:
        """(env_id, cluster_resource_id, product_category, product_type) → Σ units of the date's rows."""
        out: dict[tuple[str, str, str, str], int] = defaultdict(int)
        for _, env, cluster, _, category, product_type, _, units in self.rows(
            d, date.fromordinal(d.toordinal() + 1)
        ):
            out[(env, cluster, category, product_type)] += units
        return dict(out)

    def purge(self, cutoff_date: date) -> dict[str, int]:
        """Facts older than `cutoff_date` and the dimensions no fact uses any more (one transaction)."""
        dim, facts = t.topic_attribution_dimensions, t.topic_attribution_facts
        with self.db.write() as conn:
            out = {
                facts.name: conn.execute(
                    delete(facts).where(self._mine(facts), facts.c.date < cutoff_date)
                ).rowcount
            }
            out[dim.name] = conn.execute(
                delete(dim).where(
                    self._mine(dim), dim.c.dimension_id.not_in(select(facts.c.dimension_id).distinct())
                )
            ).rowcount
        return out
