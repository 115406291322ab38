"""indexes for expiring every tenant's working items and for the items distilled from given events

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 09:00:00

``expire_working`` without a tenant (the lifecycle's and the ``expire_working`` deployment's default) takes the items
past their TTL, oldest first. The only index on expiry led with the tenant, so the query read the whole working layer
and sorted it, holding the write lock, on every call: the more sessions open, the longer ingest waited. The new index
on ``expires_at`` alone lets it read the expired items only, in order, up to its limit.

The lineage's event index ``(tenant, event_id)`` did not hold the item id its lookups return (which items were
distilled from these events: forget, and a batch's check of its own sources). SQLite, planning without table
statistics, then preferred the primary key ``(tenant, item_id, event_id)``, which holds every column the query needs,
and read every lineage row of the tenant for each chunk of event ids. The index is rebuilt with the item id in it.

Both indexes are built inside the migration's transaction. On PostgreSQL, building an index blocks writes to its table
until it is built, a time that grows with the table: upgrade a large store with its work pools paused
(``prefect work-pool pause NAME``), then resume them.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_working_expires", "working_items", ["expires_at"])
    op.create_index("ix_lineage_event_item", "lineage", ["tenant", "event_id", "item_id"])
    op.drop_index("ix_lineage_event", table_name="lineage")


def downgrade() -> None:
    op.create_index("ix_lineage_event", "lineage", ["tenant", "event_id"])
    op.drop_index("ix_lineage_event_item", table_name="lineage")
    op.drop_index("ix_working_expires", table_name="working_items")
