"""The Alembic revisions build exactly the schema that ``engram.models`` declares, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from alembic import op
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import DateTime, Engine, create_engine, event, func, inspect, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import SQLModel

from engram.migrations import current_revision, head_revision, migrate, upgrade_to_head
from engram.models import ALL_TABLES
from engram.store import TRANSITIONS, Store

MODEL_TABLES = {model.__tablename__ for model in ALL_TABLES}


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    engine = create_engine(store_url)
    try:
        yield engine
    finally:
        engine.dispose()


def shape(engine: Engine) -> dict[str, tuple]:
    """Each table's columns (name, type, nullability), primary key and indexes (name, columns), comparable across two
    inspections."""
    inspector = inspect(engine)
    return {
        name: (
            [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(name)],
            inspector.get_pk_constraint(name)["constrained_columns"],
            sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(name)),
        )
        for name in sorted(MODEL_TABLES)
    }


def test_every_table_has_the_primary_key_its_model_declares(engine: Engine) -> None:
    # Alembic's comparison (schema_diff) does not compare primary keys.
    upgrade_to_head(engine)
    migrated = {name: table[1] for name, table in shape(engine).items()}
    assert migrated == {m.__tablename__: [c.name for c in m.__table__.primary_key.columns] for m in ALL_TABLES}
    assert migrated["transitions"] == ["tenant", "item_id", "transition_id"]


def schema_diff(engine: Engine) -> list:
    """What autogenerate would write to bring the database to the models: empty when they agree."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        # SQLModel's UTCDateTime and AutoString are TypeDecorators over DateTime(timezone=True) and String; alembic
        # compares their implementation types, so no rendering-only differences are expected and none are ignored.
        return compare_metadata(context, SQLModel.metadata)


def test_upgrade_on_an_empty_database_creates_every_table(engine: Engine) -> None:
    assert set(inspect(engine).get_table_names()) == set()
    assert current_revision(engine) is None

    upgrade_to_head(engine)

    tables = set(inspect(engine).get_table_names())
    assert tables >= MODEL_TABLES
    assert tables - MODEL_TABLES == {"alembic_version"}  # nothing the models do not know about
    assert current_revision(engine) == head_revision() is not None


def test_upgrade_twice_is_a_no_op(engine: Engine) -> None:
    upgrade_to_head(engine)
    with engine.begin() as conn:  # a row must survive the second upgrade untouched
        conn.execute(
            text("INSERT INTO tenant_state (tenant, seq, epoch, created_at) VALUES ('acme', 7, 0, '2024-03-01')")
        )
    before = shape(engine)

    upgrade_to_head(engine)

    assert current_revision(engine) == head_revision()
    assert shape(engine) == before
    with engine.connect() as conn:
        assert conn.execute(text("SELECT tenant, seq FROM tenant_state")).all() == [("acme", 7)]
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1


def test_migrated_schema_matches_the_models(engine: Engine) -> None:
    upgrade_to_head(engine)
    assert schema_diff(engine) == []


def test_the_comparison_would_notice_a_drift(engine: Engine) -> None:
    # Guards the test above against passing vacuously (e.g. if no table were compared at all).
    upgrade_to_head(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_events_seq"))
    diff = schema_diff(engine)
    assert [(d[0], d[1].name) for d in diff] == [("add_index", "ix_events_seq")]


def test_times_are_stored_with_their_time_zone_on_postgresql(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no time-zone-aware column type; engram's UTCDateTime restores UTC on read")
    upgrade_to_head(engine)
    inspector = inspect(engine)
    time_columns = [
        (name, column["name"], column["type"].timezone)
        for name in MODEL_TABLES
        for column in inspector.get_columns(name)
        if isinstance(column["type"], DateTime)
    ]
    assert time_columns  # at, received_at, valid_from, ...
    assert [c for c in time_columns if not c[2]] == []  # every one is timestamp with time zone


AUDIT_ROWS = [
    {
        "tenant": "acme",
        "transition_id": f"tr-{n:032x}",
        "item_id": item,
        "from_layer": "sensory",
        "to_layer": "working",
        "action": action,
        "flow_run_id": "run-1",
        "at": datetime(2024, 3, 1, 12, n, tzinfo=UTC),
        "detail": {"n": n},
        "seq": n,
    }
    for n, (item, action) in enumerate([("ev-2", "ingest"), ("ev-1", "ingest"), ("ev-1", "close_session")])
]


def _insert(engine: Engine):  # noqa: ANN202 - dialect-specific Insert
    return (pg_insert if engine.dialect.name == "postgresql" else sqlite_insert)(TRANSITIONS)


def _audit(engine: Engine) -> tuple[list[str], set[str], list[tuple]]:
    """The audit table's key columns, its index names and its rows."""
    inspector = inspect(engine)
    with engine.connect() as conn:
        rows = conn.execute(select(TRANSITIONS).order_by(TRANSITIONS.c.transition_id)).all()
    return (
        inspector.get_pk_constraint("transitions")["constrained_columns"],
        {i["name"] for i in inspector.get_indexes("transitions")},
        [tuple(r) for r in rows],
    )


@pytest.fixture
def store_engine(store_url: str) -> Iterator[Engine]:
    """The store's own engine (what ``Store.migrate`` upgrades through: on SQLite, DDL inside its transactions)."""
    store = Store(store_url)
    try:
        yield store.engine
    finally:
        store.dispose()


def test_the_audit_trail_is_rekeyed_by_item_with_its_rows_and_back(store_engine: Engine) -> None:
    migrate(store_engine, "0007")
    with store_engine.begin() as conn:
        conn.execute(_insert(store_engine), AUDIT_ROWS)
    key, indexes, rows = _audit(store_engine)
    assert key == ["tenant", "transition_id"] and "ix_transitions_item" in indexes and len(rows) == 3
    at_0007 = shape(store_engine)

    upgrade_to_head(store_engine)
    assert _audit(store_engine) == (
        ["tenant", "item_id", "transition_id"],
        indexes - {"ix_transitions_item"},  # the key serves an item's history now
        rows,
    )
    with store_engine.begin() as conn:  # the same move again still conflicts with the row it wrote
        again = _insert(store_engine).on_conflict_do_nothing().returning(TRANSITIONS.c.transition_id)
        assert conn.execute(again, AUDIT_ROWS[0]).all() == []
        assert conn.execute(select(func.count()).select_from(TRANSITIONS)).scalar_one() == 3

    migrate(store_engine, "0007", down=True)
    assert _audit(store_engine) == (key, indexes, rows)
    assert shape(store_engine) == at_0007  # columns, types, nullability, key and indexes as they were


def test_a_store_a_newer_engram_migrated_is_refused_with_the_reason_and_left_as_it_is(store_url: str) -> None:
    from engram.errors import StoreError

    store = Store(store_url)
    try:
        store.migrate()
        with store.write() as conn:  # a revision none of this code's migrations is, as a newer engram would leave
            conn.execute(text("UPDATE alembic_version SET version_num = 'ffffffffffff'"))
        with pytest.raises(StoreError, match="a revision this engram does not know") as refused:
            store.migrate()
        assert "ffffffffffff" in str(refused.value)
        assert store.schema_revision() == "ffffffffffff"
    finally:
        store.dispose()


def test_the_store_migrates_holding_the_write_lock_from_its_first_statement(store_url: str) -> None:
    store = Store(store_url)
    begins: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: begins.append(a[2]) if "BEGIN" in a[2] else None)
    try:
        store.migrate()
    finally:
        store.dispose()
    if store.dialect == "sqlite":
        assert begins and begins[0] == "BEGIN IMMEDIATE"
    assert current_revision(create_engine(store_url)) == head_revision()


def test_a_rekeying_that_fails_midway_leaves_the_audit_trail_as_it_was(
    store_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate(store_engine, "0007")
    with store_engine.begin() as conn:
        conn.execute(_insert(store_engine), AUDIT_ROWS)
    before = _audit(store_engine)

    # The fault strikes after the destructive step: SQLite has dropped the old table (its rows copied), PostgreSQL
    # has dropped the old key.
    def fault(*args: object, **kwargs: object) -> None:
        raise RuntimeError("fault injected midway through the rekeying")

    monkeypatch.setattr(op, "rename_table" if store_engine.dialect.name == "sqlite" else "create_primary_key", fault)
    with pytest.raises(RuntimeError, match="fault injected"):
        upgrade_to_head(store_engine)
    assert current_revision(store_engine) == "0007"
    assert _audit(store_engine) == before
    assert "transitions_rekeyed" not in inspect(store_engine).get_table_names()

    monkeypatch.undo()
    upgrade_to_head(store_engine)  # and the next attempt goes through, every row with it
    assert _audit(store_engine)[0] == ["tenant", "item_id", "transition_id"]
    assert _audit(store_engine)[2] == before[2]
