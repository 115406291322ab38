"""Episodic -> semantic: distil facts from episodes, and decide how they change the knowledge base.

Pure functions over batches (pandas DataFrames); no I/O, no Prefect. The ``consolidate`` flow reads a batch of
episodes and their turns from the store, calls ``Consolidator.distill``, reads the current semantic items that share
a fact key with the result, calls ``plan_changes``, and hands the plan to the store, which applies it in one
transaction.

Contract (the store and the flow rely on these columns):

``turns`` (input): tenant, episode_id, position (int, order within the episode), item_id (= the event id),
    actor, text, at (tz-aware UTC datetime), tags (list[str]), metadata (dict).
``episodes`` (input): tenant, episode_id, session_id, started_at, ended_at, participants (list[str]).

``distill`` returns one row per candidate fact, columns ``FACT_COLUMNS``:
    tenant; fact_key (str, at most 64 chars: the identity of the fact across versions; two candidates with the
    same key are the same fact); text (the statement, speaker resolved, stand-alone); actor (who said it, "" if
    none); at (tz-aware UTC: when it was said); rendered (what an application puts in a prompt: carries the date
    and the speaker, e.g. "(8 May 2023) Caroline: ..."); tags (list[str]); sources (list[str] of event ids);
    salience (float in [0, 1]); content_hash (str: equal for near-duplicates, differs when the content changed).

``plan_changes(candidates, existing, now)`` compares candidates with the current (``valid_to`` is null) semantic
items, hot or archived, that share their fact keys (``existing`` has the ``SemanticItem`` columns plus ``sources``:
the item's lineage, or at least the part of it that names a candidate's source event, which is all the plan reads
and all the store hands it) and returns a ``ConsolidationPlan``:
    - ``new_items``: rows for ``semantic_items`` (all columns but ``seq``) plus ``sources``, for facts not seen before
      (version 1) and for new versions of changed facts (version n+1);
    - ``merges``: existing item_id -> {support_delta, last_seen, new sources}, for near-duplicates of a current item;
    - ``supersessions``: existing item_id -> new item_id, for facts whose content changed (the old row gets
      valid_to = the new version's valid_from and superseded_by; it is never overwritten otherwise).

How the local consolidator distils (``LocalConsolidator``):
    - a turn is split into sentences; greetings, thanks and exclamations that name no fact are dropped, and a
      question is not a fact of its own: it is kept as the context of the turn that answers it, because the answer
      ("Painting!") often means nothing without it;
    - relative dates are resolved against the day the turn was said ("yesterday" on 8 May 2023 becomes
      "yesterday (7 May 2023)", "last year" becomes "last year (2022)");
    - what is left of a turn is one candidate, rendered ``(8 May 2023) Caroline: ...`` (with the question first,
      ``(8 May 2023) Melanie: What do you paint? Caroline: ...``);
    - its ``fact_key`` and ``content_hash`` both come from the bag of stemmed content words of the speaker's
      statement, so a near-duplicate (reordered, reworded with stop words, inflected) lands on the same key and is
      merged;
    - a statement that fills a slot of its speaker ("my favourite colour is ...", "I live in ...", "I work as ...")
      is its own candidate, keyed by speaker and slot, so that a new value supersedes the old one. Nothing else is
      ever superseded: two different statements are two facts, both still true.

Merges and supersessions in ``plan_changes``:
    - candidates are taken oldest first; a candidate whose key has no current item is a new fact (version 1);
    - the same key and the same ``content_hash`` is a near-duplicate: support grows by one, ``last_seen`` moves,
      and its new source events join the item's lineage; a candidate whose sources the item already holds is a
      rerun and changes nothing;
    - the same key and another ``content_hash`` is a change: a new version whose ``valid_from`` is when the
      candidate was said, and the old version is closed. A changed candidate said before the current version
      began is older news: it does not replace the current version and stays in the episodic record only;
    - ``merges`` and ``supersessions`` name only items that existed before the batch (the store updates those
      rows); a fact created and merged or changed within one batch is written in its final state: a version
      closed within the batch is a ``new_items`` row that already has ``valid_to`` and ``superseded_by`` set.

Archived versions:
    - a fact's current version may be archived: its row in ``semantic_items`` is then a tombstone (text blanked,
      ``archived_manifest_id`` set) and the archive holds its content. The tombstone is the authority for the
      item's state, so it is an existing item like any other: it keeps its ``content_hash`` column when its text
      is blanked, and a candidate compares with that;
    - a change supersedes the archived version through its tombstone (``valid_to``, ``superseded_by``, audited as
      ``supersede``); the archived Parquet copy is never rewritten, and readers take the state from the tombstone;
    - a restatement merges into the tombstone (support, ``last_seen``, lineage), which stays archived. Rehydrating
      it instead would be the other way to avoid a second current copy, but consolidation has no access to the
      archive (the flow knows only the store), and a merge changes only columns the tombstone keeps: the archive
      and rehydrate steps need nothing new, and rehydrate later restores the content under the merged state;
    - a tombstone archived before ``content_hash`` was a column (migration 0004) has it null; the store then hands
      it to ``plan_changes`` with the hash its ``archive`` audit row recorded, and one archived before even that
      has unknown content: a candidate of its key counts as a change (see ``_stored_hash``).
"""

from __future__ import annotations

import calendar
import hashlib
import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import MAXYEAR, MINYEAR, UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Protocol, runtime_checkable

import pandas as pd

from engram.errors import failure_reason
from engram.frames import records
from engram.text import render_date

_log = logging.getLogger("engram.consolidate")

FACT_COLUMNS = [
    "tenant",
    "fact_key",
    "text",
    "actor",
    "at",
    "rendered",
    "tags",
    "sources",
    "salience",
    "content_hash",
]

# Columns of a ``semantic_items`` row as ``plan_changes`` writes it (``seq`` is the store's), plus ``sources``.
ITEM_COLUMNS = [
    "tenant",
    "item_id",
    "fact_key",
    "version",
    "text",
    "rendered",
    "actor",
    "tags",
    "support_count",
    "first_seen",
    "last_seen",
    "last_accessed",
    "salience",
    "valid_from",
    "valid_to",
    "superseded_by",
    "embedding",
    "created_run_id",
    "archived_manifest_id",
    "content_hash",
    "sources",
]


@runtime_checkable
class Consolidator(Protocol):
    """Turns episodes into candidate facts. The local one is the default; an LLM one can be swapped in."""

    name: str

    def distill(self, episodes: pd.DataFrame, turns: pd.DataFrame) -> pd.DataFrame:
        """Candidate facts (columns ``FACT_COLUMNS``) from a batch of episodes and their turns."""
        ...


@dataclass
class ConsolidationPlan:
    """What one consolidation batch changes in the semantic layer."""

    new_items: list[dict[str, Any]] = field(default_factory=list)
    merges: dict[str, dict[str, Any]] = field(default_factory=dict)
    supersessions: dict[str, str] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return {
            "new": len(self.new_items) - len(self.supersessions),
            "merged": len(self.merges),
            "superseded": len(self.supersessions),
        }


# -- words ------------------------------------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])|(?<=[.!?])\s*(?=\[shares )")
_BRACKETED = re.compile(r"\[[^\]]*\]")

# Function words: they carry no fact of their own.
_STOP_WORDS_TEXT = """
    a about above after again against all also am an and any are aren't as at be because been before being below
    between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during each few
    for from further get gets got had hadn't has hasn't have haven't having he he'd he'll he's her here here's hers
    herself him himself his how how's i i'd i'll i'm i've if in into is isn't it it's its itself just let's me more
    most mustn't my myself no nor not now of off on once only or other ought our ours ourselves out over own same
    shan't she she'd she'll she's should shouldn't so some such than that that's the their theirs them themselves
    then there there's these they they'd they'll they're they've this those through to too under until up very was
    wasn't we we'd we'll we're we've were weren't what what's when when's where where's which while who who's whom
    why why's will with won't would wouldn't you you'd you'll you're you've your yours yourself yourselves yeah yes
    yep yup ok okay oh um uh hmm well gonna wanna kinda sorta lot lots thing things stuff one really pretty much
    still even ever always something anything everything
"""
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())

# Words of small talk: reactions, greetings, thanks, encouragement. A sentence made only of these (and function
# words, and the names of the people talking) tells nothing worth remembering.
_SMALL_TALK_WORDS_TEXT = """
    hey hi hello bye goodbye thanks thank thx appreciate welcome wow whoa cool awesome amazing great nice good glad
    happy sweet lovely wonderful fantastic incredible impressive beautiful gorgeous stunning fun funny exciting
    excited sounds sound seems seem looks look like love loved totally definitely absolutely agree agreed sure true
    right exactly indeed congrats congratulations proud keep care talk soon later catch chat see hear heard know
    mean means lol haha hahaha omg yay aww awww man dude buddy friend friends pal hope hoping wish luck best cheers
    take easy tell share sharing kind words support supportive meant thing way inspiring inspired inspire
    inspirational super cute feel feeling feels guys bud bro sis mate happened happen new anything going doing been
    up
"""
SMALL_TALK_WORDS = frozenset(_SMALL_TALK_WORDS_TEXT.split())

# Fewer content words than this and a sentence is small talk. One lets "Nice weather." through, three drops
# "I adopted Rex." (adopted, rex): two keeps the short facts and drops the reactions.
MIN_CONTENT_WORDS = 2

_RELATIVE_WORDS_TEXT = """
    yesterday today tonight tomorrow ago last next week weekend month year monday tuesday wednesday thursday friday
    saturday sunday
"""
_RELATIVE_WORDS = frozenset(_RELATIVE_WORDS_TEXT.split())


_STEMMERS = threading.local()


def _stemmer() -> Any:
    """This thread's English stemmer: building one per call cost more than the stemming, and a Stemmer object is
    not safe to share between threads."""
    stemmer = getattr(_STEMMERS, "stemmer", None)
    if stemmer is None:
        import Stemmer

        stemmer = _STEMMERS.stemmer = Stemmer.Stemmer("english")
    return stemmer


def _tokens(text: str) -> list[str]:
    text = text.replace("’", "'")
    if text.isascii():
        # Lowering ASCII text first finds the same words (the pattern is ASCII) in one call instead of one per word;
        # lowering other text can make ASCII letters of what were none ("K", the kelvin sign, becomes "k").
        return _WORD.findall(text.lower())
    return [w.lower() for w in _WORD.findall(text)]


@lru_cache(maxsize=4_096)
def _vocatives(low_names: tuple[str, ...]) -> frozenset[str]:
    """Every word that names a speaker: each name, and each of its prefixes of three letters or more ("mel" for
    "melanie")."""
    return frozenset(n[:k] for n in low_names for k in range(min(3, len(n)), len(n) + 1))


# A token that is a function word or small talk carries no fact; one set, so each token costs one lookup.
_NOT_CONTENT = STOP_WORDS | SMALL_TALK_WORDS


def content_words(text: str, names: Iterable[str] = ()) -> list[str]:
    """The words of ``text`` that can carry a fact: not function words, not small talk, not the speakers' names."""
    return list(_content_words(text, tuple(names)))


@lru_cache(maxsize=65_536)
def _content_words(text: str, names: tuple[str, ...]) -> tuple[str, ...]:
    # Memoised: a sentence is examined several times (informative? its signature, its hash, its salience).
    vocatives = _vocatives(tuple(n.lower() for n in names if n))
    return tuple(t for t in _tokens(text) if len(t) > 1 and t not in _NOT_CONTENT and t not in vocatives)


def split_statements(text: str) -> list[str]:
    """The sentences of a turn, each stripped; a shared photo's ``[shares ...]`` caption is a sentence of its own."""
    parts = _SENTENCE_END.split(text.strip())
    return [p.strip() for p in parts if p and p.strip()]


def is_question(sentence: str) -> bool:
    """A sentence that asks rather than tells."""
    return sentence.rstrip().endswith("?")


def is_informative(sentence: str, names: Iterable[str] = ()) -> bool:
    """Whether a sentence states something worth remembering: it has at least two content words, or one content
    word and a date, or it is a shared photo's caption."""
    if sentence.startswith("[shares "):
        return True
    words = content_words(sentence, names)
    if len(words) >= MIN_CONTENT_WORDS:
        return True
    return len(words) == 1 and bool(_RELATIVE_WORDS.intersection(_tokens(sentence)) or re.search(r"\d", sentence))


# -- dates ------------------------------------------------------------------------------------------------------

_NUMBERS = {
    "a": 1,
    "an": 1,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "couple of": 2,
    "a couple of": 2,
    "few": None,
    "a few": None,
    "several": None,
}
_DAYS = [d.lower() for d in calendar.day_name]
_NUMBER_WORDS = "|".join(sorted((re.escape(k) for k in _NUMBERS), key=len, reverse=True))
_RELATIVE = re.compile(
    r"\b(?:"
    r"(?P<yesterday>yesterday)"
    r"|(?P<tomorrow>tomorrow)"
    r"|(?P<dby>the day before yesterday)"
    r"|(?P<ago>(?P<n>\d+|" + _NUMBER_WORDS + r")\s+(?P<unit>day|week|month|year)s?\s+ago)"
    r"|(?P<rel>(?P<dir>last|next|this|past)\s+(?P<what>week(?:end)?|month|year|summer|winter|spring|fall|autumn|"
    + "|".join(_DAYS)
    + r"))"
    r")\b",
    re.I,
)
_SEASON_MONTH = {"spring": 4, "summer": 7, "fall": 10, "autumn": 10, "winter": 1}


def _shift_months(at: datetime, months: int) -> datetime:
    index = at.year * 12 + at.month - 1 + months
    return at.replace(year=index // 12, month=index % 12 + 1, day=1)


def _month_year(at: datetime) -> str:
    return f"{at.strftime('%B')} {at.year}"


def _folded(word: str) -> str:
    """A matched word in the ASCII letters ``re.I`` equated it with: "LAST", "la\u017ft" (a long s) and "th\u0130s" (a
    dotted capital I) are "last" and "this". ``lower`` leaves the long s and the dotless i as they are."""
    return word.casefold().replace("\u0131", "i").replace("\u0307", "")


def _year(year: int) -> str | None:
    """A year as a date names it, or None past the years a date can hold (1 to 9999)."""
    return str(year) if MINYEAR <= year <= MAXYEAR else None


def _resolve(m: re.Match[str], at: datetime) -> str | None:
    """The absolute date a relative expression names, said on ``at``; None when it names none."""
    if m.group("yesterday"):
        return render_date(at - timedelta(days=1))
    if m.group("tomorrow"):
        return render_date(at + timedelta(days=1))
    if m.group("dby"):
        return render_date(at - timedelta(days=2))
    if m.group("ago"):
        raw = _folded(m.group("n"))
        n = int(raw) if raw.isdigit() else _NUMBERS.get(raw)
        unit = _folded(m.group("unit"))
        if n is None:
            return f"a few {unit}s before {render_date(at)}"
        if unit == "day":
            return render_date(at - timedelta(days=n))
        if unit == "week":
            return f"the week of {render_date(at - timedelta(weeks=n))}"
        if unit == "month":
            return _month_year(_shift_months(at, -n))
        return _year(at.year - n)
    direction = _folded(m.group("dir"))
    what = _folded(m.group("what"))
    step = {"last": -1, "past": -1, "next": 1, "this": 0}[direction]
    if what == "year":
        return _year(at.year + step)
    if what == "month":
        return _month_year(_shift_months(at, step))
    if what in ("week", "weekend"):
        if step == 0:
            return None
        return f"the {what} {'before' if step < 0 else 'after'} {render_date(at)}"
    if what in _SEASON_MONTH:
        month = _SEASON_MONTH[what]
        year = at.year + step if step else at.year
        # "last summer" said in December is this year's summer; said in May it is last year's.
        if step < 0 and month < at.month and what != "winter":
            year = at.year
        if step > 0 and month > at.month:
            year = at.year
        named = _year(year)
        return f"{what} {named}" if named else None
    weekday = _DAYS.index(what)
    if step < 0:
        back = (at.weekday() - weekday) % 7 or 7
        return render_date(at - timedelta(days=back))
    if step > 0:
        ahead = (weekday - at.weekday()) % 7 or 7
        return render_date(at + timedelta(days=ahead))
    return None


def resolve_dates(text: str, at: datetime) -> str:
    """``text`` with each relative date followed by the absolute one it names, as said on ``at``.

    Example:
        >>> resolve_dates("I went yesterday", datetime(2023, 5, 8))
        'I went yesterday (7 May 2023)'
    """
    return _annotated(text, at) if _may_name_a_relative_date(text) else text


def _annotated(text: str, at: datetime) -> str:
    if isinstance(at, pd.Timestamp):
        # A Timestamp counts in pandas' own calendar, which cannot hold or print a date past its range.
        at = at.to_pydatetime(warn=False)

    def annotate(m: re.Match[str]) -> str:
        try:
            absolute = _resolve(m, at)
        except (OverflowError, ValueError):  # "800000 days ago", "tomorrow" on 31 December 9999: no date to name
            absolute = None
        return f"{m.group(0)} ({absolute})" if absolute else m.group(0)

    return _RELATIVE.sub(annotate, text)


# Every relative date ``_RELATIVE`` finds holds one of these words. Case-folded text holds it too, however the match's
# letters were cased: case folding maps each letter that ``re.I`` equates with an ASCII one to that letter, but for
# the dotless i and the dotted capital I, whose folds are looked for apart.
_RELATIVE_DATE_HINTS = ("yesterday", "tomorrow", "ago", "last", "next", "this", "past", "\u0131", "\u0307")


def _may_name_a_relative_date(text: str) -> bool:
    """Whether ``text`` may hold a relative date: a substring test, a tenth of the regex's cost, that rules out
    most turns before the regex runs."""
    folded = text.casefold()
    return any(word in folded for word in _RELATIVE_DATE_HINTS)


# -- slots: facts that change --------------------------------------------------------------------------------------

# A first-person statement that fills a slot of its speaker: a later value for the same slot replaces the earlier.
_SLOTS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^my (?:all[- ]time )?favou?rite (?P<slot>[a-z]+(?: [a-z]+)?) (?:is|are) (?P<value>.+)$", re.I), ""),
    (re.compile(r"^i (?:now )?live in (?P<value>.+)$", re.I), "home"),
    (re.compile(r"^i(?:'m| am) (?:now )?living in (?P<value>.+)$", re.I), "home"),
    (re.compile(r"^i (?:now )?work (?:as|at) (?P<value>.+)$", re.I), "work"),
    (re.compile(r"^my name is (?P<value>.+)$", re.I), "name"),
    (re.compile(r"^i(?:'m| am) (?P<value>\d+) years? old$", re.I), "age"),
    (re.compile(r"^my (?P<slot>[a-z]+)(?:'s|s') names? (?:is|are) (?P<value>.+)$", re.I), "name of"),
]


def slot_of(sentence: str) -> tuple[str, str] | None:
    """(slot, value) when a sentence fills one of its speaker's slots, e.g. ("favorite color", "blue")."""
    plain = sentence.strip().rstrip(".!").strip()
    for pattern, label in _SLOTS:
        m = pattern.match(plain)
        if not m:
            continue
        named = m.groupdict().get("slot")
        if label == "":
            slot = f"favorite {_folded(named)}"
        elif named:
            slot = f"{label} {_folded(named)}"
        else:
            slot = label
        value = m.group("value").strip()
        # A value with a clause of its own ("Paris, and I love it") says more than the slot: not a pure slot fact.
        if len(value.split()) > 6 or re.search(r"[,;]| and | but | because ", value):
            return None
        return slot, value
    return None


# -- keys -------------------------------------------------------------------------------------------------------


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def signature(text: str, names: Iterable[str] = ()) -> str:
    """The near-duplicate signature of a statement: its stemmed content words, sorted and deduplicated."""
    words = content_words(_BRACKETED.sub(lambda m: m.group(0)[1:-1], text), names)
    stems = sorted(set(_stemmer().stemWords(words)))
    return " ".join(stems) if stems else " ".join(sorted(set(_tokens(text))))


def fact_key(tenant: str, actor: str, identity: str) -> str:
    """The identity of a fact across versions (64 characters at most)."""
    return "fact-" + _digest(tenant, actor.strip().lower(), identity)[:40]


def content_hash(text: str, actor: str = "") -> str:
    """Equal for near-duplicates, different when the content changed; computed from an item's ``text`` alone, so a
    hot item stored without one (before ``content_hash`` was a column) can be compared with a candidate."""
    return _digest(signature(text, [actor] if actor else []))[:32]


# -- distilling -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Statement:
    text: str
    actor: str
    at: datetime
    identity: str
    context: str
    source: str
    tags: tuple[str, ...]
    salience: float


def _salience(words: Sequence[str], sentence_count: int) -> float:
    """How much a statement says, in [0, 1]: more distinct content words, up to a point."""
    return round(min(1.0, len(set(words)) / 12.0) * (0.8 + 0.2 * min(sentence_count, 3) / 3), 3)


def _tags(value: Any) -> tuple[str, ...]:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ()
    return tuple(str(t) for t in value)


def _turn_statements(turns: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[_Statement]:
    """The statements of one episode's turns (row dicts), in order, each with the question it answers."""
    out: list[_Statement] = []
    previous_actor = ""
    previous_questions: list[str] = []
    for turn in sorted(turns, key=lambda t: t["position"]):
        actor = str(turn["actor"] or "")
        at = turn["at"]
        sentences = split_statements(str(turn["text"] or ""))
        asked = previous_questions if previous_actor != actor else []
        context = f"{previous_actor}: {asked[-1]} " if asked else ""
        facts: list[str] = []
        slots: list[tuple[str, str, str]] = []
        questions: list[str] = []
        for sentence in sentences:
            if is_question(sentence):
                if len(content_words(sentence, names)) >= 1:
                    questions.append(sentence)
                continue
            if not is_informative(sentence, names):
                continue
            slot = slot_of(sentence)
            if slot is not None:
                slots.append((sentence, *slot))
            else:
                facts.append(sentence)
        if not facts and not slots and asked:
            # "Yes, last weekend!" says nothing alone, but with the question it answers it is a fact.
            facts = [s for s in sentences if not is_question(s)]
        tags = _tags(turn.get("tags", ()))
        source = str(turn["item_id"])
        if facts:
            said = resolve_dates(" ".join(facts), at)
            words = content_words(said, names)
            out.append(
                _Statement(
                    text=said,
                    actor=actor,
                    at=at,
                    identity="statement:" + signature(context + said, names),
                    context=context,
                    source=source,
                    tags=tags,
                    salience=_salience(words, len(facts)),
                )
            )
        for sentence, slot, _value in slots:
            said = resolve_dates(sentence, at)
            out.append(
                _Statement(
                    text=said,
                    actor=actor,
                    at=at,
                    identity="slot:" + slot,
                    context="",
                    source=source,
                    tags=tags,
                    salience=_salience(content_words(said, names), 1),
                )
            )
        previous_actor = actor
        previous_questions = questions
    return out


class LocalConsolidator:
    """The default consolidator: extractive, offline, no model.

    Example:
        >>> facts = LocalConsolidator().distill(episodes, turns)  # doctest: +SKIP
        >>> facts.loc[0, "rendered"]  # doctest: +SKIP
        '(8 May 2023) Caroline: I went to a support group yesterday (7 May 2023).'
    """

    name = "local"

    def distill(self, episodes: pd.DataFrame, turns: pd.DataFrame) -> pd.DataFrame:
        """Candidate facts (columns ``FACT_COLUMNS``) from a batch of episodes and their turns, oldest first."""
        rows: list[dict[str, Any]] = []
        if turns.empty:
            return pd.DataFrame(columns=FACT_COLUMNS)
        participants: dict[tuple[str, str], list[str]] = {}
        if not episodes.empty:
            for ep in episodes.itertuples(index=False):
                participants[(ep.tenant, ep.episode_id)] = list(ep.participants or [])
        # Plain dicts grouped by hand: a pandas group and itertuples per episode cost more than the distilling.
        by_episode: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for turn in records(turns):
            by_episode.setdefault((turn["tenant"], turn["episode_id"]), []).append(turn)
        for (tenant, episode_id), episode_turns in by_episode.items():
            names = participants.get((tenant, episode_id)) or sorted(
                {str(t["actor"]) for t in episode_turns if t["actor"]}
            )
            for s in _turn_statements(episode_turns, names):
                text = f"{s.context}{s.actor}: {s.text}" if s.actor else f"{s.context}{s.text}"
                rows.append(
                    {
                        "tenant": tenant,
                        "fact_key": fact_key(tenant, s.actor, s.identity),
                        "text": text,
                        "actor": s.actor,
                        "at": s.at,
                        "rendered": f"({render_date(s.at)}) {text}",
                        "tags": list(s.tags),
                        "sources": [s.source],
                        "salience": s.salience,
                        "content_hash": content_hash(text, s.actor),
                    }
                )
        facts = pd.DataFrame(rows, columns=FACT_COLUMNS)
        return facts.sort_values("at", kind="stable").reset_index(drop=True)


def distill_isolating(
    consolidator: Consolidator, episodes: pd.DataFrame, turns: pd.DataFrame
) -> tuple[pd.DataFrame, dict[tuple[str, str], str]]:
    """Candidate facts from a batch, and the episodes the consolidator failed on with why, so that one episode it
    cannot handle holds back that episode alone and not the batch around it.

    A consolidator that works episode by episode anyway (it has ``distill_each(episodes, turns) -> (facts,
    failed)``, as the chat-model one does) sets its failures apart itself, in one pass: no episode is asked twice.
    Its ``distill_each`` is then used instead of its ``distill``: a subclass that changes one changes both.

    Any other is asked for the batch whole. Only when that raises is the batch distilled again one episode at a
    time, in (tenant, episode_id) order as the turns are loaded, and the episodes that raise alone are returned as
    ``(tenant, episode_id) -> "ErrorType: message"``. When every episode fails, every one is returned: whether the
    consolidator is broken or the batch was its one bad episode is for the caller to weigh (the flows stop claiming
    after a batch of several that failed whole).
    """
    each = getattr(consolidator, "distill_each", None)
    if callable(each):
        return each(episodes, turns)
    try:
        return consolidator.distill(episodes, turns), {}
    except Exception as whole:
        if episodes.empty:
            raise
        failed: dict[tuple[str, str], str] = {}
        frames: list[pd.DataFrame] = []
        episode_rows = {k: i for i, k in enumerate(zip(episodes["tenant"], episodes["episode_id"], strict=True))}
        turn_rows: dict[tuple[str, str], list[int]] = {}
        if not turns.empty:
            for i, key in enumerate(zip(turns["tenant"], turns["episode_id"], strict=True)):
                turn_rows.setdefault(key, []).append(i)
        for key in sorted(episode_rows):
            one = episodes.iloc[[episode_rows[key]]].reset_index(drop=True)
            its_turns = turns.iloc[turn_rows.get(key, [])].reset_index(drop=True)
            try:
                frames.append(consolidator.distill(one, its_turns))
            except Exception as exc:  # noqa: BLE001 - the episode's own failure, kept with it as its reason
                failed[key] = failure_reason(exc)
        if not failed:
            _log.warning(
                "a batch of %d episodes failed whole (%s: %s) but each of them alone did not; distilled one by one",
                len(episode_rows),
                type(whole).__name__,
                whole,
            )
        kept = [f for f in frames if len(f)]
        facts = pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=FACT_COLUMNS)
        return facts.sort_values("at", kind="stable").reset_index(drop=True), failed


def summarize_episode(turns: pd.DataFrame | Sequence[Mapping[str, Any]], max_sentences: int = 3) -> str:
    """An extractive summary of one episode's turns: its most informative sentences, one per line.

    A sentence scores by how many of the episode's recurring content words it holds (a topic the speakers come back
    to is what the episode was about), per word, so long rambling sentences do not win by length alone. The chosen
    sentences keep their order and their speaker: ``Caroline: I went to a support group yesterday (7 May 2023).``
    """
    rows = records(turns) if isinstance(turns, pd.DataFrame) else list(turns)
    if not rows or max_sentences <= 0:
        return ""
    names = sorted({str(r["actor"]) for r in rows if r["actor"]})
    candidates: list[tuple[int, int, str, list[str]]] = []
    for turn in sorted(rows, key=lambda r: r["position"]):
        for i, sentence in enumerate(split_statements(str(turn["text"] or ""))):
            if is_question(sentence) or not is_informative(sentence, names):
                continue
            said = resolve_dates(sentence, turn["at"])
            line = f"{turn['actor']}: {said}" if turn["actor"] else said
            stems = _stemmer().stemWords(content_words(sentence, names))
            candidates.append((int(turn["position"]), i, line, stems))
    if not candidates:
        return ""
    frequency: dict[str, int] = {}
    for *_, stems in candidates:
        for s in set(stems):
            frequency[s] = frequency.get(s, 0) + 1

    def score(stems: list[str]) -> float:
        return sum(frequency[s] for s in set(stems)) / (len(stems) + 2) ** 0.5

    best = sorted(range(len(candidates)), key=lambda k: (-score(candidates[k][3]), k))[:max_sentences]
    return "\n".join(candidates[k][2] for k in sorted(best))


# -- planning ---------------------------------------------------------------------------------------------------


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _item_id(tenant: str, key: str, version: int, at: datetime) -> str:
    """A fact version's id: when it was said (microseconds since 1970 as 15 hex digits, which covers every year
    engram accepts), then 32 hex digits of a digest of tenant, fact key and version.

    The same candidates give the same ids, so replanning a batch gives the same plan. The time in front orders a
    tenant's new fact versions as its events are ordered: the rows a new version adds (``semantic_items``,
    ``lineage``, ``transitions``, each keyed by item) land next to those of the versions said just before it,
    mostly at the end of the tenant's part of each key, where a bare digest put each at a random place in a B-tree
    that grows with the store, and its insert cost grew with it (``bench/index_growth.py``). Rows written later
    about an existing version (a merge, a supersession, its archival) go where that version's rows are.
    """
    if isinstance(at, pd.Timestamp):
        # Datetime arithmetic on a Timestamp goes through pandas' Timedelta, ten times the cost of the rest of the id;
        # a Timestamp's nanoseconds below a microsecond are dropped here as the floor division drops them.
        at = at.to_pydatetime(warn=False)
    when = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    micros = max(0, (when - _EPOCH) // _MICROSECOND)
    return f"sem-{micros:015x}-{_digest(tenant, key, str(version))[:32]}"


def _list(value: Any) -> list[str]:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return []
    return [str(v) for v in value]


def _stored_hash(item: Mapping[str, Any]) -> str | None:
    """The content hash of an existing item: its ``content_hash``, else its text's; None when neither is known.

    An archived item's text is blank in its tombstone: without a given hash its content is unknown (None), and a
    candidate of the same key counts as a change, never as a near-duplicate. Superseding a version with its own
    words again is harmless (one current version, every source kept); merging a changed value into it would lose
    the change from the facts.
    """
    given = item.get("content_hash")
    if isinstance(given, str) and given:
        return given
    archived = item.get("archived_manifest_id")
    if isinstance(archived, str) and archived:
        return None
    return content_hash(str(item["text"]), str(item.get("actor") or ""))


def plan_changes(candidates: pd.DataFrame, existing: pd.DataFrame, now: datetime) -> ConsolidationPlan:
    """Decide, for each candidate fact, whether it is new, a near-duplicate to merge, or a change to version.

    Args:
        candidates: rows with ``FACT_COLUMNS`` (what ``Consolidator.distill`` returns).
        existing: the current semantic items (``valid_to`` null) that share a fact key with a candidate, with the
            ``SemanticItem`` columns plus ``sources`` (at least the item's source events that are also a
            candidate's). Archived ones are among them (as their tombstones, text blank, ``content_hash`` kept):
            see "Archived versions" in the module's docstring. Of a closed row (``valid_to`` set), only ``tenant``,
            ``fact_key`` and ``version`` are read: a key's next version follows the highest stored, as when its
            current version was forgotten and an older one remains.
        now: when the plan is made; not used to date facts (a fact is dated by when it was said), kept so that a
            plan is reproducible for a given ``as_of``.

    Returns:
        A ``ConsolidationPlan``; item ids derive from tenant, fact key, version and when the version was said
        (``_item_id``), so replanning the same batch gives the same plan, and replanning it after it was applied
        gives an empty one.

    Example:
        >>> plan = plan_changes(LocalConsolidator().distill(episodes, turns), existing, now)  # doctest: +SKIP
        >>> plan.counts  # doctest: +SKIP
        {'new': 12, 'merged': 1, 'superseded': 0}
    """
    del now  # facts are dated by when they were said; see the docstring
    plan = ConsolidationPlan()
    current: dict[tuple[str, str], dict[str, Any]] = {}
    existing_ids: set[str] = set()
    # The highest version stored of each key, closed ones included: a fact whose current version was forgotten
    # continues after its last version rather than taking a number (and an id) an older version still has.
    top: dict[tuple[str, str], int] = {}
    if existing is not None and not existing.empty:
        for tenant, key, version in zip(existing["tenant"], existing["fact_key"], existing["version"], strict=True):
            top[(tenant, key)] = max(top.get((tenant, key), 0), int(version))
        live = existing[existing["valid_to"].isna()] if "valid_to" in existing.columns else existing
        for row in records(live.sort_values("version")):
            item = dict(row)
            item["sources"] = _list(item.get("sources"))
            item["_hash"] = _stored_hash(item)
            current[(item["tenant"], item["fact_key"])] = item
            existing_ids.add(item["item_id"])
    if candidates is None or candidates.empty:
        return plan
    pending: dict[str, dict[str, Any]] = {}
    for cand in records(candidates.sort_values("at", kind="stable")):
        tenant, key = cand["tenant"], cand["fact_key"]
        sources = _list(cand["sources"])
        item = current.get((tenant, key))
        if item is None:
            new = _new_item(cand, version=top.get((tenant, key), 0) + 1)
            current[(tenant, key)] = new
            plan.new_items.append(new)
            continue
        held = set(item["sources"])
        fresh = [s for s in sources if s not in held]
        if not fresh:
            continue  # a rerun: the current version already holds this candidate's sources
        if item["_hash"] is not None and item["_hash"] == cand["content_hash"]:
            item["sources"] = [*item["sources"], *fresh]
            item["support_count"] = int(item.get("support_count") or 1) + 1
            item["last_seen"] = max(item["last_seen"], cand["at"])
            if item["item_id"] in existing_ids:
                merge = pending.setdefault(item["item_id"], {"support_delta": 0, "sources": []})
                merge["support_delta"] += 1
                merge["last_seen"] = item["last_seen"]
                merge["sources"] = [*merge["sources"], *fresh]
            continue
        if cand["at"] < max(item["valid_from"], item["last_seen"]):
            # Older news than the current version, which began or was said again after it (an episode closed or
            # consolidated late): it stays in the episodic record, not in the facts. Else which of two statements
            # is current would depend on how the episodes fell into runs.
            continue
        new = _new_item(cand, version=int(item["version"]) + 1)
        item["valid_to"] = new["valid_from"]
        item["superseded_by"] = new["item_id"]
        if item["item_id"] in existing_ids:
            plan.supersessions[item["item_id"]] = new["item_id"]
        current[(tenant, key)] = new
        plan.new_items.append(new)
    plan.merges = pending
    for item in plan.new_items:
        item.pop("_hash", None)
    return plan


def _new_item(cand: dict[str, Any], version: int) -> dict[str, Any]:
    at = cand["at"]
    return {
        "tenant": cand["tenant"],
        "item_id": _item_id(cand["tenant"], cand["fact_key"], version, at),
        "fact_key": cand["fact_key"],
        "version": version,
        "text": cand["text"],
        "rendered": cand["rendered"],
        "actor": cand["actor"] or "",
        "tags": _list(cand["tags"]),
        "support_count": 1,
        "first_seen": at,
        "last_seen": at,
        "last_accessed": None,
        "salience": float(cand["salience"]),
        "valid_from": at,
        "valid_to": None,
        "superseded_by": None,
        "embedding": None,
        "created_run_id": None,
        "archived_manifest_id": None,
        "content_hash": cand["content_hash"],
        "sources": _list(cand["sources"]),
        "_hash": cand["content_hash"],
    }
