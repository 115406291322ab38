"""What users need to test code that uses engram: a fixed clock and a fresh temporary memory."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from engram.memory import Memory


class FixedClock:
    """A clock that stands still until moved.

    Example:
        >>> clock = FixedClock(datetime(2024, 1, 1, tzinfo=UTC))
        >>> clock.advance(minutes=5)
        >>> clock()
        datetime.datetime(2024, 1, 1, 0, 5, tzinfo=datetime.timezone.utc)
    """

    def __init__(self, now: datetime | None = None):
        self.now = now or datetime(2024, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now = self.now + timedelta(**delta)


@contextmanager
def temporary_memory(clock: FixedClock | None = None, store: str | None = None) -> Iterator[Memory]:
    """A ``Memory`` on a fresh SQLite file and archive folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="engram-") as tmp:
        root = Path(tmp)
        memory = Memory(
            store or f"sqlite:///{root / 'engram.db'}",
            (root / "archive").as_uri(),
            clock=clock,
        )
        try:
            yield memory
        finally:
            memory.close()


def create_pg_schema(server_url: str, prefix: str = "t") -> tuple[str, str]:
    """A new private schema on a PostgreSQL server, and the store URL whose connections use it (``search_path``):
    tests and benchmarks on one database never see each other's rows. Drop it with ``drop_pg_schema``."""
    import uuid

    from sqlalchemy import create_engine, text

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = create_engine(server_url)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    sep = "&" if "?" in server_url else "?"
    return schema, f"{server_url}{sep}options=-csearch_path%3D{schema}"


def drop_pg_schema(server_url: str, schema: str) -> None:
    """Drop a schema made by ``create_pg_schema`` and everything in it."""
    from sqlalchemy import create_engine, text

    engine = create_engine(server_url)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()
