"""``scale`` decides how many shard workers consolidate at once; ``consolidate_shards`` is one such worker.

Tenants are hashed into shards (``engram.service.shard_of``); a worker leases one shard at a time in the store's
``shard_leases`` table, consolidates every waiting episode of that shard's tenants, and moves on to the next free
shard with work. Two workers never hold the same shard, and episode leases underneath keep even a retaken shard from
being done twice.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime

from prefect import flow
from prefect.concurrency.sync import concurrency
from pydantic import SecretStr

from engram.errors import EpisodesHeldBack, failed_whole
from engram.policy import LifecyclePolicy
from engram.quality import prepare_gates
from engram.service import ScalingPolicy, decide_parallelism
from engram.settings import reveal, url_parameter
from tasks.common import BatchMemory, Stopwatch, resolve_as_of, worker_id
from tasks.consolidation import claim_episodes, consolidate_batch
from tasks.reporting import publish_run_summary
from tasks.service import (
    CONSOLIDATE_LIMIT,
    announce_scaling,
    apply_parallelism,
    claim_shard,
    launch_shard_workers,
    measure_backlog,
    prepare_shards,
    read_parallelism,
    release_shard,
    renew_shard,
    shards_with_backlog,
)

SHARD_POOL = "engram-semantic"


@flow(name="scale")
def scale(
    store_url: str | SecretStr | None = None,
    as_of: datetime | None = None,
    tenant: str | None = None,
    batch_size: int = 200,
    pool: str = SHARD_POOL,
    backlog_per_worker: int = 500,
    min_workers: int = 1,
    max_workers: int = 8,
    shard_count: int = 16,
    launch: bool = True,
) -> dict:
    """Measure the consolidation backlog, decide the parallelism (raise when the backlog needs more workers, lower
    once it is drained), apply it to the pool and the consolidation concurrency limit, and start shard workers.

    The shard workers run as deployments, on other machines too: they get ``store_url`` as a run parameter, which
    Prefect records. A URL with a password, as a ``SecretStr`` or as plain text, is refused when workers are to be
    started; set ``ENGRAM_STORE_URL`` on the workers instead and leave ``store_url`` out.
    """
    if launch and store_url is not None and isinstance(url_parameter(reveal(store_url)), SecretStr):
        raise ValueError(
            "store_url: a URL with a password would be recorded as the shard workers' run parameter; "
            "set ENGRAM_STORE_URL on the workers and leave store_url out"
        )
    store_url = reveal(store_url)
    clock, as_of = Stopwatch(), resolve_as_of(as_of)
    policy = ScalingPolicy(backlog_per_worker, min_workers, max_workers, shard_count)
    backlog = measure_backlog(store_url, as_of, tenant)
    decision = decide_parallelism(backlog, read_parallelism(pool, min_workers), policy)
    prepare_shards(store_url, pool, shard_count)
    applied = apply_parallelism(pool, decision.desired) if decision.action != "hold" else {}
    announce_scaling(decision, pool)
    # The workers' shard count is this run's: with the default instead, each would rebuild the shard table (a changed
    # count drops the old rows) and revoke the leases of the workers already running.
    worker_params = {
        "store_url": store_url,
        "as_of": as_of.isoformat(),
        "batch_size": batch_size,
        "pool": pool,
        "shard_count": shard_count,
        "tenant": tenant,
    }
    started = launch_shard_workers(decision.desired if launch and backlog else 0, worker_params)
    counts = {"backlog": backlog, "workers": f"{decision.current} -> {decision.desired}", "action": decision.action}
    return publish_run_summary("scale", {**counts, "reason": decision.reason, **applied, **started}, clock.seconds)


@flow(name="consolidate_shards")
def consolidate_shards(
    store_url: str | SecretStr | None = None,
    as_of: datetime | None = None,
    tenant: str | None = None,
    batch_size: int = 200,
    pool: str = SHARD_POOL,
    shard_count: int = 16,
    max_reject_fraction: float = 0.5,
    max_shards: int = 10_000,
) -> dict:
    """One shard worker: lease a shard with waiting episodes, consolidate its tenants, release it, repeat until no
    free shard has work. ``tenant`` limits the worker to that tenant's shard.
    """
    store_url = reveal(store_url)
    clock, as_of, policy, owner = Stopwatch(), resolve_as_of(as_of), LifecyclePolicy.from_settings(), worker_id()
    lease = policy.lease.total_seconds()
    totals: Counter[str] = Counter()
    shards_done: list[int] = []
    prepare_shards(store_url, pool, shard_count)
    prepare_gates()
    work_started = time.time()  # wall clock, comparable across workers: when this worker began on shards
    batches = BatchMemory()
    held: dict[tuple[str, str], str] = {}
    with concurrency(CONSOLIDATE_LIMIT, occupy=1):
        for _ in range(max_shards):
            # A shard this worker has worked on is not taken again in this run. What the backlog still counts there
            # after its batches is mostly leased (another worker's batch, an episode held back here), which no claim
            # would get: taking the shard again would only release it, up to max_shards times. Episodes that end in
            # it later wait for the next run.
            waiting = {
                s: ts for s, ts in shards_with_backlog(store_url, as_of, shard_count).items() if s not in shards_done
            }
            if tenant is not None:
                waiting = {s: ts for s, ts in waiting.items() if tenant in ts}
            claimed = claim_shard(store_url, pool, owner, lease, sorted(waiting))
            if claimed is None:
                break
            shard, _ = claimed
            # Batches span the shard's tenants: a shard of many small tenants costs as few task runs as one big one.
            tenants = [tenant] if tenant is not None else waiting[shard]
            broken = False
            while episodes := claim_episodes(store_url, as_of, owner, lease, batch_size, tenants):
                counts, _, batch_held = consolidate_batch(store_url, episodes, owner, as_of, max_reject_fraction)
                totals.update(counts)
                held |= batch_held
                batches.release()
                # Not one episode of several could be distilled: the consolidator is broken, stop claiming.
                broken = failed_whole(len(episodes), len(batch_held))
                if broken or not renew_shard(store_url, pool, shard, owner, lease, counts.get("episodes", 0)):
                    break
            release_shard(store_url, pool, shard, owner)
            shards_done.append(shard)
            if broken:
                break
    seconds = clock.seconds
    counts = {**totals, "shards": shards_done, "owner": owner}
    counts |= {"work_started": round(work_started, 3), "work_ended": round(time.time(), 3)}
    counts["episodes_per_s"] = round(totals["episodes"] / seconds, 2) if seconds else 0.0
    summary = publish_run_summary("consolidate_shards", counts, seconds)
    if held:
        raise EpisodesHeldBack(held, {"consolidate_shards": summary})
    return summary
