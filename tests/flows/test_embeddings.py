"""The dense extra: consolidate stores MiniLM vectors with new facts, and search fuses them with BM25."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import select

from engram import Memory
from engram.embed import available
from engram.store import SEMANTIC
from tests.conftest import T0
from tests.flows.helpers import conversation_rows

pytestmark = pytest.mark.skipif(not available(), reason="the embeddings extra is not installed")


def test_consolidation_embeds_new_facts_and_search_finds_them_without_shared_words(
    sqlite_memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENGRAM_EMBEDDINGS", "true")
    memory = sqlite_memory
    memory.observe_many(conversation_rows("acme", sessions=1, start=T0))
    memory.run_lifecycle(as_of=T0 + timedelta(days=1))

    with memory.store.read() as conn:
        vectors = [r.embedding for r in conn.execute(select(SEMANTIC.c.embedding))]
    assert vectors and all(v is not None and len(v) == 384 * 4 for v in vectors)
    norms = [float(np.linalg.norm(np.frombuffer(v, dtype=np.float32))) for v in vectors]
    assert all(abs(n - 1.0) < 1e-3 for n in norms)  # stored L2-normalised, so a dot product is the cosine

    # No word of the query (nor its stem) occurs in the fact: BM25 alone finds nothing, the dense side does.
    assert "I adopted my dog Rex" in memory.search("acme", "canine companion", layers=["semantic"])[0].text
    monkeypatch.setenv("ENGRAM_EMBEDDINGS", "false")
    lexical_only = Memory(memory.store_url, memory.archive_url)
    try:
        assert lexical_only.search("acme", "canine companion", layers=["semantic"]) == []
    finally:
        lexical_only.close()
