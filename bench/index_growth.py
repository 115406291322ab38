"""What an insert into the audit trail costs as it grows, with random keys (as engram writes them) and with
time-ordered ones.

The lifecycle's write-heavy tasks (``commit_facts``, ``route_to_working``) cost more per event as the store grows.
Their rows go to tables keyed by sha256 ids: ``transitions`` (primary key ``(tenant, transition_id)``) and the item
index ``(tenant, item_id, at)``, both at random places in their B-trees. This benchmark takes the store out of the
picture: a table shaped like ``transitions``, with its primary key and indexes, in a SQLite file set up as engram's
store (WAL, ``synchronous=NORMAL``, SQLite's default page cache), filled in transactions of ``--batch`` rows (a
task's batch) with plain ``sqlite3`` ``executemany``, and timed per transaction as it grows to ``--rows`` rows.

Variants, each in a fresh file, one after the other:
- ``random``: transition and item ids are a prefix and 32 hex digits of a sha256 digest, as engram's are;
- ``ordered``: the same ids with a zero-padded counter in front, so that each transaction appends at the end of
  every B-tree;
- ``ordered_transition_id``: transition ids ordered, item ids random: what ordering the audit trail's own ids
  would give while the items' ids stay as they are;
- ``random_cache``: random ids, as ``random``, with a page cache of ``--cache-mb`` (SQLite's default is 2 MB), so
  that the B-trees' inner pages stay in memory;
- ``mixed``: the lifecycle's mix of items: two rows of three name an event (ids ordered within a tenant, as a
  client that numbers its events sends them, and as the benchmark workload's are), one names a fact (a sha256 id);
  transition ids random, as engram's are;
- ``mixed_item_keyed``: the same rows in a table keyed by ``(tenant, item_id, transition_id)`` without the separate
  item index, so that the rows of one item sit together and a row naming an ordered item appends;
- ``item_keyed_ordered_facts``: that table with every item id growing, the facts' too (engram's fact ids start with
  the time the fact was said).

    python bench/index_growth.py [--rows 10000000] [--batch 20000] [--out bench/results/index_growth.json]
        [--variants random ordered ordered_transition_id random_cache mixed mixed_item_keyed item_keyed_ordered_facts]
        [--cache-mb 256]

The figure is microseconds per row by size (the mean of the transactions in each step of ``--step`` rows) and the
ratio of the last step to the first: a flat line is a cost linear in rows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.perf import sqlite_run_header  # noqa: E402

SCHEMA = (
    "CREATE TABLE transitions (tenant VARCHAR(64) NOT NULL, transition_id VARCHAR(64) NOT NULL, "
    "item_id VARCHAR(128) NOT NULL, from_layer VARCHAR(16), to_layer VARCHAR(16), action VARCHAR(32) NOT NULL, "
    "flow_run_id VARCHAR(64), at DATETIME NOT NULL, detail JSON NOT NULL, seq INTEGER NOT NULL, "
    "PRIMARY KEY (tenant, transition_id))",
    "CREATE INDEX ix_transitions_item ON transitions (tenant, item_id, at)",
    "CREATE INDEX ix_transitions_seq ON transitions (tenant, seq)",
    "CREATE INDEX ix_transitions_run ON transitions (flow_run_id)",
)
# The same columns keyed by item first: an item's audit rows together, and no separate item index to maintain.
ITEM_KEYED_SCHEMA = (
    SCHEMA[0].replace("PRIMARY KEY (tenant, transition_id)", "PRIMARY KEY (tenant, item_id, transition_id)"),
    *SCHEMA[2:],
)
SCHEMAS = {"engram": SCHEMA, "item_keyed": ITEM_KEYED_SCHEMA}
INSERT = "INSERT INTO transitions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
TENANTS = 100


class Variant(NamedTuple):
    """How a variant makes its ids and its table; ``about`` is what the report says of it (``{cache_mb}``: the
    run's ``--cache-mb``)."""

    ordered: bool  # transition ids behind a counter
    ordered_items: bool | str  # item ids: True, False or "mixed" (two rows of three ordered)
    uses_cache: bool  # the connection gets a page cache of --cache-mb
    schema: str  # a key of SCHEMAS
    about: str


VARIANTS: dict[str, Variant] = {
    "random": Variant(False, False, False, "engram", "ids that are sha256 digests, as engram's are"),
    "ordered": Variant(True, True, False, "engram", "the same ids behind a counter"),
    "ordered_transition_id": Variant(True, False, False, "engram", "transition ids behind a counter, item ids random"),
    "random_cache": Variant(
        False, False, True, "engram", "random ids with a page cache of {cache_mb} MB instead of SQLite's default 2 MB"
    ),
    "mixed": Variant(
        False,
        "mixed",
        False,
        "engram",
        "the lifecycle's mix: two rows of three name an item whose ids grow (an event), one a fact (random id);"
        " transition ids random",
    ),
    "mixed_item_keyed": Variant(
        False,
        "mixed",
        False,
        "item_keyed",
        "the same rows in a table keyed by (tenant, item_id, transition_id), without the item index",
    ),
    "item_keyed_ordered_facts": Variant(
        False,
        True,
        False,
        "item_keyed",
        "keyed by (tenant, item_id, transition_id), every item id growing: facts' ids time-ordered too, as engram's"
        " are since their ids start with when the fact was said; transition ids random",
    ),
}
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def batch_rows(start: int, size: int, ordered: bool, ordered_items: bool | str | None = None) -> list[tuple[Any, ...]]:
    """Rows ``start`` .. ``start + size``: 100 tenants, ids from the row number (sha256, or counter + sha256).

    ``ordered`` orders the transition ids, ``ordered_items`` the item ids (the same as ``ordered`` if None;
    ``"mixed"``: two rows of three, the others random)."""
    ordered_items = ordered if ordered_items is None else ordered_items
    rows = []
    run_id = sha(f"run{start}")[:36]
    for n in range(start, start + size):
        transition, item = sha(f"t{n}"), sha(f"i{n}")
        if ordered:
            transition = f"{n:012d}{transition[:20]}"
        if ordered_items is True or (ordered_items == "mixed" and n % 3 != 2):
            item = f"{n:012d}{item[:20]}"
        # shaped as engram's ids (``engram.store.stable_id``): a prefix and 32 hex digits
        transition, item = f"tr-{transition[:32]}", f"fa-{item[:32]}"
        rows.append(
            (
                f"tenant-{n % TENANTS:03d}",
                transition,
                item,
                "episodic",
                "semantic",
                "consolidate",
                run_id,
                (T0 + timedelta(seconds=n)).isoformat(sep=" "),
                '{"fact_key": "user.lives_in", "version": 1}',
                n,
            )
        )
    return rows


def open_table(path: Path, cache_mb: int | None = None, schema: str = "engram") -> sqlite3.Connection:
    """A fresh file set up as the store's (WAL, ``synchronous=NORMAL``) with the table of ``schema`` (a key of
    ``SCHEMAS``); ``cache_mb`` sets the connection's page cache (``PRAGMA cache_size``), None keeps SQLite's
    default."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    if cache_mb is not None:
        conn.execute(f"PRAGMA cache_size=-{int(cache_mb) * 1024}")
    for statement in SCHEMAS[schema]:
        conn.execute(statement)
    return conn


def grow(
    path: Path,
    rows: int,
    batch: int,
    step: int,
    variant: str,
    report: Callable[[list[dict[str, Any]]], None],
    cache_mb: int | None = None,
) -> dict[str, Any]:
    """Fill a fresh table to ``rows`` rows with ``variant``'s ids; ``report`` gets the steps measured so far after
    each step. ``cache_mb`` is the page cache of a variant that uses one."""
    how = VARIANTS[variant]
    conn = open_table(path, cache_mb if how.uses_cache else None, how.schema)
    steps: list[dict[str, Any]] = []
    spent, done, step_rows = 0.0, 0, 0
    started = time.perf_counter()
    while done < rows:
        size = min(batch, rows - done)
        data = batch_rows(done, size, how.ordered, how.ordered_items)  # made outside the timed part
        t = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany(INSERT, data)
        conn.execute("COMMIT")
        spent += time.perf_counter() - t
        done += size
        step_rows += size
        if step_rows >= step or done == rows:
            steps.append(
                {
                    "rows": done,
                    "us_per_row": round(spent / step_rows * 1e6, 2),
                    "file_mb": round(path.stat().st_size / 1e6),
                    "wal_mb": round(Path(f"{path}-wal").stat().st_size / 1e6) if Path(f"{path}-wal").exists() else 0,
                }
            )
            print(f"{variant} {done:>12,} rows: {steps[-1]['us_per_row']} us/row", flush=True)
            report(steps)
            spent, step_rows = 0.0, 0
    conn.close()
    return {
        "steps": steps,
        "wall_s": round(time.perf_counter() - started, 1),
        "last_to_first": round(steps[-1]["us_per_row"] / steps[0]["us_per_row"], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, default=20_000, help="rows per transaction")
    parser.add_argument("--step", type=int, default=1_000_000, help="rows per reported step")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["random", "ordered"])
    parser.add_argument("--cache-mb", type=int, default=256, help="the page cache of the random_cache variant")
    parser.add_argument("--dir", type=Path, help="where the SQLite files go (a temporary folder by default)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "index_growth.json")
    args = parser.parse_args(argv)
    out: dict[str, Any] = {
        **sqlite_run_header(),
        "rows": args.rows,
        "batch": args.batch,
        "cache_mb": args.cache_mb,
        "variants": {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every step, so that a run stopped midway keeps what it measured
        args.out.write_text(json.dumps(out, indent=2) + "\n")

    for variant in args.variants:

        def report(steps: list[dict[str, Any]], variant: str = variant) -> None:
            out["variants"][variant] = {"steps": steps, "finished": False}
            save()

        with tempfile.TemporaryDirectory(prefix="engram-index-growth-", dir=args.dir) as tmp:
            grown = grow(Path(tmp) / "t.db", args.rows, args.batch, args.step, variant, report, args.cache_mb)
        out["variants"][variant] = {**grown, "finished": True}
        save()
    print(json.dumps({v: r["last_to_first"] for v, r in out["variants"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
