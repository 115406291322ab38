"""Archive compaction (``engram.compaction``) on SQLite and a local folder: a tenant's many small manifests of a layer
become a few, and nothing else changes: every archived row reads back with its text, search ranks the same (with a
fresh index and with one loaded before the compaction), ``get`` and rehydrate still find archived items, and no
object is left that no manifest references. A forget that changes a manifest before the commit makes the
compaction drop its copy; what an interrupted compaction left is dropped by the next one.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

import engram.archive as archive
import engram.compaction as compaction
from engram import Memory
from engram.archive import (
    ArchiveLocation,
    _rewrite_manifest,
    archive_cold_items,
    decode_parquet,
    manifest_path,
    read_file,
    read_manifest_rows,
    rehydrate_batch,
)
from engram.compaction import COMPACTING, MAX_GROUP, compact_tenant, plan_groups
from engram.store import EPISODES, SEMANTIC, TURNS, Store
from engram.testing import FixedClock
from tests.conftest import T0
from tests.engram.archive_helpers import COLD, LATER, archive_objects, contents, fill, search_ranking

TENANT = "acme"
OTHER = "globex"
QUERIES = [
    "animal shelter Saturdays",
    "moving to Lisbon as a nurse",
    "dog Rex adopted",
    "pottery class blue bowl",
    "birthday camping",
    "week 3 topic",
]
LAYER_CHOICES = [None, ["archival"], ["semantic", "archival"]]
# Small enough for the test data: every manifest is small, one group per layer holds them all.
MERGE_ALL = {"target_rows": 1_000, "small_rows": 1_000, "min_manifests": 2}


class Crash(Exception):
    """The injected crash."""


@dataclass
class Scene:
    memory: Memory
    before: dict[tuple[str, str], str]  # every fact and turn of TENANT with its text, hot or archived
    other_before: dict[tuple[str, str], str]
    rehydrated: str  # a fact of TENANT brought back hot before the compaction: its copy stays in a manifest

    @property
    def store(self) -> Store:
        return self.memory.store

    @property
    def location(self) -> ArchiveLocation:
        return self.memory.archive


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    """Two tenants archived in batches of four rows, so that each has many small manifests per layer; TENANT's
    sessions are three weeks apart, so that its archive spans four months (one file per table and month)."""
    memory = Memory(f"sqlite:///{tmp_path / 'engram.db'}", (tmp_path / "archive").as_uri(), clock=FixedClock(LATER))
    try:
        fill(memory, sessions=6, days_apart=21, as_of=T0 + timedelta(days=6 * 21))
        fill(memory, tenant=OTHER, sessions=3)
        archive_cold_items(memory.store, memory.archive, COLD, LATER, batch_size=4)
        layers = _committed_by_layer(memory.store, TENANT)
        assert layers["semantic"] >= 3 and layers["episodic"] >= 3, layers
        assert sum(_committed_by_layer(memory.store, OTHER).values()) >= 2
        rehydrated = _archived_fact(memory.store)
        assert rehydrate_batch(memory.store, memory.archive, TENANT, [rehydrated], LATER, None, 10)["rehydrated"] == 1
        yield Scene(
            memory,
            contents(memory.store, memory.archive, TENANT),
            contents(memory.store, memory.archive, OTHER),
            rehydrated,
        )
    finally:
        memory.close()


# -- helpers -----------------------------------------------------------------------------------------------------------


def _committed_by_layer(store: Store, tenant: str) -> Counter[str]:
    return Counter(m["layer"] for m in store.manifests(tenant, ["committed"]))


def _archived_fact(store: Store, tenant: str = TENANT) -> str:
    return _archived_facts(store, tenant)[0]


def _archived_facts(store: Store, tenant: str = TENANT) -> list[str]:
    with store.read() as conn:
        return list(
            conn.execute(
                select(SEMANTIC.c.item_id)
                .where(SEMANTIC.c.tenant == tenant, SEMANTIC.c.archived_manifest_id.is_not(None))
                .order_by(SEMANTIC.c.item_id)
            ).scalars()
        )


def _tombstones_resolve(store: Store, location: ArchiveLocation, tenant: str = TENANT) -> int:
    """Check that every tombstone (fact, turn, episode) points at a committed manifest whose files hold its row;
    returns how many were checked."""
    pointers: dict[str, set[tuple[str, str]]] = {}
    with store.read() as conn:
        for table, name, key in (
            (SEMANTIC, "semantic_items", SEMANTIC.c.item_id),
            (TURNS, "episode_turns", TURNS.c.item_id),
            (EPISODES, "episodes", EPISODES.c.episode_id),
        ):
            for item_id, manifest_id in conn.execute(
                select(key, table.c.archived_manifest_id).where(
                    table.c.tenant == tenant, table.c.archived_manifest_id.is_not(None)
                )
            ):
                pointers.setdefault(manifest_id, set()).add((name, item_id))
    manifests = {m["manifest_id"]: m for m in store.manifests(tenant)}
    for manifest_id, keys in pointers.items():
        manifest = manifests.get(manifest_id)
        assert manifest is not None and manifest["status"] == "committed", f"{manifest_id} is not committed"
        held = {
            (name, r["episode_id"] if name == "episodes" else r["item_id"])
            for name, rows in read_manifest_rows(location, manifest).items()
            for r in rows
        }
        assert keys <= held, f"{manifest_id} lacks {sorted(keys - held)[:5]}"
    return sum(len(k) for k in pointers.values())


def _referenced(store: Store, tenant: str = TENANT) -> set[str]:
    manifests = store.manifests(tenant)
    return {manifest_path(tenant, m["manifest_id"]) for m in manifests} | {
        e["path"] for m in manifests for e in m["files"]
    }


def _objects(location: ArchiveLocation, tenant: str = TENANT) -> set[str]:
    return {path for path, _, _ in archive_objects(location) if path.startswith(f"tenant={tenant}/")}


def _orphans(store: Store, location: ArchiveLocation, tenant: str = TENANT) -> set[str]:
    return _objects(location, tenant) - _referenced(store, tenant)


def _manifest_objects(manifest: dict[str, Any]) -> set[str]:
    return {e["path"] for e in manifest["files"]} | {manifest_path(manifest["tenant"], manifest["manifest_id"])}


def _manifest_document(location: ArchiveLocation, path: str) -> bytes:
    return location.filesystem().cat_file(archive._abs(location, path))


def _rankings(memory: Memory) -> dict[tuple[str, str], dict[str, list[tuple[str, Any, float]]]]:
    return {(q, str(layers)): search_ranking(memory, TENANT, q, layers) for q in QUERIES for layers in LAYER_CHOICES}


def _raw_ids(memory: Memory, query: str, layers: list[str] | None) -> list[str]:
    """The ids the tenant's index ranks, before near-duplicates are removed."""
    return [item_id for _, item_id, _ in search_ranking(memory, TENANT, query, layers)["ranked"]]


def _layers_of(memory: Memory, query: str, item_id: str) -> list[str]:
    """The layers in which the index ranks an item for a query, over every layer."""
    ranked = search_ranking(memory, TENANT, query, ["semantic", "archival"])["ranked"]
    return [layer for layer, i, _ in ranked if i == item_id]


def _fresh(scene: Scene) -> Memory:
    return Memory(scene.memory.store_url, scene.location, clock=FixedClock(LATER))


# -- the compaction ----------------------------------------------------------------------------------------------------


def test_compaction_merges_small_manifests_and_loses_nothing(scene: Scene) -> None:
    store, location = scene.store, scene.location
    old = store.manifests(TENANT, ["committed"])
    other_manifests = store.manifests(OTHER)
    other_objects = _objects(location, OTHER)
    tombstones_before = _tombstones_resolve(store, location)
    # The rows the tombstones point at, by (table, date) of their old file: what the merged copy keeps. The fact
    # rehydrated by the fixture left a stale copy behind, which no tombstone points at.
    pointed = store.archived_ids(TENANT, [m["manifest_id"] for m in old])
    kept: dict[str, Counter] = {}
    for m in old:
        for e in m["files"]:
            rows = read_manifest_rows(location, {**m, "files": [e]})[e["table"]]
            key = "episode_id" if e["table"] == "episodes" else "item_id"
            ids = pointed[e["table"]].get(m["manifest_id"], set())
            kept.setdefault(m["layer"], Counter())[(e["table"], e["date"])] += sum(r[key] in ids for r in rows)
    assert sum(sum(c.values()) for c in kept.values()) == sum(m["row_count"] for m in old) - 1

    counts = compact_tenant(store, location, TENANT, LATER, **MERGE_ALL)

    assert counts["manifests_merged"] == len(old)
    assert counts["manifests_written"] == 2
    assert counts["stale_rows_dropped"] == 1
    assert counts["rows_compacted"] == sum(m["row_count"] for m in old) - 1
    assert counts["files_before"] == sum(len(m["files"]) for m in old)
    assert counts["groups_abandoned"] == 0
    new = store.manifests(TENANT)
    assert _committed_by_layer(store, TENANT) == Counter({"semantic": 1, "episodic": 1})
    assert all(m["status"] == "committed" for m in new)
    assert counts["files_after"] == sum(len(m["files"]) for m in new)
    assert counts["files_after"] < counts["files_before"]
    # Nothing lost: every fact and turn reads back with its text; every tombstone finds its row.
    assert contents(store, location, TENANT) == scene.before
    assert _tombstones_resolve(store, location) == tombstones_before > 0
    # The same layout, one file per table and date of the layer; each row count as the old files' together.
    for manifest in new:
        layer = manifest["layer"]
        tables = +kept[layer]  # a (table, date) left with no row has no file
        assert Counter({(e["table"], e["date"]): e["rows"] for e in manifest["files"]}) == tables
        assert len(manifest["files"]) == len(tables)
        for e in manifest["files"]:
            assert e["path"].startswith(f"tenant={TENANT}/layer={layer}/date={e['date']}/{manifest['manifest_id']}-")
        assert manifest["row_count"] == sum(tables.values())
    # The old manifests' objects are gone, the new ones' are there, and nothing else is.
    objects = _objects(location)
    for m in old:
        assert not (_manifest_objects(m) & objects), m["manifest_id"]
    assert objects == _referenced(store)
    assert counts["object_versions_deleted"] == sum(len(_manifest_objects(m)) for m in old)
    # The other tenant is untouched.
    assert store.manifests(OTHER) == other_manifests
    assert _objects(location, OTHER) == other_objects
    assert contents(store, location, OTHER) == scene.other_before


def test_target_rows_bounds_what_one_manifest_holds(scene: Scene) -> None:
    store, location = scene.store, scene.location
    old = store.manifests(TENANT, ["committed"])
    target = 20
    # Two of the largest old manifests fit in one merged manifest, three do not.
    assert 2 * max(m["row_count"] for m in old) <= target < 3 * max(m["row_count"] for m in old)

    counts = compact_tenant(store, location, TENANT, LATER, target_rows=target, small_rows=1_000, min_manifests=2)

    new = store.manifests(TENANT, ["committed"])
    merged = [m for m in new if m["manifest_id"] not in {o["manifest_id"] for o in old}]
    assert counts["manifests_written"] == len(merged) >= 2
    assert all(m["row_count"] <= target for m in merged)
    assert {m["layer"] for m in merged} == {"semantic", "episodic"}
    assert len(new) < len(old)
    assert contents(store, location, TENANT) == scene.before
    assert _orphans(store, location) == set()


def test_a_layer_with_too_few_small_manifests_is_left_alone(scene: Scene) -> None:
    store, location = scene.store, scene.location
    by_layer = _committed_by_layer(store, TENANT)
    assert by_layer["semantic"] > by_layer["episodic"]
    episodic = [m for m in store.manifests(TENANT, ["committed"]) if m["layer"] == "episodic"]

    counts = compact_tenant(
        store, location, TENANT, LATER, target_rows=1_000, small_rows=1_000, min_manifests=by_layer["episodic"] + 1
    )

    assert counts["manifests_merged"] == by_layer["semantic"]
    assert _committed_by_layer(store, TENANT) == Counter({"semantic": 1, "episodic": by_layer["episodic"]})
    assert [m for m in store.manifests(TENANT, ["committed"]) if m["layer"] == "episodic"] == episodic
    assert contents(store, location, TENANT) == scene.before


def test_a_second_run_right_after_changes_nothing(scene: Scene) -> None:
    store, location = scene.store, scene.location
    compact_tenant(store, location, TENANT, LATER, **MERGE_ALL)
    manifests = store.manifests(TENANT)
    objects = archive_objects(location)

    counts = compact_tenant(store, location, TENANT, LATER, **MERGE_ALL)

    assert counts["manifests_merged"] == counts["manifests_written"] == counts["rows_compacted"] == 0
    assert counts["leftovers_dropped"] == counts["object_versions_deleted"] == counts["groups_abandoned"] == 0
    assert store.manifests(TENANT) == manifests
    assert archive_objects(location) == objects
    assert contents(store, location, TENANT) == scene.before


def test_a_tenant_with_a_forget_under_way_is_left_alone(scene: Scene) -> None:
    store, location = scene.store, scene.location
    manifests = store.manifests(TENANT)
    store.save_forget_intent(TENANT, "f" * 64, ["e1"], ["sem-1"], [], LATER)

    counts = compact_tenant(store, location, TENANT, LATER, **MERGE_ALL)

    assert counts.get("skipped_forget_under_way") == 1 and counts["manifests_merged"] == 0
    assert store.manifests(TENANT) == manifests
    store.drop_forget_intent(TENANT, "f" * 64)
    assert compact_tenant(store, location, TENANT, LATER, **MERGE_ALL)["manifests_merged"] == len(manifests)


# -- search, get and rehydrate over the compacted archive --------------------------------------------------------------


def test_search_ranks_the_same_after_compaction_with_a_fresh_index_and_a_warm_one(scene: Scene) -> None:
    warm = scene.memory
    before = _rankings(warm)  # loads every manifest into the warm index
    assert sum(1 for r in before.values() if any(layer == "archival" for layer, _, _ in r["hits"])) >= len(QUERIES)
    warm_docs = len(warm._index(TENANT))
    # The fact rehydrated before the compaction: hot, while its archived copy stays in a manifest.
    rehydrated = scene.before[("semantic_items", scene.rehydrated)]
    assert _layers_of(warm, rehydrated, scene.rehydrated) == ["semantic"]

    compact_tenant(scene.store, scene.location, TENANT, LATER, **MERGE_ALL)

    committed = {m["manifest_id"] for m in scene.store.manifests(TENANT, ["committed"])}
    fresh = _fresh(scene)
    try:
        assert _rankings(fresh) == before
        # The compaction moved the tenant's epoch: the warm index reloads the archive from the new manifests,
        # rather than adding the new manifest's rows beside the old ones'.
        assert _rankings(warm) == before
        assert warm._index(TENANT).manifests == committed == fresh._index(TENANT).manifests
        assert len(warm._index(TENANT)) == len(fresh._index(TENANT)) == warm_docs
        # The compacted manifest holds the rehydrated fact's copy too: it is not searched.
        assert _layers_of(warm, rehydrated, scene.rehydrated) == _layers_of(fresh, rehydrated, scene.rehydrated)
        assert _layers_of(fresh, rehydrated, scene.rehydrated) == ["semantic"]
        for query in QUERIES:
            for layers in LAYER_CHOICES:
                for memory in (warm, fresh):
                    ids = _raw_ids(memory, query, layers)
                    assert len(ids) == len(set(ids)), (query, layers, Counter(ids).most_common(3))
    finally:
        fresh.close()


def test_a_rehydrate_that_a_compaction_overtakes_brings_the_item_back_from_the_new_manifest(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rehydrate reads the item from its manifest; a compaction commits before the rehydrate's commit and points
    the tombstone at the merged manifest. The commit matched no row, and the run answered success with the item
    still archived; now it picks the item again where it points and brings it back."""
    store, location = scene.store, scene.location
    fact = _archived_fact(store)
    commit, compactions = Store.commit_rehydrate, []

    def compaction_first(self: Store, *args: Any) -> int:
        if not compactions:
            compactions.append(compact_tenant(self, location, TENANT, LATER, **MERGE_ALL)["manifests_merged"])
        return commit(self, *args)

    monkeypatch.setattr(Store, "commit_rehydrate", compaction_first)
    counts = rehydrate_batch(store, location, TENANT, [fact], LATER, None, 10)
    assert compactions[0] > 1 and counts == {"rehydrated": 1, "candidates": 1}
    assert store.archived_semantic(TENANT, [fact], 10) == []
    assert scene.memory.get(TENANT, fact).layer == "semantic"


def test_a_rehydrate_whose_files_a_compaction_deletes_while_it_reads_picks_the_item_again(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compaction commits after the rehydrate found the manifest and deletes the replaced files before the
    rehydrate reads them: the read finds them missing, the manifest is no longer committed, and the item is picked
    again where its tombstone points now (it was reported as a damaged archive)."""
    store, location = scene.store, scene.location
    fact = _archived_fact(store)
    find, compactions = archive.find_archived_rows, []

    def compaction_first(*args: Any, **kwargs: Any) -> Any:
        if not compactions:
            compactions.append(compact_tenant(store, location, TENANT, LATER, **MERGE_ALL)["manifests_merged"])
        return find(*args, **kwargs)

    monkeypatch.setattr(archive, "find_archived_rows", compaction_first)
    counts = rehydrate_batch(store, location, TENANT, [fact], LATER, None, 10)
    assert compactions[0] > 1 and counts == {"rehydrated": 1, "candidates": 1}
    assert scene.memory.get(TENANT, fact).layer == "semantic"


def test_get_and_rehydrate_find_archived_items_after_compaction(scene: Scene) -> None:
    memory, store, location = scene.memory, scene.store, scene.location
    fact = _archived_fact(store)
    with store.read() as conn:
        turn = (
            conn.execute(
                select(TURNS.c.item_id).where(TURNS.c.tenant == TENANT, TURNS.c.archived_manifest_id.is_not(None))
            )
            .scalars()
            .first()
        )
        episode = (
            conn.execute(
                select(EPISODES.c.episode_id).where(
                    EPISODES.c.tenant == TENANT, EPISODES.c.archived_manifest_id.is_not(None)
                )
            )
            .scalars()
            .first()
        )
    items = {i: memory.get(TENANT, i) for i in (fact, turn, episode)}
    assert all(item.layer == "archival" and item.text for item in items.values())

    compact_tenant(store, location, TENANT, LATER, **MERGE_ALL)

    assert {i: memory.get(TENANT, i) for i in (fact, turn, episode)} == items
    assert memory.get(TENANT, scene.rehydrated).layer == "semantic"
    # One fact back to the semantic layer, then every other one: each finds its row in the compacted manifest.
    assert rehydrate_batch(store, location, TENANT, [fact], LATER, None, 10) == {"rehydrated": 1, "candidates": 1}
    back = memory.get(TENANT, fact)
    assert back.layer == "semantic" and back.text == items[fact].text
    assert _layers_of(memory, back.text, fact) == ["semantic"]
    while rehydrate_batch(store, location, TENANT, None, LATER, None, 50)["candidates"]:
        pass
    assert store.archived_semantic(TENANT, None, 10) == []
    assert contents(store, location, TENANT) == scene.before


def test_get_of_an_archived_item_reads_its_own_file_only(scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    """A compacted manifest holds many files: ``get`` reads the file of the item's table and date, not all of them,
    and finds the item in its table's other files when its date moved after it was archived."""
    memory, store, location = scene.memory, scene.store, scene.location
    with store.read() as conn:
        turn = conn.execute(
            select(TURNS.c.item_id).where(TURNS.c.tenant == TENANT, TURNS.c.archived_manifest_id.is_not(None))
        ).scalar()
        episode = conn.execute(
            select(EPISODES.c.episode_id).where(
                EPISODES.c.tenant == TENANT, EPISODES.c.archived_manifest_id.is_not(None)
            )
        ).scalar()
    fact = _archived_fact(store)
    expected = {i: memory.get(TENANT, i) for i in (fact, turn, episode)}
    compact_tenant(store, location, TENANT, LATER, **MERGE_ALL)
    assert all(len(m["files"]) > 3 for m in store.manifests(TENANT, ["committed"]))
    read: list[str] = []
    real_read_many = archive._read_many

    def counting(storage: Any, fs: Any, manifest: Any) -> list[bytes]:
        read.extend(e["path"] for e in manifest["files"])
        return real_read_many(storage, fs, manifest)

    monkeypatch.setattr(archive, "_read_many", counting)
    for item_id, item in expected.items():
        read.clear()
        assert memory.get(TENANT, item_id) == item
        assert len(read) == 1, (item_id, read)
    # The fact's last_seen moved to a date its file is not under: every file of its table is looked at, no other.
    with store.write() as conn:
        conn.execute(
            SEMANTIC.update()
            .where(SEMANTIC.c.tenant == TENANT, SEMANTIC.c.item_id == fact)
            .values(last_seen=LATER + timedelta(days=400))
        )
    read.clear()
    moved = memory.get(TENANT, fact)
    assert (moved.item_id, moved.text, moved.layer) == (fact, expected[fact].text, "archival")
    semantic_files = {
        e["path"] for m in store.manifests(TENANT, ["committed"]) if m["layer"] == "semantic" for e in m["files"]
    }
    assert len(read) > 1 and set(read) <= semantic_files
    # Rehydrate looks where get does: another archived fact comes back from its own file.
    other = next(i for i in _archived_facts(store) if i != fact)
    read.clear()
    assert rehydrate_batch(store, location, TENANT, [other], LATER, None, 10) == {"rehydrated": 1, "candidates": 1}
    assert len(read) == 1, read


def test_a_large_manifest_is_read_a_bounded_group_of_files_at_a_time(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a read holds at once is one group's files, whatever the manifest's size; the rows are the same."""
    store, location = scene.store, scene.location
    compact_tenant(store, location, TENANT, LATER, **MERGE_ALL)
    manifest = max(store.manifests(TENANT, ["committed"]), key=lambda m: len(m["files"]))
    whole = archive.read_manifest_rows(location, manifest)
    steps: list[tuple[str, tuple[str, ...]]] = []
    real_read_many, real_decoded = archive._read_many, archive._decoded

    def fetching(storage: Any, fs: Any, part: Any) -> list[bytes]:
        steps.append(("fetch", tuple(e["path"] for e in part["files"])))
        return real_read_many(storage, fs, part)

    def decoding(manifest: Any, entry: Any, *args: Any) -> list[dict[str, Any]]:
        steps.append(("decode", (entry["path"],)))
        return real_decoded(manifest, entry, *args)

    monkeypatch.setattr(archive, "READ_GROUP", 2)
    monkeypatch.setattr(archive, "_read_many", fetching)
    monkeypatch.setattr(archive, "_decoded", decoding)
    assert archive.read_manifest_rows(location, manifest) == whole
    paths = [e["path"] for e in manifest["files"]]
    groups = [paths[i : i + 2] for i in range(0, len(paths), 2)]
    assert len(paths) > 3
    # Each group is decoded before the next is fetched: no more than one group's bytes are held at once.
    assert steps == [s for g in groups for s in [("fetch", tuple(g)), *(("decode", (p,)) for p in g)]]


def test_a_forget_keeps_the_record_of_what_a_manifest_was_compacted_from(scene: Scene) -> None:
    store, location = scene.store, scene.location
    old = {m["manifest_id"] for m in store.manifests(TENANT, ["committed"])}
    compact_tenant(store, location, TENANT, LATER, **MERGE_ALL)
    documents = {
        m["manifest_id"]: json.loads(_manifest_document(location, manifest_path(TENANT, m["manifest_id"])))
        for m in store.manifests(TENANT, ["committed"])
    }
    assert set().union(*(set(d["compacted_from"]) for d in documents.values())) == old
    receipt = scene.memory.forget(TENANT, "Lisbon")
    assert receipt.removed["archive_manifests_rewritten"] >= 1
    for manifest in store.manifests(TENANT, ["committed"]):
        document = json.loads(_manifest_document(location, manifest_path(TENANT, manifest["manifest_id"])))
        assert document["files"] == manifest["files"]
        assert document["compacted_from"] == documents[manifest["manifest_id"]]["compacted_from"]


def test_merged_files_of_several_row_groups_search_and_read_the_same(
    scene: Scene, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A merged file of a busy tenant holds many row groups (``ROW_GROUP_ROWS`` rows each): its terms are read group
    by group, a hit's text from its own group, and ``get`` finds a row in any group."""
    memory, store, location = scene.memory, scene.store, scene.location
    before = _rankings(_fresh(scene))
    fact = _archived_fact(store)
    item = memory.get(TENANT, fact)
    monkeypatch.setattr(archive, "ROW_GROUP_ROWS", 3)

    compact_tenant(store, location, TENANT, LATER, **MERGE_ALL)

    groups = [
        pq.ParquetFile(pa.BufferReader(read_file(location, m, e))).num_row_groups
        for m in store.manifests(TENANT, ["committed"])
        for e in m["files"]
    ]
    assert max(groups) > 1, groups
    with caplog.at_level(logging.WARNING, logger="engram"):
        fresh = _fresh(scene)
        try:
            assert _rankings(fresh) == before
            assert fresh.get(TENANT, fact) == item
        finally:
            fresh.close()
    assert not [r for r in caplog.records if "left out of search" in r.getMessage()]
    assert contents(store, location, TENANT) == scene.before


# -- what an interrupted or overtaken compaction leaves ----------------------------------------------------------------


def test_a_compacting_leftover_is_dropped_by_the_next_run(scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    store, location = scene.store, scene.location
    old = store.manifests(TENANT, ["committed"])
    before = _rankings(scene.memory)

    def crash(*args: Any) -> None:
        raise Crash("after upload, before read-back")

    with monkeypatch.context() as patch:
        patch.setattr(compaction, "_verify", crash)
        with pytest.raises(Crash):
            compact_tenant(store, location, TENANT, LATER, **MERGE_ALL)

    (leftover,) = store.manifests(TENANT, [COMPACTING])
    assert _manifest_objects(leftover) <= _objects(location)  # uploaded, never read back
    assert store.manifests(TENANT, ["committed"]) == old
    assert contents(store, location, TENANT) == scene.before
    assert _rankings(scene.memory) == before
    fresh = _fresh(scene)
    try:
        assert _rankings(fresh) == before  # a compacting manifest is not searched
    finally:
        fresh.close()

    counts = compact_tenant(store, location, TENANT, LATER, **MERGE_ALL)

    assert counts["leftovers_dropped"] == 1
    assert counts["manifests_merged"] == len(old)
    assert store.manifests(TENANT, [COMPACTING]) == []
    assert not (_manifest_objects(leftover) & _objects(location))
    assert _orphans(store, location) == set()
    assert contents(store, location, TENANT) == scene.before
    assert _rankings(scene.memory) == before


def _rewrite_as_a_forget_would(store: Store, location: ArchiveLocation, manifest_id: str) -> None:
    """What a forget does to a manifest holding its subject (here, nothing of it is removed): its first file written
    again under a new name, the manifest's file list swapped, its JSON rewritten and the old file deleted."""
    manifest = next(m for m in store.manifests(TENANT) if m["manifest_id"] == manifest_id)
    entry = manifest["files"][0]
    rows = decode_parquet(entry["table"], read_file(location, manifest, entry))
    _rewrite_manifest(store, location, location.filesystem(), manifest, {entry["path"]: rows}, Counter())
    (now,) = [m for m in store.manifests(TENANT) if m["manifest_id"] == manifest_id]
    assert now["files"] != manifest["files"]


def test_a_manifest_rewritten_before_the_commit_makes_the_compaction_drop_its_copy(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, location = scene.store, scene.location
    by_layer = _committed_by_layer(store, TENANT)
    real = Store.commit_compaction
    seen: list[tuple[str, list[str]]] = []

    def rewrite_then_commit(self: Store, tenant: str, manifest_id: str, old: Any, now: Any) -> bool:
        seen.append((manifest_id, [i for i, _ in old]))
        if len(seen) == 1:  # the first group only (the episodic layer's)
            _rewrite_as_a_forget_would(self, location, old[1][0])
        return real(self, tenant, manifest_id, old, now)

    monkeypatch.setattr(Store, "commit_compaction", rewrite_then_commit)
    counts = compact_tenant(store, location, TENANT, LATER, **MERGE_ALL)

    assert len(seen) == 2
    assert counts["groups_abandoned"] == 1
    assert counts["manifests_written"] == 1
    abandoned, _ = seen[0]
    layers = {m["layer"] for m in store.manifests(TENANT)}
    assert layers == {"semantic", "episodic"}
    # The abandoned group keeps its manifests; the other layer is merged.
    assert _committed_by_layer(store, TENANT) == Counter({"episodic": by_layer["episodic"], "semantic": 1})
    assert abandoned not in {m["manifest_id"] for m in store.manifests(TENANT)}
    assert store.manifests(TENANT, [COMPACTING]) == []
    assert not any(path.startswith(f"tenant={TENANT}/") and abandoned in path for path in _objects(location))
    assert _orphans(store, location) == set()
    assert contents(store, location, TENANT) == scene.before
    assert _tombstones_resolve(store, location) > 0

    monkeypatch.setattr(Store, "commit_compaction", real)
    again = compact_tenant(store, location, TENANT, LATER, **MERGE_ALL)
    assert again["manifests_merged"] == by_layer["episodic"]
    assert _committed_by_layer(store, TENANT) == Counter({"episodic": 1, "semantic": 1})
    assert contents(store, location, TENANT) == scene.before


def test_a_forget_before_the_commit_makes_the_compaction_drop_its_copy(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory, store, location = scene.memory, scene.store, scene.location
    subject = "Lisbon"
    # One group: only the semantic manifests (a few rows each) are small; the episodic ones hold more.
    semantic_rows = max(m["row_count"] for m in store.manifests(TENANT) if m["layer"] == "semantic")
    assert semantic_rows < min(m["row_count"] for m in store.manifests(TENANT) if m["layer"] == "episodic")
    real = Store.commit_compaction
    receipts = []

    def forget_then_commit(self: Store, *args: Any) -> bool:
        if not receipts:
            receipts.append(memory.forget(TENANT, subject))
        return real(self, *args)

    monkeypatch.setattr(Store, "commit_compaction", forget_then_commit)
    counts = compact_tenant(
        store, location, TENANT, LATER, target_rows=1_000, small_rows=semantic_rows + 1, min_manifests=2
    )

    assert receipts and receipts[0].removed["archive_rows"] > 0
    assert counts["groups_abandoned"] == 1 and counts["manifests_written"] == 0
    assert store.manifests(TENANT, [COMPACTING]) == []
    assert _orphans(store, location) == set()
    after_forget = contents(store, location, TENANT)
    assert after_forget == {k: v for k, v in scene.before.items() if k in after_forget}
    assert len(after_forget) < len(scene.before)
    assert not any(subject in text for text in after_forget.values())

    monkeypatch.setattr(Store, "commit_compaction", real)
    again = compact_tenant(
        store, location, TENANT, LATER, target_rows=1_000, small_rows=semantic_rows + 1, min_manifests=2
    )
    assert again["manifests_written"] == 1
    assert contents(store, location, TENANT) == after_forget
    assert _orphans(store, location) == set()


def test_a_forget_during_one_group_does_not_fail_the_next_group(scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    memory, store, location = scene.memory, scene.store, scene.location
    real = Store.commit_compaction
    receipts = []

    def forget_then_commit(self: Store, *args: Any) -> bool:
        if not receipts:
            receipts.append(memory.forget(TENANT, "Lisbon"))
        return real(self, *args)

    monkeypatch.setattr(Store, "commit_compaction", forget_then_commit)
    counts = compact_tenant(store, location, TENANT, LATER, **MERGE_ALL)

    # The forget rewrote manifests of both layers: the group being committed and the one after it are left alone,
    # without an error, and every row the forget kept is still readable.
    assert counts["groups_abandoned"] == 2 and counts["manifests_written"] == 0
    assert store.manifests(TENANT, [COMPACTING]) == []
    after_forget = contents(store, location, TENANT)
    assert after_forget == {k: v for k, v in scene.before.items() if k in after_forget}
    assert len(after_forget) < len(scene.before)
    assert _orphans(store, location) == set()
    monkeypatch.setattr(Store, "commit_compaction", real)
    again = compact_tenant(store, location, TENANT, LATER, **MERGE_ALL)
    assert again["manifests_written"] == 2
    assert _committed_by_layer(store, TENANT) == Counter({"semantic": 1, "episodic": 1})
    assert contents(store, location, TENANT) == after_forget


def test_a_fact_archived_twice_is_searched_once_after_compaction(scene: Scene) -> None:
    store, location = scene.store, scene.location
    again = LATER + timedelta(days=90)
    # The fact rehydrated by the fixture is cold again later: a second manifest holds a copy of it.
    assert archive_cold_items(store, location, COLD, again, TENANT, batch_size=4)["semantic_items"] == 1
    assert store.find_item(TENANT, scene.rehydrated)["archived_manifest_id"] is not None
    fresh = Memory(scene.memory.store_url, location, clock=FixedClock(again))
    try:
        before = _rankings(fresh)
        docs = len(fresh._index(TENANT))
    finally:
        fresh.close()

    compact_tenant(store, location, TENANT, again, **MERGE_ALL)

    fresh = Memory(scene.memory.store_url, location, clock=FixedClock(again))
    try:
        text = scene.before[("semantic_items", scene.rehydrated)]
        for layers in LAYER_CHOICES:
            ids = _raw_ids(fresh, text, layers)
            assert scene.rehydrated in ids
            assert len(ids) == len(set(ids)), (layers, Counter(ids).most_common(2))
        assert len(fresh._index(TENANT)) == docs
        assert _rankings(fresh) == before
    finally:
        fresh.close()


# -- plan_groups -------------------------------------------------------------------------------------------------------


def _m(n: int, rows: int, layer: str = "semantic") -> dict[str, Any]:
    return {"manifest_id": f"man-{layer}-{n:04d}", "layer": layer, "row_count": rows}


def _ids(groups: list[list[Any]]) -> list[list[str]]:
    return [[m["manifest_id"] for m in g] for g in groups]


def test_plan_groups_packs_oldest_first_up_to_target_rows() -> None:
    manifests = [_m(i, 4) for i in range(7)]
    groups = plan_groups(manifests, target_rows=10, small_rows=100, min_manifests=2)
    # 4 + 4 fit in 10, a third would not; the seventh manifest would be alone, so it is left as it is.
    assert _ids(groups) == [
        ["man-semantic-0000", "man-semantic-0001"],
        ["man-semantic-0002", "man-semantic-0003"],
        ["man-semantic-0004", "man-semantic-0005"],
    ]
    assert all(sum(m["row_count"] for m in g) <= 10 for g in groups)
    uneven = [_m(0, 6), _m(1, 3), _m(2, 1), _m(3, 9), _m(4, 2)]
    # 6 + 3 + 1 is exactly 10; 9 and 2 do not fit together and neither is merged alone.
    assert _ids(plan_groups(uneven, target_rows=10, small_rows=100, min_manifests=2)) == [
        ["man-semantic-0000", "man-semantic-0001", "man-semantic-0002"]
    ]


def test_plan_groups_needs_min_manifests_small_ones() -> None:
    manifests = [_m(i, 5) for i in range(3)]
    assert plan_groups(manifests, target_rows=100, small_rows=10, min_manifests=4) == []
    assert _ids(plan_groups(manifests, target_rows=100, small_rows=10, min_manifests=3)) == [
        ["man-semantic-0000", "man-semantic-0001", "man-semantic-0002"]
    ]
    # A manifest that is not small neither counts nor takes part.
    big = [*manifests, _m(3, 10), _m(4, 50)]
    assert plan_groups(big, target_rows=100, small_rows=10, min_manifests=4) == []
    assert _ids(plan_groups(big, target_rows=100, small_rows=10, min_manifests=2)) == [
        ["man-semantic-0000", "man-semantic-0001", "man-semantic-0002"]
    ]


def test_plan_groups_never_makes_a_group_of_one() -> None:
    # Each small manifest alone fills the target: no two fit together, so there is nothing to merge.
    manifests = [_m(i, 8) for i in range(5)]
    assert plan_groups(manifests, target_rows=10, small_rows=100, min_manifests=2) == []
    assert plan_groups([_m(0, 1)], target_rows=10, small_rows=100, min_manifests=1) == []
    mixed = [_m(0, 8), _m(1, 1), _m(2, 8), _m(3, 8)]
    groups = plan_groups(mixed, target_rows=10, small_rows=100, min_manifests=2)
    assert _ids(groups) == [["man-semantic-0000", "man-semantic-0001"]]
    assert all(len(g) >= 2 for g in groups)


def test_plan_groups_keeps_layers_apart() -> None:
    manifests = [_m(i, 2, "semantic" if i % 2 else "episodic") for i in range(8)]
    groups = plan_groups(manifests, target_rows=100, small_rows=10, min_manifests=2)
    assert len(groups) == 2
    assert [{m["layer"] for m in g} for g in groups] == [{"episodic"}, {"semantic"}]
    assert sorted(m["manifest_id"] for g in groups for m in g) == sorted(m["manifest_id"] for m in manifests)
    # Each layer's count is its own: four of one layer and one of the other.
    lopsided = [_m(i, 2, "episodic") for i in range(4)] + [_m(9, 2, "semantic")]
    assert [{m["layer"] for m in g} for g in plan_groups(lopsided, 100, 10, 2)] == [{"episodic"}]


def test_plan_groups_caps_the_manifests_of_one_group() -> None:
    manifests = [_m(i, 1) for i in range(MAX_GROUP + 3)]
    groups = plan_groups(manifests, target_rows=10 * MAX_GROUP, small_rows=10, min_manifests=2)
    assert [len(g) for g in groups] == [MAX_GROUP, 3]


def test_an_archive_partitioned_by_day_reads_alike_and_compacts_into_months(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Archives written by earlier versions have ``date=YYYY-MM-DD`` partitions: a forget rewrites them, ``get``
    finds an item in its day's file, search and rehydrate work over them, and compaction merges the days into
    months."""
    memory = Memory(f"sqlite:///{tmp_path / 'engram.db'}", (tmp_path / "archive").as_uri(), clock=FixedClock(LATER))
    try:
        fill(memory, sessions=6, days_apart=15, as_of=T0 + timedelta(days=90))
        with monkeypatch.context() as m:
            m.setattr(archive, "partition", lambda at: at.date().isoformat())
            archive_cold_items(memory.store, memory.archive, COLD, LATER, batch_size=4)
        store, location = memory.store, memory.archive
        with_pottery = contents(store, location, TENANT)
        memory.forget(TENANT, "pottery")  # rewrites the day files that hold it, under their day
        before = contents(store, location, TENANT)
        assert len(before) < len(with_pottery)
        assert not [text for text in before.values() if "pottery" in text.lower()]
        old = store.manifests(TENANT, ["committed"])
        days = {e["date"] for m in old for e in m["files"]}
        assert len(days) >= 6 and all(len(d) == 10 for d in days), days
        assert all(f"/date={e['date']}/" in e["path"] for m in old for e in m["files"])
        fact = _archived_fact(store)
        archived = memory.get(TENANT, fact)
        assert archived.layer == "archival" and archived.text
        rankings = _rankings(memory)

        counts = compact_tenant(store, location, TENANT, LATER, **MERGE_ALL)

        assert counts["manifests_merged"] == len(old)
        merged = store.manifests(TENANT, ["committed"])
        assert {e["date"] for m in merged for e in m["files"]} == {"2024-03", "2024-04", "2024-05"}
        for m in merged:
            pairs = [(e["table"], e["date"]) for e in m["files"]]
            assert len(pairs) == len(set(pairs)), pairs
        assert contents(store, location, TENANT) == before
        assert _tombstones_resolve(store, location) > len(before)  # every fact, turn and episode
        fresh = Memory(memory.store_url, location, clock=FixedClock(LATER))
        try:
            assert _rankings(fresh) == rankings
        finally:
            fresh.close()
        assert memory.get(TENANT, fact) == archived
        assert rehydrate_batch(store, location, TENANT, [fact], LATER, None, 10) == {"rehydrated": 1, "candidates": 1}
        assert memory.get(TENANT, fact).text == archived.text
    finally:
        memory.close()
