"""The public API on both store backends: observe, idempotency, search filters, get, history, stats, forget."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from engram import InvalidInput, Memory, NotFound
from tests.conftest import T0


def test_observe_is_idempotent_on_event_id(memory: Memory) -> None:
    first = memory.observe("acme", "s1", "Caroline", "I moved to Lisbon", T0, event_id="e1")
    again = memory.observe("acme", "s1", "Caroline", "I moved to Lisbon", T0, event_id="e1")
    assert first == again == "e1"
    assert memory.stats("acme")["sensory"] == 1


def test_observe_without_event_id_derives_a_stable_one(memory: Memory) -> None:
    a = memory.observe("acme", "s1", "Caroline", "hello there", T0)
    b = memory.observe("acme", "s1", "Caroline", "hello there", T0)
    c = memory.observe("acme", "s1", "Caroline", "hello there", T0 + timedelta(seconds=1))
    assert a == b != c
    assert memory.stats("acme")["sensory"] == 2


def test_search_renders_date_and_speaker_and_keeps_tenants_apart(memory: Memory) -> None:
    memory.observe("acme", "s1", "Caroline", "I adopted a dog named Rex", T0, event_id="e1")
    memory.observe("other", "s9", "Mallory", "my dog Rex is a secret", T0, event_id="e1")
    hits = memory.search("acme", "dog Rex")
    assert [h.item_id for h in hits] == ["e1"]
    assert hits[0].text == "(1 March 2024) Caroline: I adopted a dog named Rex"
    assert hits[0].sources == ("e1",)
    assert hits[0].layer == "sensory"
    assert all("Mallory" not in h.text for h in hits)


def test_search_sees_writes_made_after_the_index_was_built(memory: Memory) -> None:
    memory.observe("acme", "s1", "A", "the first note about kayaks", T0, event_id="e1")
    assert len(memory.search("acme", "kayaks")) == 1
    memory.observe("acme", "s1", "A", "a second note about kayaks", T0, event_id="e2")
    assert {h.item_id for h in memory.search("acme", "kayaks")} == {"e1", "e2"}


def test_search_keeps_the_indexes_of_the_most_recent_tenants_only(memory: Memory) -> None:
    from engram.search import IndexRegistry

    memory._indexes = IndexRegistry(max_tenants=2)
    for tenant in ("t1", "t2", "t3"):
        memory.observe(tenant, "s1", "A", f"a note about kayaks from {tenant}", T0, event_id="e1")
    assert [h.text for h in memory.search("t1", "kayaks")] == ["(1 March 2024) A: a note about kayaks from t1"]
    memory.search("t2", "kayaks")
    first = memory._indexes.get("t1")  # t1 is now the most recent, t2 the least
    memory.search("t3", "kayaks")
    assert len(memory._indexes) == 2
    assert memory._indexes.get("t1") is first  # kept
    # t2 was dropped: its next search builds its index again from the store, writes made meanwhile included.
    memory.observe("t2", "s1", "A", "another note about kayaks", T0, event_id="e2")
    assert {h.item_id for h in memory.search("t2", "kayaks")} == {"e1", "e2"}
    assert len(memory._indexes) == 2
    with pytest.raises(ValueError, match="max_tenants"):
        IndexRegistry(max_tenants=0)


def test_search_filters_by_time_and_tags(memory: Memory) -> None:
    memory.observe("acme", "s1", "A", "paris trip planning", T0, event_id="old", metadata={"tags": ["travel"]})
    memory.observe(
        "acme",
        "s1",
        "A",
        "paris trip booked",
        T0 + timedelta(days=2),
        event_id="new",
        metadata={"tags": ["travel", "done"]},
    )
    memory.observe("acme", "s1", "A", "paris museum list", T0 + timedelta(days=3), event_id="untagged")
    assert {h.item_id for h in memory.search("acme", "paris", since=T0 + timedelta(days=1))} == {
        "new",
        "untagged",
    }
    assert {h.item_id for h in memory.search("acme", "paris", until=T0 + timedelta(days=1))} == {"old"}
    assert {h.item_id for h in memory.search("acme", "paris", tags=["travel"])} == {"old", "new"}
    assert {h.item_id for h in memory.search("acme", "paris", tags=["travel", "done"])} == {"new"}
    assert memory.search("acme", "paris", layers=["semantic"]) == []


def test_a_tag_or_near_duplicates_filtering_out_the_best_matches_do_not_hide_the_others(memory: Memory) -> None:
    """Tags and near-duplicates are filtered out of a pool of the best matches: when they leave fewer than ``limit``
    hits, the search looks further down (the one tagged match below 60 better untagged ones was not found, and 60
    near-copies of one text left 1 hit of 10 asked for)."""
    copies = [f"{'apple ' * (i + 1)}banana cherry date elder fig grape honey kiwi lemon mango" for i in range(60)]
    others = [f"apple distinct{i} alpha{i} beta{i} gamma{i} delta{i} epsilon{i} zeta{i} eta{i}" for i in range(10)]
    rows = [_row(f"copy{i:02d}", text, T0 + timedelta(minutes=i)) for i, text in enumerate(copies)]
    rows += [_row(f"other{i}", text, T0) for i, text in enumerate(others)]
    tagged = "I once ate an apple at the fair with my cousins, and it was a long and very happy day"
    rows.append({**_row("tagged", tagged, T0), "metadata": {"tags": ["fruit"]}})
    assert memory.observe_many(rows).accepted == len(rows)

    assert [h.item_id for h in memory.search("acme", "apple", limit=1, tags=["fruit"])] == ["tagged"]
    hits = memory.search("acme", "apple", limit=10)
    assert len(hits) == 10 and sum(h.item_id.startswith("copy") for h in hits) == 1
    # Asked for more than there are, it returns every distinct one: a copy, the ten others and the tagged one.
    assert len(memory.search("acme", "apple", limit=100)) == 12


def _row(event_id: str, text: str, at: datetime) -> dict:
    return {"tenant": "acme", "session": "s1", "actor": "Bob", "text": text, "at": at, "event_id": event_id}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"limit": 0}, "limit"),  # a search that can return nothing is a caller bug
        ({"limit": "5"}, "limit"),  # wrong type, not coerced
        ({"layers": ["attic"]}, "layers"),  # unknown layer
        ({"tags": ["a b"]}, "tags"),  # spaces are not allowed in tags
        ({"tags": "travel"}, "tags"),  # one string is not a list of tags (it was split into letters)
        ({"tags": 5}, "tags"),  # not iterable
        ({"since": "yesterday"}, "since"),  # not ISO-8601
    ],
)
def test_search_rejects_bad_arguments_naming_them(memory: Memory, kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        memory.search("acme", "anything", **kwargs)
    assert err.value.field == field


def test_get_and_history_of_an_event(memory: Memory) -> None:
    memory.observe("acme", "s1", "Caroline", "I moved to Lisbon", T0, event_id="e1")
    item = memory.get("acme", "e1")
    assert (item.layer, item.actor, item.session_id, item.text) == (
        "sensory",
        "Caroline",
        "s1",
        "I moved to Lisbon",
    )
    history = memory.history("acme", "e1")
    assert [(h.action, h.to_layer) for h in history] == [("observe", "sensory")]
    with pytest.raises(NotFound):
        memory.get("acme", "nope")
    with pytest.raises(NotFound):
        memory.get("other", "e1")  # another tenant's id is not found, not leaked


def test_forget_subject_removes_it_everywhere_and_leaves_the_rest(memory: Memory) -> None:
    memory.observe("acme", "s1", "Caroline", "Melanie paints sunsets", T0, event_id="e1")
    memory.observe("acme", "s1", "Caroline", "I run on Sundays", T0, event_id="e2")
    memory.observe("acme", "s1", "Caroline", "Mel is a nickname, not Melanie's friend", T0, event_id="e3")
    assert memory.search("acme", "Melanie")  # builds the index before the forget
    receipt = memory.forget("acme", "Melanie")
    assert receipt.removed["events"] == 2
    assert receipt.subject_sha256 is not None and "Melanie" not in repr(receipt)
    assert memory.search("acme", "Melanie paints") == []
    assert [h.item_id for h in memory.search("acme", "Sundays")] == ["e2"]
    assert memory.stats("acme")["sensory"] == 1


def test_forget_finds_a_subject_in_any_script_as_whole_words_only(memory: Memory) -> None:
    """Subjects with letters past ASCII are matched on both databases (SQL's lower() folds ASCII only on SQLite),
    as whole words: "José" is not "Joséphine", "Émile" is not "a mile", and the same name typed with a separate
    accent mark or in capitals is the same name. A subject of several words matches across punctuation."""
    said = {
        "e1": "Élodie moved to Porto",
        "e2": "ÉLODIE called twice",
        "e3": "Joséphine is my sister",
        "e4": "I met Jose\u0301 at the station",
        "e5": "Иван пришёл домой",
        "e6": "We walked a mile away",
        "e7": "Mary-Ann paints sunsets",
        "e8": "The Straße was closed",
        "e9": "मैं रोम गया",  # Rome: its vowel sign is a combining mark, which used to split the word
    }
    for event_id, text in said.items():
        memory.observe("acme", "s1", "Caroline", text, T0, event_id=event_id)
    removed = {}
    for subject in ("Élodie", "José", "Иван", "Émile", "mary ann", "STRASSE", "राम"):
        removed[subject] = memory.forget("acme", subject).removed.get("events", 0)
    assert removed == {"Élodie": 2, "José": 1, "Иван": 1, "Émile": 0, "mary ann": 1, "STRASSE": 1, "राम": 0}
    left = {e: memory.get("acme", e).text for e in said if _exists(memory, "acme", e)}
    assert left == {"e3": said["e3"], "e6": said["e6"], "e9": said["e9"]}


def test_forget_refuses_a_subject_with_no_word_to_match(memory: Memory) -> None:
    memory.observe("acme", "s1", "Caroline", "?! ...", T0, event_id="e1")
    with pytest.raises(InvalidInput) as err:
        memory.forget("acme", "?!")
    assert err.value.field == "subject"
    assert memory.get("acme", "e1").text == "?! ..."


def _exists(memory: Memory, tenant: str, item_id: str) -> bool:
    try:
        memory.get(tenant, item_id)
    except NotFound:
        return False
    return True


def test_stats_counts_per_layer(memory: Memory) -> None:
    memory.observe_many(
        [
            {"tenant": t, "session": "s", "actor": "a", "text": f"x {i}", "at": T0, "event_id": f"e{i}"}
            for i, t in enumerate(["a", "a", "b"])
        ]
    )
    assert memory.stats("a")["sensory"] == 2
    assert memory.stats()["sensory"] == 3


def test_a_change_after_its_current_version_was_forgotten_is_the_next_version(memory: Memory) -> None:
    """Forgetting a fact's current version leaves the older, closed one; the next change of that fact is stored as
    the version after the highest stored, not as a second version 1 or dropped for an id an older version has."""
    from sqlalchemy import select

    from engram.store import SEMANTIC
    from tests.engram.archive_helpers import consolidate_pending

    said = ["My favorite color is blue.", "My favorite color is green.", "My favorite color is red."]
    for n, text in enumerate(said):
        at = T0 + timedelta(days=10 * n)
        memory.observe("acme", f"s{n}", "Ada", text, at, event_id=f"e{n}")
        consolidate_pending(memory.store, "acme", at + timedelta(days=1))
        if n == 1:
            memory.forget("acme", "green")
    with memory.store.read() as conn:
        rows = [dict(r._mapping) for r in conn.execute(select(SEMANTIC).where(SEMANTIC.c.tenant == "acme"))]
    assert [(r["version"], r["text"]) for r in sorted(rows, key=lambda r: r["version"])] == [
        (1, "Ada: My favorite color is blue."),
        (2, "Ada: My favorite color is red."),  # 2: the forgotten version is gone, its number is free
    ]
    assert len({r["fact_key"] for r in rows}) == 1
    live = [r for r in rows if r["valid_to"] is None]
    assert [r["text"] for r in live] == ["Ada: My favorite color is red."]


def test_a_statement_consolidated_late_does_not_replace_a_newer_restatement(memory: Memory) -> None:
    """London on day 0 and again on day 2, Paris on day 1 in a session that closes on day 3. Run by run, the
    restatement of day 2 had only moved London's last-seen time, so Paris (day 1, after London began) superseded
    it; run once at the end, London came out current. The current fact is now London either way."""
    from sqlalchemy import select

    from engram.store import SEMANTIC
    from tests.engram.archive_helpers import consolidate_pending

    day = timedelta(days=1)
    memory.observe("acme", "a", "Ann", "I live in London.", T0, event_id="london-1")
    memory.observe("acme", "b", "Ann", "I live in Paris.", T0 + day, event_id="paris")
    memory.observe("acme", "c", "Ann", "I live in London.", T0 + 2 * day, event_id="london-2")
    memory.observe("acme", "b", "Ann", "The weather is lovely here.", T0 + 3 * day, event_id="weather")
    for as_of in (T0 + timedelta(hours=1), T0 + 2 * day + timedelta(hours=1), T0 + 3 * day + timedelta(hours=1)):
        consolidate_pending(memory.store, "acme", as_of)
    with memory.store.read() as conn:
        current = conn.execute(
            select(SEMANTIC.c.text).where(SEMANTIC.c.tenant == "acme", SEMANTIC.c.valid_to.is_(None))
        ).scalars()
        homes = [text for text in current if "live in" in text]
    assert homes == ["Ann: I live in London."]
