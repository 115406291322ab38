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
