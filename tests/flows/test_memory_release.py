"""After every batch a flow drops Prefect's links to the batch's task results and hands the memory the batch freed
back to the operating system, so a worker's RSS follows its largest batch rather than the number of batches it has
done."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from prefect import flow, task
from prefect.context import FlowRunContext

from engram import Memory
from engram.store import Store
from flows.consolidate import consolidate
from flows.ingest import ingest
from flows.sessions import close_sessions
from tasks.common import BatchMemory, _malloc_trim, release_freed_memory
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


def test_every_batch_of_the_lifecycle_flows_ends_by_releasing_its_memory(
    sqlite_memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    release = BatchMemory.release

    def counting(self: BatchMemory) -> None:
        calls.append("release")
        release(self)

    monkeypatch.setattr(BatchMemory, "release", counting)
    sqlite_memory.observe_many(conversation_rows("acme", sessions=3, start=T0))  # 24 turns
    url, as_of = sqlite_memory.store_url, T0 + timedelta(days=10)

    assert ingest(store_url=url, as_of=as_of, batch_size=10)["routed"] == 24  # batches of 10, 10 and 4
    assert len(calls) == 3
    assert close_sessions(store_url=url, as_of=as_of, batch_size=1)["episodes"] == 3
    assert len(calls) == 6
    assert consolidate(store_url=url, as_of=as_of, batch_size=1)["episodes"] == 3
    assert len(calls) == 9


def test_a_flow_keeps_no_links_to_the_results_of_its_finished_batches(
    sqlite_memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prefect keeps an entry per task result, and per item of a returned list, for the whole flow run: a batch's
    claimed sessions (a list of keys) would stay linked to the end of the run, and the entries would grow with the
    number of batches."""
    linked: list[int] = []
    claim = Store.claim_sessions_to_close

    def counting(self: Store, *args: object, **kwargs: object) -> list[tuple[str, str]]:
        context = FlowRunContext.get()
        assert context is not None
        linked.append(len(context.run_results))  # at the start of each batch: what the earlier batches left
        return claim(self, *args, **kwargs)

    monkeypatch.setattr(Store, "claim_sessions_to_close", counting)
    sqlite_memory.observe_many(conversation_rows("acme", sessions=60, start=T0, turns_per_session=2))
    url, as_of = sqlite_memory.store_url, T0 + timedelta(days=100)
    assert ingest(store_url=url, as_of=as_of)["routed"] == 120

    assert close_sessions(store_url=url, as_of=as_of, batch_size=10)["episodes"] == 60

    assert len(linked) == 7  # six batches of ten sessions, then an empty claim
    # Each batch returned ten session keys and counts; without the release, each batch adds them for good.
    assert max(linked) == linked[0], linked


def test_links_made_before_the_batch_loop_are_kept() -> None:
    """What every batch takes as input (a storage, a consolidator) stays linked, so Prefect's task graph still shows
    where it came from."""

    @task
    def setting() -> list[str]:
        return ["a setting", "that every batch reads"]

    @task
    def batch_keys(i: int, shared: list[str]) -> list[tuple[int, int]]:
        return [(i, j) for j in range(1000)] if shared else []

    @flow
    def batches() -> tuple[bool, list[int]]:
        context = FlowRunContext.get()
        assert context is not None
        shared = setting()
        memory = BatchMemory()
        sizes = []
        for i in range(5):
            assert len(batch_keys(i, shared)) == 1000
            memory.release()
            sizes.append(len(context.run_results))
        return id(shared) in context.run_results, sizes

    kept, sizes = batches()
    assert kept
    assert sizes == [sizes[0]] * 5 and sizes[0] < 10, sizes
