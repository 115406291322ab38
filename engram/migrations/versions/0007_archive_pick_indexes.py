"""indexes for the archive flow's picks: consolidated episodes still hot, manifests by status

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 13:30:00

The archive flow takes the cold rows of each layer batch after batch. Its episodes query walked the primary key and
looked up every row, archived ones included: each batch read past every tombstone the table ever got, so a run cost
more the longer the archive's history. The new index holds the consolidated episodes not yet archived, by tenant and
end, the order a batch takes them in. (Semantic items are taken from ``ix_semantic_hot_seq``, revision 0005.) The
manifests an interrupted run left unfinished, which every run looks for first, are found by status instead of by
reading every manifest.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UNARCHIVED = sa.text("consolidated_at IS NOT NULL AND archived_manifest_id IS NULL")


def upgrade() -> None:
    op.create_index(
        "ix_episodes_unarchived",
        "episodes",
        ["tenant", "ended_at", "episode_id"],
        sqlite_where=UNARCHIVED,
        postgresql_where=UNARCHIVED,
    )
    op.create_index("ix_manifests_status", "archive_manifests", ["status", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_manifests_status", table_name="archive_manifests")
    op.drop_index("ix_episodes_unarchived", table_name="episodes")
