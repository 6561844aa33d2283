"""Tenant run lock heartbeat.

The holder of a tenant's run lock refreshes `heartbeat_at` while it runs; a contender takes the lock over
once the heartbeat is older than the takeover time (docs/operations.md §4), so a run killed with SIGKILL,
or one of another Dagster instance, is told apart from a live one by the tenant database alone. Existing
rows start with their acquisition time as heartbeat.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tenant_run_lock", sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE tenant_run_lock SET heartbeat_at = acquired_at")


def downgrade() -> None:
    with op.batch_alter_table("tenant_run_lock") as batch:
        batch.drop_column("heartbeat_at")
