"""The Alembic revisions build exactly the schema that ``engram.models`` declares, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import DateTime, Engine, create_engine, inspect, text
from sqlmodel import SQLModel

from engram.migrations import current_revision, head_revision, upgrade_to_head
from engram.models import ALL_TABLES

MODEL_TABLES = {model.__tablename__ for model in ALL_TABLES}


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    engine = create_engine(store_url)
    try:
        yield engine
    finally:
        engine.dispose()


def shape(engine: Engine) -> dict[str, tuple]:
    """Each table's columns (name, type, nullability) and index names, comparable across two inspections."""
    inspector = inspect(engine)
    return {
        name: (
            [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(name)],
            sorted(i["name"] for i in inspector.get_indexes(name)),
        )
        for name in sorted(MODEL_TABLES)
    }


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
