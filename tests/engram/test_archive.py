"""The archival layer against real storage: a local folder and an S3 server on loopback, on SQLite and PostgreSQL.

Provisioning, archive (write, verify, tombstone), search over the archive, rehydrate, and forget across the archive.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select, update

from engram import Memory
from engram.archive import (
    ArchiveLocation,
    RetentionRules,
    archive_cold_items,
    archive_schema,
    decode_parquet,
    encode_parquet,
    provision_archive,
    read_manifest_rows,
    rehydrate_batch,
)
from engram.layers import Layer
from engram.models import ALL_TABLES
from engram.store import EPISODES, SEMANTIC, TRANSITIONS, Store
from engram.testing import FixedClock
from tests.conftest import T0
from tests.engram.archive_helpers import AS_OF, COLD, LATER, consolidate_pending, contents, fill
from tests.flows.helpers import conversation_rows

pytestmark = pytest.mark.integration


@pytest.fixture
def archived(store_url: str, archive_location: ArchiveLocation) -> Iterator[tuple[Memory, ArchiveLocation, dict]]:
    """A memory whose facts and episodes are all archived; with the contents before archival."""
    memory = Memory(store_url, archive_location, clock=FixedClock(LATER))
    fill(memory)
    before = contents(memory.store, archive_location, "acme")
    try:
        yield memory, archive_location, before
    finally:
        memory.close()


def _objects(location: ArchiveLocation) -> list[tuple[str, bytes]]:
    """Every object (every version, in a versioned bucket) under the archive, with its bytes."""
    if not location.is_s3:
        root = Path(location.prefix)
        return [(str(p), p.read_bytes()) for p in root.rglob("*") if p.is_file()]
    client = location.minio_client()
    out = []
    for obj in client.list_objects(location.bucket, recursive=True, include_version=True):
        if obj.is_delete_marker:
            out.append((f"{obj.object_name}@{obj.version_id} (delete marker)", b""))
            continue
        resp = client.get_object(location.bucket, obj.object_name, version_id=obj.version_id)
        try:
            out.append((f"{obj.object_name}@{obj.version_id}", resp.read()))
        finally:
            resp.close()
            resp.release_conn()
    return out


def _object_text(name: str, data: bytes) -> str:
    """An object as searchable text: a Parquet file's rows, a manifest's JSON."""
    if name.split("@")[0].endswith(".parquet"):
        import io

        return json.dumps(pq.read_table(io.BytesIO(data)).to_pylist(), default=str)
    return data.decode("utf-8", "replace")


# -- provisioning ------------------------------------------------------------------------------------------------


def test_provisioning_creates_a_versioned_bucket_once(s3_archive: ArchiveLocation) -> None:
    first = provision_archive(s3_archive)
    second = provision_archive(s3_archive)
    assert first == {"bucket": s3_archive.bucket, "created": True, "versioning_enabled": True, "changed": True}
    # The second call finds everything in place and says so.
    assert second == {"bucket": s3_archive.bucket, "created": False, "versioning_enabled": True, "changed": False}
    assert s3_archive.minio_client().get_bucket_versioning(s3_archive.bucket).status == "Enabled"


def test_provisioning_a_local_archive_creates_its_folder_once(tmp_path: Path) -> None:
    location = ArchiveLocation((tmp_path / "a" / "archive").as_uri())
    assert provision_archive(location)["changed"] is True
    assert provision_archive(location)["changed"] is False
    assert (tmp_path / "a" / "archive").is_dir()


# -- archive: write, verify, tombstone ----------------------------------------------------------------------------


def test_archive_writes_verified_parquet_then_tombstones(archived: tuple[Memory, ArchiveLocation, dict]) -> None:
    memory, location, before = archived
    totals = archive_cold_items(memory.store, location, COLD, LATER, batch_size=20, flow_run_id="run-1")
    assert totals["semantic_items"] == sum(1 for name, _ in before if name == "semantic_items")
    assert totals["episode_turns"] == sum(1 for name, _ in before if name == "episode_turns")
    stats = memory.stats("acme")
    assert stats["semantic_versions"] == 0 and stats["episodic_turns"] == 0
    # Nothing lost: every fact and turn reads back from a committed manifest with the text it had.
    assert contents(memory.store, location, "acme") == before

    manifests = memory.store.manifests("acme")
    assert manifests and {m["status"] for m in manifests} == {"committed"}
    assert all(m["flow_run_id"] == "run-1" for m in manifests)
    fs = location.filesystem()
    root = f"{location.bucket}/{location.prefix}" if location.is_s3 else location.prefix
    for m in manifests:
        for f in m["files"]:
            # Partitioned by tenant, layer and date, named after the manifest.
            assert f["path"].startswith(f"tenant=acme/layer={m['layer']}/date=")
            assert f["path"].endswith(".parquet") and m["manifest_id"] in f["path"]
        doc = json.loads(fs.cat_file(f"{root}/tenant=acme/manifests/{m['manifest_id']}.json"))
        assert doc["files"] == m["files"] and doc["flow_run_id"] == "run-1"
    with memory.store.read() as conn:
        moves = conn.execute(
            select(TRANSITIONS.c.from_layer, TRANSITIONS.c.to_layer, TRANSITIONS.c.flow_run_id).where(
                TRANSITIONS.c.action == "archive"
            )
        ).all()
        left = conn.execute(select(SEMANTIC.c.rendered, SEMANTIC.c.embedding, SEMANTIC.c.content_hash)).all()
    assert {tuple(r) for r in moves} == {("semantic", "archival", "run-1"), ("episodic", "archival", "run-1")}
    assert all(r.rendered == "" and r.embedding is None for r in left)
    # The tombstone keeps what consolidation compares a restated fact with, though its text is gone.
    assert all(r.content_hash for r in left)
    # A second run finds nothing cold left: idempotent.
    again = archive_cold_items(memory.store, location, COLD, LATER, batch_size=20)
    assert again.get("manifests", 0) == 0


def test_a_file_written_before_a_nullable_column_was_added_reads_it_as_null() -> None:
    row = {"tenant": "acme", "item_id": "sem-1", "fact_key": "k", "text": "Ada: I live in Lisbon.", "tags": ["x"]}
    data, _ = encode_parquet("semantic_items", [{**row, "content_hash": "h1"}])
    assert "content_hash" in archive_schema("semantic_items").names
    old = parquet_without(data, "content_hash")  # the same file as written before migration 0004 added the column

    (back,) = decode_parquet("semantic_items", old)
    assert (back["item_id"], back["tags"], back["content_hash"]) == ("sem-1", ["x"], None)
    assert decode_parquet("semantic_items", old, ["item_id", "content_hash"]) == [
        {"item_id": "sem-1", "content_hash": None}
    ]
    assert decode_parquet("semantic_items", data, ["content_hash"]) == [{"content_hash": "h1"}]
    # A column the hot table requires is never made up: a file without it is damaged, not old.
    with pytest.raises(Exception, match="text"):
        decode_parquet("semantic_items", parquet_without(data, "text"), ["item_id", "text"])


def parquet_without(data: bytes, column: str) -> bytes:
    """A Parquet file's bytes again, without one column."""
    import io

    import pyarrow as pa

    buf = io.BytesIO()
    pq.write_table(pq.read_table(pa.BufferReader(data)).drop_columns([column]), buf)
    return buf.getvalue()


RULES = [
    # (rules, semantic versions archived, episodes archived, why)
    (RetentionRules(), 0, 0, "defaults: nothing is 90 days idle or 30 days old, 8 to 11 days on"),
    (RetentionRules(semantic_idle=timedelta(days=1)), "all", 0, "idle: every fact was last seen over a day ago"),
    (RetentionRules(min_salience=1.0), "all", 0, "salience: every fact scores below 1.0"),
    (RetentionRules(episode_age=timedelta(days=1)), 0, "all", "age: every session ended over a day before"),
]


@pytest.mark.parametrize(("rules", "facts", "episodes", "why"), RULES, ids=[r[3].split(":")[0] for r in RULES])
def test_retention_rules_pick_what_they_name(
    sqlite_memory: Memory, tmp_path: Path, rules: RetentionRules, facts: Any, episodes: Any, why: str
) -> None:
    fill(sqlite_memory, as_of=T0 + timedelta(days=10))  # four sessions, from T0 to T0 + 3 days
    location = ArchiveLocation((tmp_path / "archive").as_uri())
    when = T0 + timedelta(days=11)
    all_facts = sqlite_memory.stats("acme")["semantic_versions"]
    all_episodes = sqlite_memory.stats("acme")["episodic"]
    totals = archive_cold_items(sqlite_memory.store, location, rules, when)
    assert totals.get("semantic_items", 0) == (all_facts if facts == "all" else facts), why
    assert totals.get("episodes", 0) == (all_episodes if episodes == "all" else episodes), why


def test_only_consolidated_episodes_are_archived(sqlite_memory: Memory, tmp_path: Path) -> None:
    fill(sqlite_memory)
    with sqlite_memory.store.write() as conn:
        from engram.store import EPISODES

        conn.execute(EPISODES.update().values(consolidated_at=None))
    location = ArchiveLocation((tmp_path / "archive").as_uri())
    totals = archive_cold_items(sqlite_memory.store, location, COLD, LATER)
    assert totals.get("episodes", 0) == 0


def test_an_episodic_batch_is_bounded_by_rows_turns_included(sqlite_memory: Memory, tmp_path: Path) -> None:
    fill(sqlite_memory)
    store = sqlite_memory.store
    with store.read() as conn:
        sizes = dict(conn.execute(select(EPISODES.c.episode_id, EPISODES.c.turn_count)).all())
    assert len(sizes) >= 3 and all(n > 1 for n in sizes.values())
    every = store.archive_candidates(Layer.EPISODIC, LATER, COLD, "acme", 10_000)
    assert len(every) == len(sizes)
    # Room for the first two episodes and their turns, not for the third: two keys, in key order.
    first_two = sum(1 + sizes[e] for _, e in every[:2])
    assert store.archive_candidates(Layer.EPISODIC, LATER, COLD, "acme", first_two) == every[:2]
    assert store.archive_candidates(Layer.EPISODIC, LATER, COLD, "acme", first_two + sizes[every[2][1]]) == every[:2]
    # A limit smaller than one episode still moves that episode, so that a long session is archived too.
    assert store.archive_candidates(Layer.EPISODIC, LATER, COLD, "acme", 1) == every[:1]
    # Archived batch by batch at that bound, every episode and every turn still ends up in the archive once.
    location = ArchiveLocation((tmp_path / "archive").as_uri())
    totals = archive_cold_items(store, location, COLD, LATER, batch_size=first_two)
    assert totals["episodes"] == len(sizes)
    assert totals["episode_turns"] == sum(sizes.values())


# -- search over the archive --------------------------------------------------------------------------------------


def test_search_spans_the_archive_with_the_same_rendering(archived: tuple[Memory, ArchiveLocation, dict]) -> None:
    memory, location, _ = archived
    query = "moving to Lisbon as a nurse"
    hot = memory.search("acme", query, limit=5)
    archive_cold_items(memory.store, location, COLD, LATER)
    cold = memory.search("acme", query, limit=5)
    assert [h.layer for h in hot] == ["semantic"] * len(hot)
    assert [h.layer for h in cold] == ["archival"] * len(cold)
    # Same documents, same scores, same text with date and speaker.
    assert [(h.item_id, h.text, h.sources) for h in cold] == [(h.item_id, h.text, h.sources) for h in hot]
    assert memory.search("acme", query, layers=["semantic"]) == []
    # The turns of archived episodes come back only when the archival layer is asked for by name.
    named = memory.search("acme", query, limit=50, layers=["archival"])
    assert any(h.item_id.startswith("acme-e") for h in named)  # turns keep their event ids
    assert not any(h.item_id.startswith("acme-e") for h in cold)
    assert memory.get("acme", cold[0].item_id).text.endswith("nurse.")


def test_archive_search_stays_within_the_tenant(sqlite_memory: Memory, tmp_path: Path) -> None:
    location = ArchiveLocation((tmp_path / "archive").as_uri())
    fill(sqlite_memory, "acme")
    fill(sqlite_memory, "globex", sessions=2)
    archive_cold_items(sqlite_memory.store, location, COLD, LATER, tenant="acme")
    memory = Memory(sqlite_memory.store_url, location)
    try:
        assert all(h.layer == "archival" for h in memory.search("acme", "Lisbon nurse"))
        assert all(h.layer == "semantic" for h in memory.search("globex", "Lisbon nurse"))
        assert not {h.item_id for h in memory.search("globex", "Lisbon nurse", layers=["archival"])}
    finally:
        memory.close()


# -- rehydrate ----------------------------------------------------------------------------------------------------


def test_rehydrate_brings_items_back_and_is_idempotent(archived: tuple[Memory, ArchiveLocation, dict]) -> None:
    memory, location, before = archived
    archive_cold_items(memory.store, location, COLD, LATER)
    target = memory.search("acme", "pottery class blue bowl", limit=1)[0]
    assert target.layer == "archival"

    first = rehydrate_batch(memory.store, location, "acme", [target.item_id], LATER, "run-r", 100)
    second = rehydrate_batch(memory.store, location, "acme", [target.item_id], LATER, "run-r", 100)
    assert (first["rehydrated"], second["rehydrated"]) == (1, 0)
    hit = memory.search("acme", "pottery class blue bowl", limit=1)[0]
    assert (hit.item_id, hit.layer, hit.text) == (target.item_id, "semantic", target.text)
    history = memory.history("acme", target.item_id)
    moves = [(e.action, e.from_layer, e.to_layer) for e in history if e.item_id == target.item_id]
    assert [m for m in moves if m[0] in ("archive", "rehydrate")] == [
        ("archive", "semantic", "archival"),
        ("rehydrate", "archival", "semantic"),
    ]

    # The whole archive: every archived fact comes back once; nothing lost either way.
    whole = rehydrate_batch(memory.store, location, "acme", None, LATER, "run-r", 7)
    while whole["candidates"]:
        whole = rehydrate_batch(memory.store, location, "acme", None, LATER, "run-r", 7)
    assert memory.stats("acme")["semantic_versions"] == sum(1 for name, _ in before if name == "semantic_items")
    assert contents(memory.store, location, "acme") == before


def test_rehydrate_brings_back_every_id_it_is_given_past_a_statements_share(
    archived: tuple[Memory, ArchiveLocation, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ids of a batch are read a statement's share at a time (``INSERT_CHUNK``, made 2 here): none past the first
    share is left archived, with the tenant named or not."""
    memory, location, before = archived
    store = memory.store
    archive_cold_items(store, location, COLD, LATER)
    ids = [item_id for _, item_id, _, _ in store.archived_semantic("acme", None, 1_000)]
    assert len(ids) >= 6
    monkeypatch.setattr("engram.store.INSERT_CHUNK", 2)

    named = rehydrate_batch(store, location, "acme", ids[:5], LATER, "run-r", 100)
    unnamed = rehydrate_batch(store, location, None, ids[5:], LATER, "run-r", 100)

    assert named == {"rehydrated": 5, "candidates": 5}
    assert unnamed == {"rehydrated": len(ids) - 5, "candidates": len(ids) - 5}
    assert store.archived_semantic("acme", None, 1_000) == []
    # Up to the limit, in the listing's order: by tenant, manifest and id, over manifests of two facts (their ids are
    # random, so the manifest, not the id, orders most of the listing).
    archive_cold_items(store, location, COLD, LATER + timedelta(days=365), batch_size=2)
    listed = store.archived_semantic("acme", None, 1_000)
    assert sorted(i for _, i, _, _ in listed) == sorted(ids) and len({m for _, _, m, _ in listed}) >= 3
    assert listed == sorted(listed, key=lambda r: (r[0], r[2], r[1]))
    assert store.archived_semantic("acme", [i for _, i, _, _ in reversed(listed)], len(ids) - 1) == listed[:-1]
    assert contents(store, location, "acme") == before


# -- forget across the archive ------------------------------------------------------------------------------------


@pytest.fixture
def filled(store_url: str, tmp_path: Path) -> Iterator[tuple[Memory, ArchiveLocation]]:
    """A memory on each store backend whose sessions are consolidated (nothing archived), beside a local archive."""
    location = ArchiveLocation((tmp_path / "archive").as_uri())
    provision_archive(location)
    memory = Memory(store_url, location, clock=FixedClock(LATER))
    try:
        fill(memory)
        yield memory, location
    finally:
        memory.close()


def _assert_nothing_names(memory: Memory, location: ArchiveLocation, word: str) -> None:
    """No row of any table and no stored object (any version) holds ``word``, in any case."""
    with memory.store.read() as conn:
        for model in ALL_TABLES:
            table = model.__table__  # type: ignore[attr-defined]
            for row in conn.execute(select(table)):
                assert word not in str(tuple(row)).lower(), f"{table.name} still names the subject"
    for name, data in _objects(location):
        assert word not in _object_text(name, data).lower(), f"{name} still names the subject"


def test_forget_removes_the_subject_from_every_table_and_every_object(
    archived: tuple[Memory, ArchiveLocation, dict],
) -> None:
    memory, location, _ = archived
    archive_cold_items(memory.store, location, COLD, LATER)
    # Half hot, half archived: one fact comes back before the forget.
    rehydrate_batch(memory.store, location, "acme", [memory.search("acme", "Lisbon")[0].item_id], LATER, None, 10)
    assert any("Lisbon" in text for _, data in _objects(location) for text in [_object_text(_, data)])

    receipt = memory.forget("acme", "Lisbon")

    assert receipt.removed["archive_rows"] > 0 and receipt.removed["archive_files_rewritten"] > 0
    assert receipt.removed["archive_manifests_rewritten"] > 0
    if location.is_s3:
        assert receipt.removed["archive_object_versions_deleted"] > 0
    _assert_nothing_names(memory, location, "lisbon")
    assert memory.search("acme", "Lisbon", layers=["archival", "semantic", "episodic"]) == []
    # What stays is intact: every remaining fact and turn still reads back from a verified manifest.
    remaining = contents(memory.store, location, "acme")
    assert remaining and all("Lisbon" not in text for text in remaining.values())


def test_forget_in_the_archive_takes_whole_words_in_any_script_and_nothing_else(store_url: str, tmp_path: Path) -> None:
    """The archive's copies are matched in Python: "Émile" must not take the turn that says "a mile away" (nor the
    fact distilled from it) with it, and "José" not "Joséphine"'s; every other archived row reads back intact."""
    location = ArchiveLocation((tmp_path / "archive").as_uri())
    provision_archive(location)
    memory = Memory(store_url, location, clock=FixedClock(LATER))
    try:
        said = [
            "We walked a mile away from the lake",
            "I met Émile at the station",
            "Joséphine visited the museum",
            "José cooked dinner",
            "The weather was nice",
        ]
        memory.observe_many(
            [
                {"tenant": "acme", "session": "s1", "actor": "Ada", "text": t, "at": T0 + timedelta(minutes=i)}
                for i, t in enumerate(said)
            ]
        )
        consolidate_pending(memory.store, "acme", AS_OF)
        assert archive_cold_items(memory.store, location, COLD, LATER)["episode_turns"] == len(said)
        before = contents(memory.store, location, "acme")
        assert {t for (table, _), t in before.items() if table == "episode_turns"} == set(said)

        for subject in ("Émile", "José"):
            assert memory.forget("acme", subject).removed["archive_rows"] > 0

        after = contents(memory.store, location, "acme")
        gone = [t for t in before.values() if "Émile" in t or "José cooked" in t]
        assert gone and after == {k: t for k, t in before.items() if t not in gone}
    finally:
        memory.close()


def test_an_archive_run_between_the_archive_and_the_hot_forget_does_not_keep_the_subject(
    archived: tuple[Memory, ArchiveLocation, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forget goes over the archive, then over the hot store by text. An archive run that commits in between takes
    hot rows naming the subject into the archive, their hot text blanked: the forget goes over the archive again
    (before, the subject stayed in the new manifest's files)."""
    memory, location, _ = archived
    rows = conversation_rows("acme", sessions=1, start=AS_OF, prefix="acme-late")
    memory.observe_many([{**r, "text": f"{r['text']} Lisbon again."} for r in rows])
    consolidate_pending(memory.store, "acme", AS_OF + timedelta(days=2))
    hot_forget, runs = Store.forget, []

    def archive_run_first(store: Store, *args: Any) -> dict[str, int]:
        if not runs:  # an archive flow scheduled at the same time commits first
            runs.append(archive_cold_items(store, location, COLD, LATER)["episode_turns"])
        return hot_forget(store, *args)

    monkeypatch.setattr(Store, "forget", archive_run_first)
    memory.forget("acme", "Lisbon")
    assert runs and runs[0] >= len(rows)
    _assert_nothing_names(memory, location, "lisbon")
    assert memory.search("acme", "Lisbon", layers=["archival", "semantic", "episodic"]) == []
    assert contents(memory.store, location, "acme")  # what does not name it is still there


def test_an_archive_run_that_read_the_subject_before_a_forget_commits_none_of_it(
    filled: tuple[Memory, ArchiveLocation], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An archive run reads hot rows and uploads its files while a forget runs; it verifies and commits after the
    forget returned. The forget discards the run's manifest (not committed yet), so the commit finds it gone: it
    commits nothing of it and deletes its objects (its files held the forgotten rows, committed before)."""
    from engram.archive import archive_batch, commit_manifests, verify_manifests

    memory, location = filled
    store = memory.store
    keys = store.archive_candidates(Layer.SEMANTIC, LATER, COLD, "acme", 5000)
    hot_forget, written, verified = Store.forget, [], []

    def archive_run_reads_first(self: Store, *args: Any) -> dict[str, int]:
        if not written:
            written.extend(archive_batch(self, location, Layer.SEMANTIC, keys, LATER, None))
            verified.extend(verify_manifests(self, location, written))
        return hot_forget(self, *args)

    monkeypatch.setattr(Store, "forget", archive_run_reads_first)
    removed = memory.forget("acme", "Lisbon").removed
    monkeypatch.setattr(Store, "forget", hot_forget)
    assert written and removed["archive_manifests_unfinished"] == len(written)

    # A run that verifies after the forget leaves the discarded manifests out; one that verified before
    # commits none of them.
    assert verify_manifests(store, location, written) == []
    counts = commit_manifests(store, location, verified, LATER, None)
    assert counts["semantic_items"] == 0 and counts["manifests_discarded"] == len(written)
    assert store.manifests("acme") == []
    _assert_nothing_names(memory, location, "lisbon")
    assert not any(Path(location.prefix).rglob("*.parquet"))
    # The rows it read are hot still, and the next archive run takes them.
    assert archive_cold_items(store, location, COLD, LATER)["semantic_items"] > 0
    _assert_nothing_names(memory, location, "lisbon")


def test_a_forget_between_an_archive_runs_read_and_its_record_keeps_the_manifest_from_being_recorded(
    filled: tuple[Memory, ArchiveLocation], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run reads its rows, then a forget commits, then the run would record its manifest: the forget had none to
    discard. The tenant's epoch, read before the rows, has moved: the manifest is not recorded nor uploaded, and
    the next run archives what is left."""
    from engram.archive import archive_batch

    memory, location = filled
    store = memory.store
    keys = store.archive_candidates(Layer.SEMANTIC, LATER, COLD, "acme", 5000)
    read = Store.archive_rows_by_tenant

    def forget_after_the_read(self: Store, *args: Any) -> Any:
        rows = read(self, *args)
        memory.forget("acme", "Lisbon")
        return rows

    monkeypatch.setattr(Store, "archive_rows_by_tenant", forget_after_the_read)
    assert archive_batch(store, location, Layer.SEMANTIC, keys, LATER, None) == []
    monkeypatch.setattr(Store, "archive_rows_by_tenant", read)
    assert store.manifests("acme") == [] and not any(Path(location.prefix).rglob("*.parquet"))
    assert archive_cold_items(store, location, COLD, LATER)["semantic_items"] > 0
    _assert_nothing_names(memory, location, "lisbon")


@pytest.mark.postgres
def test_on_postgresql_a_run_recording_its_manifest_during_a_forget_sees_the_forgets_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run read the epoch and its rows before a forget committed, and records its manifest while the forget's
    transaction is open: the epoch is read under a shared lock, so the recording waits for the forget and sees its
    epoch (read without the lock, it saw the old one and recorded rows the forget removed)."""
    import threading
    import time

    from engram.archive import archive_batch
    from tests.conftest import fresh_store

    location = ArchiveLocation((tmp_path / "archive").as_uri())
    provision_archive(location)
    with fresh_store(tmp_path, "postgresql") as url, Memory(url, location, clock=FixedClock(LATER)) as memory:
        fill(memory)
        store = memory.store
        keys = store.archive_candidates(Layer.SEMANTIC, LATER, COLD, "acme", 5000)
        in_forget, recorded = threading.Event(), []
        forget_subject = Store._forget_subject

        def slow_forget(self: Store, *args: Any) -> dict[str, int]:
            removed = forget_subject(self, *args)
            in_forget.set()
            time.sleep(1.0)  # the run records its manifest now, with the forget's transaction open
            return removed

        read = Store.archive_rows_by_tenant

        def read_then_wait(self: Store, *args: Any) -> Any:
            rows = read(self, *args)
            in_forget.wait(30)
            return rows

        monkeypatch.setattr(Store, "_forget_subject", slow_forget)
        monkeypatch.setattr(Store, "archive_rows_by_tenant", read_then_wait)
        run = threading.Thread(
            target=lambda: recorded.extend(archive_batch(Store(url), location, Layer.SEMANTIC, keys, LATER, None))
        )
        run.start()
        try:
            memory.store.forget("acme", "Lisbon", LATER, None)
        finally:
            run.join()
        assert recorded == [] and store.manifests("acme") == []


def test_a_manifest_discarded_while_it_uploads_leaves_no_object_and_fails_no_run(
    filled: tuple[Memory, ArchiveLocation], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forget discards a run's manifest (its row) and sweeps its objects while the upload goes on: what lands
    after the sweep is removed by the run's verification, which leaves the manifest out; a settle that listed the
    manifest before it was discarded counts it as discarded (it raised on unpacking an empty verification)."""
    from engram.archive import archive_batch, commit_manifests, settle_unfinished, verify_manifests

    memory, location = filled
    store = memory.store
    keys = store.archive_candidates(Layer.SEMANTIC, LATER, COLD, "acme", 5000)
    written = archive_batch(store, location, Layer.SEMANTIC, keys, LATER, None)
    for m in written:  # discarded; the sweep took the first file, the others landed after it
        store.drop_manifest("acme", m["manifest_id"])
    (Path(location.prefix) / written[0]["files"][0]["path"]).unlink()
    assert verify_manifests(store, location, written) == []
    assert not any(Path(location.prefix).rglob("*.parquet"))

    # A batch of which another run committed one manifest and a forget discarded the other: the verification
    # leaves both out and deletes only the discarded one's files (it deleted the committed one's too).
    fill(memory, tenant="globex")
    other = store.archive_candidates(Layer.SEMANTIC, LATER, COLD, "globex", 5000)
    one, two = archive_batch(store, location, Layer.SEMANTIC, keys + other, LATER, None)
    commit_manifests(store, location, verify_manifests(store, location, [one]), LATER, None)
    store.drop_manifest(two["tenant"], two["manifest_id"])
    (Path(location.prefix) / two["files"][0]["path"]).unlink()
    assert verify_manifests(store, location, [one, two]) == []
    assert all((Path(location.prefix) / f["path"]).exists() for f in one["files"])
    assert not any((Path(location.prefix) / f["path"]).exists() for f in two["files"])
    assert contents(store, location, one["tenant"])  # every archived row of it reads back

    written = archive_batch(store, location, Layer.SEMANTIC, keys, LATER, None)
    listed = Store.manifests

    def listed_then_discarded(self: Store, tenant: Any, statuses: Any = None) -> list[dict[str, Any]]:
        found = listed(self, tenant, statuses)
        for m in found if statuses == ["written", "verified"] else []:  # a forget discards it and sweeps a file
            self.drop_manifest(m["tenant"], m["manifest_id"])
            (Path(location.prefix) / m["files"][0]["path"]).unlink(missing_ok=True)
        return found

    monkeypatch.setattr(Store, "manifests", listed_then_discarded)
    counts = settle_unfinished(store, location, "acme", LATER, None)
    assert (counts["manifests_resumed"], counts["manifests_discarded"]) == (0, len(written))
    assert not any((Path(location.prefix) / f["path"]).exists() for m in written for f in m["files"])


def test_forget_a_whole_tenant_empties_its_archive(sqlite_memory: Memory, s3_archive: ArchiveLocation) -> None:
    provision_archive(s3_archive)
    memory = Memory(sqlite_memory.store_url, s3_archive, clock=FixedClock(T0))
    try:
        fill(memory)
        archive_cold_items(memory.store, s3_archive, COLD, LATER)
        receipt = memory.forget("acme")
        assert receipt.removed["archive_object_versions_deleted"] > 0
        assert _objects(s3_archive) == []
        assert memory.stats("acme")["archival"] == 0
    finally:
        memory.close()


def test_archived_layer_counts(archived: tuple[Memory, ArchiveLocation, dict]) -> None:
    memory, location, before = archived
    archive_cold_items(memory.store, location, COLD, LATER)
    assert memory.stats("acme")[Layer.ARCHIVAL.value] == len(before)


def test_the_layer_counts_a_monitor_asks_for_are_those_of_every_count(
    archived: tuple[Memory, ArchiveLocation, dict],
) -> None:
    """Hot current facts beside tombstones and closed versions: each count as the rows say, the named ones alone
    the same as in every count, and a name that is no count refused with the counts there are."""
    memory, location, _ = archived
    store = memory.store
    archive_cold_items(store, location, COLD, LATER)
    back = [i for _, i, _, _ in store.archived_semantic("acme", None, 3)]
    rehydrate_batch(store, location, "acme", back, LATER, None, 3)
    with store.write() as conn:  # one of them closed, as a later version would leave it until the next archive run
        conn.execute(update(SEMANTIC).where(SEMANTIC.c.item_id == back[0]).values(valid_to=LATER))
    with store.read() as conn:
        facts = conn.execute(select(SEMANTIC.c.valid_to, SEMANTIC.c.archived_manifest_id)).all()
    every = store.count_by_layer("acme")

    assert every["semantic"] == sum(1 for valid_to, m in facts if valid_to is None and m is None) == 2
    assert every["semantic_versions"] == sum(1 for _, m in facts if m is None) == 3
    assert every[Layer.ARCHIVAL.value] > 0 and every["events"] > every["sensory"] == 0
    charted = store.count_by_layer("acme", ["semantic", "archival", "quarantine"])
    assert charted == {name: every[name] for name in ("semantic", "archival", "quarantine")}
    assert store.count_by_layer(None, ["semantic"]) == {"semantic": 2}
    with pytest.raises(ValueError, match="names: no count named facts, turns; the counts are sensory, working"):
        store.count_by_layer("acme", ["turns", "semantic", "facts"])
    with pytest.raises(ValueError, match="names: a list of count names, not the one string 'semantic'"):
        store.count_by_layer("acme", "semantic")


def test_files_are_partitioned_by_the_month_of_their_rows(tmp_path: Path) -> None:
    """One file per table and month in a manifest: a fact under the month it was last seen, an episode and its
    turns under the month the episode ended."""
    memory = Memory(f"sqlite:///{tmp_path / 'engram.db'}", (tmp_path / "archive").as_uri(), clock=FixedClock(LATER))
    try:
        fill(memory, sessions=6, days_apart=15, as_of=T0 + timedelta(days=90))  # March to May
        archive_cold_items(memory.store, memory.archive, COLD, LATER, batch_size=1_000)
        manifests = memory.store.manifests("acme", ["committed"])
        assert sorted(m["layer"] for m in manifests) == ["episodic", "semantic"]
        months: dict[str, set[str]] = {}
        for m in manifests:
            tables_and_months = [(e["table"], e["date"]) for e in m["files"]]
            assert len(tables_and_months) == len(set(tables_and_months)), tables_and_months
            rows = {e["path"]: read_manifest_rows(memory.archive, {**m, "files": [e]})[e["table"]] for e in m["files"]}
            ended = {
                r["episode_id"]: r["ended_at"] for e in m["files"] if e["table"] == "episodes" for r in rows[e["path"]]
            }
            for e in m["files"]:
                assert f"/layer={m['layer']}/date={e['date']}/" in e["path"]
                if e["table"] == "semantic_items":
                    dates = [r["last_seen"] for r in rows[e["path"]]]
                elif e["table"] == "episodes":
                    dates = [r["ended_at"] for r in rows[e["path"]]]
                else:
                    dates = [ended[r["episode_id"]] for r in rows[e["path"]]]
                assert dates and {d.strftime("%Y-%m") for d in dates} == {e["date"]}
                months.setdefault(e["table"], set()).add(e["date"])
        assert months == {
            name: {"2024-03", "2024-04", "2024-05"} for name in ("semantic_items", "episodes", "episode_turns")
        }
    finally:
        memory.close()


def _counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[Any]:
    """Record the arguments of every call to ``engram.archive.<name>``, which still runs."""
    import engram.archive as arc

    calls: list[Any] = []
    real = getattr(arc, name)

    def counted(*args: Any) -> Any:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(arc, name, counted)
    return calls


def test_a_batch_of_many_tenants_is_uploaded_and_read_back_in_one_call(
    sqlite_memory: Memory, s3_archive: ArchiveLocation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each tenant's manifest holds a few small files: the batch's objects go up in one concurrent upload and come
    back in one concurrent fetch, not one round of requests per tenant."""
    from engram.archive import archive_batch, commit_manifests, verify_manifests

    provision_archive(s3_archive)
    tenants = ["acme", "globex", "initech"]
    for t in tenants:
        fill(sqlite_memory, tenant=t, sessions=3)
    keys = sqlite_memory.store.archive_candidates(Layer.SEMANTIC, LATER, COLD, None, 10_000)
    uploads, fetches = _counting(monkeypatch, "_put_many"), _counting(monkeypatch, "_read_files")
    written = archive_batch(sqlite_memory.store, s3_archive, Layer.SEMANTIC, keys, LATER, None)
    verified = verify_manifests(sqlite_memory.store, s3_archive, written)
    assert sorted(m["tenant"] for m in written) == tenants
    files = sum(len(m["files"]) for m in written)
    assert [len(objects) for _, _, objects in uploads] == [files + len(written)]  # every file and manifest, once
    assert [len(pairs) for _, _, pairs in fetches] == [files]
    counts = commit_manifests(sqlite_memory.store, s3_archive, verified, LATER, None)
    assert counts["semantic_items"] == len(keys)
    for t in tenants:
        (manifest,) = sqlite_memory.store.manifests(t, ["committed"])
        assert manifest["row_count"] == sum(1 for k in keys if k[0] == t)


def test_a_failed_upload_of_a_batch_names_its_manifests_and_leaves_them_written(
    sqlite_memory: Memory, s3_archive: ArchiveLocation
) -> None:
    """The bucket is missing (never provisioned): the error names the batch's first manifests and how many more,
    and every manifest of the batch stays ``written`` for the next run to settle."""
    from engram.archive import archive_batch
    from engram.errors import ArchiveError

    tenants = ["acme", "globex", "initech", "umbrella", "wayne"]
    for t in tenants:
        fill(sqlite_memory, tenant=t, sessions=2)
    keys = sqlite_memory.store.archive_candidates(Layer.SEMANTIC, LATER, COLD, None, 10_000)
    with pytest.raises(ArchiveError) as failed:
        archive_batch(sqlite_memory.store, s3_archive, Layer.SEMANTIC, keys, LATER, None)
    written = [m for t in tenants for m in sqlite_memory.store.manifests(t)]
    assert [m["status"] for m in written] == ["written"] * len(tenants)
    message = str(failed.value)
    assert "writing archive manifests " in message and " and 2 more" in message, message
    assert sum(m["manifest_id"] in message for m in written) == 3, message
    assert s3_archive.url in message


def test_verifying_in_groups_pairs_each_manifest_with_its_own_files(
    sqlite_memory: Memory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Groups of at most VERIFY_GROUP files, a manifest never split; a file missing in the second group fails the
    whole batch, naming its manifest, and marks no manifest verified."""
    import engram.archive as arc

    location = ArchiveLocation((tmp_path / "archive").as_uri())
    provision_archive(location)
    tenants = ["acme", "globex", "initech", "umbrella"]
    for t in tenants:
        fill(sqlite_memory, tenant=t, sessions=3)
    keys = sqlite_memory.store.archive_candidates(Layer.EPISODIC, LATER, COLD, None, 10_000)
    written = arc.archive_batch(sqlite_memory.store, location, Layer.EPISODIC, keys, LATER, None)
    per_manifest = [len(m["files"]) for m in written]
    assert len(written) == 4 and min(per_manifest) >= 2, per_manifest
    monkeypatch.setattr(arc, "VERIFY_GROUP", per_manifest[0] + per_manifest[1])
    fetches = _counting(monkeypatch, "_read_files")

    last = written[-1]
    missing = Path(location.prefix) / last["files"][-1]["path"]
    saved = missing.read_bytes()
    missing.unlink()
    with pytest.raises(arc.ArchiveMismatch, match=last["manifest_id"]):
        arc.verify_manifests(sqlite_memory.store, location, written)
    assert {m["status"] for t in tenants for m in sqlite_memory.store.manifests(t)} == {"written"}

    missing.write_bytes(saved)
    fetches.clear()
    verified = arc.verify_manifests(sqlite_memory.store, location, written)
    groups = [[m["manifest_id"] for m, _ in pairs] for _, _, pairs in fetches]
    assert [list(dict.fromkeys(g)) for g in groups][0] == [written[0]["manifest_id"], written[1]["manifest_id"]]
    assert [i for g in groups for i in dict.fromkeys(g)] == [m["manifest_id"] for m in written]  # none split
    assert all(len(g) <= arc.VERIFY_GROUP or len(set(g)) == 1 for g in groups)
    assert [v.manifest["manifest_id"] for v in verified] == [m["manifest_id"] for m in written]
    for v in verified:
        assert v.keys["episodes"].num_rows == sum(f["rows"] for f in v.manifest["files"] if f["table"] == "episodes")
    counts = arc.commit_manifests(sqlite_memory.store, location, verified, LATER, None)
    assert counts["episodes"] == len(keys)
