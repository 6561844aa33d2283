"""Resources and identities of a tenant (the inventory gather, docs/operations.md §4)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select, update

from chargeback_dagster.domain import UNALLOCATED, Identity, Resource
from chargeback_dagster.store import tables as t
from chargeback_dagster.store.database import Repository, chunks


class InventoryRepository(Repository):
    """Tables `resources` and `identities`."""

    def ensure_unallocated(self) -> None:
        """Upsert the `UNALLOCATED` identity (never marked deleted)."""
        row = {
            **self._tenant(),
            "identity_id": UNALLOCATED,
            "identity_type": "system",
            "display_name": "Unallocated Costs",
            "created_at": None,
            "deleted_at": None,
            "last_seen_at": None,
            "metadata_json": {},
        }
        with self.db.write() as conn:
            stmt = self.db.insert(t.identities)
            stmt = stmt.on_conflict_do_update(
                index_elements=["ecosystem", "tenant_id", "identity_id"],
                set_={"identity_type": "system", "display_name": "Unallocated Costs", "deleted_at": None},
            )
            conn.execute(stmt, [row])

    def upsert_resources(self, resources: list[Resource], seen_at: datetime) -> None:
        """Insert or update; a re-gathered row takes the gathered status/deleted_at (normally active)."""
        if not resources:
            return
        rows = [
            {
                **self._tenant(),
                "resource_id": r.resource_id,
                "resource_type": r.resource_type,
                "display_name": r.display_name,
                "parent_id": r.parent_id,
                "owner_id": r.owner_id,
                "status": r.status or "active",
                "cloud": r.cloud,
                "region": r.region,
                "created_at": r.created_at,
                "deleted_at": r.deleted_at,
                "last_seen_at": seen_at,
                "metadata_json": r.metadata or {},
                "team": r.team,
            }
            for r in {r.resource_id: r for r in resources}.values()
        ]
        tab = t.resources
        stmt = self.db.insert(tab)
        ex = stmt.excluded
        stmt = stmt.on_conflict_do_update(
            index_elements=["ecosystem", "tenant_id", "resource_id"],
            set_={
                "resource_type": ex.resource_type,
                "display_name": ex.display_name,
                "parent_id": ex.parent_id,
                "owner_id": ex.owner_id,
                "status": ex.status,
                "cloud": ex.cloud,
                "region": ex.region,
                "created_at": func.coalesce(ex.created_at, tab.c.created_at),
                "deleted_at": ex.deleted_at,
                "last_seen_at": ex.last_seen_at,
                "metadata_json": ex.metadata_json,
                "team": ex.team,
            },
        )
        with self.db.write() as conn:
            conn.execute(stmt, rows)

    def upsert_identities(self, identities: list[Identity], seen_at: datetime) -> None:
        if not identities:
            return
        rows = [
            {
                **self._tenant(),
                "identity_id": i.identity_id,
                "identity_type": i.identity_type,
                "display_name": i.display_name,
                "created_at": i.created_at,
                "deleted_at": i.deleted_at,
                "last_seen_at": seen_at,
                "metadata_json": i.metadata or {},
                "team": i.team,
            }
            for i in {i.identity_id: i for i in identities}.values()
        ]
        tab = t.identities
        stmt = self.db.insert(tab)
        ex = stmt.excluded
        stmt = stmt.on_conflict_do_update(
            index_elements=["ecosystem", "tenant_id", "identity_id"],
            set_={
                "identity_type": ex.identity_type,
                "display_name": ex.display_name,
                "created_at": func.coalesce(ex.created_at, tab.c.created_at),
                "deleted_at": ex.deleted_at,
                "last_seen_at": ex.last_seen_at,
                "metadata_json": ex.metadata_json,
                "team": ex.team,
            },
        )
        with self.db.write() as conn:
            conn.execute(stmt, rows)

    def mark_resources_deleted(self, resource_type: str, keep_ids: set[str], at: datetime) -> int:
        """Active rows of `resource_type` whose id is not in `keep_ids` → deleted_at = at, status deleted."""
        tab = t.resources
        with self.db.write() as conn:
            active = conn.execute(
                select(tab.c.resource_id).where(
                    self._mine(tab), tab.c.resource_type == resource_type, tab.c.deleted_at.is_(None)
                )
            ).scalars()
            gone = sorted(set(active) - set(keep_ids))
            for chunk in chunks(gone):
                conn.execute(
                    update(tab)
                    .where(self._mine(tab), tab.c.resource_id.in_(chunk))
                    .values(deleted_at=at, status="deleted")
                )
        return len(gone)

    def mark_identities_deleted(self, keep_ids: set[str], at: datetime) -> int:
        """Active identities not in `keep_ids` → deleted_at = at. `UNALLOCATED` is never marked."""
        tab = t.identities
        with self.db.write() as conn:
            active = conn.execute(
                select(tab.c.identity_id).where(
                    self._mine(tab), tab.c.deleted_at.is_(None), tab.c.identity_id != UNALLOCATED
                )
            ).scalars()
            gone = sorted(set(active) - set(keep_ids))
            for chunk in chunks(gone):
                conn.execute(
                    update(tab).where(self._mine(tab), tab.c.identity_id.in_(chunk)).values(deleted_at=at)
                )
        return len(gone)

    def resources(self) -> list[Resource]:
        """All resources, deleted ones included, sorted by resource_id."""
        tab = t.resources
        with self.db.read() as conn:
            rows = conn.execute(select(tab).where(self._mine(tab))).all()
        out = [
            Resource(
                resource_id=r.resource_id,
                resource_type=r.resource_type,
                display_name=r.display_name,
                parent_id=r.parent_id,
                owner_id=r.owner_id,
                status=r.status,
                cloud=r.cloud,
                region=r.region,
                created_at=r.created_at,
                deleted_at=r.deleted_at,
                metadata=r.metadata_json or {},
                team=r.team,
            )
            for r in rows
        ]
        out.sort(key=lambda r: r.resource_id)
        return out

    def identities(self) -> list[Identity]:
        """All identities (deleted ones and `UNALLOCATED` included), sorted by identity_id."""
        tab = t.identities
        with self.db.read() as conn:
            rows = conn.execute(select(tab).where(self._mine(tab))).all()
        out = [
            Identity(
                identity_id=r.identity_id,
                identity_type=r.identity_type,
                display_name=r.display_name,
                created_at=r.created_at,
                deleted_at=r.deleted_at,
                metadata=r.metadata_json or {},
                team=r.team,
            )
            for r in rows
        ]
        out.sort(key=lambda i: i.identity_id)
        return out
