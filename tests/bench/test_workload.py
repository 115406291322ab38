"""The benchmark workload: deterministic, streamed in bounded batches, Zipf-skewed topics, facts that change."""

from __future__ import annotations

import re
from collections import Counter
from itertools import islice

from bench.workload import Workload


def test_same_seed_same_events_other_seed_other_events() -> None:
    a = [row for batch in Workload(3_000, tenants=10, seed=1, batch_size=500).batches() for row in batch]
    b = [row for batch in Workload(3_000, tenants=10, seed=1, batch_size=500).batches() for row in batch]
    c = [row for batch in Workload(3_000, tenants=10, seed=2, batch_size=500).batches() for row in batch]
    assert a == b
    assert a != c


def test_streams_bounded_batches_of_exactly_the_asked_size() -> None:
    workload = Workload(12_345, tenants=20, batch_size=1_000)
    batches = workload.batches()
    assert not isinstance(batches, list)  # a generator: nothing is built before it is asked for
    sizes = [len(b) for b in batches]
    assert max(sizes) == 1_000
    assert sum(sizes) == 12_345
    assert sizes[-1] == 345


def test_a_large_workload_starts_without_building_it() -> None:
    # 10^7 events would take minutes to build; the first batch comes at once.
    first = next(Workload(10_000_000, batch_size=100).batches())
    assert len(first) == 100


def test_event_ids_are_unique_and_rows_have_observe_fields() -> None:
    rows = [r for b in Workload(5_000, tenants=30).batches() for r in b]
    assert len({(r["tenant"], r["event_id"]) for r in rows}) == len(rows)
    assert set(rows[0]) == {"tenant", "session", "actor", "text", "at", "event_id", "metadata"}
    assert len({r["tenant"] for r in rows}) > 10


def test_topics_follow_zipf() -> None:
    counts = Counter()
    for batch in Workload(20_000, tenants=50, topics=200, seed=3).batches():
        for r in batch:
            if r["event_id"].endswith("-000"):  # one count per session
                counts[r["metadata"]["tags"][0]] += 1
    ranked = [n for _, n in counts.most_common()]
    # Zipf(1.1): the top topic is far above the median one, and the top ten hold a large share of all sessions.
    assert ranked[0] > 10 * ranked[len(ranked) // 2]
    assert sum(ranked[:10]) > 0.3 * sum(ranked)


def test_facts_are_restated_and_change_over_time() -> None:
    homes: dict[str, list[str]] = {}
    times = []
    for batch in Workload(20_000, tenants=3, seed=11).batches():
        for r in batch:
            times.append(r["at"])
            m = re.fullmatch(r"I live in (\w+)", r["text"])
            if m:
                homes.setdefault(r["tenant"], []).append(m.group(1))
    restated = [t for t, seq in homes.items() if len(seq) > len(set(seq))]
    changed = [t for t, seq in homes.items() if len(set(seq)) > 1]
    assert restated and changed
    assert (max(times) - min(times)).days > 90  # months of history


def test_sessions_have_realistic_lengths() -> None:
    per_session = Counter(r["session"] for b in islice(Workload(20_000).batches(), 3) for r in b)
    lengths = list(per_session.values())[:-1]  # the last session may be cut by the batch boundary
    assert min(lengths) >= 6 and max(lengths) <= 40
