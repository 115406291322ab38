"""partial indexes: hot rows by change stamp, archive tombstones by manifest

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 02:40:00

The search feed (``Store.index_changes``) reads a tenant's hot turns and facts by change stamp; with the stamps of
archived rows in the same index, a tenant's first search scanned every archived row. The seq indexes now hold hot
rows only, and a partial index on the turns' manifest pointer serves what counts and moves tombstones by manifest
(a search's loading pass, compaction, forget).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

HOT = sa.text("archived_manifest_id IS NULL")
ARCHIVED = sa.text("archived_manifest_id IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_turns_seq", table_name="episode_turns")
    op.create_index("ix_turns_hot_seq", "episode_turns", ["tenant", "seq"], sqlite_where=HOT, postgresql_where=HOT)
    op.create_index(
        "ix_turns_archived",
        "episode_turns",
        ["tenant", "archived_manifest_id"],
        sqlite_where=ARCHIVED,
        postgresql_where=ARCHIVED,
    )
    op.drop_index("ix_semantic_seq", table_name="semantic_items")
    op.create_index("ix_semantic_hot_seq", "semantic_items", ["tenant", "seq"], sqlite_where=HOT, postgresql_where=HOT)


def downgrade() -> None:
    op.drop_index("ix_semantic_hot_seq", table_name="semantic_items")
    op.create_index("ix_semantic_seq", "semantic_items", ["tenant", "seq"])
    op.drop_index("ix_turns_archived", table_name="episode_turns")
    op.drop_index("ix_turns_hot_seq", table_name="episode_turns")
    op.create_index("ix_turns_seq", "episode_turns", ["tenant", "seq"])
