"""Facts whose current version is archived, on SQLite and PostgreSQL.

A changed fact supersedes the archived version through its hot tombstone (the Parquet copy is never rewritten), a
restated one adds support to it, and search, get, history and rehydrate read the tombstone's state, not the state
the archived copy had when it was written.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from engram import Memory
from engram.archive import ArchiveLocation, archive_cold_items, provision_archive, rehydrate_batch
from engram.consolidate import content_hash
from engram.store import EPISODES, SEMANTIC, TRANSITIONS
from engram.testing import FixedClock
from tests.conftest import T0
from tests.engram import archive_helpers
from tests.engram.archive_helpers import COLD, archive_objects
from tests.flows.helpers import semantic_state

pytestmark = pytest.mark.integration

TENANT = "acme"
SAID = T0  # the first version is said
ARCHIVED = T0 + timedelta(days=60)  # 60 days idle, past COLD's 30: the fact and its episode go to the archive
RESTATED = T0 + timedelta(days=90)  # a later session says it again, or says something else
NOW = RESTATED + timedelta(days=1)


def consolidate_pending(memory: Memory, as_of: datetime) -> dict[str, int]:
    """What the ingest, close_sessions and consolidate flows do, by the store's own steps (no flow runs)."""
    return archive_helpers.consolidate_pending(memory.store, TENANT, as_of, limit=1_000)


def reconsolidate(memory: Memory, as_of: datetime) -> dict[str, int]:
    """Consolidate the hot episodes once more, as a rerun after a crash that lost the run's bookkeeping would."""
    with memory.store.write() as conn:
        conn.execute(
            update(EPISODES)
            .where(EPISODES.c.tenant == TENANT, EPISODES.c.archived_manifest_id.is_(None))
            .values(consolidated_at=None)
        )
    return consolidate_pending(memory, as_of)


def versions(memory: Memory) -> list[dict]:
    """Every version of the tenant's one fact, oldest first (the tests say one fact, so one key)."""
    keys = {r[1] for r in semantic_state(memory.store, TENANT)}
    assert len(keys) == 1, keys
    return memory.store.fact_versions(TENANT, keys.pop())


@pytest.fixture
def location(tmp_path: Path) -> ArchiveLocation:
    location = ArchiveLocation((tmp_path / "archive").as_uri())
    provision_archive(location)
    return location


@pytest.fixture
def archived_fact(store_url: str, location: ArchiveLocation) -> Iterator[Memory]:
    """A memory with one fact, "Ada: I live in Lisbon.", archived with its episode."""
    memory = Memory(store_url, location, clock=FixedClock(NOW))
    try:
        say(memory, "s1", "I live in Lisbon.", SAID, "e1")
        yield memory
    finally:
        memory.close()


def say(memory: Memory, session: str, text: str, at: datetime, event_id: str) -> None:
    memory.observe(TENANT, session, "Ada", text, at, event_id=event_id)


def archive_first_version(memory: Memory, location: ArchiveLocation) -> str:
    """Consolidate and archive what was said so far; the archived version's id."""
    consolidate_pending(memory, SAID + timedelta(hours=1))
    totals = archive_cold_items(memory.store, location, COLD, ARCHIVED)
    assert (totals["semantic_items"], totals["episodes"]) == (1, 1)
    (first,) = versions(memory)
    assert first["archived_manifest_id"] and first["text"] == ""
    return first["item_id"]


# -- the rules, as a table ----------------------------------------------------------------------------------------

CASES = [
    # (first statement, second statement, when the second is said, outcome, why)
    ("I live in Lisbon.", "I live in Paris.", RESTATED, "supersede", "a slot with a new value is a change"),
    ("I live in Lisbon.", "I live in Lisbon.", RESTATED, "merge", "the same value again is support, not a copy"),
    ("I adopted a dog named Rex.", "I adopted a dog, his name is Rex!", RESTATED, "merge", "reworded: near-duplicate"),
    ("I live in Lisbon.", "I live in Porto.", SAID - timedelta(days=1), "ignore", "older news than the archived one"),
]


@pytest.mark.parametrize(("first", "second", "said", "outcome", "why"), CASES, ids=[c[3] + "-" + c[1] for c in CASES])
def test_a_fact_whose_current_version_is_archived(
    store_url: str, location: ArchiveLocation, first: str, second: str, said: datetime, outcome: str, why: str
) -> None:
    memory = Memory(store_url, location, clock=FixedClock(NOW))
    try:
        say(memory, "s1", first, SAID, "e1")
        archived_id = archive_first_version(memory, location)
        say(memory, "s2", second, said, "e2")
        counts = consolidate_pending(memory, NOW)

        rows = versions(memory)
        tombstone = rows[0]
        assert tombstone["item_id"] == archived_id
        # Whatever happens, the archived version stays archived, and one version of the fact is current.
        assert tombstone["archived_manifest_id"] and tombstone["text"] == "", why
        assert [r["version"] for r in rows if r["valid_to"] is None] == [rows[-1]["version"]], why
        lineage = memory.store.lineage_of(TENANT, [r["item_id"] for r in rows])
        if outcome == "supersede":
            assert (counts["new"], counts["merged"], counts["superseded"]) == (0, 0, 1), why
            assert [r["version"] for r in rows] == [1, 2], why
            assert tombstone["valid_to"] == said and tombstone["superseded_by"] == rows[1]["item_id"], why
            assert rows[1]["text"] == f"Ada: {second}" and rows[1]["archived_manifest_id"] is None, why
        elif outcome == "merge":
            assert (counts["new"], counts["merged"], counts["superseded"]) == (0, 1, 0), why
            assert len(rows) == 1 and tombstone["valid_to"] is None, why
            assert (tombstone["support_count"], tombstone["last_seen"]) == (2, said), why
            assert lineage[archived_id] == ("e1", "e2"), why
        else:
            assert (counts["new"], counts["merged"], counts["superseded"]) == (0, 0, 0), why
            assert len(rows) == 1 and tombstone["valid_to"] is None and tombstone["support_count"] == 1, why

        # A rerun of the same consolidation finds everything done: nothing changes.
        before = semantic_state(memory.store, TENANT)
        again = reconsolidate(memory, NOW + timedelta(hours=1))
        assert (again["new"], again["merged"], again["superseded"]) == (0, 0, 0), why
        assert semantic_state(memory.store, TENANT) == before, why
    finally:
        memory.close()


# -- a changed fact ------------------------------------------------------------------------------------------------


def test_a_changed_fact_supersedes_the_archived_version_everywhere(
    archived_fact: Memory, location: ArchiveLocation
) -> None:
    memory = archived_fact
    lisbon = archive_first_version(memory, location)
    # The search index has read the archive's documents before the change: it must drop the archived one after it.
    assert [(h.item_id, h.layer) for h in memory.search(TENANT, "Ada live")] == [(lisbon, "archival")]
    objects = archive_objects(location)

    say(memory, "s2", "I live in Paris.", RESTATED, "e2")
    consolidate_pending(memory, NOW)
    paris = versions(memory)[1]["item_id"]

    # Search: the new version is current; the archived one is superseded, so, like a superseded hot fact, not shown.
    assert [(h.item_id, h.layer, h.text) for h in memory.search(TENANT, "Ada live")] == [
        (paris, "semantic", "(30 May 2024) Ada: I live in Paris.")
    ]
    assert lisbon not in {h.item_id for h in memory.search(TENANT, "Ada live Lisbon", layers=["archival"])}
    fresh = Memory(memory.store_url, location, clock=FixedClock(NOW))  # an index built after the change agrees
    try:
        assert [h.item_id for h in fresh.search(TENANT, "Ada live Lisbon")] == [paris]
    finally:
        fresh.close()

    # Get: the archived content with the tombstone's state, not the archived copy's (which says "current").
    old = memory.get(TENANT, lisbon)
    assert (old.layer, old.text, old.version) == ("archival", "Ada: I live in Lisbon.", 1)
    assert (old.valid_to, old.superseded_by) == (RESTATED, paris)
    new = memory.get(TENANT, paris)
    assert (new.layer, new.version, new.valid_from, new.valid_to, new.superseded_by) == (
        "semantic",
        2,
        RESTATED,
        None,
        None,
    )

    # History, from either version: both versions, in order, and the supersession audited by the run that made it.
    for item_id in (lisbon, paris):
        steps = [
            (e.action, e.item_id)
            for e in memory.history(TENANT, item_id)
            if e.action in ("consolidate", "archive", "supersede") and e.item_id in (lisbon, paris)
        ]
        assert steps[:2] == [("consolidate", lisbon), ("archive", lisbon)]
        assert sorted(steps[2:]) == [("consolidate", paris), ("supersede", lisbon)]
    supersede = next(e for e in memory.history(TENANT, paris) if e.action == "supersede")
    assert supersede.detail == {"superseded_by": paris}

    # The archive's files are what they were: the tombstone holds the newer state.
    assert archive_objects(location) == objects

    # Rehydrate brings the content back and keeps the tombstone's state: still superseded, still not shown.
    assert rehydrate_batch(memory.store, location, TENANT, [lisbon], NOW, None, 10)["rehydrated"] == 1
    back = memory.get(TENANT, lisbon)
    assert (back.layer, back.text, back.valid_to, back.superseded_by) == (
        "semantic",
        "Ada: I live in Lisbon.",
        RESTATED,
        paris,
    )
    assert [h.item_id for h in memory.search(TENANT, "Ada live Lisbon")] == [paris]
    before = semantic_state(memory.store, TENANT)
    assert reconsolidate(memory, NOW + timedelta(hours=1))["superseded"] == 0
    assert semantic_state(memory.store, TENANT) == before


# -- a restated fact -----------------------------------------------------------------------------------------------


def test_a_restated_fact_adds_support_to_the_archived_version(archived_fact: Memory, location: ArchiveLocation) -> None:
    memory = archived_fact
    lisbon = archive_first_version(memory, location)
    assert [h.item_id for h in memory.search(TENANT, "Ada live")] == [lisbon]

    say(memory, "s2", "I live in Lisbon.", RESTATED, "e2")
    consolidate_pending(memory, NOW)

    # No second current copy: one hit, the archived version, now with the support and lineage of both sessions.
    hits = memory.search(TENANT, "Ada live Lisbon")
    assert [(h.item_id, h.layer, h.sources) for h in hits] == [(lisbon, "archival", ("e1", "e2"))]
    item = memory.get(TENANT, lisbon)
    assert (item.layer, item.support_count, item.valid_to, item.text) == (
        "archival",
        2,
        None,
        "Ada: I live in Lisbon.",
    )
    assert memory.stats(TENANT)["semantic"] == 0
    with memory.store.read() as conn:
        merges = conn.execute(
            select(TRANSITIONS.c.item_id).where(TRANSITIONS.c.tenant == TENANT, TRANSITIONS.c.action == "merge")
        ).all()
    assert [m.item_id for m in merges] == [lisbon]

    # Rehydrate restores the content, not the archived copy's support or last-seen time.
    rehydrate_batch(memory.store, location, TENANT, None, NOW, None, 10)
    (row,) = versions(memory)
    assert (row["archived_manifest_id"], row["text"]) == (None, "Ada: I live in Lisbon.")
    assert (row["support_count"], row["last_seen"], row["valid_to"]) == (2, RESTATED, None)
    assert [(h.item_id, h.layer) for h in memory.search(TENANT, "Ada live Lisbon")] == [(lisbon, "semantic")]


def as_archived_before_0004(memory: Memory, item_id: str, audited_hash: str | None) -> None:
    """Make a tombstone look archived before ``content_hash`` was a column: null there, and its archive move's
    detail holding the hash (as the archive recorded it until then) or, older still, no hash at all."""
    detail = {"manifest_id": versions(memory)[0]["archived_manifest_id"]}
    with memory.store.write() as conn:
        conn.execute(
            update(SEMANTIC).where(SEMANTIC.c.tenant == TENANT, SEMANTIC.c.item_id == item_id).values(content_hash=None)
        )
        conn.execute(
            update(TRANSITIONS)
            .where(TRANSITIONS.c.tenant == TENANT, TRANSITIONS.c.item_id == item_id, TRANSITIONS.c.action == "archive")
            .values(detail={**detail, "content_hash": audited_hash} if audited_hash else detail)
        )


def test_the_archived_version_keeps_its_content_hash_in_its_tombstone(
    archived_fact: Memory, location: ArchiveLocation
) -> None:
    memory = archived_fact
    archive_first_version(memory, location)
    (tombstone,) = versions(memory)
    assert tombstone["content_hash"] == content_hash("Ada: I live in Lisbon.", "Ada")
    archive = next(e for e in memory.history(TENANT, tombstone["item_id"]) if e.action == "archive")
    assert "content_hash" not in archive.detail  # the column holds it; the audit trail only records the move


@pytest.mark.parametrize(
    ("restated", "outcome", "why"),
    [
        ("I live in Lisbon.", "merged", "the audited hash matches: a restatement merges, as with the column"),
        ("I live in Paris.", "superseded", "the audited hash differs: a change"),
    ],
)
def test_a_tombstone_archived_before_the_column_falls_back_to_its_audited_hash(
    archived_fact: Memory, location: ArchiveLocation, restated: str, outcome: str, why: str
) -> None:
    memory = archived_fact
    lisbon = archive_first_version(memory, location)
    as_archived_before_0004(memory, lisbon, content_hash("Ada: I live in Lisbon.", "Ada"))

    say(memory, "s2", restated, RESTATED, "e2")
    counts = consolidate_pending(memory, NOW)
    assert (counts["merged"], counts["superseded"]) == ((1, 0) if outcome == "merged" else (0, 1)), why


def test_an_archive_that_kept_no_content_hash_gets_a_new_version(
    archived_fact: Memory, location: ArchiveLocation
) -> None:
    """Tombstones archived before their content hash was kept cannot tell a restatement from a change; the fact
    gets a new version (one current copy, nothing lost) rather than a merge that could drop a changed value."""
    memory = archived_fact
    lisbon = archive_first_version(memory, location)
    as_archived_before_0004(memory, lisbon, None)

    say(memory, "s2", "I live in Lisbon.", RESTATED, "e2")
    assert consolidate_pending(memory, NOW)["superseded"] == 1
    rows = versions(memory)
    assert [(r["version"], r["valid_to"] is None) for r in rows] == [(1, False), (2, True)]
    assert [h.item_id for h in memory.search(TENANT, "Ada live Lisbon")] == [rows[1]["item_id"]]
