"""metrics and shard leases

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 17:30:11.306355
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "metrics",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("flow_run_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("tenant", "name", "at"),
    )
    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.create_index("ix_metrics_name_at", ["name", "at"], unique=False)

    op.create_table(
        "shard_leases",
        sa.Column("pool", sa.String(length=64), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("shard_count", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("processed", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("pool", "shard"),
    )


def downgrade() -> None:

    op.drop_table("shard_leases")
    with op.batch_alter_table("metrics", schema=None) as batch_op:
        batch_op.drop_index("ix_metrics_name_at")

    op.drop_table("metrics")
