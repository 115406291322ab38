"""``forget`` interrupted at each step of its archive rewrite, then run again: the archive stays readable throughout,
and the rerun leaves nothing of the subject, everything else whole, and no object that no manifest references.

The crash is an exception raised from the step named in ``FAULTS`` (after its side effect, where it has one), in the
process that runs the forget, as a SIGKILL at that point would leave things. SQLite is paired with the S3 server on
loopback (a versioned bucket) and PostgreSQL with a local folder, as in ``tests/engram/test_archive.py``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import insert, select

import engram.archive as archive
from engram import Memory
from engram.archive import (
    ArchiveError,
    ArchiveLocation,
    archive_cold_items,
    manifest_path,
    read_manifest_rows,
    rehydrate_batch,
    remove_orphan_objects,
)
from engram.models import ALL_TABLES
from engram.store import LINEAGE, Store
from engram.testing import FixedClock
from engram.text import mentions
from tests.engram.archive_helpers import COLD, LATER, archive_objects, contents, fill, object_text
from tests.reliability.scenario import subject_left

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

TENANT = "acme"
SUBJECT = "Lisbon"


class Crash(Exception):
    """The injected crash."""


@pytest.fixture(scope="session")
def prefect_harness() -> str:
    """These tests call the domain core directly and run no flow: the directory's Prefect server is not needed."""
    return ""


@dataclass
class Archived:
    """A memory whose facts and episodes are archived, some facts back in the hot store, and the ids a forget of the
    subject must remove: those whose text names it, and those distilled from an event that names it."""

    memory: Memory
    location: ArchiveLocation
    before: dict[tuple[str, str], str]  # every fact and turn with its text, hot or archived
    stored_before: Counter[tuple[str, str]]  # every row of every manifest's files
    gone: set[str]  # the ids the forget removes
    unnamed: str  # a hot fact that does not name the subject but was distilled from an event that does

    @property
    def store(self) -> Store:
        return self.memory.store


@pytest.fixture
def archived(store_url: str, archive_location: ArchiveLocation) -> Iterator[Archived]:
    """Four sessions consolidated and archived, two facts rehydrated, one of them linked to a subject's event."""
    memory = Memory(store_url, archive_location, clock=FixedClock(LATER))
    try:
        fill(memory)
        store = memory.store
        archive_cold_items(store, archive_location, COLD, LATER)
        before = contents(store, archive_location, TENANT)
        events = sorted(
            i for (table, i), text in before.items() if table == "episode_turns" and mentions(text, SUBJECT)
        )
        # A fact that does not name the subject but was distilled from an archived event that does (an LLM
        # consolidator writes such facts). Once the archive is rewritten without that event's turn, only its id,
        # recorded before the rewrite, can find the fact again; it is brought back hot so the hot store holds it.
        unnamed = memory.search(TENANT, "pottery class blue bowl", limit=1)[0].item_id
        lisbon_fact = memory.search(TENANT, SUBJECT, limit=1)[0].item_id
        rehydrate_batch(store, archive_location, TENANT, [unnamed, lisbon_fact], LATER, None, 10)
        with store.write() as conn:
            conn.execute(insert(LINEAGE).values(tenant=TENANT, item_id=unnamed, event_id=events[0]))
        derived = store.derived_items(TENANT, events)
        assert unnamed in derived and not mentions(before[("semantic_items", unnamed)], SUBJECT)
        gone = {i for (_, i), text in before.items() if mentions(text, SUBJECT)} | set(events) | derived
        yield Archived(memory, archive_location, before, _stored_rows(store, archive_location), gone, unnamed)
    finally:
        memory.close()


def _stored_rows(store: Store, location: ArchiveLocation) -> Counter[tuple[str, str]]:
    """Every row of every manifest's files by (table, id), each file read back against its checksum."""
    out: Counter[tuple[str, str]] = Counter()
    for manifest in store.manifests(TENANT):
        for table, rows in read_manifest_rows(location, manifest).items():
            out.update((table, r["episode_id"] if table == "episodes" else r["item_id"]) for r in rows)
    return out


def _orphans(store: Store, location: ArchiveLocation) -> set[str]:
    """Stored objects (in any version) that no manifest row references."""
    referenced = {manifest_path(TENANT, m["manifest_id"]) for m in store.manifests(TENANT)}
    referenced |= {e["path"] for m in store.manifests(TENANT) for e in m["files"]}
    return {path for path, _, _ in archive_objects(location)} - referenced


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


def _after_put(fault: Fault, suffix: str) -> Callable[..., None]:
    real = archive._put

    def put(fs: Any, storage: Any, rel: str, data: bytes) -> None:
        real(fs, storage, rel, data)
        if rel.endswith(suffix):
            fault.crash()

    return put


def _damaging_put(fault: Fault) -> Callable[..., None]:
    """A storage that keeps half of the first Parquet file it is sent and answers as if it kept it whole."""
    real = archive._put

    def put(fs: Any, storage: Any, rel: str, data: bytes) -> None:
        if rel.endswith(".parquet") and not fault.fired:
            fault.fired += 1
            data = data[: len(data) // 2]
        real(fs, storage, rel, data)

    return put


def _arm(step: str, monkeypatch: pytest.MonkeyPatch) -> Fault:
    fault = Fault(step)
    if step == "new_file_written":
        monkeypatch.setattr(archive, "_put", _after_put(fault, ".parquet"))
    elif step == "new_file_stored_damaged":
        monkeypatch.setattr(archive, "_put", _damaging_put(fault))
    elif step == "manifest_row_committed":
        swap = Store.swap_manifest_files

        def swap_then_crash(self: Store, *args: Any) -> bool:
            done = swap(self, *args)
            fault.crash()
            return done

        monkeypatch.setattr(Store, "swap_manifest_files", swap_then_crash)
    elif step == "manifest_json_written":
        monkeypatch.setattr(archive, "_put", _after_put(fault, ".json"))
    elif step == "old_objects_half_deleted":
        delete, calls = archive.delete_all_versions, []

        def delete_some(storage: Any, rel: str) -> int:
            calls.append(rel)
            if len(calls) == 2:
                fault.crash()
            return delete(storage, rel)

        monkeypatch.setattr(archive, "delete_all_versions", delete_some)
    elif step in ("before_hot_forget_by_id", "before_hot_forget_by_text"):
        name = "forget_archived" if step == "before_hot_forget_by_id" else "forget"
        real = getattr(Store, name)

        def crash_first(self: Store, *args: Any) -> dict[str, int]:
            fault.crash()
            return real(self, *args)

        monkeypatch.setattr(Store, name, crash_first)
    elif step == "orphan_sweep":
        sweep = archive.remove_orphan_objects

        def crash_first(*args: Any) -> int:
            fault.crash()
            return sweep(*args)

        monkeypatch.setattr(archive, "remove_orphan_objects", crash_first)
    else:
        raise AssertionError(f"no such step: {step}")
    return fault


# (step, objects left unreferenced by the crash, why the rerun must cope)
FAULTS = [
    ("new_file_written", True, "a new file exists that no manifest names; the manifest still names the old ones"),
    ("new_file_stored_damaged", True, "a new file was stored damaged: read back, it stops the forget before the swap"),
    ("manifest_row_committed", True, "the row names the new files; the old ones and the manifest's JSON lag behind"),
    ("manifest_json_written", True, "the old files are unreferenced and not yet deleted"),
    ("old_objects_half_deleted", True, "one old file is gone, the others are left unreferenced"),
    ("before_hot_forget_by_id", False, "the archive no longer holds the turns that named the events to remove"),
    ("orphan_sweep", False, "everything is removed but the sweep and the forget's record"),
    ("before_hot_forget_by_text", False, "the archive half is done and its record dropped; the hot text remains"),
]


@pytest.mark.parametrize(("step", "leaves_orphans", "why"), FAULTS, ids=[f[0] for f in FAULTS])
def test_forget_interrupted_at_each_step_then_rerun_leaves_nothing_of_the_subject_and_everything_else(
    archived: Archived, monkeypatch: pytest.MonkeyPatch, step: str, leaves_orphans: bool, why: str
) -> None:
    memory, store, location = archived.memory, archived.store, archived.location
    fault = _arm(step, monkeypatch)
    # A damaged write is no crash: the forget's read-back finds it and stops.
    with pytest.raises(ArchiveError if step == "new_file_stored_damaged" else Crash):
        memory.forget(TENANT, SUBJECT)
    assert fault.fired == 1, why

    # Interrupted: every manifest reads back against its checksums, and search answers over the archive.
    _stored_rows(store, location)
    assert memory.search(TENANT, "animal shelter Saturdays", layers=["archival"])
    assert bool(_orphans(store, location)) == leaves_orphans, why
    # What the forget recorded holds ids and the subject's hash, never the subject.
    assert all(SUBJECT.lower() not in str(intent).lower() for intent in store.forget_intents(TENANT))

    memory.forget(TENANT, SUBJECT)

    # Nothing of the subject: no text in any table or object, no row under an id the forget had to remove.
    left = subject_left(memory, location, TENANT, SUBJECT)
    assert not left, f"{why}: {SUBJECT!r} is still in {left[:10]}"
    with store.read() as conn:
        for model in ALL_TABLES:
            table = model.__table__  # type: ignore[attr-defined]
            for row in conn.execute(select(table)):
                text = str(tuple(row))
                assert SUBJECT.lower() not in text.lower(), f"{why}: {table.name} still names the subject"
                assert not any(f"'{i}'" in text for i in archived.gone), f"{why}: {table.name} keeps a removed id"
    for path, version, data in archive_objects(location):
        assert SUBJECT.lower() not in object_text(path, data).lower(), f"{why}: {path}@{version} names the subject"
    # Everything else whole: every other fact and turn reads back with its text, every other stored row is there.
    assert contents(store, location, TENANT) == {k: v for k, v in archived.before.items() if k[1] not in archived.gone}
    assert _stored_rows(store, location) == Counter(
        {k: n for k, n in archived.stored_before.items() if k[1] not in archived.gone}
    )
    # Finished: no object left unreferenced, no old version, each manifest's JSON names its row's files, no record.
    assert _orphans(store, location) == set(), why
    versions = Counter(path for path, _, _ in archive_objects(location))
    assert all(n == 1 for n in versions.values()), f"{why}: old versions left: {versions}"
    fs = location.filesystem()
    root = f"{location.bucket}/{location.prefix}" if location.is_s3 else location.prefix
    for manifest in store.manifests(TENANT):
        doc = json.loads(fs.cat_file(f"{root}/{manifest_path(TENANT, manifest['manifest_id'])}"))
        assert doc["files"] == manifest["files"], why
    assert store.forget_intents(TENANT) == []
    # Search and rehydrate still work over what the archive keeps.
    assert memory.search(TENANT, "animal shelter Saturdays", layers=["archival"])
    while rehydrate_batch(store, location, TENANT, None, LATER, None, 50)["candidates"]:
        pass
    assert store.count_by_layer(TENANT)["archival"] > 0  # archived turns stay where they are


def test_a_rerun_finds_what_was_distilled_from_events_the_archive_no_longer_names(
    archived: Archived, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hazard the forget's record exists for, shown on its own: without the ids the interrupted run recorded,
    # the rerun would find neither the archived turn's event nor the fact distilled from it.
    memory, store = archived.memory, archived.store
    _arm("before_hot_forget_by_id", monkeypatch)
    with pytest.raises(Crash):
        memory.forget(TENANT, SUBJECT)
    assert store.find_item(TENANT, archived.unnamed) is not None
    assert store.events_mentioning(TENANT, SUBJECT) == set()  # archived events are blanked; their turns are gone
    (intent,) = store.forget_intents(TENANT)
    assert archived.unnamed in intent["item_ids"]

    memory.forget(TENANT, SUBJECT)

    assert store.find_item(TENANT, archived.unnamed) is None
    assert store.lineage_of(TENANT, [archived.unnamed]).get(archived.unnamed, ()) == ()


def test_the_sweep_spares_objects_a_manifest_or_an_unfinished_forget_may_need(archived: Archived) -> None:
    store, location = archived.store, archived.location
    fs = location.filesystem()
    stray = f"tenant={TENANT}/layer=semantic/date=2024-03-01/man-stray-0.0123456789ab.parquet"
    pending = f"tenant={TENANT}/layer=semantic/date=2024-03-01/man-pending-0.parquet"
    for rel in (stray, pending):
        archive._put(fs, location, rel, b"not yet referenced")
    # An archive run records its manifest (status ``written``) before it uploads: its objects are referenced.
    store.add_manifest(
        {
            "tenant": TENANT,
            "manifest_id": "man-pending",
            "layer": "semantic",
            "uri": f"{location.url}/{manifest_path(TENANT, 'man-pending')}",
            "files": [{"path": pending, "table": "semantic_items", "rows": 1, "bytes": 18, "sha256": "0" * 64}],
            "row_count": 1,
            "status": "written",
            "flow_run_id": None,
            "created_at": LATER,
        }
    )
    # Another forget of the tenant is under way: the stray may be its new file, not yet committed.
    store.save_forget_intent(TENANT, "f" * 64, ["e1"], ["sem-1"], [], LATER)
    assert remove_orphan_objects(store, location, TENANT) == 0
    assert _orphans(store, location) == {stray}

    store.drop_forget_intent(TENANT, "f" * 64)
    assert remove_orphan_objects(store, location, TENANT) == 1
    assert _orphans(store, location) == set()
    assert pending in {path for path, _, _ in archive_objects(location)}


def test_a_rewrite_from_a_stale_copy_of_a_manifest_cannot_commit(archived: Archived) -> None:
    # Two forgets of one tenant that rewrote the same file from the same copy: the second would bring back what the
    # first removed, so its commit is refused and its rerun starts from the manifest as it is then.
    store = archived.store
    manifest = next(m for m in store.manifests(TENANT) if m["layer"] == "semantic")
    first = [dict(f, path=f["path"] + ".first") for f in manifest["files"]]
    second = [dict(f, path=f["path"] + ".second") for f in manifest["files"]]
    assert store.swap_manifest_files(TENANT, manifest["manifest_id"], manifest["files"], first) is True
    assert store.swap_manifest_files(TENANT, manifest["manifest_id"], manifest["files"], second) is False
    (now,) = [m for m in store.manifests(TENANT) if m["manifest_id"] == manifest["manifest_id"]]
    assert now["files"] == first


def test_forgetting_the_whole_tenant_also_drops_an_unfinished_forget(
    archived: Archived, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory, store, location = archived.memory, archived.store, archived.location
    _arm("manifest_row_committed", monkeypatch)
    with pytest.raises(Crash):
        memory.forget(TENANT, SUBJECT)
    assert store.forget_intents(TENANT)

    receipt = memory.forget(TENANT)

    assert receipt.removed["forget_intents"] == 1
    assert store.forget_intents(TENANT) == []
    assert archive_objects(location) == []
