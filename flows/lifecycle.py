"""``lifecycle``: the parent flow that moves memory through every layer, in order."""

from __future__ import annotations

from datetime import datetime

from prefect import flow

from flows.consolidate import consolidate
from flows.ingest import ingest
from flows.sessions import close_sessions, expire_working
from tasks.common import resolve_as_of


@flow(name="lifecycle")
def lifecycle(
    store_url: str | None = None,
    archive_url: str | None = None,
    as_of: datetime | None = None,
    tenant: str | None = None,
) -> dict[str, dict]:
    """Ingest, close finished sessions, expire stale working memory, consolidate episodes."""
    as_of = resolve_as_of(as_of)
    return {
        "ingest": ingest(store_url=store_url, as_of=as_of, tenant=tenant),
        "close_sessions": close_sessions(store_url=store_url, as_of=as_of, tenant=tenant),
        "expire_working": expire_working(store_url=store_url, as_of=as_of, tenant=tenant),
        "consolidate": consolidate(store_url=store_url, as_of=as_of, tenant=tenant),
    }
