"""Batch tasks and observe_many pause Python's cycle collector for their work and resume it after, whatever happens in
between."""

from __future__ import annotations

import gc
import os
import threading
import weakref
from datetime import timedelta
from typing import Any

import pytest

from engram import Memory, collector, quality
from engram import archive as arc
from engram.collector import cyclic_gc_paused
from engram.consolidate import LocalConsolidator
from engram.store import Store
from flows.archive import archive
from tasks.consolidation import distill_facts
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
        rows = [{"n": i} for i in range(100_000)]  # far past the 700 allocations that start a collection
        del rows
        assert again() is not None  # nothing collected it: the collector is paused for every thread
    assert gc.isenabled()
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


def test_pauses_that_overlap_without_end_still_collect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collector, "GC_PAUSE_MAX_SECONDS", 0.0)
    holding, release = threading.Event(), threading.Event()

    def other_thread() -> None:
        with cyclic_gc_paused():
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        assert holding.wait(10)
        with cyclic_gc_paused():
            left = weakref.ref(_Node())
        # The other thread still holds its pause: the collector stays off, but the pause that ended ran a collection.
        assert not gc.isenabled()
        assert left() is None
    finally:
        release.set()
        thread.join(10)
    assert gc.isenabled()


def test_distilling_with_a_chat_model_does_not_pause_the_collector(sqlite_memory: Memory) -> None:
    seen = []

    class Remote:
        name = "remote"

        def distill(self, episodes: Any, turns: Any) -> Any:
            seen.append(gc.isenabled())
            return LocalConsolidator().distill(episodes, turns)

    class Local(LocalConsolidator):
        def distill(self, episodes: Any, turns: Any) -> Any:
            seen.append(gc.isenabled())
            return super().distill(episodes, turns)

    for consolidator in (Remote(), Local()):
        distill_facts.fn(sqlite_memory.store_url, [], consolidator)
    assert seen == [True, False]


def test_the_lifecycle_and_the_archive_run_their_batch_work_paused_and_leave_the_collector_running(
    sqlite_memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, bool] = {}

    def watched(name: str, fn):  # noqa: ANN001, ANN202
        def call(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            seen[name] = gc.isenabled()
            return fn(*args, **kwargs)

        return call

    monkeypatch.setattr(Store, "pending_events", watched("read", Store.pending_events))
    monkeypatch.setattr(quality, "validate_sensory_batch", watched("gate", quality.validate_sensory_batch))
    monkeypatch.setattr(quality, "validate_fact_batch", watched("gate facts", quality.validate_fact_batch))
    monkeypatch.setattr(Store, "archive_candidates", watched("pick", Store.archive_candidates))
    monkeypatch.setattr(Store, "route_events", watched("route", Store.route_events))
    monkeypatch.setattr(Store, "close_sessions", watched("close", Store.close_sessions))
    monkeypatch.setattr(LocalConsolidator, "distill", watched("distill", LocalConsolidator.distill))
    monkeypatch.setattr(Store, "commit_consolidation", watched("commit", Store.commit_consolidation))
    sqlite_memory.observe_many(conversation_rows("t1", 1, T0))
    summary = sqlite_memory.run_lifecycle(T0 + timedelta(days=2))
    assert summary["consolidate"]["episodes"] == 1
    assert seen == {
        "read": False,
        "gate": False,
        "route": False,
        "close": False,
        "distill": False,
        "gate facts": False,
        "commit": False,
    }
    assert gc.isenabled()

    for name in ("archive_batch", "verify_manifests", "commit_manifests"):
        monkeypatch.setattr(arc, name, watched(name, getattr(arc, name)))
    moved = archive(
        store_url=sqlite_memory.store_url, archive_url=sqlite_memory.archive_url, as_of=T0 + timedelta(days=3650)
    )
    assert moved["rows_verified"] > 0
    assert {k: seen[k] for k in ("pick", "archive_batch", "verify_manifests", "commit_manifests")} == {
        "pick": False,
        "archive_batch": False,
        "verify_manifests": False,
        "commit_manifests": False,
    }
    assert gc.isenabled()


@pytest.fixture
def collector_at_write(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether the collector was running at each batch ``observe_many`` wrote to the store."""
    seen: list[bool] = []
    add_events = Store.add_events

    def watched(self: Store, *args: Any, **kwargs: Any) -> Any:
        seen.append(gc.isenabled())
        return add_events(self, *args, **kwargs)

    monkeypatch.setattr(Store, "add_events", watched)
    return seen


def test_observe_many_writes_each_batch_paused_and_resumes_the_collector_after_it(
    sqlite_memory: Memory, collector_at_write: list[bool]
) -> None:
    report = sqlite_memory.observe_many(conversation_rows("t1", 3, T0), batch_size=10)
    assert report.accepted == 24
    assert collector_at_write == [False, False, False]  # 24 rows in batches of 10: three batches, each paused
    assert gc.isenabled()


def test_observe_many_resumes_the_collector_when_a_batch_fails(
    sqlite_memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(self: Store, *args: Any, **kwargs: Any) -> Any:
        assert not gc.isenabled()
        raise RuntimeError("disk full")

    monkeypatch.setattr(Store, "add_events", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        sqlite_memory.observe_many(conversation_rows("t1", 1, T0))
    assert gc.isenabled()


def test_observe_many_leaves_the_collector_alone_when_the_settings_say_so(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, collector_at_write: list[bool]
) -> None:
    from engram.settings import Settings

    monkeypatch.setenv("ENGRAM_PAUSE_COLLECTOR", "false")
    settings = Settings()
    assert settings.pause_collector is False  # the variable README names reaches the setting
    memory = Memory(f"sqlite:///{tmp_path / 'engram.db'}", (tmp_path / "archive").as_uri(), settings=settings)
    try:
        assert memory.observe_many(conversation_rows("t1", 1, T0)).accepted == 8
    finally:
        memory.close()
    assert collector_at_write == [True]


def _in_child(check) -> int:  # noqa: ANN001
    """The exit code of a forked child that runs ``check`` (0 when it holds)."""
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no logging, only the check
        code = 1
        try:
            code = 0 if check() else 1
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_child_forked_while_another_thread_pauses_starts_with_the_collector_running() -> None:
    paused, done = threading.Event(), threading.Event()

    def other() -> None:
        with cyclic_gc_paused():
            paused.set()
            done.wait(timeout=30)

    thread = threading.Thread(target=other)
    thread.start()
    try:
        assert paused.wait(timeout=30)
        assert not gc.isenabled()
        # The other thread does not live on in the child: its pause is over there.
        assert _in_child(gc.isenabled) == 0
    finally:
        done.set()
        thread.join(timeout=30)
    assert gc.isenabled()


def test_a_child_forked_inside_a_pause_keeps_it_until_its_own_block_ends() -> None:
    def check() -> bool:
        with cyclic_gc_paused():  # a pause of the child's own, inside the one it inherited
            inner = not gc.isenabled()
        return inner and not gc.isenabled()

    def forked_inside() -> int:
        with cyclic_gc_paused():
            return _in_child(check)

    assert forked_inside() == 0
    assert gc.isenabled()
