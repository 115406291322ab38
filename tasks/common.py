"""What every task needs: the store for a URL (opened once per process) and the current flow run's id."""

from __future__ import annotations

import ctypes
import time
import uuid
from datetime import UTC, datetime
from functools import cache, lru_cache
from typing import Any

from engram.settings import Settings
from engram.store import Store


def open_store(url: str | None) -> Store:
    """The store at ``url`` (or the configured default), with the ``consolidate_attempts`` setting, migrated to head
    once per process."""
    settings = Settings()
    return _opened_store(url or settings.resolved_store_url(), settings.consolidate_attempts)


@lru_cache(maxsize=8)
def _opened_store(url: str, consolidate_attempts: int) -> Store:
    store = Store(url, consolidate_attempts=consolidate_attempts)
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
