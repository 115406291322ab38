"""What the archive's tests share: a memory filled without Prefect, the "nothing lost" check, and every stored
object with its text."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from sqlalchemy import select

from engram import Memory
from engram.archive import ArchiveLocation, RetentionRules, read_manifest_rows
from engram.consolidate import LocalConsolidator, plan_changes, summarize_episode
from engram.store import SEMANTIC, TURNS, Store
from tests.conftest import T0
from tests.flows.helpers import conversation_rows

AS_OF = T0 + timedelta(days=30)
# Everything consolidated before AS_OF is cold a year later.
LATER = AS_OF + timedelta(days=365)
COLD = RetentionRules(semantic_idle=timedelta(days=30), episode_age=timedelta(days=30))


def fill(memory: Memory, tenant: str = "acme", sessions: int = 4, as_of: datetime = AS_OF, days_apart: int = 1) -> None:
    """Events through working memory and episodes into facts, by the store's own steps (no flow runs); the
    sessions start ``days_apart`` days apart, from ``T0``."""
    rows = conversation_rows(tenant, sessions=sessions, start=T0, prefix=f"{tenant}-e", days_apart=days_apart)
    memory.observe_many(rows)
    consolidate_pending(memory.store, tenant, as_of)


def consolidate_pending(store: Store, tenant: str | None, as_of: datetime, limit: int = 10_000) -> dict[str, int]:
    """What the ingest, close_sessions and consolidate flows do to a tenant's pending events (every tenant's with
    ``tenant=None``), by the store's own steps (no flow runs)."""
    close_pending(store, tenant, as_of, limit)
    episodes = store.claim_episodes(as_of, "test", 300, limit, tenant)
    frames, turns = store.load_episodes(episodes)
    facts = LocalConsolidator().distill(frames, turns)
    return store.commit_consolidation(episodes, facts, "test", as_of, None, plan_changes)


def close_pending(store: Store, tenant: str | None, as_of: datetime, limit: int = 10_000) -> None:
    """What the ingest and close_sessions flows do to a tenant's pending events: episodes, not consolidated."""
    working = [
        {
            "tenant": e["tenant"],
            "item_id": e["event_id"],
            "event_id": e["event_id"],
            "session_id": e["session_id"],
            "actor": e["actor"],
            "text": e["text"],
            "at": e["at"],
            "scope": "session",
            "tags": [],
            "metadata": e["metadata"],
            "expires_at": e["at"] + timedelta(days=1),
            "created_run_id": None,
        }
        for e in store.pending_events(limit, tenant)
    ]
    store.route_events(working, [], as_of, None)
    sessions = store.claim_sessions_to_close(as_of, 1800, "test", 300, limit, tenant)
    store.close_sessions(sessions, "test", as_of, None, summarize_episode)


def contents(store: Store, storage: Any, tenant: str) -> dict[tuple[str, str], str]:
    """Every fact version and turn of a tenant with its text, wherever it lives.

    A hot row must have its text; an archived one must be readable (checksums and row counts checked) from a
    committed manifest, which must hold it. Anything else fails: that is what "nothing lost" means.
    """
    out: dict[tuple[str, str], str] = {}
    pointers: dict[str, list[tuple[str, str]]] = {}
    with store.read() as conn:
        for table, name in ((SEMANTIC, "semantic_items"), (TURNS, "episode_turns")):
            for r in conn.execute(
                select(table.c.item_id, table.c.text, table.c.archived_manifest_id).where(table.c.tenant == tenant)
            ):
                if r.archived_manifest_id is None:
                    assert r.text, f"hot {name} row {r.item_id} has lost its text"
                    out[(name, r.item_id)] = r.text
                else:
                    assert not r.text, f"archived {name} row {r.item_id} still holds its text in the hot store"
                    pointers.setdefault(r.archived_manifest_id, []).append((name, r.item_id))
    manifests = {m["manifest_id"]: m for m in store.manifests(tenant)}
    for manifest_id, keys in pointers.items():
        manifest = manifests.get(manifest_id)
        assert manifest is not None and manifest["status"] == "committed", f"{manifest_id} is not committed"
        rows = read_manifest_rows(storage, manifest)
        by_key = {(name, r["item_id"]): r["text"] for name, rs in rows.items() if name != "episodes" for r in rs}
        for key in keys:
            assert by_key.get(key), f"{key} points at {manifest_id}, which does not hold it"
            out[key] = by_key[key]
    return out


def archive_objects(location: ArchiveLocation) -> list[tuple[str, str | None, bytes | None]]:
    """Every object under an archive, every version of it in a versioned bucket: (path relative to the archive's
    root, version id or None, bytes or None for a delete marker)."""
    if not location.is_s3:
        root = Path(location.prefix)
        return [(p.relative_to(root).as_posix(), None, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]
    client = location.minio_client()
    base = f"{location.prefix}/" if location.prefix else ""
    out: list[tuple[str, str | None, bytes | None]] = []
    for obj in client.list_objects(location.bucket, prefix=base, recursive=True, include_version=True):
        path = obj.object_name.removeprefix(base)
        if obj.is_delete_marker:
            out.append((path, obj.version_id, None))
            continue
        resp = client.get_object(location.bucket, obj.object_name, version_id=obj.version_id)
        try:
            out.append((path, obj.version_id, resp.read()))
        finally:
            resp.close()
            resp.release_conn()
    return out


def object_text(path: str, data: bytes | None) -> str:
    """An archived object as searchable text: a Parquet file's rows, a manifest's JSON."""
    if data is None:
        return ""
    if path.endswith(".parquet"):
        return json.dumps(pq.read_table(io.BytesIO(data)).to_pylist(), default=str)
    return data.decode("utf-8", "replace")


def search_ranking(memory: Memory, tenant: str, query: str, layers: list[str] | None) -> dict[str, list[Any]]:
    """What a search answers: the index's ranking before near-duplicates are removed, as (layer, id, score), and
    the hits as (layer, id, score), both in the order returned.

    Equal scores come in item id order, so neither the order of the manifests nor of their rows (which a compaction
    changes) decides the ranking or which of two equally scored near-duplicates is kept.
    """
    index = memory._index(tenant)
    with index.lock:
        ranked = [(layer, item_id, round(score, 4)) for score, layer, item_id, _ in index.search(query, 1000, layers)]
    hits = memory.search(tenant, query, limit=1000, layers=layers)
    return {"ranked": ranked, "hits": [(h.layer, h.item_id, round(h.score, 4)) for h in hits]}
