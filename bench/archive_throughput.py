"""Archival throughput: rows/s of engram's archive (write, read back and verify, tombstone) next to pyarrow's own
write and read-back of the same rows to the same storage, measured in one run.

Storage: a local folder, an S3 server on loopback (moto's ``ThreadedMotoServer``), and the same server reached
through a proxy that holds each chunk it forwards ``--delay`` seconds, as a network does (``s3_delayed``): on
loopback a request costs the server's CPU, not a round trip, and only the delayed server shows what overlapping
requests saves. The store is a fresh SQLite file holding, for each of ``--tenants`` tenants, semantic items and
consolidated episodes with their turns (about half the rows each, as the lifecycle leaves them), dated over
``--days`` days; every row is cold and engram archives them all, ``--batch-size`` keys a batch, as
``archive_cold_items`` does.

Two pyarrow references write the same rows (read from the store beforehand, outside the clock), read every file
back and hash it:

- ``pyarrow``: files of ``--batch-size`` rows per table, the fewest files a writer could get away with;
- ``pyarrow_same_files``: one file per tenant, table and partition (month), the files engram's layout asks for
  (``tenant=/layer=/date=``), written and read back one at a time: the floor for that layout on local storage,
  where requests do not overlap; on S3 engram's concurrent requests beat it.

Both codecs' and pandas' imports are paid before any clock starts.

    python bench/archive_throughput.py [--rows N] [--tenants N] [--days N] [--batch-size N] [--delay S] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2024, 1, 1, tzinfo=UTC)
TURNS_PER_EPISODE = 20
TABLE_DATE = {"semantic_items": "last_seen", "episodes": "ended_at"}


def fill_store(store_url: str, rows: int, tenants: int, days: int) -> dict[str, int]:
    """About ``rows`` cold rows over ``tenants`` tenants, written with the store's bulk insert: per tenant, half
    semantic items (short facts) and half turns of consolidated episodes (with their routed events)."""
    from engram.consolidate import content_hash
    from engram.store import EPISODES, EVENTS, SEMANTIC, TURNS, Store
    from engram.text import render

    store = Store(store_url)
    store.migrate()
    semantic: list[dict[str, Any]] = []
    episodes: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    per_tenant = max(2, rows // tenants)
    for t in range(tenants):
        tenant = f"bench-{t:04d}"
        facts = per_tenant // 2
        for i in range(facts):
            at = T0 + timedelta(days=i * days / facts)
            text = f"fact {i}: the user mentioned topic {i % 997} while talking about project {i % 89}"
            semantic.append(
                {
                    "tenant": tenant,
                    "item_id": f"sem-{i:09d}",
                    "fact_key": f"k{i}",
                    "version": 1,
                    "text": text,
                    "rendered": render(text, "user", at),
                    "actor": "user",
                    "tags": [],
                    "support_count": 1,
                    "first_seen": at,
                    "last_seen": at,
                    "last_accessed": None,
                    "salience": 0.5,
                    "valid_from": at,
                    "valid_to": None,
                    "superseded_by": None,
                    "embedding": None,
                    "created_run_id": None,
                    "archived_manifest_id": None,
                    "content_hash": content_hash(text, "user"),  # as consolidation writes it
                    "seq": 1,
                }
            )
        count = max(1, (per_tenant - facts) // TURNS_PER_EPISODE)
        for e in range(count):
            episode_id = f"ep-{e:06d}"
            started = T0 + timedelta(days=e * days / count)
            for p in range(TURNS_PER_EPISODE):
                at = started + timedelta(seconds=p)
                event_id = f"ev-{e:06d}-{p:03d}"
                text = f"turn {p} of episode {e}: something about topic {(e + p) % 31}"
                turns.append(
                    {
                        "tenant": tenant,
                        "episode_id": episode_id,
                        "position": p,
                        "item_id": event_id,
                        "event_id": event_id,
                        "actor": "user",
                        "text": text,
                        "at": at,
                        "tags": [],
                        "metadata": {},
                        "archived_manifest_id": None,
                        "seq": 1,
                    }
                )
                events.append(
                    {
                        "tenant": tenant,
                        "event_id": event_id,
                        "session_id": f"s{e}",
                        "actor": "user",
                        "text": text,
                        "at": at,
                        "metadata": {},
                        "received_at": at,
                        "routed_at": at,
                        "seq": 1,
                    }
                )
            episodes.append(
                {
                    "tenant": tenant,
                    "episode_id": episode_id,
                    "session_id": f"s{e}",
                    "started_at": started,
                    "ended_at": started + timedelta(seconds=TURNS_PER_EPISODE),
                    "participants": ["user"],
                    "summary": f"episode {e} about topic {e % 31}",
                    "turn_count": TURNS_PER_EPISODE,
                    "tags": [],
                    "created_run_id": None,
                    "consolidated_at": started + timedelta(hours=1),
                    "consolidated_run_id": None,
                    "lease_owner": None,
                    "lease_expires_at": None,
                    "archived_manifest_id": None,
                    "seq": 1,
                }
            )
    with store.write() as conn:
        store.insert_ignore(conn, SEMANTIC, semantic)
        store.insert_ignore(conn, EVENTS, events)
        store.insert_ignore(conn, EPISODES, episodes)
        store.insert_ignore(conn, TURNS, turns)
    store.dispose()
    return {"semantic_items": len(semantic), "episodes": len(episodes), "episode_turns": len(turns)}


def engram_archive(store_url: str, location: Any, batch_size: int) -> dict[str, Any]:
    """Archive every row with engram's protocol; rows/s over the whole move (rows as the flow counts them)."""
    from engram.archive import RetentionRules, archive_cold_items
    from engram.store import Store

    store = Store(store_url)
    in_store = _time_store_calls(store)
    rules = RetentionRules(semantic_idle=timedelta(days=1), episode_age=timedelta(days=1))
    started = time.perf_counter()
    totals = archive_cold_items(store, location, rules, T0 + timedelta(days=3650), None, batch_size)
    seconds = time.perf_counter() - started
    store.dispose()
    rows = totals.get("semantic_items", 0) + totals.get("episodes", 0) + totals.get("episode_turns", 0)
    return {
        "rows": rows,
        "manifests": totals.get("manifests", 0),
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds, 1),
        "store_seconds": round(in_store[0], 3),
    }


def _time_store_calls(store: Any) -> list[float]:
    """Time every call of the store's public methods on this instance, the outermost call only when one calls
    another: the archive's own work in the store (picking cold rows, reading them, recording manifests, tombstoning
    the rows and writing their audit trail, with the Python that builds and compares those rows). ``read`` and
    ``write`` are timed from entering their block to leaving it. Returns the one-element list the seconds add up in.
    """
    spent = [0.0]
    depth = [0]

    @contextmanager
    def outermost() -> Iterator[None]:
        depth[0] += 1
        started = time.perf_counter()
        try:
            yield
        finally:
            depth[0] -= 1
            if not depth[0]:
                spent[0] += time.perf_counter() - started

    def timed(method: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            with outermost():
                return method(*args, **kwargs)

        return call

    def timed_block(method: Any) -> Any:
        @contextmanager
        def block(*args: Any, **kwargs: Any) -> Iterator[Any]:
            with outermost(), method(*args, **kwargs) as conn:
                yield conn

        return block

    for name in dir(type(store)):
        if name.startswith("_") or name == "dispose" or not callable(getattr(type(store), name)):
            continue
        method = getattr(store, name)
        setattr(store, name, timed_block(method) if name in ("read", "write") else timed(method))
    return spent


def hot_rows(store_url: str) -> dict[str, list[dict[str, Any]]]:
    """Every archived table's rows as engram would encode them (JSON columns as text, turns with their rendering
    and their episode's date), read outside any clock."""
    from sqlalchemy import select

    from engram.archive import ARCHIVED_TABLES, _json_columns, partition
    from engram.store import Store, json_text
    from engram.text import render

    store = Store(store_url)
    out: dict[str, list[dict[str, Any]]] = {}
    with store.read() as conn:
        for name, table in ARCHIVED_TABLES.items():
            out[name] = [dict(r._mapping) for r in conn.execute(select(table).order_by(*table.primary_key.columns))]
    store.dispose()
    ended = {(e["tenant"], e["episode_id"]): e["ended_at"] for e in out["episodes"]}
    for name, rows in out.items():
        json_cols = _json_columns(name)
        for r in rows:
            for c in json_cols:
                r[c] = json_text(r[c], sort_keys=True)
            if name == "episode_turns":
                r["rendered"] = render(r["text"], r["actor"], r["at"])
                r["_date"] = partition(ended[(r["tenant"], r["episode_id"])])
            else:
                r["_date"] = partition(r[TABLE_DATE[name]])
    return out


def pyarrow_raw(
    rows_by_table: dict[str, list[dict[str, Any]]], location: Any, batch_size: int, same_files: bool, name: str
) -> dict[str, Any]:
    """The rows written with pyarrow (zstd) as files of ``batch_size`` rows, or one file per tenant, table and
    partition (``same_files``), then every file read back and hashed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from engram.archive import archive_schema

    fs = location.filesystem()
    root = f"{location.bucket}/{location.prefix}/{name}" if location.is_s3 else f"{location.prefix}/{name}"
    parts: list[tuple[str, list[dict[str, Any]]]] = []
    for table_name, rows in sorted(rows_by_table.items()):
        if same_files:
            groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for r in rows:
                groups.setdefault((r["tenant"], r["_date"]), []).append(r)
            parts += [(table_name, g) for _, g in sorted(groups.items())]
        else:
            parts += [(table_name, rows[s : s + batch_size]) for s in range(0, len(rows), batch_size)]
    if not location.is_s3:
        fs.makedirs(root, exist_ok=True)
    started = time.perf_counter()
    paths = []
    for n, (table_name, part) in enumerate(parts):
        table = pa.Table.from_pylist(part, schema=archive_schema(table_name))
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        path = f"{root}/part-{n}.parquet"
        fs.pipe_file(path, buf.getvalue())
        paths.append(path)
    written = time.perf_counter() - started
    count = 0
    for path in paths:
        data = fs.cat_file(path)
        hashlib.sha256(data).hexdigest()
        count += pq.read_table(io.BytesIO(data)).num_rows
    seconds = time.perf_counter() - started
    return {
        "rows": count,
        "files": len(paths),
        "seconds": round(seconds, 3),
        "write_seconds": round(written, 3),
        "rows_per_s": round(count / seconds, 1),
    }


def warm_up() -> None:
    """Pay the one-off imports (pyarrow's pandas shim, the codecs) before any clock starts."""
    from engram.archive import encode_parquet

    now = datetime.now(UTC)
    row = {"tenant": "w", "item_id": "w", "fact_key": "w", "text": "w", "rendered": "w", "actor": "w", "tags": []}
    row.update(first_seen=now, last_seen=now, valid_from=now, version=1, support_count=1, salience=0.0, seq=0)
    for n in (1, 100):
        encode_parquet("semantic_items", [row] * n)


def s3_archive(endpoint: str, bucket: str) -> Any:
    """The archive location ``s3://BUCKET/archive`` on the S3 server at ``endpoint`` (moto's accepts any keys)."""
    from pydantic import SecretStr

    from engram.archive import ArchiveLocation

    return ArchiveLocation(
        f"s3://{bucket}/archive",
        endpoint=endpoint,
        region="us-east-1",
        access_key=SecretStr("bench"),
        secret_key=SecretStr("bench"),
    )


def measure(
    kind: str, rows: int, tenants: int, days: int, batch_size: int, tmp: Path, endpoint: str | None
) -> dict[str, Any]:
    from engram.archive import ArchiveLocation, provision_archive

    if kind == "local":
        location = ArchiveLocation((tmp / kind / "archive").as_uri())
    else:
        location = s3_archive(endpoint or "", f"bench-{int(time.time() * 1000)}")
    provision_archive(location)
    store_url = f"sqlite:///{tmp / kind / 'engram.db'}"
    filled = fill_store(store_url, rows, tenants, days)
    source = hot_rows(store_url)
    raw = pyarrow_raw(source, location, batch_size, False, "raw")
    same = pyarrow_raw(source, location, batch_size, True, "raw-same-files")
    engram = engram_archive(store_url, location, batch_size)
    return {
        "filled": filled,
        "engram": engram,
        "pyarrow": raw,
        "pyarrow_same_files": same,
        "ratio": round(engram["rows_per_s"] / raw["rows_per_s"], 3),
        "ratio_same_files": round(engram["rows_per_s"] / same["rows_per_s"], 3),
        # engram's rate were its database work all it did, over the large-file reference
        "store_bound_ratio": round(engram["rows"] / engram["store_seconds"] / raw["rows_per_s"], 3),
    }


# The storages measured, in the order the report shows them.
STORAGES = ("local", "s3_loopback", "s3_delayed")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="archival rows/s next to pyarrow's own write and read-back")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--days", type=int, default=90, help="the days each tenant's rows are dated over")
    parser.add_argument("--batch-size", type=int, default=5_000)
    parser.add_argument("--local-only", action="store_true", help="skip the S3 server on loopback")
    parser.add_argument(
        "--delay", type=float, default=0.01, help="seconds the proxy holds each chunk it forwards (0: no s3_delayed)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "archive_throughput.json",
        help="where to write the figures (bench/report.py puts them in BENCHMARKS.md)",
    )
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    warm_up()
    from moto.server import ThreadedMotoServer

    from tests.reliability.s3_proxy import FaultyProxy  # the suite's own loopback proxy, in its "slow" mode

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    proxy = FaultyProxy(f"http://{host}:{port}")
    result: dict[str, Any] = {
        "rows": args.rows,
        "tenants": args.tenants,
        "days": args.days,
        "batch_size": args.batch_size,
        "delay_s": args.delay,
    }
    sizes = (args.rows, args.tenants, args.days, args.batch_size)
    try:
        with tempfile.TemporaryDirectory(prefix="engram-archive-bench-") as tmp:
            result["local"] = measure("local", *sizes, Path(tmp), None)
            if not args.local_only:
                result["s3_loopback"] = measure("s3", *sizes, Path(tmp), f"http://{host}:{port}")
                if args.delay > 0:
                    proxy.set("slow", args.delay)
                    result["s3_delayed"] = measure("s3_delayed", *sizes, Path(tmp), proxy.endpoint)
                    result["s3_delayed"]["requests_through_proxy"] = proxy.requests
    finally:
        proxy.close()
        server.stop()
    result["load_average_after"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for kind in STORAGES:
            if kind not in result:
                continue
            r = result[kind]
            print(
                f"{kind:>12}: engram {r['engram']['rows_per_s']:>8.0f} rows/s ({r['engram']['manifests']} manifests); "
                f"pyarrow write+read {r['pyarrow']['rows_per_s']:>8.0f} rows/s ({r['pyarrow']['files']} files, "
                f"ratio {r['ratio']}), same files {r['pyarrow_same_files']['rows_per_s']:>8.0f} rows/s "
                f"({r['pyarrow_same_files']['files']} files, ratio {r['ratio_same_files']})"
            )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
