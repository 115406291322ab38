"""indexes on the facts' and the episodes' tombstones by manifest

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 17:05:00

Compaction finds the rows a group's manifests hold, and moves their tombstones to the merged manifest, by
``tenant = ? AND archived_manifest_id IN (...)``; dropping a manifest checks that no tombstone points at it the same
way. The turns had an index for it (``ix_turns_archived``); the facts and the episodes did not, so each of these
statements read every fact and every episode of the tenant, hot or archived, twice per group merged. The new
indexes are partial: they hold the archived rows only, so the layer moves that write hot rows do not maintain them;
the archive step adds an entry per row it tombstones.

Both indexes are built inside the migration's transaction. On PostgreSQL, building an index blocks writes to its table
until it is built, a time that grows with the table: upgrade a large store with its work pools paused
(``prefect work-pool pause NAME``), then resume them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

ARCHIVED = sa.text("archived_manifest_id IS NOT NULL")


def upgrade() -> None:
    for name, table in (("ix_semantic_archived", "semantic_items"), ("ix_episodes_archived", "episodes")):
        op.create_index(
            name, table, ["tenant", "archived_manifest_id"], sqlite_where=ARCHIVED, postgresql_where=ARCHIVED
        )


def downgrade() -> None:
    op.drop_index("ix_episodes_archived", table_name="episodes")
    op.drop_index("ix_semantic_archived", table_name="semantic_items")
