"""``consolidate``: episodic -> semantic."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from prefect import flow
from pydantic import SecretStr

from engram.errors import EpisodesHeldBack, failed_whole
from engram.policy import LifecyclePolicy
from engram.settings import reveal
from tasks.common import BatchMemory, Stopwatch, resolve_as_of, worker_id
from tasks.consolidation import claim_episodes, consolidate_batch, load_consolidator
from tasks.reporting import publish_run_summary, publish_validation

LOCAL_BATCH = 1_000
LLM_BATCH = 50


@flow(name="consolidate")
def consolidate(
    store_url: str | SecretStr | None = None,
    as_of: datetime | None = None,
    tenant: str | None = None,
    batch_size: int | None = None,
    max_reject_fraction: float = 0.5,
    max_batches: int = 10_000,
    consolidator_block: str | None = None,
) -> dict:
    """Distil facts from episodes under database leases, gate them, and merge or version them into the semantic
    layer. Two runs at once take disjoint episodes; a crashed run's episodes are retaken when its lease expires.

    ``consolidator_block`` names an ``LLMConsolidatorEndpoint`` block to distil with a chat model instead of the
    local extractive consolidator.

    ``batch_size`` is episodes per leased batch; by default 1,000 with the local consolidator (fewer batches, fewer
    task runs and gate runs per episode) and 50 with a chat model, whose calls take seconds each and whose batch
    must be committed within its lease.

    An episode the consolidator fails on does not hold back the others: it stays unconsolidated with a quarantine
    row giving the error, the run goes on, and once its batches are done it raises ``EpisodesHeldBack`` naming the
    held-back episodes, so the run shows failed. They are retried by the first run after their lease expires. A
    batch of several episodes that fails whole (a broken consolidator) ends the run's claiming.
    """
    store_url = reveal(store_url)
    clock, as_of, policy, owner = Stopwatch(), resolve_as_of(as_of), LifecyclePolicy.from_settings(), worker_id()
    consolidator = load_consolidator(consolidator_block)
    if batch_size is None:
        batch_size = LLM_BATCH if consolidator_block else LOCAL_BATCH
    totals: Counter[str] = Counter()
    results = []
    batches = BatchMemory()
    held: dict[tuple[str, str], str] = {}
    for _ in range(max_batches):
        episodes = claim_episodes(store_url, as_of, owner, policy.lease.total_seconds(), batch_size, tenant)
        if not episodes:
            break
        counts, result, batch_held = consolidate_batch(
            store_url, episodes, owner, as_of, max_reject_fraction, consolidator
        )
        results.append(result)
        totals.update(counts)
        held |= batch_held
        batches.release()
        if failed_whole(len(episodes), len(batch_held)):
            break  # not one episode of several could be distilled: the consolidator is broken, stop claiming
    publish_validation("episodic_to_semantic", results)
    summary = publish_run_summary("consolidate", dict(totals), clock.seconds)
    if held:
        raise EpisodesHeldBack(held, {"consolidate": summary})
    return summary
