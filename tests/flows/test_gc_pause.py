"""Batch tasks pause Python's cycle collector for their work and resume it after, whatever happens in between."""

from __future__ import annotations

import gc
import threading
import weakref
from datetime import timedelta

import pytest

from engram import Memory
from engram import archive as arc
from engram.consolidate import LocalConsolidator
from engram.store import Store
from flows.archive import archive
from tasks.common import cyclic_gc_paused
from tests.conftest import T0
from tests.flows.helpers import conversation_rows


@pytest.fixture(autouse=True)
def _collector_running():
    assert gc.isenabled()
    yield
    gc.enable()


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: reference counting alone never frees it


def test_the_collector_is_paused_inside_and_collects_what_the_batch_left_after() -> None:
    with cyclic_gc_paused():
        assert not gc.isenabled()
        left = weakref.ref(_Node())
        gc.collect()  # an explicit collection still runs; the pause stops only the automatic ones
        assert left() is None
        again = weakref.ref(_Node())
    assert gc.isenabled()
    assert again() is not None  # still there: nothing collected it during the pause
    gc.collect()
    assert again() is None


def test_the_collector_resumes_after_a_failing_batch() -> None:
    with pytest.raises(RuntimeError, match="boom"), cyclic_gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_collector_paused_before_stays_paused() -> None:
    gc.disable()
    with cyclic_gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_overlapping_batches_in_two_threads_resume_it_when_the_last_ends() -> None:
    first_in, second_done, seen = threading.Event(), threading.Event(), []

    def first() -> None:
        with cyclic_gc_paused():
            first_in.set()
            second_done.wait(10)
            seen.append(("first, after the second ended", gc.isenabled()))

    thread = threading.Thread(target=first)
    thread.start()
    assert first_in.wait(10)
    with cyclic_gc_paused():
        assert not gc.isenabled()
    seen.append(("second ended, first still working", gc.isenabled()))
    second_done.set()
    thread.join(10)
    assert seen == [("second ended, first still working", False), ("first, after the second ended", False)]
    assert gc.isenabled()


def test_the_lifecycle_and_the_archive_run_their_batch_work_paused_and_leave_the_collector_running(
    sqlite_memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, bool] = {}

    def watched(name: str, fn):  # noqa: ANN001, ANN202
        def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            seen[name] = gc.isenabled()
            return fn(*args, **kwargs)

        return call

    monkeypatch.setattr(Store, "route_events", watched("route", Store.route_events))
    monkeypatch.setattr(Store, "close_sessions", watched("close", Store.close_sessions))
    monkeypatch.setattr(LocalConsolidator, "distill", watched("distill", LocalConsolidator.distill))
    monkeypatch.setattr(Store, "commit_consolidation", watched("commit", Store.commit_consolidation))
    sqlite_memory.observe_many(conversation_rows("t1", 1, T0))
    summary = sqlite_memory.run_lifecycle(T0 + timedelta(days=2))
    assert summary["consolidate"]["episodes"] == 1
    assert seen == {"route": False, "close": False, "distill": False, "commit": False}
    assert gc.isenabled()

    for name in ("archive_batch", "verify_manifests", "commit_manifests"):
        monkeypatch.setattr(arc, name, watched(name, getattr(arc, name)))
    moved = archive(
        store_url=sqlite_memory.store_url, archive_url=sqlite_memory.archive_url, as_of=T0 + timedelta(days=3650)
    )
    assert moved["rows_verified"] > 0
    assert {k: seen[k] for k in ("archive_batch", "verify_manifests", "commit_manifests")} == {
        "archive_batch": False,
        "verify_manifests": False,
        "commit_manifests": False,
    }
    assert gc.isenabled()
