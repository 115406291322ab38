"""Shared fixtures: a fresh store per test on SQLite and, where it answers, on the real PostgreSQL server."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from engram import Memory
from engram.testing import FixedClock, create_pg_schema, drop_pg_schema

PG_URL = os.environ.get("ENGRAM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
# The suite runs lexical (the default install's behaviour) unless a test turns the dense extra on for itself:
# loading the model in every flow process would cost minutes and test nothing new.
os.environ.setdefault("ENGRAM_EMBEDDINGS", "false")
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
    return create_pg_schema(PG_URL)


def _drop_pg_schema(schema: str) -> None:
    drop_pg_schema(PG_URL, schema)


@contextmanager
def fresh_store(tmp_path: Path, backend: str) -> Iterator[str]:
    """The URL of an empty store: a SQLite file, or a private schema on the PostgreSQL server dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / f'engram-{uuid.uuid4().hex[:8]}.db'}"
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


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty store: a SQLite file, then a private schema on the PostgreSQL server."""
    with fresh_store(tmp_path, request.param) as url:
        yield url


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


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 server on loopback (moto's), shared by the session; each test takes a bucket of its own."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_archive(s3_endpoint: str):  # noqa: ANN201 - engram.archive.ArchiveLocation
    """An S3 archive location in a fresh bucket (not created yet: provisioning is part of what is tested)."""
    return s3_location(s3_endpoint)


@pytest.fixture
def archive_location(request: pytest.FixtureRequest, store_url: str, tmp_path: Path):  # noqa: ANN201
    """A provisioned archive: a fresh bucket on the loopback S3 server beside SQLite, a local folder beside
    PostgreSQL. Each store and each storage is covered once per test, at half the cost of every pairing."""
    from engram.archive import ArchiveLocation, provision_archive

    if store_url.startswith("sqlite"):
        location = request.getfixturevalue("s3_archive")
    else:
        location = ArchiveLocation((tmp_path / "archive").as_uri())
    provision_archive(location)
    return location


def s3_location(endpoint: str, bucket: str | None = None):  # noqa: ANN201 - engram.archive.ArchiveLocation
    from pydantic import SecretStr

    from engram.archive import ArchiveLocation

    return ArchiveLocation(
        f"s3://{bucket or 'engram-' + uuid.uuid4().hex[:12]}/archive",
        endpoint=endpoint,
        region="us-east-1",
        access_key=SecretStr("engram-test-key"),
        secret_key=SecretStr("engram-test-secret"),
    )
