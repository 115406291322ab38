"""A synthetic, streaming, seeded workload of conversation events for the benchmarks.

What it models:
- many tenants, whose activity is itself skewed (a few busy tenants, a long tail of quiet ones);
- sessions of 6-40 turns between a tenant's user and an assistant, minutes apart within a session, sessions spread
  over months (``span_days``) in time order;
- a topic per session drawn from a Zipf distribution over ``topics`` topics (rank ``r`` has weight ``1 / r**s``):
  each topic has its own words, so a few topics dominate the vocabulary as they do in real chat logs;
- facts about the user that change over time: "I live in X" (a move every few sessions), "I work as X",
  "my favourite colour is X"; and facts restated unchanged across sessions ("I have a dog named X");
- sizes from 10^4 to 10^7 events, produced as a generator of bounded batches: nothing but one batch and a small state
  per tenant is ever in memory, and the same seed gives the same events, batch for batch.

    python bench/workload.py --events 100000 --stats
"""

from __future__ import annotations

import argparse
import bisect
import json
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import Any

START = datetime(2024, 1, 1, tzinfo=UTC)
CITIES = [
    "Lisbon",
    "Paris",
    "Berlin",
    "Madrid",
    "Rome",
    "Vienna",
    "Prague",
    "Oslo",
    "Dublin",
    "Warsaw",
    "Athens",
    "Zurich",
    "Porto",
    "Seville",
    "Munich",
    "Lyon",
    "Krakow",
    "Bergen",
    "Tallinn",
    "Riga",
]
JOBS = [
    "nurse",
    "teacher",
    "carpenter",
    "designer",
    "baker",
    "pilot",
    "chemist",
    "lawyer",
    "engineer",
    "librarian",
    "plumber",
    "chef",
]
COLOURS = ["blue", "green", "red", "yellow", "purple", "orange", "teal", "black", "white", "grey"]
PETS = ["Rex", "Luna", "Max", "Bella", "Milo", "Coco", "Nala", "Oscar", "Kiki", "Bruno"]
USERS = [
    "Caroline",
    "Melanie",
    "Jon",
    "Gina",
    "Ravi",
    "Ana",
    "Tomas",
    "Sofia",
    "Ken",
    "Mira",
    "Omar",
    "Lena",
    "Piet",
    "Ines",
    "Yusuf",
    "Hana",
    "Noor",
    "Ivan",
    "Eva",
    "Luis",
]
FILLER = [
    "the",
    "a",
    "to",
    "and",
    "of",
    "I",
    "you",
    "it",
    "in",
    "that",
    "is",
    "was",
    "for",
    "on",
    "my",
    "with",
    "we",
    "have",
    "this",
    "be",
    "at",
    "so",
    "not",
    "but",
    "are",
    "they",
    "do",
    "just",
    "like",
    "what",
    "about",
    "really",
    "think",
    "know",
    "today",
    "week",
    "maybe",
    "also",
    "then",
    "when",
    "there",
]
SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ra",
    "ne",
    "to",
    "su",
    "vi",
    "pa",
    "del",
    "mon",
    "tar",
    "bel",
    "cor",
    "fin",
    "gor",
    "hal",
    "jun",
    "kel",
    "lum",
]
STATEMENT_RATE = 0.08  # share of user turns that state (or restate, or change) a fact about the user
MOVE_RATE = 0.25  # chance that a stated "I live in ..." names a new city rather than the current one


def zipf_weights(n: int, s: float) -> list[float]:
    """Cumulative Zipf weights of ranks 1..n (rank r has weight 1 / r**s)."""
    return list(accumulate(1.0 / (r**s) for r in range(1, n + 1)))


def topic_words(topics: int, words_per_topic: int, seed: int) -> list[list[str]]:
    """A vocabulary per topic: made-up, pronounceable, distinct words (so topic frequencies can be counted)."""
    rng = random.Random(seed ^ 0x5EED)
    seen: set[str] = set()
    out: list[list[str]] = []
    for _ in range(topics):
        words: list[str] = []
        while len(words) < words_per_topic:
            w = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
            if w not in seen:
                seen.add(w)
                words.append(w)
        out.append(words)
    return out


@dataclass
class _UserState:
    """What a tenant's user has said about themselves so far (the current value of each changing fact)."""

    name: str
    home: str
    job: str
    colour: str
    pet: str
    sessions: int = 0
    history: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Workload:
    """The parameters of one synthetic workload; iterate ``batches()`` to get its events.

    Attributes:
        events: how many events in total.
        tenants: how many tenants (activity per tenant is Zipf-skewed with exponent ``tenant_skew``).
        seed: the same seed gives the same events.
        batch_size: the most events in one yielded batch.
        topics: how many topics; session topics follow Zipf(``topic_skew``).
        span_days: the time the events cover.
    """

    events: int
    tenants: int = 100
    seed: int = 7
    batch_size: int = 5_000
    topics: int = 500
    topic_skew: float = 1.1
    tenant_skew: float = 0.8
    words_per_topic: int = 12
    span_days: int = 180
    min_turns: int = 6
    max_turns: int = 40

    @property
    def sessions_estimate(self) -> int:
        return max(1, self.events // ((self.min_turns + self.max_turns) // 2))

    def batches(self) -> Iterator[list[dict[str, Any]]]:
        """Lists of at most ``batch_size`` event rows (the fields of ``Memory.observe``), in session order."""
        batch: list[dict[str, Any]] = []
        for row in self.rows():
            batch.append(row)
            if len(batch) >= self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every event row, one at a time."""
        rng = random.Random(self.seed)
        vocab = topic_words(self.topics, self.words_per_topic, self.seed)
        topic_cdf = zipf_weights(self.topics, self.topic_skew)
        tenant_cdf = zipf_weights(self.tenants, self.tenant_skew)
        width = len(str(self.tenants - 1))
        users: dict[int, _UserState] = {}
        # Sessions start in time order across the whole span; the gap between starts is what spreads
        # ``sessions_estimate`` sessions over ``span_days``.
        gap = timedelta(days=self.span_days) / self.sessions_estimate
        produced = 0
        session_no = 0
        while produced < self.events:
            t = bisect.bisect_left(tenant_cdf, rng.random() * tenant_cdf[-1])
            tenant = f"tenant-{t:0{width}d}"
            user = users.get(t)
            if user is None:
                user = users[t] = _UserState(
                    name=rng.choice(USERS),
                    home=rng.choice(CITIES),
                    job=rng.choice(JOBS),
                    colour=rng.choice(COLOURS),
                    pet=rng.choice(PETS),
                )
            user.sessions += 1
            topic = bisect.bisect_left(topic_cdf, rng.random() * topic_cdf[-1])
            words = vocab[topic]
            start = START + gap * session_no + timedelta(seconds=rng.randrange(int(gap.total_seconds()) + 1))
            session = f"{tenant}-s{session_no:08d}"
            session_no += 1
            turns = min(rng.randint(self.min_turns, self.max_turns), self.events - produced)
            at = start
            for turn in range(turns):
                speaker = user.name if turn % 2 == 0 else "assistant"
                if speaker == user.name and rng.random() < STATEMENT_RATE:
                    text = self._statement(rng, user)
                else:
                    text = self._chatter(rng, words)
                yield {
                    "tenant": tenant,
                    "session": session,
                    "actor": speaker,
                    "text": text,
                    "at": at,
                    "event_id": f"{session}-{turn:03d}",
                    "metadata": {"tags": [f"topic-{topic}"]},
                }
                at += timedelta(seconds=rng.randint(20, 240))
            produced += turns

    @staticmethod
    def _chatter(rng: random.Random, words: list[str]) -> str:
        """A turn about the session's topic: topic words mixed with common words, 4-60 words (median about 14)."""
        n = max(4, min(60, int(rng.lognormvariate(2.6, 0.5))))
        return " ".join(rng.choice(words) if rng.random() < 0.4 else rng.choice(FILLER) for _ in range(n)) + "."

    @staticmethod
    def _statement(rng: random.Random, user: _UserState) -> str:
        """A fact about the user: restated as it stands, or changed (a move, a new job, a new favourite)."""
        kind = rng.random()
        if kind < 0.4:
            if rng.random() < MOVE_RATE:
                user.home = rng.choice([c for c in CITIES if c != user.home])
            user.history.setdefault("home", []).append(user.home)
            return f"I live in {user.home}"
        if kind < 0.6:
            if rng.random() < MOVE_RATE / 2:
                user.job = rng.choice([j for j in JOBS if j != user.job])
            return f"I work as a {user.job}"
        if kind < 0.8:
            if rng.random() < MOVE_RATE / 2:
                user.colour = rng.choice([c for c in COLOURS if c != user.colour])
            return f"My favourite colour is {user.colour}"
        return f"I have a dog named {user.pet} and we walk every morning."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--stats", action="store_true", help="print counts instead of the events")
    args = parser.parse_args(argv)
    workload = Workload(args.events, args.tenants, args.seed)
    if not args.stats:
        for batch in workload.batches():
            for row in batch:
                print(json.dumps(row, default=str))
        return 0
    n = sessions = statements = 0
    tenants: set[str] = set()
    first = last = None
    for batch in workload.batches():
        for row in batch:
            n += 1
            sessions += row["event_id"].endswith("-000")
            statements += row["text"].startswith(("I live in", "I work as", "My favourite"))
            tenants.add(row["tenant"])
            first = first or row["at"]
            last = row["at"]
    print(
        json.dumps(
            {
                "events": n,
                "sessions": sessions,
                "tenants": len(tenants),
                "fact_statements": statements,
                "first": str(first),
                "last": str(last),
            },
            indent=2,
        )
    )
    return 0


def event_rows(batch: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """Workload rows as ``events`` table rows, as ``observe_many`` stores them (without checking them)."""
    return [
        {
            "tenant": e["tenant"],
            "event_id": e["event_id"],
            "session_id": e["session"],
            "actor": e["actor"],
            "text": e["text"],
            "at": e["at"],
            "metadata": e["metadata"] or {},
            "received_at": now,
            "routed_at": None,
            "seq": 1,
        }
        for e in batch
    ]


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
