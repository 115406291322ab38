"""``Memory``: engram's public Python API."""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from engram import portable
from engram.archive import ArchiveLocation
from engram.collector import cyclic_gc_paused
from engram.errors import ArchiveError, InvalidInput, NotFound
from engram.layers import Layer
from engram.search import Hit, IndexRegistry, TenantIndex
from engram.settings import Settings, url_parameter
from engram.store import Store, new_id, stable_id, transition_row
from engram.text import render, words
from engram.validation import (
    CleanEvent,
    Limits,
    check_opaque_id,
    check_tags,
    check_tenant,
    raw_payload,
    safe_tenant_label,
    to_utc,
    validate_event,
)

Clock = Callable[[], datetime]
LOG = logging.getLogger("engram")
SEARCHABLE_LAYERS = tuple(layer.value for layer in Layer)
MAX_QUERY_CHARS = 4_096
ACCESS_FLUSH_ITEMS = 5_000
ACCESS_FLUSH_SECONDS = 30.0
MAX_LIMIT = 1_000
# Threads that read and decode a tenant's archive manifests when its search index loads them.
ARCHIVE_LOAD_THREADS = 4
ARCHIVE_LOAD_FILES = 32
# Seconds before a search tries again a committed manifest it could not read (a file missing or damaged for now).
ARCHIVE_RETRY_SECONDS = 30.0
# Passes a forget makes over the archive and the hot store before it gives up on archive runs committing meanwhile.
FORGET_ROUNDS = 5


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class IngestReport:
    """What a bulk write did.

    Attributes:
        received: rows given.
        accepted: rows written to the sensory layer for the first time.
        duplicates: valid rows whose event id was already stored (idempotent resend).
        quarantined: rows rejected, each stored in quarantine with its raw payload and reason.
        reasons: rejected rows per field that was wrong.
    """

    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def __add__(self, other: IngestReport) -> IngestReport:
        reasons = dict(self.reasons)
        for k, v in other.reasons.items():
            reasons[k] = reasons.get(k, 0) + v
        return IngestReport(
            self.received + other.received,
            self.accepted + other.accepted,
            self.duplicates + other.duplicates,
            self.quarantined + other.quarantined,
            reasons,
        )


@dataclass(frozen=True)
class Item:
    """One memory item as stored, in whichever layer holds it."""

    tenant: str
    item_id: str
    layer: str
    text: str
    rendered: str
    at: datetime
    actor: str = ""
    tags: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    session_id: str | None = None
    version: int | None = None
    support_count: int | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    superseded_by: str | None = None


@dataclass(frozen=True)
class HistoryEntry:
    """One step in an item's history: a move between layers by one flow run (or the event's arrival)."""

    at: datetime
    item_id: str
    action: str
    from_layer: str | None
    to_layer: str | None
    flow_run_id: str | None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeletionReceipt:
    """Proof that a forget happened, without the forgotten content.

    Attributes:
        receipt_id: the id under which the receipt is kept in the audit trail.
        tenant: whose memory it was.
        subject_sha256: the sha256 of the subject (``None`` for the whole tenant), never the subject itself.
        removed: rows removed per table (and objects per archive location, once archived).
        flow_run_id: the Prefect flow run that did it, when run as a flow.
        at: when.
    """

    receipt_id: str
    tenant: str
    subject_sha256: str | None
    removed: dict[str, int]
    flow_run_id: str | None
    at: datetime

    @property
    def total(self) -> int:
        return sum(self.removed.values())


class Memory:
    """The memory of one application, all tenants, all layers.

    Args:
        store: URL of the hot store (``sqlite:///path.db`` or ``postgresql://user@host/db``); defaults to
            ``ENGRAM_STORE_URL``, else SQLite in the user's data folder.
        archive: URL of the archive (``file:///folder`` or ``s3://bucket/prefix``); defaults to
            ``ENGRAM_ARCHIVE_URL``, else a folder beside the store. An ``engram.archive.ArchiveLocation`` (or an
            ``ArchiveStorage`` block's ``location()``) brings the endpoint and keys of an S3 archive; with a URL
            they come from the ``ENGRAM_ARCHIVE_*`` settings.
        settings: overrides the settings read from the environment.
        clock: returns "now"; pass a fixed clock in tests (see ``engram.testing``).

    Example:
        >>> from engram import Memory
        >>> memory = Memory("sqlite:///:memory:")  # doctest: +SKIP
        >>> memory.observe("acme", "s1", "Caroline", "I moved to Lisbon", "2023-05-08T13:56:00Z")  # doctest: +SKIP
        >>> [h.text for h in memory.search("acme", "where does Caroline live")]  # doctest: +SKIP
        ['(8 May 2023) Caroline: I moved to Lisbon']
    """

    def __init__(
        self,
        store: str | None = None,
        archive: str | ArchiveLocation | None = None,
        *,
        settings: Settings | None = None,
        clock: Clock | None = None,
        migrate: bool = True,
    ):
        self.settings = settings or Settings()
        self.store_url = store or self.settings.resolved_store_url()
        location = None if archive is None or isinstance(archive, str) else archive
        self.archive_url = check_archive_url(
            location.url if location else archive or self.settings.resolved_archive_url()
        )
        self.archive = location or ArchiveLocation.from_settings(self.archive_url, self.settings)
        self.clock: Clock = clock or utc_now
        self.limits = Limits.from_settings(self.settings)
        self.store = Store(self.store_url, consolidate_attempts=self.settings.consolidate_attempts)
        if migrate:
            self.store.migrate()
        self._indexes = IndexRegistry(self.settings.search_max_tenants)
        # Search hits update ``last_accessed`` (the retention policy reads it) in batches, not with a write per
        # search: a pending access is at most ACCESS_FLUSH_SECONDS old, and close() writes the rest.
        self._accessed: dict[tuple[str, str], datetime] = {}
        self._accessed_flushed = time.monotonic()

    def __repr__(self) -> str:
        return f"Memory(store={self.store.safe_url!r}, archive={self.archive_url!r})"

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Write pending access times and release database connections."""
        self.flush_accesses()
        self.store.dispose()

    def flush_accesses(self) -> None:
        """Write the access times of semantic items returned by searches since the last flush."""
        pending, self._accessed = self._accessed, {}
        self._accessed_flushed = time.monotonic()
        by_tenant: dict[tuple[str, datetime], list[str]] = {}
        for (tenant, item_id), at in pending.items():
            by_tenant.setdefault((tenant, at), []).append(item_id)
        for (tenant, at), ids in by_tenant.items():
            self.store.touch_accessed(tenant, ids, at)

    def _note_access(self, tenant: str, item_ids: Sequence[str]) -> None:
        now = self._now()
        for item_id in item_ids:
            self._accessed[(tenant, item_id)] = now
        if (
            len(self._accessed) >= ACCESS_FLUSH_ITEMS
            or time.monotonic() - self._accessed_flushed > ACCESS_FLUSH_SECONDS
        ):
            self.flush_accesses()

    def quarantined(self, tenant: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest quarantined rows (field, reason, raw payload, when), for one tenant or all."""
        if tenant is not None:
            tenant = check_tenant(tenant)
        return self.store.quarantined(tenant, limit)

    def _now(self) -> datetime:
        return to_utc(self.clock(), "clock")

    # -- writing -----------------------------------------------------------------------------------------------

    def observe(
        self,
        tenant: str,
        session: str,
        actor: str,
        text: str,
        at: datetime | str | float,
        event_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Record one input event in the sensory layer.

        Idempotent on ``event_id``: sending the same id again stores nothing new and returns the id. Without an id,
        one is derived from the event's content, so an exact resend is still a no-op.

        Args:
            tenant: whose memory this is (letters, digits, ``_``, ``-``).
            session: the conversation or task the event belongs to.
            actor: who spoke or acted.
            text: what was said or done.
            at: when (datetime, ISO-8601 string or epoch seconds; UTC when no offset is given).
            event_id: the caller's idempotency key.
            metadata: a JSON object; ``tags`` (list of strings) and ``scope`` (``"session"`` or ``"task"``) are
                understood by engram.

        Returns:
            The event id.

        Raises:
            InvalidInput: naming the field that is wrong; nothing is stored.
        """
        event = validate_event(
            {
                "tenant": tenant,
                "session": session,
                "actor": actor,
                "text": text,
                "at": at,
                "event_id": event_id,
                "metadata": metadata,
            },
            self.limits,
        )
        self.store.add_events([_event_row(event)], self._now())
        return event.event_id

    def observe_many(self, rows: Any, *, batch_size: int | None = None) -> IngestReport:
        """Record many events at once; bad rows go to quarantine, the valid ones of the same batch are kept.

        Args:
            rows: a pandas DataFrame or an iterable of mappings with the fields of ``observe`` (``session`` may be
                given as ``session_id``).
            batch_size: rows per database transaction (default ``ENGRAM_WRITE_BATCH_SIZE``).

        Returns:
            An ``IngestReport`` with the counts of accepted, duplicate and quarantined rows.
        """
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise InvalidInput("batch_size", f"must be a positive integer, got {batch_size!r}")
        size = batch_size or self.settings.write_batch_size
        report = IngestReport()
        batch: list[Any] = []
        for row in _iter_rows(rows):
            batch.append(row)
            if len(batch) >= size:
                report += self._write_batch(batch)
                batch = []
        if batch:
            report += self._write_batch(batch)
        return report

    def _write_batch(self, rows: Sequence[Any]) -> IngestReport:
        """One batch of ``observe_many``, with the cycle collector paused unless the settings say otherwise: a batch's
        rows are thousands of containers without cycles that the collector would examine again and again."""
        with cyclic_gc_paused() if self.settings.pause_collector else nullcontext():
            return self._write_rows(rows)

    def _write_rows(self, rows: Sequence[Any]) -> IngestReport:
        now = self._now()
        good: dict[tuple[str, str], CleanEvent] = {}
        rejects: list[dict[str, Any]] = []
        reasons: dict[str, int] = {}
        in_batch_dupes = 0
        for row in rows:
            try:
                event = validate_event(row, self.limits)
            except InvalidInput as exc:
                claimed = row.get("tenant") if isinstance(row, Mapping) else None
                rejects.append(
                    {
                        "tenant": safe_tenant_label(claimed),
                        "quarantine_id": new_id("q"),
                        "source": "observe_many",
                        "field": exc.field[:64],
                        "reason": exc.reason,
                        "raw_payload": raw_payload(row),
                        "flow_run_id": None,
                        "quarantined_at": now,
                    }
                )
                reasons[exc.field] = reasons.get(exc.field, 0) + 1
                continue
            key = (event.tenant, event.event_id)
            if key in good:
                in_batch_dupes += 1
                continue
            good[key] = event
        # Quarantine first: if the event write fails, the caller retries the batch and the rejects are not lost.
        self.store.add_quarantine(rejects)
        added = self.store.add_events([_event_row(e) for e in good.values()], now)
        return IngestReport(
            received=len(rows),
            accepted=len(added),
            duplicates=len(good) - len(added) + in_batch_dupes,
            quarantined=len(rejects),
            reasons=reasons,
        )

    def close_session(self, tenant: str, session: str, at: datetime | str | None = None) -> None:
        """Ask for a session to be closed: the next ``close_sessions`` run turns it into an episode.

        Raises:
            InvalidInput: for a bad tenant or session id.
        """
        tenant = check_tenant(tenant)
        session = check_opaque_id(session, "session")
        when = self._now() if at is None else to_utc(at)
        self.store.request_session_close(tenant, session, when)

    # -- reading -----------------------------------------------------------------------------------------------

    def _index(self, tenant: str) -> TenantIndex:
        for _ in range(4):
            index = self._indexes.get(tenant)
            with index.lock:
                seq, epoch, added, removed, restamped = self.store.index_changes(tenant, index.seq, index.has_archive)
                if index.epoch is not None and epoch != index.epoch:
                    # The tenant's memory was rewritten wholesale (forget, compaction): start over from the store,
                    # with a new index filled under its own lock (a search waiting on it must not find it empty
                    # and load the archive into it a second time).
                    self._indexes.reset(tenant, index)
                    continue
                index.epoch = epoch
                index.apply(seq, added, removed, restamped)
                retry_due = index.archive_incomplete and time.monotonic() >= index.archive_retry_at
                if index.manifests_seq == seq and not retry_due:
                    return index
                complete = self._add_archived(tenant, index)
                index.manifests_seq = seq
                index.archive_incomplete = not complete
                # A manifest left out (unreadable for now) is tried again by a search after ARCHIVE_RETRY_SECONDS,
                # whether or not the tenant's memory changed meanwhile.
                index.archive_retry_at = time.monotonic() + ARCHIVE_RETRY_SECONDS
                # A compaction or forget that committed while the manifests loaded may have left this index with
                # both the old manifests and the new one, or with neither: then it starts over.
                if self.store.tenant_epoch(tenant) == epoch:
                    return index
        return index

    def _add_archived(self, tenant: str, index: TenantIndex) -> bool:
        """Add the documents of archive manifests committed since the index last looked (a commit moves the
        tenant's counter, so an unchanged counter means nothing new); whether every one of them could be read.

        The manifests' files are read and decoded on ``ARCHIVE_LOAD_THREADS`` threads, ``ARCHIVE_LOAD_FILES`` files
        a job (Parquet decoding and checksums release the GIL), while this thread matches each manifest with the
        tenant's tombstones, read once after the manifests are listed so that every listed manifest's are in it.
        """
        from concurrent.futures import ThreadPoolExecutor

        from engram.archive import (
            load_search_tables,
            merge_search_tables,
            search_parts,
            search_segment,
            tenant_tombstones,
        )

        pending = [m for m in self.store.manifests(tenant, ["committed"]) if m["manifest_id"] not in index.manifests]
        if not pending:
            return True
        complete = True

        def load(part: dict[str, Any]) -> Any:
            try:
                return load_search_tables(self.archive, part)
            except ArchiveError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=ARCHIVE_LOAD_THREADS, thread_name_prefix="engram-archive-load") as pool:
            jobs = [[pool.submit(load, part) for part in search_parts(m, ARCHIVE_LOAD_FILES)] for m in pending]
            tombstones = tenant_tombstones(self.store, tenant)
            for manifest, parts in zip(pending, jobs, strict=True):
                try:
                    loaded = [job.result() for job in parts]
                    failed = next((x for x in loaded if isinstance(x, ArchiveError)), None)
                    if failed is not None:
                        raise failed
                    tables = merge_search_tables(manifest, loaded)
                    if tables is not None:
                        index.add(search_segment(self.store, tables, tombstones))
                except ArchiveError as exc:
                    # An unreadable or damaged archive file must not take search down with it: the hot layers and
                    # the other manifests still answer, and this manifest is tried again (see ``_index``).
                    LOG.warning("archive manifest %s left out of search: %s", manifest["manifest_id"], exc)
                    complete = False
                    continue
                index.manifests.add(manifest["manifest_id"])
        return complete

    def search(
        self,
        tenant: str,
        query: str,
        *,
        limit: int = 20,
        layers: Sequence[str | Layer] | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        tags: Sequence[str] | None = None,
        budget_words: int | None = None,
    ) -> list[Hit]:
        """Find a tenant's memories that match ``query``.

        Args:
            tenant: whose memory to search; no search reads across tenants.
            query: free text.
            limit: the most hits to return (1-1000).
            layers: restrict to these layers (default: every layer that holds searchable items).
            since: only items at or after this time.
            until: only items before this time.
            tags: only items that carry every one of these tags.
            budget_words: stop before the hit that would take the hits' texts past this many words, so that the
                result fits a prompt.

        Near-duplicates are removed: a hit whose words are (almost) all in a better hit adds nothing and is dropped.

        Returns:
            Hits, best first; each ``Hit.text`` carries the item's date and speaker.

        Raises:
            InvalidInput: naming the argument that is wrong.
        """
        tenant = check_tenant(tenant)
        if not isinstance(query, str):
            raise InvalidInput("query", f"must be a string, got {type(query).__name__}")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidInput("query", f"is {len(query)} characters, over the limit of {MAX_QUERY_CHARS}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput("limit", f"must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
        layer_names = _check_layers(layers)
        since_dt = to_utc(since, "since") if since is not None else None
        until_dt = to_utc(until, "until") if until is not None else None
        tag_list = check_tags(list(tags) if isinstance(tags, (set, frozenset)) else tags, "tags")
        if budget_words is not None and (
            isinstance(budget_words, bool) or not isinstance(budget_words, int) or budget_words < 1
        ):
            raise InvalidInput("budget_words", f"must be a positive integer, got {budget_words!r}")
        if not query.strip():
            return []
        index = self._index(tenant)
        query_vector = self._embed_query(query) if index.has_vectors else None
        pool = None
        while True:
            with index.lock:
                ranked, cut = index.candidates(
                    query, limit, layer_names, since_dt, until_dt, tag_list, query_vector, pool
                )
            found, stopped = _select_hits(ranked, limit, budget_words)
            # The tags and the near-duplicates are filtered out of a pool of the best matches: when they leave
            # fewer than ``limit`` hits and more documents matched than the pool held, look further down.
            if stopped or not cut:
                break
            pool = 4 * (pool or index.default_pool(limit, tag_list))
        sources = self._sources_for(tenant, [(layer, item_id) for _, layer, item_id, _ in found])
        hits = [
            Hit(
                text=doc["rendered"],
                layer=layer,
                score=score,
                at=doc["at"],
                item_id=item_id,
                sources=sources.get(item_id, (item_id,)),
                tags=doc["tags"],
            )
            for score, layer, item_id, doc in found
        ]
        semantic = [h.item_id for h in hits if h.layer == Layer.SEMANTIC]
        if semantic:
            self._note_access(tenant, semantic)
        return hits

    def _embed_query(self, query: str):  # noqa: ANN202 - numpy vector or None
        from engram.embed import default_embedder, embedding_text

        embedder = default_embedder()
        return None if embedder is None else embedder.embed([embedding_text(query)])[0]

    def _sources_for(self, tenant: str, keys: Sequence[tuple[str, str]]) -> dict[str, tuple[str, ...]]:
        semantic = [item_id for layer, item_id in keys if layer in (Layer.SEMANTIC, Layer.ARCHIVAL)]
        return self.store.lineage_of(tenant, semantic) if semantic else {}

    def get(self, tenant: str, item_id: str) -> Item:
        """One item by id, from whichever layer holds it.

        Raises:
            NotFound: when the tenant has no such item.
        """
        tenant = check_tenant(tenant)
        row = self.store.find_item(tenant, _check_item_id(item_id))
        if row is None:
            raise NotFound(f"tenant {tenant!r} has no item {item_id!r}")
        if row["layer"] == Layer.ARCHIVAL:
            from engram.archive import archived_record

            # The hot row is a tombstone: the archive's copy has the content, the tombstone the item's state now.
            record = archived_record(self.store, self.archive, tenant, row["archived_manifest_id"], item_id, row)
            if record is not None:
                row = {**record, "layer": Layer.ARCHIVAL, "sources": row.get("sources")}
                if record["_table"] == "episodes":
                    row.update(item_id=item_id, text=record["summary"], at=record["started_at"])
        at = row.get("at") or row.get("last_seen")
        text = row["text"]
        actor = row.get("actor") or ""
        return Item(
            tenant=tenant,
            item_id=item_id,
            layer=str(row["layer"].value if isinstance(row["layer"], Layer) else row["layer"]),
            text=text,
            rendered=row.get("rendered") or render(text, actor, at),
            at=at,
            actor=actor,
            tags=tuple(row.get("tags") or ()),
            sources=tuple(row.get("sources") or ()),
            session_id=row.get("session_id"),
            version=row.get("version"),
            support_count=row.get("support_count"),
            valid_from=row.get("valid_from"),
            valid_to=row.get("valid_to"),
            superseded_by=row.get("superseded_by"),
        )

    def history(self, tenant: str, item_id: str) -> list[HistoryEntry]:
        """Where an item came from and every change since: its source events' arrival, each move between layers
        with the flow run that made it, and every version of a semantic fact.

        Raises:
            NotFound: when the tenant has no such item and no audit rows for it.
        """
        tenant = check_tenant(tenant)
        item_id = _check_item_id(item_id)
        row = self.store.find_item(tenant, item_id)
        ids: list[str] = [item_id]
        sources: list[str] = []
        if row is not None:
            sources = list(row.get("sources") or [])
            if row.get("fact_key"):
                ids = [v["item_id"] for v in self.store.fact_versions(tenant, row["fact_key"])]
                sources = sorted({s for i in ids for s in self.store.lineage_of(tenant, [i]).get(i, ())})
        entries = [
            HistoryEntry(
                at=e["received_at"],
                item_id=e["event_id"],
                action="observe",
                from_layer=None,
                to_layer=Layer.SENSORY.value,
                flow_run_id=None,
                detail={"session": e["session_id"]},
            )
            for e in self.store.events_by_id(tenant, sources or ([item_id] if row is None else []))
        ]
        entries += [
            HistoryEntry(
                at=t["at"],
                item_id=t["item_id"],
                action=t["action"],
                from_layer=t["from_layer"],
                to_layer=t["to_layer"],
                flow_run_id=t["flow_run_id"],
                detail=t["detail"] or {},
            )
            for t in self.store.transitions_for(tenant, [*sources, *ids])
        ]
        if row is None and not entries:
            raise NotFound(f"tenant {tenant!r} has no item {item_id!r} and no history for it")
        entries.sort(key=lambda e: (e.at, e.action != "observe"))
        return entries

    def stats(self, tenant: str | None = None) -> dict[str, int]:
        """How many items each layer holds (plus quarantined rows), for one tenant or all."""
        if tenant is not None:
            tenant = check_tenant(tenant)
        return self.store.count_by_layer(tenant)

    def forget(self, tenant: str, subject: str | None = None, *, flow_run_id: str | None = None) -> DeletionReceipt:
        """Remove a subject's memories (every item whose text names it, and what was distilled from those), or a
        tenant's whole memory when ``subject`` is None.

        Returns:
            A ``DeletionReceipt``: what was removed where, counted, without the content. The receipt is kept in the
            audit trail under its own id.
        """
        tenant = check_tenant(tenant)
        if subject is not None and (not isinstance(subject, str) or not subject.strip()):
            raise InvalidInput("subject", "must be a non-empty string, or None to forget the whole tenant")
        if subject is not None and not words(subject):
            # A forget matches whole words: with none, it would remove nothing and still give a receipt.
            raise InvalidInput("subject", f"has no word (letters or digits) to match: {subject!r}")
        now = self._now()
        from engram.archive import forget_in_archive, purge_tenant, remove_orphan_objects

        removed: Counter[str] = Counter()
        for _ in range(FORGET_ROUNDS):
            committed = self._committed_manifests(tenant)
            # The archive first: its copies say which tombstones name the subject, through lineage the hot forget
            # removes.
            removed.update(forget_in_archive(self.store, self.archive, tenant, subject, now))
            archived = subject is None and bool(self.store.manifests(tenant))
            hot = self.store.forget(tenant, subject, now, flow_run_id)
            removed.update(hot)
            if hot.get("archive_manifests_unfinished"):
                # An archive run's manifests the hot forget discarded: what they uploaded so far (their commit finds
                # them gone and deletes what they upload after).
                removed["archive_object_versions_deleted"] += remove_orphan_objects(self.store, self.archive, tenant)
            if archived:
                # What an archive run committed after the archive was emptied, before the tenant's rows went.
                removed["archive_object_versions_deleted"] += purge_tenant(self.archive, tenant)
            if subject is None:
                break
            # An archive run that committed meanwhile took hot rows that name the subject into the archive, out of
            # the hot forget's reach (it finds rows by their text): the archive is gone over again.
            if self._committed_manifests(tenant) <= committed:
                break
        else:
            raise ArchiveError(
                f"archive runs committed new manifests of tenant {tenant!r} during each of {FORGET_ROUNDS} passes of "
                "this forget; what they took may still name the subject: rerun the forget"
            )
        return self._receipt(tenant, subject, dict(removed), flow_run_id, now)

    def forget_moved(self, tenant: str, *, unchanged_since: int, flow_run_id: str | None = None) -> DeletionReceipt:
        """Remove a tenant that was copied into another store sharing this archive: its rows here, with a receipt,
        but not its archived objects, which the other store's manifests now name.

        Args:
            tenant: the tenant copied.
            unchanged_since: its change counter (``Store.tenant_seq``) read before the copy was taken.

        Raises:
            TenantChanged: the tenant was written to after the copy was taken; nothing was removed (the copy lacks
                what was written since).
        """
        tenant = check_tenant(tenant)
        now = self._now()
        removed = self.store.forget(tenant, None, now, flow_run_id, unchanged_since=unchanged_since)
        return self._receipt(tenant, None, removed, flow_run_id, now)

    def _receipt(
        self, tenant: str, subject: str | None, removed: dict[str, int], flow_run_id: str | None, now: datetime
    ) -> DeletionReceipt:
        """Record a forget's receipt in the audit trail (counts and the subject's hash only) and drop the tenant's
        search index."""
        subject_hash = hashlib.sha256(subject.encode()).hexdigest() if subject is not None else None
        receipt = DeletionReceipt(
            receipt_id=stable_id("receipt", tenant, subject_hash or "*", now.isoformat()),
            tenant=tenant,
            subject_sha256=subject_hash,
            removed=removed,
            flow_run_id=flow_run_id,
            at=now,
        )
        self.store.record_receipt(
            transition_row(
                tenant,
                receipt.receipt_id,
                None,
                None,
                "forget",
                now,
                flow_run_id,
                0,
                {"subject_sha256": subject_hash, "removed": removed},
            )
        )
        self._indexes.drop(tenant)
        return receipt

    def _committed_manifests(self, tenant: str) -> set[str]:
        return {m["manifest_id"] for m in self.store.manifests(tenant, ["committed"])}

    # -- orchestration -----------------------------------------------------------------------------------------

    def run_lifecycle(self, as_of: datetime | str | None = None, *, tenant: str | None = None) -> dict[str, Any]:
        """Run the lifecycle flow through Prefect (ingest, close sessions, expire, consolidate) and return its
        summary. Uses the Prefect API configured in the environment, or a temporary local one.

        Raises:
            EpisodesHeldBack: the consolidator failed on some episodes; the others are consolidated, and the
                exception's ``summaries`` hold what this method would have returned.
        """
        import os

        # Without a configured Prefect API, Prefect starts a temporary local server; on a loaded two-core machine
        # that can take longer than Prefect's default wait, which would fail the run before it starts.
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
        from flows.lifecycle import lifecycle  # Prefect stays out of the domain core until it is asked for

        when = to_utc(as_of, "as_of") if as_of is not None else None
        if tenant is not None:
            tenant = check_tenant(tenant)
        store_url = url_parameter(self.store_url)  # Prefect keeps flow parameters: never a password in clear
        return lifecycle(store_url=store_url, archive_url=self.archive_url, as_of=when, tenant=tenant)

    def set_aside(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """The episodes set aside after ``ENGRAM_CONSOLIDATE_ATTEMPTS`` consolidation runs failed on them, oldest
        first: ``tenant``, ``episode_id``, ``session_id``, ``ended_at`` and ``consolidation_failures``. Their
        errors are in the quarantine (source ``consolidate``). The limit is this Memory's settings' (by default the
        environment's). The flows, ``run_lifecycle``'s too, read it from their environment: a Memory made with
        other settings lists by its own limit, not theirs."""
        if tenant is not None:
            tenant = check_tenant(tenant)
        return self.store.set_aside_episodes(tenant)

    def retry_set_aside(self, tenant: str, episode_ids: Sequence[str] | None = None) -> int:
        """Give the tenant's set-aside episodes (or ``episode_ids`` among them) their attempts back, so that the
        first consolidation run after their lease expires takes them up, typically once the consolidator is fixed;
        returns how many."""
        tenant = check_tenant(tenant)
        return self.store.retry_set_aside(tenant, episode_ids)

    def resummarize(self, tenant: str, *, flow_run_id: str | None = None) -> dict[str, int]:
        """Summarize again the tenant's episodes that were written without a summary because the summarizer raised
        (quarantine source ``close_sessions``, field ``summary``), typically once it is fixed; each new summary is
        audited (``resummarize``), in batches of 200 episodes each written on its own (a rerun does what an
        interrupted call left). Returns ``episodes`` (found), ``resummarized``, ``failed``, ``empty`` and ``skipped``
        (``Store.resummarize_episodes``: an episode a forget took turns from is never summarized)."""
        from engram.consolidate import summarize_episode

        tenant = check_tenant(tenant)
        return self.store.resummarize_episodes(tenant, summarize_episode, self._now(), flow_run_id)

    # -- moving a tenant between stores ------------------------------------------------------------------------

    def export(self, tenant: str, dest: str) -> portable.ExportManifest:
        """Write a tenant's whole memory (every layer, its lineage and audit trail, its archived objects) to
        ``dest`` as Parquet plus ``manifest.json``, with row counts and sha256 per file.

        Args:
            tenant: whose memory.
            dest: an empty local folder, ``file://`` URL or ``s3://bucket/prefix``.

        Returns:
            The ``ExportManifest`` written.

        Raises:
            InvalidInput: a bad tenant id, or a destination that already holds an export.
            ArchiveError: the destination cannot be written, or an archived object is missing or damaged.

        Example:
            >>> memory.export("acme", "/backups/acme")  # doctest: +SKIP
        """
        tenant = check_tenant(tenant)
        self.flush_accesses()  # access times still pending in this process belong in the export
        return portable.export_tenant(self.store, tenant, dest, archive_url=self.archive_url)

    def import_tenant(self, src: str, tenant: str | None = None, replace: bool = False) -> portable.ImportReport:
        """Restore an export written by ``export`` into this memory, optionally under a new tenant id.

        Every file is checked against the export's manifest before anything is written; the rows go in one
        transaction and archived objects are copied into this memory's archive.

        Args:
            src: the export's location (local folder, ``file://`` or ``s3://``).
            tenant: import under this tenant id instead of the exported one.
            replace: delete the tenant's current memory first (in the same transaction); without it an import
                into a store that already holds the tenant is refused.

        Returns:
            An ``ImportReport`` with the rows written per table.

        Raises:
            ArchiveError: a file of the export is missing or does not match its manifest; nothing was written.
            InvalidInput: the tenant exists here already (and ``replace`` is false), or a bad tenant id.

        Example:
            >>> memory.import_tenant("/backups/acme", tenant="acme-restored")  # doctest: +SKIP
        """
        report = portable.import_tenant(self.store, src, tenant=tenant, archive_url=self.archive_url, replace=replace)
        self._indexes.drop(report.tenant)
        return report

    import_ = import_tenant


NEAR_DUPLICATE_CONTAINMENT = 0.85


def select_hits(
    ranked: Sequence[tuple[float, str, str, dict[str, Any]]], limit: int, budget_words: int | None
) -> list[tuple[float, str, str, dict[str, Any]]]:
    """Ranked candidates minus near-duplicates, cut at ``limit`` hits and at ``budget_words`` words.

    A candidate is a near-duplicate when at least 85% of its distinct content words occur in one better hit: an
    episode's turn next to the fact distilled from it, or a fact restated. The date and speaker of the rendering
    are left out of the comparison, since every item of a day shares them.
    """
    return _select_hits(ranked, limit, budget_words)[0]


def _select_hits(
    ranked: Sequence[tuple[float, str, str, dict[str, Any]]], limit: int, budget_words: int | None
) -> tuple[list[tuple[float, str, str, dict[str, Any]]], bool]:
    """``select_hits``, and whether it stopped at ``limit`` or at the budget rather than at the end of ``ranked``."""
    kept: list[tuple[float, str, str, dict[str, Any]]] = []
    kept_words: list[frozenset[str]] = []
    used = 0
    for cand in ranked:
        doc = cand[3]
        bag = doc["content_words"]
        if bag and any(len(bag & other) >= NEAR_DUPLICATE_CONTAINMENT * len(bag) for other in kept_words):
            continue
        size = len(doc["rendered"].split())
        if budget_words is not None and used + size > budget_words:
            return kept, True
        kept.append(cand)
        kept_words.append(bag)
        used += size
        if len(kept) >= limit:
            return kept, True
    return kept, False


def _event_row(e: CleanEvent) -> dict[str, Any]:
    metadata = dict(e.metadata)
    return {
        "tenant": e.tenant,
        "event_id": e.event_id,
        "session_id": e.session_id,
        "actor": e.actor,
        "text": e.text,
        "at": e.at,
        "metadata": metadata,
    }


def _iter_rows(rows: Any) -> Iterable[Any]:
    """Rows of a DataFrame or an iterable, as dicts with NaN/NaT turned into None."""
    if hasattr(rows, "to_dict") and hasattr(rows, "columns"):
        columns = [str(c) for c in rows.columns]
        for values in rows.itertuples(index=False, name=None):
            yield {c: _none_if_nan(v) for c, v in zip(columns, values, strict=True)}
        return
    if isinstance(rows, (str, bytes, Mapping)):
        raise InvalidInput("rows", "must be a DataFrame or an iterable of mappings, not a single value")
    try:
        iterator = iter(rows)
    except TypeError:
        raise InvalidInput(
            "rows", f"must be a DataFrame or an iterable of mappings, got {type(rows).__name__}"
        ) from None
    yield from iterator


def _none_if_nan(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is not None and type(value).__name__ in ("NaTType", "NAType"):
        return None
    return value


def _check_layers(layers: Sequence[str | Layer] | None) -> list[str] | None:
    if layers is None:
        return None
    if isinstance(layers, str):
        layers = [layers]
    out = []
    for layer in layers:
        value = layer.value if isinstance(layer, Layer) else layer
        if value not in SEARCHABLE_LAYERS:
            raise InvalidInput("layers", f"unknown layer {str(value)[:40]!r}; use some of {SEARCHABLE_LAYERS}")
        out.append(value)
    return out


def _check_item_id(item_id: Any) -> str:
    if not isinstance(item_id, str) or not item_id or len(item_id) > 128:
        raise InvalidInput("item_id", "must be an item id string as returned by search or get")
    return item_id


def check_archive_url(url: str) -> str:
    """An archive location: ``file:///folder`` or ``s3://bucket/prefix``."""
    if not isinstance(url, str) or not (url.startswith("file://") or url.startswith("s3://")):
        raise InvalidInput("archive", f"must be a file:// or s3:// URL, got {str(url)[:80]!r}")
    return url.rstrip("/")
