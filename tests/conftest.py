"""Shared fixtures: a fresh store per test on SQLite and, where it answers, on the real PostgreSQL server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from engram import Memory
from engram.testing import FixedClock

PG_URL = os.environ.get("ENGRAM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


def _pg_available() -> bool:
    try:
        engine = create_engine(PG_URL)
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


PG_OK = _pg_available()
# In CI the PostgreSQL server is part of the contract: a missing server must fail the run, not skip half the suite.
REQUIRE_PG = os.environ.get("CI") == "true" or os.environ.get("ENGRAM_REQUIRE_PG") == "1"


def _fresh_pg_schema() -> tuple[str, str]:
    """A private schema in the test database, so parallel tests and runs never see each other's rows."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    sep = "&" if "?" in PG_URL else "?"
    return schema, f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


def _drop_pg_schema(schema: str) -> None:
    engine = create_engine(PG_URL)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty store: a SQLite file, then a private schema on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'engram.db'}"
        return
    if not PG_OK:
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL is required here but does not answer at {PG_URL}")
        pytest.skip(f"no PostgreSQL server at {PG_URL}")
    schema, url = _fresh_pg_schema()
    try:
        yield url
    finally:
        _drop_pg_schema(schema)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def memory(store_url: str, tmp_path: Path, clock: FixedClock) -> Iterator[Memory]:
    """A fresh ``Memory`` on each store backend, with a fixed clock."""
    m = Memory(store_url, (tmp_path / "archive").as_uri(), clock=clock)
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def sqlite_memory(tmp_path: Path, clock: FixedClock) -> Iterator[Memory]:
    m = Memory(f"sqlite:///{tmp_path / 'engram.db'}", (tmp_path / "archive").as_uri(), clock=clock)
    try:
        yield m
    finally:
        m.close()
