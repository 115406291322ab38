"""A worker hands the memory a batch freed back to the operating system after every batch, so its RSS follows its
largest batch rather than the number of batches it has done."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

import pytest

from engram import Memory
from flows.consolidate import consolidate
from flows.ingest import ingest
from flows.sessions import close_sessions
from tasks.common import _malloc_trim, release_freed_memory
from tests.conftest import T0
from tests.flows.helpers import conversation_rows


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(_malloc_trim() is None, reason="malloc_trim is glibc's")
def test_memory_freed_between_live_allocations_goes_back_to_the_operating_system() -> None:
    size = 4000  # a variable, or the compiler folds b"x" * 4000 into one shared constant
    chunks = [b"x" * size for _ in range(50_000)]  # about 200 MB from malloc, every page written
    kept = chunks[::16]  # live allocations spread over that memory, as a long run leaves them
    del chunks
    held = _rss_mb()  # malloc keeps what lies between them mapped
    release_freed_memory()
    released = held - _rss_mb()
    assert released > 100, f"{released:.0f} MB released"
    assert len(kept) == 3125


def test_every_batch_of_the_lifecycle_flows_ends_by_releasing_freed_memory(
    sqlite_memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: Counter[str] = Counter()

    def counting(module: str) -> Callable[[], None]:
        def release() -> None:
            calls[module] += 1
            release_freed_memory()

        return release

    for module in ("flows.ingest", "flows.sessions", "flows.consolidate"):
        monkeypatch.setattr(f"{module}.release_freed_memory", counting(module))
    sqlite_memory.observe_many(conversation_rows("acme", sessions=3, start=T0))  # 24 turns
    url, as_of = sqlite_memory.store_url, T0 + timedelta(days=10)

    assert ingest(store_url=url, as_of=as_of, batch_size=10)["routed"] == 24  # batches of 10, 10 and 4
    assert close_sessions(store_url=url, as_of=as_of, batch_size=1)["episodes"] == 3
    assert consolidate(store_url=url, as_of=as_of, batch_size=1)["episodes"] == 3
    assert calls == {"flows.ingest": 3, "flows.sessions": 3, "flows.consolidate": 3}
