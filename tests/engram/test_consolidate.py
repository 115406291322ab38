"""The local consolidator's rules as tables: statements, informativeness, dates, merges, versions, plans."""

from __future__ import annotations

import random
import re
import string
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engram.consolidate import (
    _WORD,
    FACT_COLUMNS,
    LocalConsolidator,
    _annotated,
    _item_id,
    _tokens,
    content_hash,
    is_informative,
    plan_changes,
    resolve_dates,
    slot_of,
    split_statements,
    summarize_episode,
)

MAY_8 = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)  # a Monday
NAMES = ["Ada", "Bruno"]


def conversation(*turns: tuple[str, str], at: datetime = MAY_8, episode: str = "e1", tenant: str = "acme"):
    """Episodes and turns frames for one episode of (actor, text) turns, one second apart."""
    rows = [
        {
            "tenant": tenant,
            "episode_id": episode,
            "position": i,
            "item_id": f"{episode}:{i}",
            "actor": actor,
            "text": text,
            "at": at + timedelta(seconds=i),
            "tags": [],
            "metadata": {},
        }
        for i, (actor, text) in enumerate(turns)
    ]
    episodes = pd.DataFrame(
        [
            {
                "tenant": tenant,
                "episode_id": episode,
                "session_id": f"s-{episode}",
                "started_at": at,
                "ended_at": at + timedelta(seconds=len(turns)),
                "participants": sorted({a for a, _ in turns}),
            }
        ]
    )
    return episodes, pd.DataFrame(rows)


def distill(*turns: tuple[str, str], at: datetime = MAY_8, episode: str = "e1") -> pd.DataFrame:
    return LocalConsolidator().distill(*conversation(*turns, at=at, episode=episode))


def apply(plan, items: dict[str, dict]) -> None:
    """What the store does with a plan, over a dict of rows: insert, merge, close superseded versions."""
    for row in plan.new_items:
        items[row["item_id"]] = dict(row)
    for item_id, merge in plan.merges.items():
        row = items[item_id]
        row["support_count"] += merge["support_delta"]
        row["last_seen"] = max(row["last_seen"], merge["last_seen"])
        row["sources"] = [*row["sources"], *merge["sources"]]
    for old, new in plan.supersessions.items():
        items[old]["valid_to"] = items[new]["valid_from"]
        items[old]["superseded_by"] = new


def current(items: dict[str, dict], facts: pd.DataFrame) -> pd.DataFrame:
    """The current items sharing a fact key with ``facts``, as the store hands them to ``plan_changes``."""
    keys = set(facts["fact_key"])
    rows = [r for r in items.values() if r["valid_to"] is None and r["fact_key"] in keys]
    return pd.DataFrame(rows)


# -- statements -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I adopted a dog. His name is Rex!", ["I adopted a dog.", "His name is Rex!"]),  # two sentences, two parts
        ("Wow... that is great", ["Wow... that is great"]),  # an ellipsis before a lower-case word ends nothing
        ("Look! [shares a photo of a red kayak]", ["Look!", "[shares a photo of a red kayak]"]),  # caption apart
        ("Is it Dr. Smith?", ["Is it Dr.", "Smith?"]),  # known limit: a capitalised word after a period splits
        ("", []),  # nothing said, nothing split
    ],
)
def test_split_statements(text: str, expected: list[str]) -> None:
    assert split_statements(text) == expected


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("Thanks, Bruno!", False),  # thanks plus a vocative name: small talk
        ("Wow, that's so cool!", False),  # a reaction names no fact
        ("Hey Bru, good to see you!", False),  # "Bru" is a short form of a speaker's name, not content
        ("I adopted a dog named Rex.", True),  # adopted, dog, Rex: a fact
        ("I went hiking yesterday.", True),  # one content word and a date still make a dated fact
        ("[shares a photo of a lake at sunrise]", True),  # a shared photo is what the talk refers to
        ("That sounds great, thanks so much!", False),  # all small talk words
    ],
)
def test_is_informative(sentence: str, expected: bool) -> None:
    assert is_informative(sentence, NAMES) is expected


# -- dates ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I went yesterday.", "I went yesterday (7 May 2023)."),  # the day before 8 May
        ("We met last year", "We met last year (2022)"),  # the year before 2023
        ("The show is next month", "The show is next month (June 2023)"),  # the month after May
        ("It closed last month", "It closed last month (April 2023)"),  # the month before May
        ("I ran last Sunday", "I ran last Sunday (7 May 2023)"),  # 8 May 2023 is a Monday: Sunday was the 7th
        ("I ran last Monday", "I ran last Monday (1 May 2023)"),  # "last Monday" said on a Monday is a week ago
        ("Two days ago I fell", "Two days ago (6 May 2023) I fell"),  # counted back from the day said
        ("3 years ago we moved", "3 years ago (2020) we moved"),  # digits count too
        ("a few days ago", "a few days ago (a few days before 8 May 2023)"),  # vague: anchored, not invented
        ("We hiked last weekend", "We hiked last weekend (the weekend before 8 May 2023)"),  # a span, anchored
        ("See you tomorrow", "See you tomorrow (9 May 2023)"),  # the day after
        ("I love this week", "I love this week"),  # "this week" is the day said: nothing to add
        ("Lastly, a yesterdayish word", "Lastly, a yesterdayish word"),  # whole words only
        ("born 800000 days ago", "born 800000 days ago"),  # before year 1: no date to name, the text as said
        ("30000 months ago", "30000 months ago"),  # the same, counted in months
        ("99999999999 days ago", "99999999999 days ago"),  # past what a time span can hold
        ("3000 years ago", "3000 years ago"),  # year -977 is no year a date names
        ("We met la\u017ft year", "We met la\u017ft year (2022)"),  # re.I takes the long s for an s: so do we
        ("the pa\u017ft \u017fummer", "the pa\u017ft \u017fummer (summer 2022)"),  # July is after May: 2022's
        ("Two weeK\u017f ago", "Two weeK\u017f ago (the week of 24 April 2023)"),  # the Kelvin sign is a k
        ("th\u0131s month and TH\u0130S year", "th\u0131s month (May 2023) and TH\u0130S year (2023)"),  # both i's
    ],
)
def test_resolve_dates(text: str, expected: str) -> None:
    assert resolve_dates(text, MAY_8) == expected


@pytest.mark.parametrize(
    "text",
    [
        "I went YESTERDAY",  # capitals match as the regex's re.I matches them
        "I went ye\u017fterday",  # the long s, which re.I takes for an s, as case folding does
        "We met la\u017ft year",
        "I love th\u0130s week",  # the dotted capital I: re.I takes it for an i, case folding does not
        "I love th\u0131s week",  # the dotless i: the same
        "Two days ago I fell",
        "nothing dated here",
    ],
)
def test_the_quick_test_for_a_relative_date_never_skips_one_the_regex_would_find(text: str) -> None:
    assert resolve_dates(text, MAY_8) == _annotated(text, MAY_8)


def test_case_folding_maps_every_letter_re_i_takes_for_an_ascii_one_but_the_two_is_it_looks_for_apart() -> None:
    # What the quick test for a relative date rests on, checked over every code point of this Python's tables.
    ascii_like = [c for c in map(chr, range(sys.maxunicode + 1)) if re.fullmatch("[a-z]", c, re.I)]
    assert {c for c in ascii_like if c.casefold() not in string.ascii_lowercase} == {"\u0130", "\u0131"}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "yesterday",
                "ago",
                "last",
                "this",
                "past",
                "next",
                "tomorrow",
                "week",
                "monday",
                "two days",
                "3",
                " ",
                "\u017f",
                "\u0130",
                "\u0131",
                "\u212a",
                "S",
                "T",
                "I",
                "a",
                "s",
                "t",
                "h",
                "i",
                "e",
                ".",
            ]
        ),
        max_size=12,
    ).map("".join)
)
def test_resolve_dates_is_what_the_regex_alone_gives_for_any_text(text: str) -> None:
    assert resolve_dates(text, MAY_8) == _annotated(text, MAY_8)


@settings(max_examples=200, deadline=None)
@given(
    text=st.lists(
        st.sampled_from(
            [
                "yesterday",
                "tomorrow",
                "the day before yesterday",
                "ago",
                "days",
                "weeks",
                "months",
                "years",
                "last",
                "next",
                "this",
                "past",
                "month",
                "year",
                "week",
                "summer",
                "winter",
                "monday",
                "sunday",
                "1",
                "9",
                "99999999999",
                "800000",
                "two",
                " ",
                ".",
            ]
        ),
        max_size=10,
    ).map(" ".join),
    at=st.datetimes(datetime(1970, 1, 1), datetime(9999, 12, 31, 23, 59), timezones=st.just(UTC)),
)
def test_resolve_dates_never_fails_on_any_text_said_at_any_time_engram_accepts(text: str, at: datetime) -> None:
    said = resolve_dates(text, at)
    assert re.sub(r" \([^()]*\)", "", said) == text  # the text as said, with at most dates added in brackets


_CHAT = st.sampled_from(
    [
        "yesterday",
        "800000 days ago",
        "la\u017ft",
        "my favorite color is",
        "I live in",
        "I am",
        "years old",
        "?",
        "!",
        ".",
        ",",
        "and",
        "Caroline",
        "'s",
        " ",
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    texts=st.lists(
        st.one_of(st.text(max_size=60), st.lists(st.one_of(_CHAT, st.text(max_size=4)), max_size=12).map(" ".join)),
        min_size=1,
        max_size=4,
    ),
    at=st.datetimes(datetime(1970, 1, 1), datetime(9999, 12, 31), timezones=st.just(UTC)),
    actor=st.text(max_size=10),
)
def test_summarizing_and_distilling_never_fail_on_any_text(texts: list[str], at: datetime, actor: str) -> None:
    # One turn that fails them would fail every close or consolidation of the batch it is in.
    turns = [
        {"tenant": "t", "episode_id": "ep", "item_id": f"i{i}", "position": i, "actor": actor, "text": text, "at": at}
        for i, text in enumerate(texts)
    ]
    summary = summarize_episode(turns)
    facts = LocalConsolidator().distill(
        pd.DataFrame([{"tenant": "t", "episode_id": "ep", "participants": [actor]}]), pd.DataFrame(turns)
    )
    assert isinstance(summary, str) and list(facts.columns) == list(FACT_COLUMNS)
    assert set(facts["sources"].map(tuple).sum() if len(facts) else ()) <= {t["item_id"] for t in turns}


def test_a_relative_date_at_the_edge_of_the_calendar_is_left_as_said() -> None:
    last_day = datetime(9999, 12, 31, tzinfo=UTC)
    assert resolve_dates("see you tomorrow", last_day) == "see you tomorrow"  # 10000-01-01 is no date
    assert resolve_dates("next month", last_day) == "next month"
    assert resolve_dates("next year", last_day) == "next year"
    assert resolve_dates("next summer", last_day) == "next summer"  # summer 10000
    assert resolve_dates("last winter", datetime(1970, 1, 5, tzinfo=UTC)) == "last winter (winter 1969)"
    assert resolve_dates("yesterday", last_day) == "yesterday (30 December 9999)"


def test_year_and_month_rollover() -> None:
    new_year = datetime(2024, 1, 3, tzinfo=UTC)
    # last month from January is December of the year before; yesterday crosses the year too
    assert resolve_dates("last month", new_year) == "last month (December 2023)"
    assert resolve_dates("yesterday", datetime(2024, 1, 1, tzinfo=UTC)) == "yesterday (31 December 2023)"


# -- distilling -------------------------------------------------------------------------------------------------


def test_distill_keeps_facts_with_their_question_and_date_and_drops_small_talk() -> None:
    facts = distill(
        ("Ada", "Hey Bruno! Good to see you!"),
        ("Bruno", "Hi Ada! What did you do this weekend?"),
        ("Ada", "I went to a pottery class yesterday. It was so fun!"),
        ("Bruno", "Wow, that's awesome!"),
        ("Bruno", "I adopted a puppy named Rex. [shares a photo of a small brown puppy]"),
    )
    assert list(facts.columns) == FACT_COLUMNS
    assert list(facts["rendered"]) == [
        "(8 May 2023) Bruno: What did you do this weekend? Ada: I went to a pottery class yesterday (7 May 2023).",
        "(8 May 2023) Bruno: I adopted a puppy named Rex. [shares a photo of a small brown puppy]",
    ]
    assert list(facts["sources"]) == [["e1:2"], ["e1:4"]]
    assert list(facts["actor"]) == ["Ada", "Bruno"]
    assert facts["salience"].between(0, 1).all()
    assert facts["fact_key"].str.len().le(64).all()


def test_a_bare_answer_keeps_the_question_it_answers() -> None:
    facts = distill(("Ada", "Did you finish the marathon in Berlin?"), ("Bruno", "Yes, I did!"))
    # "Yes, I did!" alone says nothing; with the question it records that Bruno finished the marathon
    assert list(facts["text"]) == ["Ada: Did you finish the marathon in Berlin? Bruno: Yes, I did!"]


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("My favorite color is blue.", ("favorite color", "blue")),  # a slot and its value
        ("My favourite band is The Cure!", ("favorite band", "The Cure")),  # British spelling, same slot
        ("I live in Lisbon.", ("home", "Lisbon")),  # where the speaker lives
        ("I work as a nurse.", ("work", "a nurse")),  # what the speaker does
        ("My dog's name is Rex.", ("name of dog", "Rex")),  # a named thing of the speaker's
        ("My favorite \u017fport is chess", ("favorite sport", "chess")),  # a long s: the slot "sport" names
        ("My CAT'S name is Tom", ("name of cat", "Tom")),  # capitals: the same slot as "cat"
        ("I live in Lisbon, and I love the food there.", None),  # says more than the slot: a statement
        ("I went to Lisbon.", None),  # an event, not a slot: never superseded
    ],
)
def test_slot_of(sentence: str, expected: tuple[str, str] | None) -> None:
    assert slot_of(sentence) == expected


# -- merging and versioning -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "same_fact"),
    [
        ("I love painting sunsets.", "I really love painting sunsets!", True),  # filler words differ only
        ("I love painting sunsets.", "Painting sunsets, I love it.", True),  # reordered, same content words
        ("I love painting sunsets.", "I loved painting the sunset.", True),  # inflections stem alike
        ("I love painting sunsets.", "I love painting portraits.", False),  # another subject: another fact
        ("I went to Rome last year.", "I went to Rome yesterday.", False),  # resolved dates differ: two events
    ],
)
def test_near_duplicates_share_key_and_hash(first: str, second: str, same_fact: bool) -> None:
    a = distill(("Ada", first), episode="e1")
    b = distill(("Ada", second), at=MAY_8 + timedelta(days=30), episode="e2")
    assert (a.loc[0, "fact_key"] == b.loc[0, "fact_key"]) is same_fact
    assert (a.loc[0, "content_hash"] == b.loc[0, "content_hash"]) is same_fact


def test_the_same_words_from_two_speakers_are_two_facts() -> None:
    facts = distill(("Ada", "I love painting sunsets."), ("Bruno", "I love painting sunsets."))
    # each speaker's statement is about that speaker: merging them would lose who said it
    assert facts["fact_key"].nunique() == 2


def test_merge_counts_support_and_keeps_lineage_to_every_source() -> None:
    items: dict[str, dict] = {}
    first = distill(("Ada", "I love painting sunsets."), episode="e1")
    apply(plan_changes(first, current(items, first), MAY_8), items)
    later = MAY_8 + timedelta(days=10)
    second = distill(("Ada", "I really love painting sunsets!"), at=later, episode="e2")
    plan = plan_changes(second, current(items, second), later)
    assert plan.counts == {"new": 0, "merged": 1, "superseded": 0}
    apply(plan, items)
    (item,) = items.values()
    assert (item["support_count"], item["first_seen"], item["last_seen"]) == (2, MAY_8, later)
    assert item["sources"] == ["e1:0", "e2:0"]
    assert item["rendered"] == "(8 May 2023) Ada: I love painting sunsets."  # the content is not rewritten


def test_a_changed_slot_is_versioned_and_the_old_version_closed_not_overwritten() -> None:
    items: dict[str, dict] = {}
    first = distill(("Ada", "My favorite color is blue."), episode="e1")
    apply(plan_changes(first, current(items, first), MAY_8), items)
    later = MAY_8 + timedelta(days=40)
    second = distill(("Ada", "My favorite color is green."), at=later, episode="e2")
    plan = plan_changes(second, current(items, second), later)
    assert plan.counts == {"new": 0, "merged": 0, "superseded": 1}
    apply(plan, items)
    old, new = sorted(items.values(), key=lambda r: r["version"])
    assert (old["text"], old["valid_to"], old["superseded_by"]) == (
        "Ada: My favorite color is blue.",
        later,
        new["item_id"],
    )
    assert (new["version"], new["valid_from"], new["valid_to"]) == (2, later, None)
    assert new["fact_key"] == old["fact_key"]


def test_plain_statements_about_the_same_subject_are_never_superseded() -> None:
    items: dict[str, dict] = {}
    first = distill(("Ada", "I went to Lisbon with my sister."), episode="e1")
    apply(plan_changes(first, current(items, first), MAY_8), items)
    later = MAY_8 + timedelta(days=3)
    second = distill(("Ada", "I went to Porto with my sister."), at=later, episode="e2")
    plan = plan_changes(second, current(items, second), later)
    # both trips happened: the second is a new fact, and the first stays current and searchable
    assert plan.counts == {"new": 1, "merged": 0, "superseded": 0}
    apply(plan, items)
    assert all(r["valid_to"] is None for r in items.values())


def _facts(*rows: tuple[str, str, str, int]) -> pd.DataFrame:
    """Candidate facts from (fact_key, text, source, day of May) rows, by Ada."""
    return pd.DataFrame(
        [
            {
                "tenant": "acme",
                "fact_key": key,
                "text": f"Ada: {text}",
                "actor": "Ada",
                "at": datetime(2023, 5, day, tzinfo=UTC),
                "rendered": f"({day} May 2023) Ada: {text}",
                "tags": [],
                "sources": [source],
                "salience": 0.5,
                "content_hash": content_hash(f"Ada: {text}", "Ada"),
            }
            for key, text, source, day in rows
        ],
        columns=FACT_COLUMNS,
    )


STORED = _facts(("k-color", "My favorite color is blue.", "ev1", 1), ("k-dog", "I adopted a dog.", "ev2", 1))


@pytest.mark.parametrize(
    ("candidates", "counts", "new_versions"),
    [
        # nothing stored shares the key: a new fact, version 1
        (_facts(("k-job", "I work as a nurse.", "ev9", 9)), {"new": 1, "merged": 0, "superseded": 0}, [1]),
        # the same content from a new event: one merge, no row
        (_facts(("k-dog", "I adopted a dog!", "ev9", 9)), {"new": 0, "merged": 1, "superseded": 0}, []),
        # the stored events again (a rerun after the plan was applied): nothing to do
        (STORED, {"new": 0, "merged": 0, "superseded": 0}, []),
        # changed content, said later: version 2 supersedes version 1
        (_facts(("k-color", "My favorite color is green.", "ev9", 9)), {"new": 0, "merged": 0, "superseded": 1}, [2]),
        # two changes in one batch: v2 is closed by v3 within the batch, so only v1 is a stored row to supersede;
        # "new" counts the extra row the batch wrote beyond the one that replaces v1
        (
            _facts(
                ("k-color", "My favorite color is green.", "ev8", 8),
                ("k-color", "My favorite color is red.", "ev9", 9),
            ),
            {"new": 1, "merged": 0, "superseded": 1},
            [2, 3],
        ),
        # two near-duplicates in one batch: one merge carrying support 2
        (
            _facts(("k-dog", "I adopted a dog!", "ev8", 8), ("k-dog", "I adopted a dog.", "ev9", 9)),
            {"new": 0, "merged": 1, "superseded": 0},
            [],
        ),
    ],
)
def test_plan_changes_counts(candidates: pd.DataFrame, counts: dict[str, int], new_versions: list[int]) -> None:
    items: dict[str, dict] = {}
    apply(plan_changes(STORED, pd.DataFrame(), MAY_8), items)
    plan = plan_changes(candidates, current(items, candidates), MAY_8 + timedelta(days=10))
    assert plan.counts == counts
    assert [r["version"] for r in plan.new_items] == new_versions
    assert all(item_id in items for item_id in plan.merges)
    assert all(old in items for old in plan.supersessions)


def test_two_near_duplicates_in_one_batch_merge_with_support_two() -> None:
    items: dict[str, dict] = {}
    apply(plan_changes(STORED, pd.DataFrame(), MAY_8), items)
    batch = _facts(("k-dog", "I adopted a dog!", "ev8", 8), ("k-dog", "I adopted a dog.", "ev9", 9))
    plan = plan_changes(batch, current(items, batch), MAY_8)
    (merge,) = plan.merges.values()
    assert merge == {"support_delta": 2, "sources": ["ev8", "ev9"], "last_seen": datetime(2023, 5, 9, tzinfo=UTC)}


def test_older_changed_news_does_not_replace_the_current_version() -> None:
    items: dict[str, dict] = {}
    apply(plan_changes(STORED, pd.DataFrame(), MAY_8), items)
    stale = _facts(("k-color", "My favorite color is grey.", "ev0", 1))
    stale.loc[0, "at"] = datetime(2023, 4, 1, tzinfo=UTC)  # said before the stored version began
    plan = plan_changes(stale, current(items, stale), MAY_8)
    assert plan.counts == {"new": 0, "merged": 0, "superseded": 0}


def test_replanning_gives_the_same_ids() -> None:
    facts = distill(("Ada", "I adopted a dog named Rex."), ("Bruno", "My favorite color is blue."))
    a = plan_changes(facts, pd.DataFrame(), MAY_8)
    b = plan_changes(facts, pd.DataFrame(), MAY_8)
    assert [r["item_id"] for r in a.new_items] == [r["item_id"] for r in b.new_items]


def test_a_tenants_new_facts_get_ids_in_the_order_they_were_said() -> None:
    """Ids start with the time a version was said, so a store's rows for new facts append in time order; versions
    of one fact, said later, sort after it, and two tenants' facts said at once still differ."""
    items: dict[str, dict] = {}
    days = [MAY_8 + timedelta(days=d) for d in (0, 3, 40)]
    texts = ["I adopted a dog named Rex.", "My favorite color is blue.", "My favorite color is green."]
    ids = []
    for i, (at, text) in enumerate(zip(days, texts, strict=True)):
        facts = distill(("Ada", text), at=at, episode=f"e{i}")
        plan = plan_changes(facts, current(items, facts), at)
        apply(plan, items)
        ids += [r["item_id"] for r in plan.new_items]
    assert len(ids) == 3 and ids == sorted(ids), ids
    # every year engram accepts has a time prefix of the same width, so the order holds for any dates
    late, naive = datetime(9999, 12, 31, tzinfo=UTC), pd.Timestamp("2024-01-01 00:00:00.000001")
    assert len(_item_id("acme", "k", 1, late)) == len(ids[0])
    assert _item_id("acme", "k", 1, naive) == _item_id("acme", "k", 1, naive.tz_localize("UTC").to_pydatetime())
    assert all(len(i) <= 64 and i.startswith("sem-") for i in ids)
    blue, green = sorted((r for r in items.values() if "color" in r["text"]), key=lambda r: r["version"])
    assert blue["superseded_by"] == green["item_id"] > blue["item_id"]
    globex = LocalConsolidator().distill(*conversation(("Ada", texts[0]), at=days[0], tenant="globex"))
    other = plan_changes(globex, pd.DataFrame(), days[0])
    assert other.new_items[0]["item_id"] != ids[0]
    assert other.new_items[0]["item_id"][:20] == ids[0][:20]  # said at the same moment: same time prefix


# -- summaries --------------------------------------------------------------------------------------------------


def test_summarize_episode_picks_the_recurring_topic_in_order() -> None:
    _, turns = conversation(
        ("Ada", "Hi Bruno!"),
        ("Bruno", "I started a pottery class last week. The pottery teacher is great."),
        ("Ada", "Pottery sounds relaxing. I tried pottery once in Lisbon."),
        ("Bruno", "The weather was awful today."),
    )
    summary = summarize_episode(turns, max_sentences=2)
    lines = summary.splitlines()
    assert len(lines) == 2
    assert all("ottery" in line for line in lines)  # the topic both speakers come back to
    assert lines[0].startswith("Bruno: ")  # speakers are kept, order is the episode's
    assert summarize_episode(turns.iloc[:1]) == ""  # a greeting has nothing to summarise


@pytest.mark.parametrize("seed", range(3))
def test_words_of_ascii_and_other_text_are_those_of_each_word_lowered(seed: int) -> None:
    rng = random.Random(seed)
    # The kelvin sign and the dotted capital I lower to ASCII letters: text holding them is not lowered whole.
    alphabet = "abcXYZ019 '’.,!?-_ßÀé\u212a\u0130"
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert _tokens(text) == [w.lower() for w in _WORD.findall(text.replace("’", "'"))], text
    assert _tokens("Kelvin \u212aB") == ["kelvin", "b"]


# Replies of a model that are not the asked-for facts, each as the body its server sends.
_BAD_REPLIES = {
    "no choices": {"choices": []},
    "a turn past any number": {"facts": [{"speaker": "Ada", "statement": "Ada lives in Lisbon", "turns": [1e999]}]},
    "a speaker of 300 letters": {"facts": [{"speaker": "A" * 300, "statement": "Ada lives in Lisbon", "turns": [0]}]},
    "a NUL in the statement": {"facts": [{"speaker": "Ada", "statement": "Ada lives\x00 in Lisbon", "turns": [0]}]},
    "a fact that is a string": {"facts": ["Ada lives in Lisbon"]},
}


@pytest.mark.parametrize("reply", list(_BAD_REPLIES))
def test_a_model_reply_that_is_not_facts_falls_back_to_the_local_consolidator(
    reply: str, store_url: str, tmp_path: Any
) -> None:
    """Every such reply falls back for its episode (an IndexError or OverflowError held the episode back instead;
    a long speaker or a NUL was stored on SQLite and failed the batch's commit on PostgreSQL, run after run)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from engram import Memory
    from engram.consolidate_llm import LLMConsolidator
    from engram.testing import FixedClock
    from tests.conftest import T0
    from tests.engram.archive_helpers import close_pending
    from tests.flows.helpers import answer_json

    body = _BAD_REPLIES[reply]

    class Model(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers["Content-Length"]))
            answer_json(self, body if "choices" in body else {"choices": [{"message": {"content": json.dumps(body)}}]})

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Model)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    memory = Memory(store_url, (tmp_path / "archive").as_uri(), clock=FixedClock(T0))
    try:
        memory.observe("acme", "s1", "Ada", "I live in Lisbon now, near the river.", T0, event_id="e1")
        store, later = memory.store, T0 + timedelta(hours=2)
        close_pending(store, "acme", later)  # routed and closed: the episode waits
        episodes, turns = store.load_episodes(store.claim_episodes(later, "t", 300, 10, "acme"))
        llm = LLMConsolidator(f"http://127.0.0.1:{server.server_address[1]}/v1", "m", retries=0)
        facts, failed = llm.distill_each(episodes, turns)
        assert failed == {} and llm.fallbacks == 1
        local = LocalConsolidator().distill(episodes, turns)
        assert list(facts["text"]) == list(local["text"]) and len(facts) > 0
    finally:
        memory.close()
        server.shutdown()
