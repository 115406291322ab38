"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25 16:57:19.974502
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "archive_manifests",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("manifest_id", sa.String(length=64), nullable=False),
        sa.Column("layer", sa.String(length=16), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("flow_run_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "manifest_id"),
    )
    op.create_table(
        "episode_turns",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("episode_id", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.String(length=128), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("archived_manifest_id", sa.String(length=64), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "episode_id", "position"),
    )
    with op.batch_alter_table("episode_turns", schema=None) as batch_op:
        batch_op.create_index("ix_turns_event", ["tenant", "event_id"], unique=False)
        batch_op.create_index("ix_turns_seq", ["tenant", "seq"], unique=False)

    op.create_table(
        "episodes",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("episode_id", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=256), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("participants", sa.JSON(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("turn_count", sa.Integer(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("created_run_id", sa.String(length=64), nullable=True),
        sa.Column("consolidated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("consolidated_run_id", sa.String(length=64), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("archived_manifest_id", sa.String(length=64), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "episode_id"),
    )
    with op.batch_alter_table("episodes", schema=None) as batch_op:
        batch_op.create_index("ix_episodes_pending", ["tenant", "consolidated_at", "lease_expires_at"], unique=False)
        batch_op.create_index("ix_episodes_seq", ["tenant", "seq"], unique=False)

    op.create_table(
        "events",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("session_id", sa.String(length=256), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("routed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "event_id"),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_pending", ["tenant", "routed_at", "received_at"], unique=False)
        batch_op.create_index("ix_events_seq", ["tenant", "seq"], unique=False)

    op.create_table(
        "lineage",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("item_id", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "item_id", "event_id"),
    )
    with op.batch_alter_table("lineage", schema=None) as batch_op:
        batch_op.create_index("ix_lineage_event", ["tenant", "event_id"], unique=False)

    op.create_table(
        "quarantine",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("quarantine_id", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("field", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("raw_payload", sa.Text(), nullable=False),
        sa.Column("flow_run_id", sa.String(length=64), nullable=True),
        sa.Column("quarantined_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "quarantine_id"),
    )
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.create_index("ix_quarantine_at", ["tenant", "quarantined_at"], unique=False)

    op.create_table(
        "semantic_items",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("item_id", sa.String(length=64), nullable=False),
        sa.Column("fact_key", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("rendered", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("support_count", sa.Integer(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_accessed", sa.DateTime(timezone=True), nullable=True),
        sa.Column("salience", sa.Float(), nullable=False),
        sa.Column("valid_from", sa.DateTime(timezone=True), nullable=False),
        sa.Column("valid_to", sa.DateTime(timezone=True), nullable=True),
        sa.Column("superseded_by", sa.String(length=64), nullable=True),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.Column("created_run_id", sa.String(length=64), nullable=True),
        sa.Column("archived_manifest_id", sa.String(length=64), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "item_id"),
    )
    with op.batch_alter_table("semantic_items", schema=None) as batch_op:
        batch_op.create_index("ix_semantic_current", ["tenant", "valid_to"], unique=False)
        batch_op.create_index("ix_semantic_fact", ["tenant", "fact_key", "version"], unique=False)
        batch_op.create_index("ix_semantic_seq", ["tenant", "seq"], unique=False)

    op.create_table(
        "sessions",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=256), nullable=False),
        sa.Column("first_event_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("close_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("episode_id", sa.String(length=64), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("tenant", "session_id"),
    )
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.create_index("ix_sessions_open", ["tenant", "episode_id", "last_event_at"], unique=False)

    op.create_table(
        "tenant_state",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant"),
    )
    op.create_table(
        "transitions",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("transition_id", sa.String(length=64), nullable=False),
        sa.Column("item_id", sa.String(length=128), nullable=False),
        sa.Column("from_layer", sa.String(length=16), nullable=True),
        sa.Column("to_layer", sa.String(length=16), nullable=True),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("flow_run_id", sa.String(length=64), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "transition_id"),
    )
    with op.batch_alter_table("transitions", schema=None) as batch_op:
        batch_op.create_index("ix_transitions_item", ["tenant", "item_id", "at"], unique=False)
        batch_op.create_index("ix_transitions_run", ["flow_run_id"], unique=False)
        batch_op.create_index("ix_transitions_seq", ["tenant", "seq"], unique=False)

    op.create_table(
        "working_items",
        sa.Column("tenant", sa.String(length=64), nullable=False),
        sa.Column("item_id", sa.String(length=128), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("session_id", sa.String(length=256), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_run_id", sa.String(length=64), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "item_id"),
    )
    with op.batch_alter_table("working_items", schema=None) as batch_op:
        batch_op.create_index("ix_working_expiry", ["tenant", "expires_at"], unique=False)
        batch_op.create_index("ix_working_seq", ["tenant", "seq"], unique=False)
        batch_op.create_index("ix_working_session", ["tenant", "session_id", "at"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("working_items", schema=None) as batch_op:
        batch_op.drop_index("ix_working_session")
        batch_op.drop_index("ix_working_seq")
        batch_op.drop_index("ix_working_expiry")

    op.drop_table("working_items")
    with op.batch_alter_table("transitions", schema=None) as batch_op:
        batch_op.drop_index("ix_transitions_seq")
        batch_op.drop_index("ix_transitions_run")
        batch_op.drop_index("ix_transitions_item")

    op.drop_table("transitions")
    op.drop_table("tenant_state")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_sessions_open")

    op.drop_table("sessions")
    with op.batch_alter_table("semantic_items", schema=None) as batch_op:
        batch_op.drop_index("ix_semantic_seq")
        batch_op.drop_index("ix_semantic_fact")
        batch_op.drop_index("ix_semantic_current")

    op.drop_table("semantic_items")
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.drop_index("ix_quarantine_at")

    op.drop_table("quarantine")
    with op.batch_alter_table("lineage", schema=None) as batch_op:
        batch_op.drop_index("ix_lineage_event")

    op.drop_table("lineage")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_seq")
        batch_op.drop_index("ix_events_pending")

    op.drop_table("events")
    with op.batch_alter_table("episodes", schema=None) as batch_op:
        batch_op.drop_index("ix_episodes_seq")
        batch_op.drop_index("ix_episodes_pending")

    op.drop_table("episodes")
    with op.batch_alter_table("episode_turns", schema=None) as batch_op:
        batch_op.drop_index("ix_turns_seq")
        batch_op.drop_index("ix_turns_event")

    op.drop_table("episode_turns")
    op.drop_table("archive_manifests")
