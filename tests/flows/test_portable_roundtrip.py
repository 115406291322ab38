"""A tenant's memory after the lifecycle flows, exported from one backend and imported into the other."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from engram import Memory
from tests.conftest import T0
from tests.engram.test_portable import open_memory, other_store, table_rows
from tests.flows.helpers import conversation_rows


def test_lifecycle_memory_moves_sqlite_to_postgresql_and_back_unchanged(
    sqlite_memory: Memory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Embeddings cost a model load here; their bytes' round trip is covered in tests/engram/test_portable.py.
    monkeypatch.setenv("ENGRAM_EMBEDDINGS", "false")
    memory = sqlite_memory
    as_of = T0 + timedelta(days=10)
    memory.observe_many(conversation_rows("acme", sessions=3, start=T0))
    # A session still open at as_of stays in working memory; an empty text is quarantined.
    memory.observe_many(
        [
            {"tenant": "acme", "session": "open", "actor": "Caroline", "text": "I am packing boxes", "at": as_of},
            {"tenant": "acme", "session": "open", "actor": "Melanie", "text": "", "at": as_of},
        ]
    )
    memory.observe_many(conversation_rows("other", sessions=1, start=T0))
    memory.run_lifecycle(as_of=as_of)
    # Arrives after the run: still in the sensory layer.
    memory.observe("acme", "late", "Melanie", "I painted a sunrise over the lake", as_of + timedelta(minutes=1))
    stats = memory.stats("acme")
    assert all(stats[layer] > 0 for layer in ("sensory", "working", "episodic", "semantic", "quarantine"))
    fact = memory.search("acme", "where is Caroline moving for her new job", layers=["semantic"])[0]
    history = memory.history("acme", fact.item_id)
    assert {"observe", "ingest", "close_session", "consolidate"} <= {h.action for h in history}
    queries = ("where is Caroline moving for her new job", "packing boxes", "sunrise")
    hits = {q: _hits(memory, q) for q in queries}

    memory.export("acme", str(tmp_path / "from-sqlite"))
    # Taken after the export, which writes the access times the searches above noted.
    rows = table_rows(memory.store, "acme")
    assert rows["transitions"] and rows["lineage"] and rows["episode_turns"]
    with other_store(memory.store_url, tmp_path) as pg_url:
        on_pg = open_memory(pg_url, tmp_path, "archive-pg")
        try:
            on_pg.import_tenant(str(tmp_path / "from-sqlite"))
            _assert_same_memory(on_pg, rows, stats, hits, fact.item_id, history)
            assert on_pg.stats("other")["events"] == 0  # only the exported tenant moved
            on_pg.export("acme", (tmp_path / "from-pg").as_uri())
        finally:
            on_pg.close()

    back = open_memory(f"sqlite:///{tmp_path / 'back.db'}", tmp_path, "archive-back")
    try:
        back.import_tenant((tmp_path / "from-pg").as_uri())
        _assert_same_memory(back, rows, stats, hits, fact.item_id, history)
    finally:
        back.close()


def _assert_same_memory(memory: Memory, rows: dict, stats: dict, hits: dict, item_id: str, history: list) -> None:
    assert table_rows(memory.store, "acme") == rows
    assert memory.stats("acme") == stats
    assert {q: _hits(memory, q) for q in hits} == hits
    assert memory.history("acme", item_id) == history


def _hits(memory: Memory, query: str) -> set[tuple]:
    # A set: items with equal scores come back in the order the store listed them, which differs by backend.
    return {(h.item_id, h.layer, h.text, h.sources) for h in memory.search("acme", query, limit=1000)}
