"""``close_sessions`` (working -> episodic) and ``expire_working`` (working -> discarded)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from prefect import flow
from prefect.utilities.annotations import opaque
from pydantic import SecretStr

from engram.policy import LifecyclePolicy
from engram.settings import reveal
from tasks.common import BatchMemory, Stopwatch, resolve_as_of, worker_id
from tasks.reporting import publish_run_summary
from tasks.sessions import (
    announce_closed_sessions,
    claim_sessions_to_close,
    discard_expired_working,
    turn_sessions_into_episodes,
)


@flow(name="close_sessions")
def close_sessions(
    store_url: str | SecretStr | None = None,
    as_of: datetime | None = None,
    tenant: str | None = None,
    batch_size: int = 2_000,
    max_batches: int = 10_000,
) -> dict:
    """Turn every session that is idle past the policy's timeout, or closed explicitly, into an episode."""
    store_url = reveal(store_url)
    clock, as_of, policy, owner = Stopwatch(), resolve_as_of(as_of), LifecyclePolicy.from_settings(), worker_id()
    totals: Counter[str] = Counter()
    batches = BatchMemory()
    for _ in range(max_batches):
        sessions = claim_sessions_to_close(
            store_url,
            as_of,
            policy.session_idle_timeout.total_seconds(),
            owner,
            policy.lease.total_seconds(),
            batch_size,
            tenant,
        )
        if not sessions:
            break
        totals["sessions_in"] += len(sessions)
        # opaque: Prefect links the claim's result to these task runs without walking its thousands of tuples
        closed = turn_sessions_into_episodes(store_url, opaque(sessions), owner, as_of)
        totals.update(closed)
        announce_closed_sessions(opaque(sessions), closed.get("episodes", 0))
        batches.release()
    return publish_run_summary("close_sessions", dict(totals), clock.seconds)


@flow(name="expire_working")
def expire_working(
    store_url: str | SecretStr | None = None,
    as_of: datetime | None = None,
    tenant: str | None = None,
    batch_size: int = 5_000,
    max_batches: int = 10_000,
) -> dict:
    """Discard working memory past its TTL that belongs to no open session, auditing each discard."""
    store_url = reveal(store_url)
    clock, as_of = Stopwatch(), resolve_as_of(as_of)
    discarded = 0
    batches = BatchMemory()
    for _ in range(max_batches):
        n = discard_expired_working(store_url, as_of, batch_size, tenant)
        discarded += n
        batches.release()
        if n < batch_size:
            break
    return publish_run_summary("expire_working", {"discarded": discarded}, clock.seconds)
