"""Tasks of ``close_sessions`` and ``expire_working``."""

from __future__ import annotations

from datetime import datetime

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from engram.collector import cyclic_gc_paused
from engram.consolidate import summarize_episode
from engram.errors import LeaseLost
from tasks.common import current_run_id, open_store


@task(retries=3, retry_delay_seconds=[2, 5, 15], cache_policy=NO_CACHE)
def claim_sessions_to_close(
    store_url: str | None,
    as_of: datetime,
    idle_seconds: float,
    owner: str,
    lease_seconds: float,
    batch_size: int,
    tenant: str | None,
) -> list[tuple[str, str]]:
    """Lease a batch of sessions that are over (idle or closed explicitly)."""
    return open_store(store_url).claim_sessions_to_close(as_of, idle_seconds, owner, lease_seconds, batch_size, tenant)


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
@cyclic_gc_paused()
def turn_sessions_into_episodes(
    store_url: str | None, sessions: list[tuple[str, str]], owner: str, as_of: datetime
) -> dict[str, int]:
    """Each leased session's working items become one episode with ordered turns and a summary.

    A lost lease skips the batch (nothing of it was written; the worker that retook it does it).
    """
    try:
        counts = open_store(store_url).close_sessions(sessions, owner, as_of, current_run_id(), summarize_episode)
        if counts.get("unsummarized"):
            get_run_logger().warning(
                "%d episodes written without a summary, their summary failed: see quarantine (source close_sessions)",
                counts["unsummarized"],
            )
        return counts
    except LeaseLost as exc:
        get_run_logger().warning("batch of %d sessions skipped: %s", len(sessions), exc)
        return {"lease_lost": len(sessions)}


@task(retries=3, retry_delay_seconds=[2, 5, 15], cache_policy=NO_CACHE)
def discard_expired_working(store_url: str | None, as_of: datetime, batch_size: int, tenant: str | None) -> int:
    """Discard a batch of working items past their TTL that belong to no open session."""
    return open_store(store_url).expire_working(as_of, current_run_id(), batch_size, tenant)


@task(cache_policy=NO_CACHE)
def announce_closed_sessions(sessions: list[tuple[str, str]], episodes: int) -> int:
    """One ``engram.session.closed`` event per tenant of a batch that became episodes (deployment triggers start
    ``consolidate`` from it); returns how many events were emitted."""
    from prefect.events import emit_event

    if not episodes:
        return 0
    by_tenant: dict[str, list[str]] = {}
    for tenant, session_id in sessions:
        by_tenant.setdefault(tenant, []).append(session_id)
    for tenant, ids in sorted(by_tenant.items()):
        emit_event(
            event="engram.session.closed",
            resource={"prefect.resource.id": f"engram.tenant.{tenant}", "engram.tenant": tenant},
            payload={"sessions": len(ids), "session_ids": ids[:100]},
        )
    return len(by_tenant)
