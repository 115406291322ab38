"""Bulk ingest: ``Memory.observe_many`` against the physical floor of the same database.

Generates N synthetic events (several tenants, sessions per tenant, turns of realistic length), writes them with
``Memory.observe_many`` into a fresh store, and in the same run inserts the same rows, already shaped as ``events``
rows, into a plain table with the same columns and primary key: a SQLAlchemy Core executemany INSERT, and on
PostgreSQL also COPY. The ratio says what validation, idempotency and the change counter cost over the bare write.

    python bench/bulk_ingest.py [--events N] [--store URL] [--json out.json]

Without ``--store`` the store is a SQLite file in a temporary folder. With a PostgreSQL URL every table is created
in a schema of its own (``bench_<random>``) that is dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VOCABULARY = (
    "the a to and of I you it in that is was for on my with we have this be at so not but are they do just like "
    "what about going really think know time today work home week trip dog cat friend family paint book music "
    "running garden coffee city weekend project meeting doctor school class dinner movie weather beach mountain "
    "Lisbon Paris Berlin camping pottery guitar sister brother mother father kids birthday plan yesterday tomorrow"
)
WORDS = VOCABULARY.split()
ACTORS = ("Caroline", "Melanie", "assistant", "user", "Jon", "Gina", "agent-7")


def synthetic_events(n: int, tenants: int, seed: int) -> list[dict[str, Any]]:
    """N events over ``tenants`` tenants, in sessions of 10-40 turns, each turn 3-80 words (median about 14)."""
    rng = random.Random(seed)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    rows: list[dict[str, Any]] = []
    session_no = 0
    while len(rows) < n:
        tenant = f"tenant-{rng.randrange(tenants):02d}"
        session = f"s{session_no:06d}"
        session_no += 1
        at = start + timedelta(minutes=rng.randrange(0, 500_000))
        speakers = rng.sample(ACTORS, 2)
        for turn in range(min(rng.randint(10, 40), n - len(rows))):
            words = max(3, min(80, int(rng.lognormvariate(2.6, 0.6))))
            rows.append(
                {
                    "tenant": tenant,
                    "session": session,
                    "actor": speakers[turn % 2],
                    "text": " ".join(rng.choice(WORDS) for _ in range(words)),
                    "at": at + timedelta(seconds=30 * turn),
                    "event_id": f"{session}-{turn:03d}",
                    "metadata": {"tags": ["chat"]} if turn % 5 == 0 else None,
                }
            )
    return rows


@contextmanager
def fresh_store_url(store: str | None) -> Iterator[str]:
    """A URL for an empty store: a temporary SQLite file, or a new schema on the given PostgreSQL server."""
    if store is None or store.startswith("sqlite"):
        with tempfile.TemporaryDirectory(prefix="engram-bench-") as tmp:
            yield store or f"sqlite:///{Path(tmp) / 'engram.db'}"
        return
    from sqlalchemy import create_engine, text

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(store)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in store else "?"
    try:
        yield f"{store}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def time_observe_many(url: str, events: list[dict[str, Any]], archive: str) -> tuple[float, dict[str, int]]:
    from engram import Memory

    memory = Memory(url, archive)  # migrations run here, outside the timing
    try:
        started = time.perf_counter()
        report = memory.observe_many(events)
        elapsed = time.perf_counter() - started
        stored = memory.stats()["events"]
    finally:
        memory.close()
    if report.accepted != len(events) or stored != len(events):
        raise SystemExit(f"observe_many stored {stored} of {len(events)} events: {report}")
    return elapsed, {"accepted": report.accepted, "quarantined": report.quarantined}


def plain_events_table(name: str):  # noqa: ANN201 - sqlalchemy Table
    """A table with the columns and primary key of ``events``, without its secondary indexes."""
    from sqlalchemy import Column, MetaData, Table

    from engram.store import EVENTS

    columns = [Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable) for c in EVENTS.columns]
    return Table(name, MetaData(), *columns)


def time_executemany(url: str, rows: list[dict[str, Any]]) -> float:
    from sqlalchemy import create_engine, func, insert, select

    engine = create_engine(url)
    table = plain_events_table(f"bench_plain_{uuid.uuid4().hex[:8]}")
    table.create(engine)
    try:
        with engine.begin() as conn:
            started = time.perf_counter()
            conn.execute(insert(table), rows)
        elapsed = time.perf_counter() - started  # includes the commit
        with engine.connect() as conn:
            count = conn.execute(select(func.count()).select_from(table)).scalar_one()
        if count != len(rows):
            raise SystemExit(f"executemany stored {count} of {len(rows)} rows")
        return elapsed
    finally:
        table.drop(engine)
        engine.dispose()


def time_copy(url: str, rows: list[dict[str, Any]]) -> float:
    """PostgreSQL only: COPY FROM STDIN of the same rows into a plain table."""
    from sqlalchemy import JSON, create_engine, func, select

    engine = create_engine(url)
    table = plain_events_table(f"bench_copy_{uuid.uuid4().hex[:8]}")
    table.create(engine)
    names = [c.name for c in table.columns]
    is_json = [isinstance(c.type, JSON) for c in table.columns]
    try:
        raw = engine.raw_connection()
        try:
            started = time.perf_counter()
            with raw.cursor() as cur:
                column_list = ", ".join(f'"{n}"' for n in names)
                with cur.copy(f'COPY "{table.name}" ({column_list}) FROM STDIN') as copy:
                    for row in rows:
                        copy.write_row(
                            [json.dumps(row[n]) if j else row[n] for n, j in zip(names, is_json, strict=True)]
                        )
            raw.commit()
            elapsed = time.perf_counter() - started
        finally:
            raw.close()
        with engine.connect() as conn:
            count = conn.execute(select(func.count()).select_from(table)).scalar_one()
        if count != len(rows):
            raise SystemExit(f"COPY stored {count} of {len(rows)} rows")
        return elapsed
    finally:
        table.drop(engine)
        engine.dispose()


def run(events_n: int, store: str | None, tenants: int, seed: int) -> dict[str, Any]:
    from bench.workload import event_rows  # after main() has put the repository root on sys.path

    events = synthetic_events(events_n, tenants, seed)
    rows = event_rows(events, datetime.now(UTC))
    with fresh_store_url(store) as url, tempfile.TemporaryDirectory(prefix="engram-bench-archive-") as archive:
        observe_s, report = time_observe_many(url, events, Path(archive).as_uri())
        from sqlalchemy.engine import make_url

        dialect = make_url(url).get_backend_name()
        results: dict[str, Any] = {
            "benchmark": "bulk_ingest",
            "store": dialect,
            "events": events_n,
            "tenants": tenants,
            "mean_text_chars": round(sum(len(e["text"]) for e in events) / len(events), 1),
            "python": platform.python_version(),
            "observe_many": {"seconds": round(observe_s, 3), "rows_per_s": round(events_n / observe_s), **report},
        }
        executemany_s = time_executemany(url, rows)
        results["plain_executemany"] = {
            "seconds": round(executemany_s, 3),
            "rows_per_s": round(events_n / executemany_s),
        }
        results["ratio_observe_many_to_executemany"] = round(executemany_s / observe_s, 3)
        if dialect == "postgresql":
            copy_s = time_copy(url, rows)
            results["plain_copy"] = {"seconds": round(copy_s, 3), "rows_per_s": round(events_n / copy_s)}
            results["ratio_observe_many_to_copy"] = round(copy_s / observe_s, 3)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="how many events to write (default 100000)")
    parser.add_argument("--store", help="store URL (default: a temporary SQLite file)")
    parser.add_argument("--tenants", type=int, default=8, help="how many tenants the events belong to")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic events")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.events < 1 or args.tenants < 1:
        parser.error("--events and --tenants must be positive")
    results = run(args.events, args.store, args.tenants, args.seed)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
