"""Archive compaction interrupted at each step, then run again: the archive stays whole and searchable throughout,
and the rerun finishes the merge, leaving no ``compacting`` manifest and no object that no manifest references.

The crash is an exception raised at the step named in ``FAULTS`` (after its side effect, where it has one), in the
process that runs the compaction, as a SIGKILL at that point would leave things. SQLite is paired with the S3 server
on loopback (a versioned bucket) and PostgreSQL with a local folder, as in ``test_forget_crash.py``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import engram.archive as archive
import engram.compaction as compaction
from engram import Memory
from engram.archive import ArchiveLocation, archive_cold_items, manifest_path, read_manifest_rows
from engram.compaction import COMPACTING, compact_tenant
from engram.store import Store
from engram.testing import FixedClock
from tests.engram.archive_helpers import COLD, LATER, archive_objects, contents, fill, search_ranking

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

TENANT = "acme"
QUERIES = ["animal shelter Saturdays", "moving to Lisbon as a nurse", "pottery class blue bowl", "week 3 topic"]
LAYER_CHOICES = [None, ["archival"]]
MERGE_ALL = {"target_rows": 1_000, "small_rows": 1_000, "min_manifests": 2}


class Crash(Exception):
    """The injected crash."""


@pytest.fixture(scope="session")
def prefect_harness() -> str:
    """These tests call the domain core directly and run no flow: the directory's Prefect server is not needed."""
    return ""


@dataclass
class Archived:
    memory: Memory  # its search index is loaded before the compaction
    location: ArchiveLocation
    before: dict[tuple[str, str], str]
    stored_before: Counter[tuple[str, str]]
    rankings: dict[tuple[str, str], dict[str, list[Any]]]
    manifests: list[dict[str, Any]]

    @property
    def store(self) -> Store:
        return self.memory.store


@pytest.fixture
def archived(store_url: str, archive_location: ArchiveLocation) -> Iterator[Archived]:
    """Four sessions archived in batches of four rows: many small manifests in each layer."""
    memory = Memory(store_url, archive_location, clock=FixedClock(LATER))
    try:
        fill(memory, sessions=4)
        store = memory.store
        archive_cold_items(store, archive_location, COLD, LATER, batch_size=4)
        by_layer = Counter(m["layer"] for m in store.manifests(TENANT, ["committed"]))
        assert by_layer["semantic"] >= 3 and by_layer["episodic"] >= 3, by_layer
        yield Archived(
            memory,
            archive_location,
            contents(store, archive_location, TENANT),
            _stored_rows(store, archive_location),
            _rankings(memory),
            store.manifests(TENANT, ["committed"]),
        )
    finally:
        memory.close()


def _stored_rows(store: Store, location: ArchiveLocation) -> Counter[tuple[str, str]]:
    """Every row of every committed manifest's files by (table, id), each file read back against its checksum."""
    out: Counter[tuple[str, str]] = Counter()
    for manifest in store.manifests(TENANT, ["committed"]):
        for table, rows in read_manifest_rows(location, manifest).items():
            out.update((table, r["episode_id"] if table == "episodes" else r["item_id"]) for r in rows)
    return out


def _orphans(store: Store, location: ArchiveLocation) -> set[str]:
    """Stored objects (in any version) that no manifest row references."""
    manifests = store.manifests(TENANT)
    referenced = {manifest_path(TENANT, m["manifest_id"]) for m in manifests}
    referenced |= {e["path"] for m in manifests for e in m["files"]}
    return {path for path, _, _ in archive_objects(location)} - referenced


def _rankings(memory: Memory) -> dict[tuple[str, str], dict[str, list[Any]]]:
    return {(q, str(layers)): search_ranking(memory, TENANT, q, layers) for q in QUERIES for layers in LAYER_CHOICES}


def _searches_the_same(archived: Archived, why: str) -> None:
    """The warm index (loaded before the compaction) and a fresh one both answer as before the compaction."""
    assert _rankings(archived.memory) == archived.rankings, f"{why}: the warm index answers differently"
    fresh = Memory(archived.memory.store_url, archived.location, clock=FixedClock(LATER))
    try:
        assert _rankings(fresh) == archived.rankings, f"{why}: a fresh index answers differently"
    finally:
        fresh.close()


# -- the faults ----------------------------------------------------------------------------------------------------


class Fault:
    """One crash, armed on one step; fires once, so the rerun runs undisturbed."""

    def __init__(self, step: str):
        self.step = step
        self.fired = 0

    def crash(self) -> None:
        if not self.fired:
            self.fired += 1
            raise Crash(self.step)


def _arm(step: str, monkeypatch: pytest.MonkeyPatch) -> Fault:
    fault = Fault(step)
    if step == "group_read":
        read = compaction._read_group

        def read_then_crash(*args: Any) -> Any:
            parts = read(*args)
            fault.crash()
            return parts

        monkeypatch.setattr(compaction, "_read_group", read_then_crash)
    elif step in ("manifest_recorded", "some_files_uploaded"):
        put_many = compaction._put_many

        def upload_part_then_crash(fs: Any, storage: Any, objects: Any) -> None:
            if not fault.fired and step == "some_files_uploaded":
                parquet = [o for o in objects if o[0].endswith(".parquet")]
                assert len(parquet) >= 2
                put_many(fs, storage, parquet[: len(parquet) // 2])
            fault.crash()
            put_many(fs, storage, objects)

        monkeypatch.setattr(compaction, "_put_many", upload_part_then_crash)
    elif step == "uploaded":
        verify = compaction._verify

        def crash_first(*args: Any) -> Any:
            fault.crash()
            return verify(*args)

        monkeypatch.setattr(compaction, "_verify", crash_first)
    elif step == "committed":
        commit = Store.commit_compaction

        def commit_then_crash(self: Store, *args: Any) -> bool:
            done = commit(self, *args)
            assert done
            fault.crash()
            return done

        monkeypatch.setattr(Store, "commit_compaction", commit_then_crash)
    elif step == "old_objects_half_deleted":
        delete, calls = archive.delete_all_versions, []

        def delete_some(storage: Any, rel: str) -> int:
            calls.append(rel)
            if len(calls) == 3:
                fault.crash()
            return delete(storage, rel)

        monkeypatch.setattr(archive, "delete_all_versions", delete_some)
    else:
        raise AssertionError(f"no such step: {step}")
    return fault


# (step, leaves a compacting manifest, leaves unreferenced objects, what the rerun must cope with)
FAULTS = [
    ("group_read", False, False, "the group was read and checked; nothing was written"),
    ("manifest_recorded", True, False, "a compacting manifest whose objects were never uploaded"),
    ("some_files_uploaded", True, False, "a compacting manifest with some of its files, without its JSON"),
    ("uploaded", True, False, "a compacting manifest with all its objects, never read back"),
    ("committed", False, True, "the merged manifest is the archive; the old objects are unreferenced"),
    ("old_objects_half_deleted", False, True, "some old objects are deleted, the others unreferenced"),
]


@pytest.mark.parametrize(("step", "leaves_compacting", "leaves_orphans", "why"), FAULTS, ids=[f[0] for f in FAULTS])
def test_compaction_interrupted_at_each_step_then_rerun_finishes_and_loses_nothing(
    archived: Archived,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    leaves_compacting: bool,
    leaves_orphans: bool,
    why: str,
) -> None:
    store, location = archived.store, archived.location
    old_ids = {m["manifest_id"] for m in archived.manifests}
    fault = _arm(step, monkeypatch)
    with pytest.raises(Crash):
        compact_tenant(store, location, TENANT, LATER, **MERGE_ALL)
    assert fault.fired == 1, why

    # Interrupted: everything reads back (checksums, row counts) and search answers as before.
    assert len(store.manifests(TENANT, [COMPACTING])) == int(leaves_compacting), why
    assert bool(_orphans(store, location)) == leaves_orphans, why
    committed = {m["manifest_id"] for m in store.manifests(TENANT, ["committed"])}
    assert (committed == old_ids) == (step not in ("committed", "old_objects_half_deleted")), why
    assert contents(store, location, TENANT) == archived.before, why
    assert _stored_rows(store, location) == archived.stored_before, why
    _searches_the_same(archived, why)

    monkeypatch.undo()
    counts = compact_tenant(store, location, TENANT, LATER, **MERGE_ALL)

    assert counts["leftovers_dropped"] == int(leaves_compacting), why
    assert counts["groups_abandoned"] == 0, why
    if leaves_orphans:
        assert counts["object_versions_deleted"] > 0, why
    # Finished: one manifest per layer, nothing lost, no leftover, no object unreferenced, no old version.
    manifests = store.manifests(TENANT)
    assert sorted(m["layer"] for m in manifests) == ["episodic", "semantic"], why
    assert all(m["status"] == "committed" for m in manifests), why
    assert not ({m["manifest_id"] for m in manifests} & old_ids), why
    assert contents(store, location, TENANT) == archived.before, why
    assert _stored_rows(store, location) == archived.stored_before, why
    assert _orphans(store, location) == set(), why
    versions = Counter(path for path, _, _ in archive_objects(location))
    assert all(n == 1 for n in versions.values()), f"{why}: old versions left: {versions}"
    assert all(data is not None for _, _, data in archive_objects(location)), f"{why}: delete markers left"
    fs = location.filesystem()
    root = f"{location.bucket}/{location.prefix}" if location.is_s3 else location.prefix
    for manifest in manifests:
        doc = json.loads(fs.cat_file(f"{root}/{manifest_path(TENANT, manifest['manifest_id'])}"))
        assert doc["files"] == manifest["files"], why
    _searches_the_same(archived, why)
    # And a run after that has nothing left to do.
    again = compact_tenant(store, location, TENANT, LATER, **MERGE_ALL)
    assert again["manifests_merged"] == again["object_versions_deleted"] == again["leftovers_dropped"] == 0, why
