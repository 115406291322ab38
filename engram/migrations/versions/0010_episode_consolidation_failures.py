"""episodes count the consolidation runs that failed on them

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 11:30:00

An episode the consolidator fails on is held back under its lease and retried by the first run after the lease
expires. Until now it was retried that way without end, each run ending failed. The new nullable column counts the
runs that held it back; at ``ENGRAM_CONSOLIDATE_ATTEMPTS`` the episode is set aside, and claims skip it until an
operator retries it (``engram retry-held``). Existing episodes start at null (no failure counted): one already held
back gets its full number of attempts again.

Adding a nullable column without a default rewrites no row, on SQLite as on PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("episodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("consolidation_failures", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("episodes", schema=None) as batch_op:
        batch_op.drop_column("consolidation_failures")
