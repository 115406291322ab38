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
    """Hand the memory that a finished batch freed back to the operating system.

    glibc's malloc keeps freed memory for reuse, and memory freed between long-lived allocations (SQLite's pages,
    a batch's strings and frames, Prefect's results) stays mapped: over a long run a worker's RSS creeps up with
    the number of batches it has done. The flows call this after every batch, which keeps that creep to what one
    batch frees (BENCHMARKS.md, ``make bench-large``: peak RSS at 2 x 10^6 events with and without it).
    ``malloc_trim(0)`` returns the whole free pages of every arena; it costs little against a batch's seconds.
    Elsewhere than glibc it does nothing.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started
