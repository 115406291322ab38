"""``archive`` (semantic and episodic -> archival) and ``rehydrate`` (archival -> semantic)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from prefect import flow
from prefect.utilities.annotations import opaque
from pydantic import SecretStr

from engram.errors import ArchiveError
from engram.settings import reveal
from engram.validation import check_tenant
from tasks.archive import (
    compact_tenant_archives,
    find_archived_items,
    load_archive_storage,
    load_retention_rules,
    rehydrate_archived_items,
    select_cold_items,
    settle_unfinished_manifests,
    tenants_to_compact,
    tombstone_archived_rows,
    verify_archive_files,
    write_archive_files,
)
from tasks.common import BatchMemory, Stopwatch, resolve_as_of
from tasks.reporting import publish_run_summary


@flow(name="archive")
def archive(
    store_url: str | SecretStr | None = None,
    archive_url: str | None = None,
    as_of: datetime | None = None,
    tenant: str | None = None,
    batch_size: int = 20_000,
    max_batches: int = 10_000,
    archive_block: str | None = None,
    retention_block: str | None = None,
) -> dict:
    """Move cold semantic items, superseded versions and old consolidated episodes to the archive: write Parquet
    and a manifest, read it back and compare, and only then swap the hot rows for tombstones in one transaction.

    First finishes what an interrupted run left. ``archive_block`` names an ``ArchiveStorage`` block (else
    ``archive_url`` or ``ENGRAM_ARCHIVE_URL``); ``retention_block`` a ``RetentionPolicy`` block (else defaults).
    ``batch_size`` bounds the hot rows of a batch, an episode's turns counted with it.
    """
    store_url = reveal(store_url)
    clock, as_of = Stopwatch(), resolve_as_of(as_of)
    tenant = check_tenant(tenant) if tenant is not None else None  # before any object is touched
    storage, rules = load_archive_storage(archive_url, archive_block), load_retention_rules(retention_block)
    totals: Counter[str] = Counter(settle_unfinished_manifests(store_url, storage, as_of, tenant))
    batches = BatchMemory()
    for layer in ("semantic", "episodic"):
        for _ in range(max_batches):
            keys = select_cold_items(store_url, layer, as_of, rules, tenant, batch_size)
            if not keys:
                break
            # opaque: each result is linked to the next task run, but Prefect does not walk its rows one by one
            manifests = write_archive_files(store_url, storage, layer, opaque(keys), as_of)
            verified = verify_archive_files(store_url, storage, opaque(manifests))
            totals["rows_verified"] += sum(v.rows for v in verified)
            moved = tombstone_archived_rows(store_url, storage, opaque(verified), as_of)
            totals.update(moved)
            batches.release()
            if not moved.get("semantic_items") and not moved.get("episodes"):
                break  # every picked row changed since it was read; the next run takes them as they are then
    return publish_run_summary("archive", dict(totals), clock.seconds)


@flow(name="rehydrate")
def rehydrate(
    store_url: str | SecretStr | None = None,
    archive_url: str | None = None,
    as_of: datetime | None = None,
    tenant: str | None = None,
    batch_size: int = 5_000,
    item_ids: list[str] | None = None,
    query: str | None = None,
    query_limit: int = 100,
    max_batches: int = 10_000,
    archive_block: str | None = None,
) -> dict:
    """Bring archived facts back to the semantic layer: the given ids, the best matches of a query, or (with
    neither) a tenant's whole archive. Idempotent; each move is audited as ``rehydrate``.
    """
    store_url = reveal(store_url)
    clock, as_of = Stopwatch(), resolve_as_of(as_of)
    tenant = check_tenant(tenant) if tenant is not None else None  # before any object is touched
    storage = load_archive_storage(archive_url, archive_block)
    if query is not None:
        if tenant is None:
            raise ValueError("tenant: a rehydrate by query needs the tenant whose archive to search")
        item_ids = find_archived_items(store_url, storage, tenant, query, query_limit)
    totals: Counter[str] = Counter()
    if item_ids is not None and not item_ids:
        return publish_run_summary("rehydrate", {"rehydrated": 0}, clock.seconds)
    batches = BatchMemory()
    for start in range(0, len(item_ids), batch_size) if item_ids is not None else range(max_batches):
        ids = item_ids[start : start + batch_size] if item_ids is not None else None
        counts = rehydrate_archived_items(store_url, storage, tenant, ids, as_of, batch_size)
        totals.update(counts)
        batches.release()
        if ids is None and not counts["candidates"]:
            break
    return publish_run_summary("rehydrate", dict(totals), clock.seconds)


@flow(name="compact_archive")
def compact_archive(
    store_url: str | SecretStr | None = None,
    archive_url: str | None = None,
    as_of: datetime | None = None,
    tenant: str | None = None,
    target_rows: int = 250_000,
    batch_size: int = 50,
    archive_block: str | None = None,
) -> dict:
    """Merge each tenant's small archive manifests into manifests of up to ``target_rows`` rows, in the same
    tenant/layer/date layout: a search then loads a file per table and month instead of one per archive run.

    Nothing is deleted before the merged copy is read back, compared row id by row id, and committed in one
    transaction; what an interrupted run wrote is dropped by the next (see ``engram.compaction``). ``batch_size``
    is the number of tenants one task compacts.
    """
    store_url = reveal(store_url)
    clock, as_of = Stopwatch(), resolve_as_of(as_of)
    tenant = check_tenant(tenant) if tenant is not None else None  # before any object is touched
    storage = load_archive_storage(archive_url, archive_block)
    names = tenants_to_compact(store_url, tenant)
    totals: Counter[str] = Counter({"tenants": len(names)})
    failed: dict[str, str] = {}
    batches = BatchMemory()
    for start in range(0, len(names), max(1, batch_size)):
        chunk = names[start : start + max(1, batch_size)]
        counts = compact_tenant_archives(store_url, storage, chunk, as_of, target_rows)
        failed.update(counts.pop("failed", {}))
        totals.update(counts)
        batches.release()
    totals["tenants_failed"] = len(failed)
    summary = publish_run_summary("compact_archive", dict(totals), clock.seconds)
    if failed:
        listed = "; ".join(f"{t}: {why}" for t, why in sorted(failed.items())[:10])
        raise ArchiveError(f"compaction failed for {len(failed)} of {len(names)} tenants ({listed})")
    return summary
