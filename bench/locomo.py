"""LoCoMo answer recall within a word budget, through engram's public API.

Each conversation is one tenant. Its turns go in with ``Memory.observe_many``, the lifecycle runs once with
``as_of`` a day after the last turn (so every session is closed and consolidated), and each question of categories
1-4 is searched. The hits' texts are taken in rank order until the next one would push the context past B words;
a question is a hit when at least half of its answer's words occur in that context (the metric and the
normalization of ``../shared/data/locomo/README.md``). Reported for B = 250, 500 and 1000, overall and per
category, with the search latency and how many semantic items the memory holds against the raw turns.

    python bench/locomo.py [PATH] [--limit-conversations N] [--json out.json] [--store URL] [--layers semantic]
                           [--archive-after DAYS]

With ``--archive-after DAYS`` the questions are scored twice: after the lifecycle, then again after the archive flow
has moved every fact and episode not seen for DAYS days (as of a year after the last turn) to the archive; both
figures are printed, and answer recall at 500 words must stay within 0.01.

Exits 0 with "skipped: ... not found" when the data file is absent (a clone without the shared data).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PATH = ROOT / ".." / "shared" / "data" / "locomo" / "locomo-dev.json"
BUDGETS = (250, 500, 1000)
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
SEARCH_LIMIT = 200  # enough hits to fill the largest budget with short items
# The README's stop words, as written there.
_STOP_WORDS_TEXT = (
    "a an the of in on at to for and or is was be by with from as it its that this i you he she they we my your his "
    "her their our me him them"
)
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())
_TOKEN = re.compile(r"[a-z0-9]+")


def normalize(text: Any) -> list[str]:
    """Lower-case ``[a-z0-9]+`` tokens without the metric's stop words."""
    return [t for t in _TOKEN.findall(str(text).lower()) if t not in STOP_WORDS]


def context_within(texts: Iterable[str], budget: int) -> list[str]:
    """The texts, in rank order, up to (not including) the first that would push the total past ``budget`` words."""
    out: list[str] = []
    used = 0
    for text in texts:
        n = len(text.split())
        if used + n > budget:
            break
        out.append(text)
        used += n
    return out


def answer_recalled(answer: Any, context: Sequence[str]) -> bool:
    """At least half of the answer's tokens occur in the context (an answer with no tokens is never recalled)."""
    wanted = normalize(answer)
    if not wanted:
        return False
    present = {t for text in context for t in normalize(text)}
    return 2 * sum(t in present for t in wanted) >= len(wanted)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def _dense_enabled() -> bool:
    from engram.embed import available
    from engram.settings import Settings

    return Settings().embeddings and available()


def evaluate(
    path: Path,
    store_url: str,
    archive_url: str,
    limit: int | None,
    layers: list[str] | None,
    archive_after: float | None = None,
) -> dict:
    """Load the conversations into a fresh memory, run the lifecycle, and score every question (and, with
    ``archive_after``, score them again once the archive flow has moved what is that many days cold)."""
    from engram import Memory
    from engram.loaders import locomo_rows

    conversations = json.loads(path.read_text(encoding="utf-8"))
    if limit is not None:
        conversations = conversations[:limit]
    tenants = {c["sample_id"] for c in conversations}
    rows = [r for r in locomo_rows(path) if r["tenant"] in tenants]
    hits: dict[int, dict[int, list[bool]]] = {b: {} for b in BUDGETS}
    latencies: list[float] = []
    with Memory(store_url, archive_url) as memory:
        report = memory.observe_many(rows)
        as_of = max(r["at"] for r in rows) + timedelta(days=1)
        started = time.perf_counter()
        lifecycle = memory.run_lifecycle(as_of=as_of)
        lifecycle_seconds = time.perf_counter() - started
        semantic_items = sum(memory.stats(t).get("semantic", 0) for t in tenants)
        before_archive = None
        if archive_after is not None:
            before_archive = _score(memory, conversations, layers)
            archived = _archive(memory, as_of, archive_after)
        for conv in conversations:
            for qa in conv["qa"]:
                category = int(qa.get("category", 0))
                if category not in CATEGORIES:
                    continue
                started = time.perf_counter()
                found = memory.search(conv["sample_id"], qa["question"], limit=SEARCH_LIMIT, layers=layers)
                latencies.append(time.perf_counter() - started)
                texts = [h.text for h in found]
                for budget in BUDGETS:
                    ok = answer_recalled(qa["answer"], context_within(texts, budget))
                    hits[budget].setdefault(category, []).append(ok)

    def rate(values: list[bool]) -> float:
        return round(sum(values) / len(values), 3) if values else 0.0

    recall = {
        str(b): {
            "overall": rate([x for v in per.values() for x in v]),
            **{CATEGORIES[c]: rate(v) for c, v in sorted(per.items())},
        }
        for b, per in hits.items()
    }
    extra: dict[str, Any] = {}
    if before_archive is not None:
        extra = {
            "archive_after_days": archive_after,
            "archive": archived,
            "recall_before_archive": before_archive["recall"],
            "search_ms_before_archive": before_archive["search_ms"],
        }
    return {
        **extra,
        "data": str(path),
        "conversations": len(conversations),
        "questions": len(latencies),
        "raw_turns": len(rows),
        "accepted_turns": report.accepted,
        "hot_semantic_items": semantic_items,
        "layers_searched": layers or "all",
        "retrieval": "bm25+minilm" if _dense_enabled() else "bm25",
        "recall": recall,
        "search_ms": {
            "p50": round(1000 * percentile(latencies, 50), 2),
            "p95": round(1000 * percentile(latencies, 95), 2),
        },
        "lifecycle_seconds": round(lifecycle_seconds, 1),
        "lifecycle": lifecycle,
    }


def _score(memory: Any, conversations: list[dict], layers: list[str] | None) -> dict:
    """Recall per budget (overall) and search latency for every question, as the memory stands now."""
    hits: dict[int, list[bool]] = {b: [] for b in BUDGETS}
    latencies: list[float] = []
    for conv in conversations:
        for qa in conv["qa"]:
            if int(qa.get("category", 0)) not in CATEGORIES:
                continue
            started = time.perf_counter()
            found = memory.search(conv["sample_id"], qa["question"], limit=SEARCH_LIMIT, layers=layers)
            latencies.append(time.perf_counter() - started)
            texts = [h.text for h in found]
            for budget in BUDGETS:
                hits[budget].append(answer_recalled(qa["answer"], context_within(texts, budget)))
    return {
        "recall": {str(b): {"overall": round(sum(v) / len(v), 3) if v else 0.0} for b, v in hits.items()},
        "search_ms": {
            "p50": round(1000 * percentile(latencies, 50), 2),
            "p95": round(1000 * percentile(latencies, 95), 2),
        },
    }


def _archive(memory: Any, last_turn: Any, days: float) -> dict:
    """Run the archive flow a year after the last turn, archiving what has been cold for ``days`` days."""
    from blocks.policy import RetentionPolicy
    from flows.archive import archive

    RetentionPolicy(semantic_idle_days=days, episode_age_days=days).save("locomo-bench-retention", overwrite=True)
    memory.flush_accesses()  # the first scoring's searches count as accesses, as they would in service
    started = time.perf_counter()
    summary = archive(
        store_url=memory.store_url,
        archive_url=memory.archive_url,
        # The scoring's searches stamped last_accessed with the wall clock: look from past that, so that what the
        # rules call cold is judged as a later day would see it.
        as_of=max(last_turn + timedelta(days=365), datetime.now(UTC) + timedelta(days=days + 1)),
        retention_block="locomo-bench-retention",
    )
    stats = memory.stats()
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "summary": summary,
        "archival_items": stats.get("archival", 0),
        "hot_semantic_versions": stats.get("semantic_versions", 0),
        "hot_turns": stats.get("episodic_turns", 0),
    }


def print_table(result: dict) -> None:
    """The figures as a table: recall per budget, overall and per category; then latency and sizes."""
    columns = ["overall", *CATEGORIES.values()]
    print(f"{'B (words)':>10} " + " ".join(f"{c:>12}" for c in columns))
    for budget, row in result["recall"].items():
        print(f"{budget:>10} " + " ".join(f"{row.get(c, 0.0):>12.3f}" for c in columns))
    print(
        f"questions {result['questions']} in {result['conversations']} conversations; "
        f"search p50 {result['search_ms']['p50']} ms, p95 {result['search_ms']['p95']} ms; "
        f"hot semantic items {result['hot_semantic_items']} vs raw turns {result['raw_turns']}"
    )
    if "recall_before_archive" in result:
        before = result["recall_before_archive"]["500"]["overall"]
        after = result["recall"]["500"]["overall"]
        a = result["archive"]
        print(
            f"archive after {result['archive_after_days']} days: {a['archival_items']} items archived, "
            f"{a['hot_semantic_versions']} fact versions and {a['hot_turns']} turns left hot"
        )
        print(
            f"recall@500 before archival {before:.3f}, after {after:.3f} (difference {after - before:+.3f}); "
            f"search p95 before {result['search_ms_before_archive']['p95']} ms, after {result['search_ms']['p95']} ms"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="LoCoMo answer recall within a word budget")
    parser.add_argument("path", nargs="?", default=str(DEFAULT_PATH), help="a LoCoMo JSON file")
    parser.add_argument("--limit-conversations", type=int, default=None, help="score only the first N")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the figures to this file")
    parser.add_argument("--store", default=None, help="store URL (default: a temporary SQLite file)")
    parser.add_argument(
        "--layers",
        default="all",
        help="comma-separated layers to search, or 'all' for what a default search returns (default: all)",
    )
    parser.add_argument(
        "--archive-after",
        type=float,
        default=None,
        metavar="DAYS",
        help="after the lifecycle, archive what is DAYS days cold and score again (prints both figures)",
    )
    args = parser.parse_args(argv)
    path = Path(args.path).resolve()
    if not path.is_file():
        print(f"skipped: LoCoMo data {path} not found")
        return 0
    layers = None if args.layers == "all" else [x.strip() for x in args.layers.split(",") if x.strip()]
    with tempfile.TemporaryDirectory(prefix="engram-locomo-") as tmp:
        store_url = args.store or f"sqlite:///{Path(tmp) / 'engram.db'}"
        result = evaluate(
            path, store_url, (Path(tmp) / "archive").as_uri(), args.limit_conversations, layers, args.archive_after
        )
    print_table(result)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
