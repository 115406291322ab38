"""Tasks of ``close_sessions`` and ``expire_working``."""

from __future__ import annotations

from datetime import datetime

from prefect import task
from prefect.cache_policies import NO_CACHE

from engram.consolidate import summarize_episode
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
def turn_sessions_into_episodes(
    store_url: str | None, sessions: list[tuple[str, str]], owner: str, as_of: datetime
) -> dict[str, int]:
    """Each leased session's working items become one episode with ordered turns and a summary."""
    return open_store(store_url).close_sessions(sessions, owner, as_of, current_run_id(), summarize_episode)


@task(retries=3, retry_delay_seconds=[2, 5, 15], cache_policy=NO_CACHE)
def discard_expired_working(store_url: str | None, as_of: datetime, batch_size: int, tenant: str | None) -> int:
    """Discard a batch of working items past their TTL that belong to no open session."""
    return open_store(store_url).expire_working(as_of, current_run_id(), batch_size, tenant)
