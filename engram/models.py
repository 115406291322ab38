"""The schema of engram's hot store: every table, in one module.

Conventions:
- the tenant is the first column of every primary key and of every index, so no query can read across tenants
  without saying so;
- times are timezone-aware UTC in Python (SQLModel's UTCDateTime), ``timestamp with time zone`` on PostgreSQL;
- ``seq`` is the tenant's change counter at the write that created or last changed a row (see ``TenantState``):
  the search index follows it to stay current without rebuilding;
- lists and mappings are JSON columns; event-id lineage is a table of its own (``Lineage``) so a forget can find and
  remove it with an index.

Alembic revisions in ``engram/migrations`` create these tables; ``tests/engram/test_migrations.py`` checks that the
migrated schema and these models agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, Index, LargeBinary, PrimaryKeyConstraint, Text, text
from sqlmodel import Field, SQLModel

# Names of the tables, for code that speaks SQL through SQLAlchemy Core.
TENANT_ID_MAX = 64
# The conditions of the partial indexes on rows that are hot (not archived) and on archive tombstones.
HOT = text("archived_manifest_id IS NULL")
ARCHIVED = text("archived_manifest_id IS NOT NULL")
# ... and on the rows still waiting for a flow of every tenant, in the order the flow takes them: the backlog, not
# the whole table, is what a batch reads, however long the table's history grows.
UNROUTED = text("routed_at IS NULL")
UNCLOSED = text("episode_id IS NULL")
UNCONSOLIDATED = text("consolidated_at IS NULL AND archived_manifest_id IS NULL")
# ... and the consolidated episodes still hot, which the archive flow picks its cold ones from, oldest first.
UNARCHIVED = text("consolidated_at IS NOT NULL AND archived_manifest_id IS NULL")


class TenantState(SQLModel, table=True):
    """One row per tenant: its change counter, bumped under a row lock by every write that touches the tenant."""

    __tablename__ = "tenant_state"

    tenant: str = Field(primary_key=True, max_length=TENANT_ID_MAX)
    seq: int = Field(default=0)
    epoch: int = Field(default=0)  # moves when the tenant's memory is rewritten wholesale (forget)
    created_at: datetime


class Event(SQLModel, table=True):
    """The sensory layer: one raw input event, kept as the idempotency ledger of ``event_id``.

    ``routed_at`` is set when the ingest flow has moved the event on to working memory; until then the event is in
    the sensory layer.
    """

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_pending", "tenant", "routed_at", "received_at"),
        Index("ix_events_seq", "tenant", "seq"),
        Index(
            "ix_events_unrouted",
            "received_at",
            "tenant",
            "event_id",
            sqlite_where=UNROUTED,
            postgresql_where=UNROUTED,
        ),
    )

    tenant: str = Field(primary_key=True, max_length=TENANT_ID_MAX)
    event_id: str = Field(primary_key=True, max_length=128)
    session_id: str = Field(max_length=256)
    actor: str = Field(max_length=256)
    text: str = Field(sa_column=Column(Text, nullable=False))
    at: datetime
    meta: dict[str, Any] = Field(default_factory=dict, sa_column=Column("metadata", JSON, nullable=False))
    received_at: datetime
    routed_at: datetime | None = Field(default=None)
    seq: int = Field(default=0)


class SessionState(SQLModel, table=True):
    """A session seen in the events: open until idle or closed explicitly, then turned into one episode."""

    __tablename__ = "sessions"
    __table_args__ = (
        Index("ix_sessions_open", "tenant", "episode_id", "last_event_at"),
        Index("ix_sessions_unclosed", "last_event_at", sqlite_where=UNCLOSED, postgresql_where=UNCLOSED),
    )

    tenant: str = Field(primary_key=True, max_length=TENANT_ID_MAX)
    session_id: str = Field(primary_key=True, max_length=256)
    first_event_at: datetime
    last_event_at: datetime
    close_requested_at: datetime | None = Field(default=None)
    episode_id: str | None = Field(default=None, max_length=64)
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_expires_at: datetime | None = Field(default=None)


class WorkingItem(SQLModel, table=True):
    """The working layer: an event of an open session, or task-scoped scratch memory with a TTL.

    ``item_id`` is the event id: an event keeps its id from the sensory layer through working memory into its
    episode, so its whole path is one key in the audit trail.
    """

    __tablename__ = "working_items"
    __table_args__ = (
        Index("ix_working_session", "tenant", "session_id", "at"),
        Index("ix_working_expiry", "tenant", "expires_at"),
        # Every tenant's items past their TTL, oldest first: what ``expire_working`` takes when no tenant is named.
        Index("ix_working_expires", "expires_at"),
        Index("ix_working_seq", "tenant", "seq"),
    )

    tenant: str = Field(primary_key=True, max_length=TENANT_ID_MAX)
    item_id: str = Field(primary_key=True, max_length=128)
    event_id: str = Field(max_length=128)
    session_id: str = Field(max_length=256)
    actor: str = Field(max_length=256)
    text: str = Field(sa_column=Column(Text, nullable=False))
    at: datetime
    scope: str = Field(default="session", max_length=16)  # "session": becomes an episode; "task": discarded
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    meta: dict[str, Any] = Field(default_factory=dict, sa_column=Column("metadata", JSON, nullable=False))
    expires_at: datetime
    created_run_id: str | None = Field(default=None, max_length=64)
    seq: int = Field(default=0)


class Episode(SQLModel, table=True):
    """The episodic layer: one closed session, its time span, participants and an extractive summary."""

    __tablename__ = "episodes"
    __table_args__ = (
        Index("ix_episodes_pending", "tenant", "consolidated_at", "lease_expires_at"),
        Index("ix_episodes_seq", "tenant", "seq"),
        Index(
            "ix_episodes_unconsolidated",
            "ended_at",
            "episode_id",
            sqlite_where=UNCONSOLIDATED,
            postgresql_where=UNCONSOLIDATED,
        ),
        Index(
            "ix_episodes_unarchived",
            "tenant",
            "ended_at",
            "episode_id",
            sqlite_where=UNARCHIVED,
            postgresql_where=UNARCHIVED,
        ),
        # Tombstones by manifest, as on the turns and the facts.
        Index(
            "ix_episodes_archived", "tenant", "archived_manifest_id", sqlite_where=ARCHIVED, postgresql_where=ARCHIVED
        ),
    )

    tenant: str = Field(primary_key=True, max_length=TENANT_ID_MAX)
    episode_id: str = Field(primary_key=True, max_length=64)
    session_id: str = Field(max_length=256)
    started_at: datetime
    ended_at: datetime
    participants: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    summary: str = Field(default="", sa_column=Column(Text, nullable=False))
    turn_count: int = Field(default=0)
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_run_id: str | None = Field(default=None, max_length=64)
    consolidated_at: datetime | None = Field(default=None)
    consolidated_run_id: str | None = Field(default=None, max_length=64)
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_expires_at: datetime | None = Field(default=None)
    # How many consolidation runs failed on the episode (held it back); null when none did. At
    # ``ENGRAM_CONSOLIDATE_ATTEMPTS`` the episode is set aside: no claim takes it until an operator retries it.
    consolidation_failures: int | None = Field(default=None)
    archived_manifest_id: str | None = Field(default=None, max_length=64)
    seq: int = Field(default=0)


class EpisodeTurn(SQLModel, table=True):
    """One turn of an episode, in order; searchable as part of the episodic layer."""

    __tablename__ = "episode_turns"
    __table_args__ = (
        Index("ix_turns_event", "tenant", "event_id"),
        # The search feed reads hot turns by change stamp; archived ones (most, in time) stay out of the index.
        Index("ix_turns_hot_seq", "tenant", "seq", sqlite_where=HOT, postgresql_where=HOT),
        # Tombstones by manifest: what a search's loading pass counts and what compaction and forget move.
        Index("ix_turns_archived", "tenant", "archived_manifest_id", sqlite_where=ARCHIVED, postgresql_where=ARCHIVED),
    )

    tenant: str = Field(primary_key=True, max_length=TENANT_ID_MAX)
    episode_id: str = Field(primary_key=True, max_length=64)
    position: int = Field(primary_key=True)
    item_id: str = Field(max_length=128)  # the event id, as in working memory
    event_id: str = Field(max_length=128)
    actor: str = Field(max_length=256)
    text: str = Field(sa_column=Column(Text, nullable=False))
    at: datetime
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    meta: dict[str, Any] = Field(default_factory=dict, sa_column=Column("metadata", JSON, nullable=False))
    archived_manifest_id: str | None = Field(default=None, max_length=64)
    seq: int = Field(default=0)


class SemanticItem(SQLModel, table=True):
    """The semantic layer: one version of a fact distilled from episodes.

    A fact is identified by ``fact_key``; each change makes a new row (a new ``version``) and closes the previous one
    with ``valid_to`` and ``superseded_by``. Rows are never overwritten in place except for access statistics.
    """

    __tablename__ = "semantic_items"
    __table_args__ = (
        Index("ix_semantic_fact", "tenant", "fact_key", "version"),
        Index("ix_semantic_current", "tenant", "valid_to"),
        Index("ix_semantic_hot_seq", "tenant", "seq", sqlite_where=HOT, postgresql_where=HOT),
        # Tombstones by manifest: what compaction moves and what a manifest's drop checks for.
        Index(
            "ix_semantic_archived", "tenant", "archived_manifest_id", sqlite_where=ARCHIVED, postgresql_where=ARCHIVED
        ),
    )

    tenant: str = Field(primary_key=True, max_length=TENANT_ID_MAX)
    item_id: str = Field(primary_key=True, max_length=64)
    fact_key: str = Field(max_length=64)
    version: int = Field(default=1)
    text: str = Field(sa_column=Column(Text, nullable=False))
    rendered: str = Field(sa_column=Column(Text, nullable=False))
    actor: str = Field(default="", max_length=256)
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    support_count: int = Field(default=1)
    first_seen: datetime
    last_seen: datetime
    last_accessed: datetime | None = Field(default=None)
    salience: float = Field(default=0.0)
    valid_from: datetime
    valid_to: datetime | None = Field(default=None)
    superseded_by: str | None = Field(default=None, max_length=64)
    embedding: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    created_run_id: str | None = Field(default=None, max_length=64)
    archived_manifest_id: str | None = Field(default=None, max_length=64)
    # ``engram.consolidate.content_hash`` of the version's text, kept when the archive blanks the text, so that
    # consolidation can compare a candidate with an archived version. Null on rows written before migration 0004.
    content_hash: str | None = Field(default=None, max_length=64)
    seq: int = Field(default=0)


class Lineage(SQLModel, table=True):
    """Which source events an item of a later layer came from."""

    __tablename__ = "lineage"
    # The items distilled from given events: the item id is in the index, so the lookup reads no table row, and the
    # planner has no reason to prefer the primary key's tenant prefix (every lineage row of the tenant) over it.
    __table_args__ = (Index("ix_lineage_event_item", "tenant", "event_id", "item_id"),)

    tenant: str = Field(primary_key=True, max_length=TENANT_ID_MAX)
    item_id: str = Field(primary_key=True, max_length=64)
    event_id: str = Field(primary_key=True, max_length=128)


class ArchiveManifest(SQLModel, table=True):
    """One archive write: its Parquet files, their row counts and sha256, and the run that wrote them."""

    __tablename__ = "archive_manifests"
    # The archive flow's first step looks for the manifests an interrupted run left written or verified.
    __table_args__ = (Index("ix_manifests_status", "status", "created_at"),)

    tenant: str = Field(primary_key=True, max_length=TENANT_ID_MAX)
    manifest_id: str = Field(primary_key=True, max_length=64)
    layer: str = Field(max_length=16)
    uri: str = Field(sa_column=Column(Text, nullable=False))
    files: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    row_count: int = Field(default=0)
    status: str = Field(default="written", max_length=16)  # written -> verified -> committed
    flow_run_id: str | None = Field(default=None, max_length=64)
    created_at: datetime


class ForgetIntent(SQLModel, table=True):
    """What a subject's forget set out to remove, recorded before its first destructive step, dropped at its end.

    Ids and the subject's sha256 only, never the subject. A rerun after a crash unions them with what it finds again:
    the archive rewrite removes the archived turns that named the event ids, so they cannot be found twice.
    ``manifest_ids`` are the manifests whose rewrite the forget started, whose JSON a rerun writes again.
    """

    __tablename__ = "forget_intents"

    tenant: str = Field(primary_key=True, max_length=TENANT_ID_MAX)
    subject_sha256: str = Field(primary_key=True, max_length=64)
    event_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    item_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    manifest_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    created_at: datetime


class Transition(SQLModel, table=True):
    """The audit trail: one move of one item between layers, by one flow run.

    Keyed by item first (revision 0008): an item's history is a range of the key, and the rows of items whose ids
    grow append at its end instead of landing at a random place, as a key on the sha256 ``transition_id`` alone did.
    """

    __tablename__ = "transitions"
    __table_args__ = (
        PrimaryKeyConstraint("tenant", "item_id", "transition_id"),
        Index("ix_transitions_seq", "tenant", "seq"),
        Index("ix_transitions_run", "flow_run_id"),
    )

    tenant: str = Field(max_length=TENANT_ID_MAX)
    transition_id: str = Field(max_length=64)
    item_id: str = Field(max_length=128)
    from_layer: str | None = Field(default=None, max_length=16)
    to_layer: str | None = Field(default=None, max_length=16)
    action: str = Field(max_length=32)
    flow_run_id: str | None = Field(default=None, max_length=64)
    at: datetime
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    seq: int = Field(default=0)


class QuarantinedRow(SQLModel, table=True):
    """An input row that failed validation: its raw payload, the field and the reason.

    ``tenant`` is what the row claimed, made safe (or ``_unknown`` when it had none or an unusable one), so that an
    operator can find a tenant's rejects without trusting the rejected value.
    """

    __tablename__ = "quarantine"
    __table_args__ = (Index("ix_quarantine_at", "tenant", "quarantined_at"),)

    tenant: str = Field(primary_key=True, max_length=TENANT_ID_MAX)
    quarantine_id: str = Field(primary_key=True, max_length=64)
    source: str = Field(max_length=32)  # "observe_many", "ingest", ...
    field: str = Field(max_length=64)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    raw_payload: str = Field(sa_column=Column(Text, nullable=False))
    flow_run_id: str | None = Field(default=None, max_length=64)
    quarantined_at: datetime


class Metric(SQLModel, table=True):
    """One measurement taken by the ``monitor`` flow: layer sizes, backlog, lag, quarantine growth, run durations.

    ``tenant`` is ``*`` for service-wide measurements.
    """

    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_name_at", "name", "at"),)

    tenant: str = Field(primary_key=True, max_length=TENANT_ID_MAX)
    name: str = Field(primary_key=True, max_length=64)
    at: datetime = Field(primary_key=True)
    value: float
    flow_run_id: str | None = Field(default=None, max_length=64)


class ShardLease(SQLModel, table=True):
    """A shard of the work (tenants by hash) claimed by one worker until its lease expires."""

    __tablename__ = "shard_leases"

    pool: str = Field(primary_key=True, max_length=64)
    shard: int = Field(primary_key=True)
    shard_count: int
    owner: str | None = Field(default=None, max_length=64)
    lease_expires_at: datetime | None = Field(default=None)
    processed: int = Field(default=0)


ALL_TABLES = [
    TenantState,
    Event,
    SessionState,
    WorkingItem,
    Episode,
    EpisodeTurn,
    SemanticItem,
    Lineage,
    ArchiveManifest,
    ForgetIntent,
    Transition,
    QuarantinedRow,
    Metric,
    ShardLease,
]
