"""Search over archived manifests held column-wise (``engram.search.ArchiveSegment``).

An archived file carries each row's index terms; loading a manifest for search reads them instead of tokenising, and
the segment it becomes scores exactly as the same documents would if they were added to the index one by one.
Files written before the terms column still load (tokenised then) and search the same.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import update

from engram import Memory
from engram.archive import ArchiveLocation, archive_cold_items, decode_parquet, read_file, search_documents
from engram.search import ArchiveSegment, TenantIndex, search_terms
from engram.store import TURNS
from engram.testing import FixedClock
from tests.engram.archive_helpers import COLD, LATER, fill

QUERIES = ["moving to Lisbon as a nurse", "dog", "where do I live", "work job", "favourite colour blue"]
LAYER_CHOICES = [None, ["archival"], ["semantic", "archival"]]


@pytest.fixture
def archived(tmp_path: Path) -> Iterator[Memory]:
    """A SQLite memory whose facts and episodes (with their turns) are all archived to a local folder."""
    memory = Memory(f"sqlite:///{tmp_path / 'engram.db'}", (tmp_path / "archive").as_uri(), clock=FixedClock(LATER))
    fill(memory, sessions=6)
    archive_cold_items(memory.store, memory.archive, COLD, LATER)
    try:
        yield memory
    finally:
        memory.close()


def _searchable_files(memory: Memory) -> list[tuple[dict, dict]]:
    return [
        (m, e)
        for m in memory.store.manifests("acme", ["committed"])
        for e in m["files"]
        if e["table"] in ("semantic_items", "episode_turns")
    ]


def _ranking(memory: Memory, query: str, layers: list[str] | None) -> list[tuple[str, str, float]]:
    return [(h.layer, h.item_id, round(h.score, 4)) for h in memory.search("acme", query, limit=50, layers=layers)]


def test_archived_files_carry_their_index_terms(archived: Memory) -> None:
    files = _searchable_files(archived)
    assert {e["table"] for _, e in files} == {"semantic_items", "episode_turns"}
    for manifest, entry in files:
        table = pq.read_table(pa.BufferReader(read_file(archived.archive, manifest, entry)))
        texts = [f"{t} {a or ''}" for t, a in zip(table["text"].to_pylist(), table["actor"].to_pylist(), strict=True)]
        # The terms the hot index would make of the same row's text and actor.
        assert table["terms"].to_pylist() == search_terms(texts)
        # A search column, not part of the archived row.
        assert all(
            "terms" not in row for row in decode_parquet(entry["table"], read_file(archived.archive, manifest, entry))
        )


def test_a_segment_scores_as_its_documents_added_one_by_one(archived: Memory) -> None:
    segmented, one_by_one = TenantIndex("acme"), TenantIndex("acme")
    for manifest in archived.store.manifests("acme", ["committed"]):
        segment = search_documents(archived.store, archived.archive, manifest)
        if not isinstance(segment, ArchiveSegment):
            continue
        segmented.add(segment)
        one_by_one.add(segment.documents())
    assert len(segmented) == len(one_by_one) > 0
    for query in QUERIES:
        for layers in LAYER_CHOICES:
            got = [(item, round(score, 4)) for score, _, item, _ in segmented.search(query, 30, layers)]
            want = [(item, round(score, 4)) for score, _, item, _ in one_by_one.search(query, 30, layers)]
            assert got == want, (query, layers)


def test_files_written_without_index_terms_search_the_same(archived: Memory, tmp_path: Path) -> None:
    before = {(q, str(layers)): _ranking(archived, q, layers) for q in QUERIES for layers in LAYER_CHOICES}
    assert any(before.values())
    root = Path(archived.archive.prefix)
    for manifest in archived.store.manifests("acme", ["committed"]):
        files = []
        for entry in manifest["files"]:
            path = root / entry["path"]
            table = pq.read_table(path)
            if "terms" in table.column_names:
                buf = io.BytesIO()
                pq.write_table(table.drop_columns(["terms"]), buf)
                path.write_bytes(buf.getvalue())
                entry = {**entry, "bytes": len(buf.getvalue()), "sha256": hashlib.sha256(buf.getvalue()).hexdigest()}
            files.append(entry)
        archived.store.set_manifest("acme", manifest["manifest_id"], files=files)
    assert all("terms" not in pq.read_schema(root / e["path"]).names for _, e in _searchable_files(archived))
    fresh = Memory(archived.store_url, archived.archive, clock=FixedClock(LATER))
    try:
        after = {(q, str(layers)): _ranking(fresh, q, layers) for q in QUERIES for layers in LAYER_CHOICES}
    finally:
        fresh.close()
    assert after == before


def test_turns_no_tombstone_points_at_are_left_out(archived: Memory) -> None:
    # A turn whose tombstone no longer points at the manifest (as when the commit skipped a row that changed) is not
    # searchable from the manifest's copy, though the file still holds it.
    named = archived.search("acme", "Lisbon nurse dog", limit=1000, layers=["archival"])
    turn = next(h.item_id for h in named if h.item_id.startswith("acme-e"))
    with archived.store.write() as conn:
        conn.execute(
            update(TURNS).where(TURNS.c.tenant == "acme", TURNS.c.item_id == turn).values(archived_manifest_id=None)
        )
    fresh = Memory(archived.store_url, archived.archive, clock=FixedClock(LATER))
    try:
        again = fresh.search("acme", "Lisbon nurse dog", limit=1000, layers=["archival"])
    finally:
        fresh.close()
    assert turn not in {h.item_id for h in again}
    # Everything else is still found (a near-duplicate the turn hid may now show as well).
    assert {h.item_id for h in named} - {turn} <= {h.item_id for h in again}


def test_an_archive_location_is_not_needed_for_an_empty_manifest_list(tmp_path: Path) -> None:
    location = ArchiveLocation((tmp_path / "archive").as_uri())
    manifest = {"tenant": "acme", "manifest_id": "man-x", "files": [{"table": "episodes", "path": "x"}]}
    # A manifest of episodes alone holds nothing searchable: nothing is read.
    assert search_documents(None, location, manifest) == []  # type: ignore[arg-type]


def test_an_index_that_loaded_the_archive_drops_what_is_rehydrated(archived: Memory, tmp_path: Path) -> None:
    from engram.archive import rehydrate_batch

    query = "moving to Lisbon as a nurse"
    # A default search loads the segments and finds archived facts (turns answer only when asked for by name).
    (hit, *_) = [h for h in archived.search("acme", query, limit=50) if h.layer == "archival"]
    moved = rehydrate_batch(archived.store, archived.archive, "acme", [hit.item_id], LATER, None, 10)
    assert moved["rehydrated"] == 1
    fresh = Memory(archived.store_url, archived.archive_url, clock=FixedClock(LATER))
    try:
        for layers in LAYER_CHOICES:
            # The warm index (segments loaded before the rehydrate) answers as one built after it.
            assert _ranking(archived, query, layers) == _ranking(fresh, query, layers), layers
        assert hit.item_id not in {h.item_id for h in archived.search("acme", query, limit=50, layers=["archival"])}
        assert hit.item_id in {h.item_id for h in archived.search("acme", query, limit=50, layers=["semantic"])}
        assert len(archived._index("acme")) == len(fresh._index("acme"))
    finally:
        fresh.close()


def test_a_manifest_unreadable_for_a_while_comes_back_into_search(
    archived: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search during a storage outage answers without the manifests it cannot read; once they are back, a search
    after ARCHIVE_RETRY_SECONDS finds them again with no other change to the tenant (it used to wait for the
    tenant's next write, which for a quiet tenant may never come)."""
    import time

    import engram.memory as memory_module

    monkeypatch.setattr(memory_module, "ARCHIVE_RETRY_SECONDS", 2.0)
    query = "moving to Lisbon as a nurse"
    expected = _ranking(archived, query, ["archival"])
    assert expected
    archived.close()
    memory = Memory(archived.store_url, archived.archive_url, clock=FixedClock(LATER))
    try:
        files = list(Path(memory.archive.prefix).rglob("*.parquet"))
        for path in files:
            path.rename(path.with_suffix(".away"))
        assert _ranking(memory, query, ["archival"]) == []
        for path in files:
            path.with_suffix(".away").rename(path)
        assert _ranking(memory, query, ["archival"]) == []  # not tried again before the interval
        time.sleep(2.1)
        assert _ranking(memory, query, ["archival"]) == expected
    finally:
        memory.close()


def test_an_archived_fact_restated_later_is_found_by_its_new_time_in_a_warm_index(archived: Memory) -> None:
    """A restatement merges into the archived fact's tombstone and moves its last-seen time; an index that loaded
    the archive before takes the new time (it kept the old one: a ``since`` filter missed the fact and the hit
    carried the old date, where a new index had the new)."""
    from datetime import timedelta

    from tests.engram.archive_helpers import consolidate_pending
    from tests.flows.helpers import conversation_rows

    query, since = "moving to Lisbon as a nurse", LATER - timedelta(days=3)
    assert archived.search("acme", query, layers=["archival"])  # the index has loaded the archive
    rows = conversation_rows("acme", sessions=1, start=LATER - timedelta(days=2), prefix="acme-again")
    archived.observe_many([{**r, "session": "acme-again"} for r in rows])
    assert consolidate_pending(archived.store, "acme", LATER)["merged"] > 0

    warm = [(h.item_id, h.at) for h in archived.search("acme", query, layers=["archival"], since=since)]
    fresh_memory = Memory(archived.store_url, archived.archive_url, clock=FixedClock(LATER))
    try:
        fresh = [(h.item_id, h.at) for h in fresh_memory.search("acme", query, layers=["archival"], since=since)]
    finally:
        fresh_memory.close()
    assert warm and warm == fresh and all(at >= since for _, at in warm)


def test_searches_that_meet_a_rewritten_tenant_at_once_load_its_archive_once(
    archived: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two searches right after a compaction or forget moved the tenant's epoch: the one that replaces the stale
    index fills the new one under the new one's lock, so the other waits for it instead of loading every manifest
    into it a second time (which doubled the archive's documents and skewed the scores)."""
    import threading
    import time

    import engram.archive as archive_module
    from engram.store import TENANTS

    query = "moving to Lisbon as a nurse"
    expected = _ranking(archived, query, ["archival"])
    documents = len(archived._index("acme"))
    with archived.store.write() as conn:
        conn.execute(update(TENANTS).where(TENANTS.c.tenant == "acme").values(epoch=TENANTS.c.epoch + 1))
    load = archive_module.load_search_tables

    def slow_load(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - a slow object store
        time.sleep(0.3)
        return load(*args, **kwargs)

    monkeypatch.setattr(archive_module, "load_search_tables", slow_load)
    rankings: dict[int, list] = {}

    def search(n: int) -> None:
        rankings[n] = _ranking(archived, query, ["archival"])

    threads = [threading.Thread(target=search, args=(n,)) for n in range(2)]
    threads[0].start()
    time.sleep(0.05)
    threads[1].start()
    for thread in threads:
        thread.join()
    assert len(archived._indexes.get("acme")) == documents
    assert rankings == {0: expected, 1: expected}


@pytest.mark.parametrize("with_vectors", [False, True], ids=["bm25", "bm25+dense"])
def test_equal_scores_rank_by_item_id_whatever_order_the_documents_were_loaded_in(with_vectors: bool) -> None:
    """Compaction and reloads change the order documents are loaded in: equal hits (an exact restatement) come in
    item id order, and the near-duplicate kept is the same, also when BM25 and vector rankings are fused."""
    import numpy as np

    from engram.memory import select_hits

    def doc(item_id: str, text: str, vector: list[float]) -> dict:
        out = {"layer": "semantic", "item_id": item_id, "text": text, "actor": "", "rendered": text, "at": LATER}
        return {**out, "tags": (), **({"vector": np.array(vector, dtype=np.float32)} if with_vectors else {})}

    docs = [
        doc("fact-a", "Caroline lives in Lisbon", [0.6, 0.8]),
        doc("fact-b", "Caroline lives in Lisbon", [0.6, 0.8]),  # the same fact restated
        doc("fact-c", "Caroline moved to Lisbon in May", [0.8, 0.6]),
    ]
    query = np.array([0.0, 1.0], dtype=np.float32) if with_vectors else None
    answers = []
    for order in (docs, docs[::-1], [docs[1], docs[2], docs[0]]):
        index = TenantIndex("acme")
        index.add(order)
        assert index.has_vectors == with_vectors
        ranked = index.search("Caroline Lisbon", 10, query_vector=query)
        answers.append(([(round(s, 6), i) for s, _, i, _ in ranked], [h[2] for h in select_hits(ranked, 10, None)]))
    assert answers[0] == answers[1] == answers[2]
    ranking, kept = answers[0]
    assert [i for _, i in ranking][:2] == ["fact-a", "fact-b"] and ranking[0][0] == ranking[1][0]
    assert "fact-a" in kept and "fact-b" not in kept


def test_documents_tied_at_the_over_fetch_cut_are_chosen_by_item_id() -> None:
    """More equally scored documents than the search over-fetches: the hit returned is the same whatever the load
    order (the one with the lowest item id)."""
    docs = [
        {"layer": "semantic", "item_id": f"item-{i:03d}", "text": "the dog barked", "actor": "", "at": LATER}
        | {"rendered": "the dog barked", "tags": ()}
        for i in range(100)
    ]
    tops = []
    for order in (docs, docs[::-1], docs[37:] + docs[:37]):
        index = TenantIndex("acme")
        index.add(order)
        tops.append([item_id for _, _, item_id, _ in index.search("dog", 1)][:3])
    assert tops == [["item-000", "item-001", "item-002"]] * 3


def test_the_cut_keeps_every_document_tied_with_the_last_one_kept() -> None:
    import numpy as np

    from engram.search import _top

    idx = np.arange(10, dtype=np.int64)
    ids, scores = _top(idx, np.array([1, 0.5, 1, 1, 0.2, 1, 0, 0, 0, 0], dtype=np.float32), 2)
    assert ids.tolist() == [0, 2, 3, 5] and scores.tolist() == [1, 1, 1, 1]
    ids, _ = _top(idx, np.array([3, 2, 1, 0, 0, 0, 0, 0, 0, 0], dtype=np.float32), 2)
    assert ids.tolist() == [0, 1]
    # Scores of broken (NaN) vectors never push a real one out, nor leave the cut empty.
    ids, _ = _top(idx, np.array([np.nan] * 8 + [0.5, 0.2], dtype=np.float32), 3)
    assert ids.tolist()[:2] == [8, 9] and len(ids) == 3
