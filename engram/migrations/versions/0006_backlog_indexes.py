"""partial indexes on the backlogs: unrouted events, unclosed sessions, unconsolidated episodes

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 10:00:00

A flow run over every tenant takes the oldest waiting rows first: events not yet routed (ingest), sessions not yet
turned into episodes (close_sessions), episodes not yet consolidated (consolidate). With no index in that order,
SQLite read the whole table and sorted it for every batch, so a batch cost more the longer the table's history. Each
index holds the waiting rows only, in the order a batch takes them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UNROUTED = sa.text("routed_at IS NULL")
UNCLOSED = sa.text("episode_id IS NULL")
UNCONSOLIDATED = sa.text("consolidated_at IS NULL AND archived_manifest_id IS NULL")


def upgrade() -> None:
    op.create_index(
        "ix_events_unrouted",
        "events",
        ["received_at", "tenant", "event_id"],
        sqlite_where=UNROUTED,
        postgresql_where=UNROUTED,
    )
    op.create_index(
        "ix_sessions_unclosed", "sessions", ["last_event_at"], sqlite_where=UNCLOSED, postgresql_where=UNCLOSED
    )
    op.create_index(
        "ix_episodes_unconsolidated",
        "episodes",
        ["ended_at", "episode_id"],
        sqlite_where=UNCONSOLIDATED,
        postgresql_where=UNCONSOLIDATED,
    )


def downgrade() -> None:
    op.drop_index("ix_episodes_unconsolidated", table_name="episodes")
    op.drop_index("ix_sessions_unclosed", table_name="sessions")
    op.drop_index("ix_events_unrouted", table_name="events")
