"""What the monitor's measurement of one tenant costs as the tenant's history grows, against counting every layer.

The monitor flow runs every five minutes and, for each tenant, counts the items of each layer it charts
(``engram.service.measure_store``), beside the backlog, the set-aside episodes and the unfinished forgets. Its cost is
read in one read transaction per tenant; whatever grows with the tenant's history (every event ever received, every
tombstone) makes every monitor run cost more as the store ages. ``Memory.stats`` (the ``stats`` command) counts
everything, the helper counts included.

For each size, a SQLite store file is migrated to the head of the code on the path and filled with one tenant's
history as a mature store holds it: ``events`` routed events, one episode per 20 events with its turns, 0.8 facts per
event (a tenth of them closed versions), and ``--archived`` of the episodes, turns and facts archived (tombstones of
manifests of 10,000 rows). Then ``measure_store`` for the tenant and ``count_by_layer`` of the tenant are each timed
``--repeats`` times; the figures are the medians, with the plans of the monitor's count statements. The run is filed
under ``--label`` in the output file, beside the runs of other labels already there (the same sizes, run with other
code: ``PYTHONPATH`` and a copy of this file in another checkout).

    python bench/monitor_counts.py --label head [--sizes 100000 1000000 3000000] [--repeats 5]
        [--out bench/results/monitor_counts.json]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TENANT = "acme"
STAMP = datetime(2026, 1, 1, tzinfo=UTC)
TURNS_PER_EPISODE = 20
MANIFEST_ROWS = 10_000


def _fill(path: Path, events: int, archived: float) -> None:
    """One tenant's history, written with plain ``sqlite3`` (columns common to the schemas compared)."""
    stamp = STAMP.isoformat()
    episodes = events // TURNS_PER_EPISODE
    facts = int(events * 0.8)

    def manifest(n: int, total: int) -> str | None:
        return f"m{n // MANIFEST_ROWS:07d}" if n < total * archived else None

    db = sqlite3.connect(path)
    with db:
        db.executemany(
            "INSERT INTO events (tenant, event_id, session_id, actor, text, at, received_at, metadata, routed_at, seq)"
            " VALUES (?, ?, ?, 'Caroline', 'text', ?, ?, '{}', ?, ?)",
            ((TENANT, f"e{n:09d}", f"s{n // TURNS_PER_EPISODE:08d}", stamp, stamp, stamp, n) for n in range(events)),
        )
        db.executemany(
            "INSERT INTO episodes (tenant, episode_id, session_id, started_at, ended_at, participants, summary,"
            " turn_count, tags, consolidated_at, archived_manifest_id, seq)"
            " VALUES (?, ?, ?, ?, ?, '[]', '', ?, '[]', ?, ?, ?)",
            (
                (TENANT, f"ep{n:08d}", f"s{n:08d}", stamp, stamp, TURNS_PER_EPISODE, stamp, manifest(n, episodes), n)
                for n in range(episodes)
            ),
        )
        db.executemany(
            "INSERT INTO episode_turns (tenant, episode_id, position, item_id, event_id, actor, text, at, tags,"
            " metadata, archived_manifest_id, seq) VALUES (?, ?, ?, ?, ?, 'Caroline', '', ?, '[]', '{}', ?, ?)",
            (
                (
                    TENANT,
                    f"ep{n // TURNS_PER_EPISODE:08d}",
                    n % TURNS_PER_EPISODE,
                    f"e{n:09d}",
                    f"e{n:09d}",
                    stamp,
                    manifest(n, events),
                    n,
                )
                for n in range(events)
            ),
        )
        db.executemany(
            "INSERT INTO semantic_items (tenant, item_id, fact_key, version, text, rendered, actor, tags,"
            " support_count, first_seen, last_seen, salience, valid_from, valid_to, archived_manifest_id, seq)"
            " VALUES (?, ?, ?, 1, '', '', '', '[]', 1, ?, ?, 0.0, ?, ?, ?, ?)",
            (
                (
                    TENANT,
                    f"sem-{n:012d}",
                    f"{n * 2654435761 % 2**32:064x}",
                    stamp,
                    stamp,
                    stamp,
                    stamp if n % 10 == 0 else None,  # a closed version
                    manifest(n, facts),
                    n,
                )
                for n in range(facts)
            ),
        )
    db.close()


def measure_one(folder: Path, events: int, archived: float, repeats: int) -> dict[str, Any]:
    """Median milliseconds of the monitor's measurement of the tenant and of every count of the tenant."""
    from sqlalchemy import event

    from engram.service import measure_store
    from engram.store import Store

    # The store is opened and removed here, not by ``bench.perf.sqlite_store_at``: this file also runs with older code,
    # whose bench/perf.py lacks it.
    path = folder / f"monitor-{events}.db"
    store = Store(f"sqlite:///{path}")
    try:
        store.migrate()
        _fill(path, events, archived)
        as_of = STAMP + timedelta(days=1)
        statements: list[tuple[str, Any]] = []

        def record(_conn: Any, _cursor: Any, sql: str, params: Any, _context: Any, executemany: bool) -> None:
            if sql.lstrip().upper().startswith("SELECT COUNT"):
                statements.append((sql, tuple(params)))

        event.listen(store.engine, "before_cursor_execute", record)
        measured = measure_store(store, as_of, TENANT)
        event.remove(store.engine, "before_cursor_execute", record)
        layers = {m.name: m.value for m in measured if m.name.startswith("layer.")}
        monitor, every = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            measure_store(store, as_of, TENANT)
            monitor.append(time.perf_counter() - started)
            started = time.perf_counter()
            counts = store.count_by_layer(TENANT)
            every.append(time.perf_counter() - started)
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        plans = [
            "; ".join(r[-1] for r in db.execute(f"EXPLAIN QUERY PLAN {sql}", params)) for sql, params in statements
        ]
        db.close()
        return {
            "events": events,
            "monitor_ms": round(statistics.median(monitor) * 1000, 2),
            "every_count_ms": round(statistics.median(every) * 1000, 2),
            "layers": layers,
            "counts": counts,
            "plans": plans,
        }
    finally:
        store.dispose()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", required=True, help="what code this is, e.g. a commit")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 3_000_000])
    parser.add_argument("--archived", type=float, default=0.9, help="share of the history that is archived")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "monitor_counts.json")
    args = parser.parse_args(argv)
    from bench.perf import sqlite_run_header

    run: dict[str, Any] = {**sqlite_run_header(), "archived": args.archived, "repeats": args.repeats, "sizes": []}
    with tempfile.TemporaryDirectory(prefix="engram-monitor-") as tmp:
        for events in args.sizes:
            run["sizes"].append(measure_one(Path(tmp), events, args.archived, args.repeats))
            print(f"{args.label}: {run['sizes'][-1]}", flush=True)
    out = json.loads(args.out.read_text()) if args.out.exists() else {"runs": {}}
    out["runs"][args.label] = run
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
