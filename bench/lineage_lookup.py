"""What finding the items distilled from given events costs as a tenant's lineage grows, with the lineage's event
index as revision 0008 left it, ``(tenant, event_id)``, and as revision 0009 made it, ``(tenant, event_id,
item_id)``.

A consolidation batch asks the lineage which of its existing items already hold the batch's source events, and a
forget asks which items were distilled from the events it removes: ``tenant = ? AND event_id IN (...)``, by chunks of
ids. SQLite plans without table statistics. While the event index lacked the item id that the query returns, it
preferred the primary key ``(tenant, item_id, event_id)``, which holds every column the query needs, and read every
lineage row of the tenant for each chunk.

For each size, a SQLite store file is migrated (by engram's own migrations) to 0008 and, in another file, to the head;
one tenant's lineage of ``rows`` rows is written into each (one item per event, fact ids shaped as engram's); then
``Store.derived_items`` (the forget's lookup, the statement the consolidation's ``_lineage_among`` also runs) is
timed for ``--ids`` random event ids of the tenant. The figure is the median of ``--repeats`` calls, and the plan of
the statement is recorded beside it.

    python bench/lineage_lookup.py [--sizes 100000 1000000 3000000] [--ids 500] [--repeats 5]
        [--out bench/results/lineage_lookup.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

REVISIONS = ("0008", "head")
TENANT = "acme"


def _event_id(n: int) -> str:
    return f"e{n:09d}"


def measure_one(folder: Path, revision: str, rows: int, ids: int, repeats: int, seed: int) -> dict[str, Any]:
    """Milliseconds per lookup of ``ids`` event ids against a tenant's lineage of ``rows`` rows, at ``revision``."""
    from sqlalchemy import select

    from bench.perf import sqlite_store_at
    from engram.store import INSERT_CHUNK, LINEAGE

    path = folder / f"lineage-{revision}-{rows}.db"
    with sqlite_store_at(path, revision) as store:
        rng = random.Random(seed)
        db = sqlite3.connect(path)
        with db:
            db.executemany(
                "INSERT INTO lineage (tenant, item_id, event_id) VALUES (?, ?, ?)",
                ((TENANT, f"sem-{n:015x}-{rng.getrandbits(128):032x}", _event_id(n)) for n in range(rows)),
            )
        wanted = [_event_id(rng.randrange(rows)) for _ in range(ids)]
        query = select(LINEAGE.c.item_id).where(
            LINEAGE.c.tenant == TENANT, LINEAGE.c.event_id.in_(sorted(set(wanted))[:INSERT_CHUNK])
        )
        compiled = query.compile(dialect=store.engine.dialect, compile_kwargs={"literal_binds": True})
        plan = [r[-1] for r in db.execute(f"EXPLAIN QUERY PLAN {compiled}")]
        db.close()
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            found = store.derived_items(TENANT, wanted)
            seconds.append(time.perf_counter() - started)
        if len(found) != len(set(wanted)):
            raise SystemExit(f"{revision} at {rows} rows found {len(found)} items for {len(set(wanted))} events")
        return {"ms": round(statistics.median(seconds) * 1000, 2), "plan": plan, "found": len(found)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 3_000_000])
    parser.add_argument("--ids", type=int, default=500, help="event ids per lookup (the store's chunk is 500)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lineage_lookup.json")
    args = parser.parse_args(argv)
    from bench.perf import by_revision, sqlite_run_header

    out: dict[str, Any] = {
        **sqlite_run_header(),
        "ids": args.ids,
        "repeats": args.repeats,
        "sizes": [],
    }
    measure = functools.partial(measure_one, ids=args.ids, repeats=args.repeats, seed=args.seed)
    for entry in by_revision(args.sizes, REVISIONS, measure, "engram-lineage-"):
        entry["ratio"] = round(entry["0008"]["ms"] / entry["head"]["ms"], 1)
        out["sizes"].append(entry)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
