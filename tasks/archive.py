"""Tasks of the ``archive`` and ``rehydrate`` flows: batch-level wrappers around ``engram.archive``."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from engram import archive as arc
from engram.collector import cyclic_gc_paused
from engram.errors import StoreError
from engram.layers import Layer
from engram.settings import Settings
from tasks.common import current_run_id, open_store

LOG = logging.getLogger("engram")


def load_archive_storage(archive_url: str | None, archive_block: str | None) -> arc.StorageLike:
    """The archive named by an ``ArchiveStorage`` block, else the URL (or ``ENGRAM_ARCHIVE_URL``) with the
    endpoint and keys of the ``ENGRAM_ARCHIVE_*`` settings."""
    if archive_block:
        from blocks.archive import ArchiveStorage

        return ArchiveStorage.load(archive_block).location()
    settings = Settings()
    return arc.ArchiveLocation.from_settings(archive_url or settings.resolved_archive_url(), settings)


def load_retention_rules(retention_block: str | None) -> arc.RetentionRules:
    """The rules of a ``RetentionPolicy`` block, else the defaults."""
    if not retention_block:
        return arc.RetentionRules()
    from blocks.policy import RetentionPolicy

    return RetentionPolicy.load(retention_block).to_rules()


@task(retries=3, retry_delay_seconds=[2, 5, 15], cache_policy=NO_CACHE)
def settle_unfinished_manifests(
    store_url: str | None, storage: arc.StorageLike, as_of: datetime, tenant: str | None
) -> dict[str, int]:
    """Commit or discard the manifests an interrupted run left ``written`` or ``verified``."""
    return arc.settle_unfinished(open_store(store_url), storage, tenant, as_of, current_run_id())


@task(retries=3, retry_delay_seconds=[2, 5, 15], cache_policy=NO_CACHE)
@cyclic_gc_paused()
def select_cold_items(
    store_url: str | None, layer: str, as_of: datetime, rules: arc.RetentionRules, tenant: str | None, batch_size: int
) -> list[tuple[str, str]]:
    """A batch of (tenant, id) keys of hot rows the retention rules send to the archive."""
    return open_store(store_url).archive_candidates(Layer(layer), as_of, rules, tenant, batch_size)


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
@cyclic_gc_paused()
def write_archive_files(
    store_url: str | None, storage: arc.StorageLike, layer: str, keys: list[tuple[str, str]], as_of: datetime
) -> list[dict[str, Any]]:
    """Parquet files and a manifest per tenant of the batch (status ``written``)."""
    return arc.archive_batch(open_store(store_url), storage, Layer(layer), keys, as_of, current_run_id())


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
@cyclic_gc_paused()
def verify_archive_files(
    store_url: str | None, storage: arc.StorageLike, manifests: list[dict[str, Any]]
) -> list[arc.VerifiedManifest]:
    """Read every file back and compare row counts and checksums with its manifest (status ``verified``)."""
    return arc.verify_manifests(open_store(store_url), storage, manifests)


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
@cyclic_gc_paused()
def tombstone_archived_rows(
    store_url: str | None, storage: arc.StorageLike, verified: list[arc.VerifiedManifest], as_of: datetime
) -> dict[str, int]:
    """Swap the verified rows for tombstones and audit the moves, one transaction for the batch (``committed``);
    a manifest a forget discarded meanwhile is not committed, and its objects are deleted."""
    counts = arc.commit_manifests(open_store(store_url), storage, verified, as_of, current_run_id())
    return {**counts, "manifests": len(verified)}


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def find_archived_items(
    store_url: str | None, storage: arc.StorageLike, tenant: str, query: str, limit: int
) -> list[str]:
    """Ids of archived facts that match a query, by the same search ``Memory.search`` runs."""
    from engram.memory import Memory

    memory = Memory(store_url or Settings().resolved_store_url(), storage, migrate=False)  # type: ignore[arg-type]
    try:
        # A default search ranks archived facts among the hot ones; the archived turns of episodes stay out.
        return [h.item_id for h in memory.search(tenant, query, limit=limit) if h.layer == Layer.ARCHIVAL]
    finally:
        memory.close()


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def rehydrate_archived_items(
    store_url: str | None,
    storage: arc.StorageLike,
    tenant: str | None,
    item_ids: list[str] | None,
    as_of: datetime,
    batch_size: int,
) -> dict[str, int]:
    """Bring a batch of archived facts back to the semantic layer, audited."""
    return arc.rehydrate_batch(open_store(store_url), storage, tenant, item_ids, as_of, current_run_id(), batch_size)


@task(cache_policy=NO_CACHE)
def tenants_to_compact(store_url: str | None, tenant: str | None) -> list[str]:
    """The tenants with committed archive manifests (or just ``tenant``)."""
    if tenant is not None:
        return [tenant]
    return open_store(store_url).manifest_tenants(["committed", "compacting"])


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def compact_tenant_archives(
    store_url: str | None, storage: arc.StorageLike, tenants: list[str], as_of: datetime, target_rows: int
) -> dict[str, Any]:
    """Merge the small archive manifests of a batch of tenants, tenant by tenant (see ``engram.compaction``).

    A tenant whose compaction fails (a damaged file, an outage) is reported under ``failed`` with its error, and the
    others go on. A retry starts over safely: a group merged before the failure is committed, and what a failed
    group wrote is dropped by the next attempt."""
    from engram.compaction import compact_tenant

    store = open_store(store_url)
    totals: dict[str, Any] = {"failed": {}}
    for tenant in tenants:
        try:
            counts = compact_tenant(store, storage, tenant, as_of, current_run_id(), target_rows)
        except (arc.ArchiveError, StoreError) as exc:
            # One tenant's damaged file or outage does not hold back the others; the flow fails at its end.
            LOG.error("compaction of tenant %r failed: %s", tenant, exc)
            totals["failed"][tenant] = str(exc)
            continue
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
    return totals
