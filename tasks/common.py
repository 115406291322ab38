"""What every task needs: the store for a URL (opened once per process) and the current flow run's id."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from functools import lru_cache

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


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started
