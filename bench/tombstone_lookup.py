"""What a compaction's reads and moves of tombstones cost as a tenant's facts grow, before the facts' tombstones had an
index by manifest (revision 0010) and with it (revision 0011, ``ix_semantic_archived``).

Compaction merges a tenant's small archive manifests in groups. For each group it reads which rows the group's
manifests hold (``Store.archived_ids``) and, at its commit, points their tombstones at the merged manifest
(``Store.commit_compaction``): both by ``tenant = ? AND archived_manifest_id IN (...)``. Without an index on that pair,
SQLite found the rows through ``ix_semantic_current (tenant, valid_to)``: every fact of the tenant, hot or archived.

For each size, a SQLite store file is migrated (by engram's own migrations) to 0010 and, in another file, to the head;
one tenant's ``rows`` facts are written into each, ``--archived`` of them as tombstones of manifests of
``--manifest-rows`` rows (as the archive step's batches leave them), the rest hot. Then, ``--repeats`` times, a group
of ``--group`` manifests (a different group each time) is read with ``archived_ids`` and committed into a new
manifest with ``commit_compaction``; the figures are the medians. Beside them are the plans of what those calls ran
on the facts by manifest (the first group's statements, as the store ran them).

    python bench/tombstone_lookup.py [--sizes 100000 1000000 3000000] [--group 20] [--repeats 5]
        [--out bench/results/tombstone_lookup.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sqlite3
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

REVISIONS = ("0010", "head")
TENANT = "acme"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _manifest_id(n: int) -> str:
    return f"m{n:08d}"


def _fill(path: Path, rows: int, archived: float, manifest_rows: int) -> int:
    """Write the tenant's facts and its committed manifests; returns how many manifests."""
    stamp = NOW.isoformat()
    cold = int(rows * archived)
    db = sqlite3.connect(path)
    with db:
        db.executemany(
            "INSERT INTO semantic_items (tenant, item_id, fact_key, version, text, rendered, actor, tags,"
            " support_count, first_seen, last_seen, salience, valid_from, archived_manifest_id, seq)"
            " VALUES (?, ?, ?, 1, ?, ?, '', '[]', 1, ?, ?, 0.0, ?, ?, ?)",
            (
                (
                    TENANT,
                    f"sem-{n:012d}",
                    f"{n * 2654435761 % 2**32:064x}",  # keys in no order, as sha256 keys are
                    "" if n < cold else f"fact {n}",
                    "" if n < cold else f"fact {n}",
                    stamp,
                    stamp,
                    stamp,
                    _manifest_id(n // manifest_rows) if n < cold else None,
                    n,
                )
                for n in range(rows)
            ),
        )
    db.close()
    return -(-cold // manifest_rows)


def _plans(path: Path, statements: list[tuple[str, Any]]) -> list[str]:
    """The plan of each statement (sql, parameters) on ``semantic_items``, in order."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [
            detail
            for sql, params in statements
            for *_, detail in db.execute(f"EXPLAIN QUERY PLAN {sql}", params)
            if "semantic_items" in detail
        ]
    finally:
        db.close()


@contextmanager
def _recording(store: Any) -> Iterator[list[tuple[str, Any]]]:
    """The statements the store runs meanwhile that find facts by manifest: (sql, parameters)."""
    from sqlalchemy import event

    statements: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, sql: str, params: Any, _context: Any, executemany: bool) -> None:
        if not executemany and re.search(r"semantic_items\.archived_manifest_id (IN|=)", sql):
            statements.append((sql, tuple(params)))

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(store.engine, "before_cursor_execute", record)


def measure_one(
    folder: Path, revision: str, rows: int, archived: float, manifest_rows: int, group: int, repeats: int
) -> dict[str, Any]:
    """Median milliseconds of ``archived_ids`` and of ``commit_compaction`` for a group of ``group`` manifests."""
    from bench.perf import sqlite_store_at

    path = folder / f"tombstones-{revision}-{rows}.db"
    with sqlite_store_at(path, revision) as store:
        manifests = _fill(path, rows, archived, manifest_rows)
        if manifests < group * (repeats + 1):
            raise SystemExit(f"{manifests} manifests at {rows} rows: too few for {repeats} groups of {group}")
        row = {
            "tenant": TENANT,
            "layer": "semantic",
            "uri": "file:///x",
            "files": [],
            "flow_run_id": None,
            "created_at": NOW,
        }
        store.add_manifests(
            [
                {**row, "manifest_id": _manifest_id(m), "row_count": manifest_rows, "status": "committed"}
                for m in range(manifests)
            ]
        )
        reads, commits = [], []
        for r in range(repeats):
            ids = [_manifest_id(m) for m in range(r * group, (r + 1) * group)]
            merged = f"c{r:07d}"
            store.add_manifests([{**row, "manifest_id": merged, "row_count": 0, "status": "compacting"}])
            with _recording(store) as statements:
                started = time.perf_counter()
                found = store.archived_ids(TENANT, ids)["semantic_items"]
                reads.append(time.perf_counter() - started)
                started = time.perf_counter()
                committed = store.commit_compaction(TENANT, merged, [(i, []) for i in ids], NOW)
                commits.append(time.perf_counter() - started)
            if sum(len(v) for v in found.values()) != group * manifest_rows:
                held = sum(len(v) for v in found.values())
                raise SystemExit(f"{revision} at {rows} rows: group {r}'s manifests hold {held} facts, not all")
            if not committed:
                raise SystemExit(f"{revision} at {rows} rows: the compaction of group {r} did not commit")
            if r == 0:
                # What the timed calls ran, planned on the file as it is now (SQLite plans without statistics).
                plan = _plans(path, statements)
            if len(store.archived_ids(TENANT, [merged])["semantic_items"][merged]) != group * manifest_rows:
                raise SystemExit(f"{revision} at {rows} rows: the merged manifest lacks rows of group {r}")
        return {
            "read_ms": round(statistics.median(reads) * 1000, 2),
            "commit_ms": round(statistics.median(commits) * 1000, 2),
            "plan": plan,
            "manifests": manifests,
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 3_000_000])
    parser.add_argument("--archived", type=float, default=0.9, help="share of the facts that are tombstones")
    parser.add_argument("--manifest-rows", type=int, default=500, help="facts per manifest")
    parser.add_argument("--group", type=int, default=20, help="manifests merged per group")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tombstone_lookup.json")
    args = parser.parse_args(argv)
    from bench.perf import by_revision, sqlite_run_header

    out: dict[str, Any] = {
        **sqlite_run_header(),
        "archived": args.archived,
        "manifest_rows": args.manifest_rows,
        "group": args.group,
        "repeats": args.repeats,
        "sizes": [],
    }
    measure = functools.partial(
        measure_one, archived=args.archived, manifest_rows=args.manifest_rows, group=args.group, repeats=args.repeats
    )
    for entry in by_revision(args.sizes, REVISIONS, measure, "engram-tombstones-"):
        old, new = entry["0010"], entry["head"]
        entry["read_ratio"] = round(old["read_ms"] / new["read_ms"], 1)
        entry["commit_ratio"] = round(old["commit_ms"] / new["commit_ms"], 1)
        out["sizes"].append(entry)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
