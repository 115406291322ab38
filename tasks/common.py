"""What every task needs: the store for a URL (opened once per process) and the current flow run's id."""

from __future__ import annotations

import ctypes
import gc
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache, lru_cache
from typing import Any

from engram.settings import Settings
from engram.store import Store


@lru_cache(maxsize=8)
def open_store(url: str | None) -> Store:
    """The store at ``url`` (or the configured default), migrated to head once per process."""
    store = Store(url or Settings().resolved_store_url())
    store.migrate()
    return store


def current_run_id() -> str | None:
    """The id of the running flow, for the audit trail; None outside a flow run."""
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None


def worker_id() -> str:
    """A lease owner: this flow run (or, outside one, this process) plus a random part."""
    return f"{current_run_id() or 'local'}:{uuid.uuid4().hex[:8]}"[:64]


def resolve_as_of(as_of: datetime | None) -> datetime:
    """``as_of`` as aware UTC; now when not given."""
    if as_of is None:
        return datetime.now(UTC)
    return as_of.replace(tzinfo=UTC) if as_of.utcoffset() is None else as_of.astimezone(UTC)


@cache
def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc, loaded once, for its malloc's own functions; None elsewhere (macOS, musl)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


@cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``; None off glibc."""
    libc = glibc()
    if libc is None:
        return None
    fn = libc.malloc_trim
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def release_freed_memory() -> None:
    """Hand the memory that the process has freed back to the operating system.

    glibc's malloc keeps freed memory for reuse, and memory freed between long-lived allocations (SQLite's pages,
    a batch's strings and frames) stays mapped: over a long run a worker's RSS creeps up with the number of batches
    it has done. ``malloc_trim(0)`` returns the whole free pages of every arena; it costs little against a batch's
    seconds. Elsewhere than glibc it does nothing.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


_GC_PAUSE_LOCK = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = False
_gc_collected_at = 0.0
# Pauses of several threads may overlap without end; the one that ends after this long without a collection runs one.
GC_PAUSE_MAX_SECONDS = 60.0


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Python's cycle collector paused while a task does its batch work; resumed when the last such task ends. A
    decorator of the task's function (under ``@task``), or a ``with`` block around part of it.

    A batch builds and drops hundreds of thousands of containers (a dict per row, lists of values) that reference
    counting frees as they go, since they hold no cycles. The cycle collector still counts them: every 700
    containers allocated it examines the young ones, and every so often the whole heap, which the batch's own rows
    make large. Over a lifecycle run of 10^5 events that came to 9.5 of its 44 s, 7.9 s of it in 25 full
    collections, and to 3.2-3.6 of the 18 s that archiving its 197,305 rows took (measured with ``gc.callbacks``).
    What a batch leaves in cycles is collected once the pause ends, so a run's memory still follows its largest
    batch. Work that waits on the network (a chat model's answers) gains nothing from it and is not paused.

    Tasks of one process may run in several threads: the collector stays paused until the last of them is done,
    and is resumed only if it was running when the first began. Should their pauses overlap without end, a pause
    that ends more than ``GC_PAUSE_MAX_SECONDS`` after the last collection runs a full one itself, so that cycles
    left by every thread are still collected.
    """
    global _gc_pauses, _gc_was_enabled, _gc_collected_at
    with _GC_PAUSE_LOCK:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            _gc_collected_at = time.monotonic()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        collect = False
        with _GC_PAUSE_LOCK:
            _gc_pauses -= 1
            if _gc_pauses == 0:
                if _gc_was_enabled:
                    gc.enable()
            elif _gc_was_enabled and time.monotonic() - _gc_collected_at > GC_PAUSE_MAX_SECONDS:
                collect, _gc_collected_at = True, time.monotonic()
        if collect:
            gc.collect()


class BatchMemory:
    """Releases, after each batch of a flow's batch loop, what the batch left behind, so that a run's memory
    follows its largest batch and not the number of batches it has done.

    - Prefect's links from task results to their task runs. For dependency tracking, a flow run keeps an entry per
      task result, and per item of a returned list or dict, for the flow run's whole life
      (``EngineContext.run_results``): a batch of 2,000 claimed sessions leaves 2,000 entries behind (fewer once
      freed objects' ids are reused: 162,721 after 200 results of 5,000 keys each). A batch's results are passed
      on within the batch only, so its links are dropped at its end. Results linked before the loop started (the
      archive storage and retention rules, the consolidator, which every batch takes as inputs) keep theirs, and
      the run's task graph still shows them upstream of each batch.
    - The freed memory glibc holds (``release_freed_memory``).

    Example:
        >>> batches = BatchMemory()  # doctest: +SKIP
        >>> for _ in range(max_batches):  # doctest: +SKIP
        ...     ...  # the batch's tasks
        ...     batches.release()
    """

    def __init__(self) -> None:
        results = self._run_results()
        self._before = frozenset(results) if results is not None else frozenset()

    @staticmethod
    def _run_results() -> dict[int, Any] | None:
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        return getattr(context, "run_results", None) if context is not None else None

    def release(self) -> None:
        results = self._run_results()
        if results is not None:
            for key in list(results):  # list(): a snapshot of the keys, taken at once
                if key not in self._before:
                    results.pop(key, None)
        release_freed_memory()


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started
