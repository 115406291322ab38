"""Tasks of the ``consolidate`` flow: claim episodes, distil facts, gate them, commit the plan."""

from __future__ import annotations

from contextlib import nullcontext
from datetime import datetime
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import opaque

from engram.collector import cyclic_gc_paused
from engram.consolidate import Consolidator, LocalConsolidator, distill_isolating, plan_changes
from engram.embed import enabled as embeddings_enabled
from engram.errors import LeaseLost, QualityGateFailed, failed_whole
from tasks.common import current_run_id, open_store
from tasks.reporting import publish_gate_failure


def load_consolidator(block_name: str | None) -> Consolidator:
    """The local consolidator, or the LLM one configured in the named ``LLMConsolidatorEndpoint`` block."""
    if not block_name:
        return LocalConsolidator()
    from blocks.consolidator import LLMConsolidatorEndpoint

    return LLMConsolidatorEndpoint.load(block_name).get_consolidator()


@task(retries=3, retry_delay_seconds=[2, 5, 15], cache_policy=NO_CACHE)
def claim_episodes(
    store_url: str | None,
    as_of: datetime,
    owner: str,
    lease_seconds: float,
    batch_size: int,
    tenant: str | list[str] | None,
) -> list[tuple[str, str]]:
    """Lease a batch of episodes not consolidated yet, of one tenant or of several (a shard's); not those set aside
    after ``ENGRAM_CONSOLIDATE_ATTEMPTS`` failed runs."""
    return open_store(store_url).claim_episodes(as_of, owner, lease_seconds, batch_size, tenant)


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def distill_facts(
    store_url: str | None, episodes: list[tuple[str, str]], consolidator: Consolidator | None = None
) -> tuple[pd.DataFrame, dict[tuple[str, str], str]]:
    """Candidate facts from the episodes' turns, and the episodes the consolidator failed on with why
    (``engram.consolidate.distill_isolating``): those are held back, the rest of the batch goes on."""
    consolidator = consolidator or LocalConsolidator()
    # A chat model's answers are waited for, not computed: only the local consolidator's work pauses the collector.
    with cyclic_gc_paused() if isinstance(consolidator, LocalConsolidator) else nullcontext():
        frames, turns = open_store(store_url).load_episodes(episodes)
        candidates, held = distill_isolating(consolidator, frames, turns)
    if held:
        logger = get_run_logger()
        for (tenant, episode_id), reason in held.items():
            logger.warning(
                "episode %s of tenant %s held back, it could not be distilled: %s", episode_id, tenant, reason
            )
    return candidates, held


@task(cache_policy=NO_CACHE)
@cyclic_gc_paused()
def gate_facts(candidates: pd.DataFrame, max_reject_fraction: float):  # noqa: ANN201 - GateResult
    """The episodic -> semantic quality gate."""
    from engram.quality import validate_fact_batch

    try:
        return validate_fact_batch(candidates, max_reject_fraction=max_reject_fraction)
    except QualityGateFailed as exc:
        publish_gate_failure(exc.suite, exc.result)
        raise


@task(cache_policy=NO_CACHE)
def embed_facts(facts: pd.DataFrame) -> dict[str, bytes]:
    """Dense vectors of the facts' texts, in batches, when the embeddings extra is installed; else nothing."""
    from engram.embed import default_embedder, embedding_text, to_bytes

    embedder = default_embedder()
    if embedder is None or facts.empty:
        return {}
    texts = list(dict.fromkeys(facts["text"]))
    actors = dict(zip(facts["text"], facts["actor"], strict=False))
    vectors = embedder.embed([embedding_text(t, actors.get(t, "")) for t in texts])
    return dict(zip(texts, to_bytes(vectors), strict=True))


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
@cyclic_gc_paused()
def commit_facts(
    store_url: str | None,
    episodes: list[tuple[str, str]],
    facts: pd.DataFrame,
    owner: str,
    as_of: datetime,
    vectors: dict[str, bytes] | None = None,
    held: dict[tuple[str, str], str] | None = None,
    rejected: list[dict[str, Any]] | None = None,
) -> dict[str, int]:
    """Merge, version or add the facts and mark the episodes consolidated, in one transaction under the leases;
    quarantine the facts the gate ``rejected`` (quarantine rows) and the reasons of the ``held`` episodes (some of
    ``episodes``), which stay unconsolidated, and count
    the failure against each (``set_aside``: those that reached ``ENGRAM_CONSOLIDATE_ATTEMPTS``). When the batch
    failed whole, the consolidator may be what failed: only episodes already failed on alone are counted.

    A lost lease (another worker retook the episodes after this one was too slow) is not a failure: nothing of the
    batch was written, the new holder does it, and the run goes on with its next batch.
    """
    try:
        return open_store(store_url).commit_consolidation(
            [key for key in episodes if key not in held] if held else episodes,
            facts,
            owner,
            as_of,
            current_run_id(),
            plan_changes,
            vectors,
            held,
            bool(held) and failed_whole(len(episodes), len(held)),
            rejected or (),
        )
    except LeaseLost as exc:
        get_run_logger().warning("batch of %d episodes skipped: %s", len(episodes), exc)
        return {"lease_lost": len(episodes)}


def consolidate_batch(
    store_url: str | None,
    episodes: list[tuple[str, str]],
    owner: str,
    as_of: datetime,
    max_reject_fraction: float,
    consolidator: Consolidator | None = None,
) -> tuple[dict[str, int], Any, dict[tuple[str, str], str]]:
    """One leased batch through the tasks above: distil, gate, embed (when embeddings are on), commit. Called from
    a flow (the tasks run as its task runs); returns the batch's counts (with ``rows_in``, ``quarantined`` and
    ``held_back``), the gate's result, and the held-back episodes with their reasons.

    An episode the consolidator fails on is held back alone: the others are committed, it stays unconsolidated
    under its lease with a quarantine row, and the flow raises ``EpisodesHeldBack`` once its batches are done.
    """
    # opaque: Prefect links the claim's result to these task runs without walking its thousand tuples
    candidates, held = distill_facts(store_url, opaque(episodes), consolidator)
    gate = gate_facts(candidates, max_reject_fraction)
    # Without embeddings there is no embedding task run: the run graph shows only work that was done.
    vectors = embed_facts(gate.valid) if embeddings_enabled() else None
    rejected = _rejected_facts(candidates, gate.rejected, as_of) if gate.rejected else None
    counts = dict(commit_facts(store_url, opaque(episodes), gate.valid, owner, as_of, vectors, held or None, rejected))
    counts["rows_in"] = counts.get("rows_in", 0) + len(candidates)
    counts["quarantined"] = counts.get("quarantined", 0) + len(gate.rejected)
    if counts.get("lease_lost"):
        held = {}
    return counts, gate.result, held


def _rejected_facts(candidates: Any, rejected: list[dict[str, Any]], as_of: datetime) -> list[dict[str, Any]]:
    """Quarantine rows (source ``consolidate``) for the candidate facts the gate turned away, each with the fact as
    its payload: one per fact (key and content) and field, so that a rerun of the batch adds none."""
    from engram.frames import records
    from engram.store import stable_id
    from engram.validation import raw_payload

    run_id = current_run_id()
    out = []
    for r in rejected:
        fact = records(candidates.loc[[r["index"]]])[0]
        out.append(
            {
                "tenant": str(r["tenant"]),
                # By the fact's content too: two statements of one fact (one key) rejected alike are two rows.
                "quarantine_id": stable_id(
                    "q", str(r["tenant"]), str(r["key"]), str(fact.get("content_hash")), "consolidate", r["field"]
                ),
                "source": "consolidate",
                "field": str(r["field"])[:64],
                "reason": f"fact {r['key']}: {r['reason']}",
                "raw_payload": raw_payload(fact),
                "flow_run_id": run_id,
                "quarantined_at": as_of,
            }
        )
    return out
