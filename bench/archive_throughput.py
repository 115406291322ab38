"""Archival throughput: rows/s of engram's archive (write, read back and verify, tombstone) next to pyarrow's own
write and read-back of the same rows to the same storage, measured in one run.

Storage: a local folder and an S3 server on loopback (moto's ``ThreadedMotoServer``). The rows are semantic items
written straight into a fresh SQLite store, all cold; engram archives them in batches of ``--batch-size``.

    python bench/archive_throughput.py [--rows N] [--batch-size N] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def fill_store(store_url: str, rows: int) -> None:
    """``rows`` semantic items of one tenant, each a short fact, written with the store's bulk insert."""
    from engram.store import SEMANTIC, Store
    from engram.text import render

    store = Store(store_url)
    store.migrate()
    items = []
    for i in range(rows):
        at = T0 + timedelta(minutes=i)
        text = f"fact {i}: the user mentioned topic {i % 997} while talking about project {i % 89}"
        items.append(
            {
                "tenant": "bench",
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
                "seq": 1,
            }
        )
    with store.write() as conn:
        store.insert_ignore(conn, SEMANTIC, items)
    store.dispose()


def engram_archive(store_url: str, location: Any, batch_size: int) -> dict[str, float]:
    """Archive every row with engram's protocol; rows/s over the whole move."""
    from engram.archive import RetentionRules, archive_cold_items
    from engram.store import Store

    store = Store(store_url)
    started = time.perf_counter()
    totals = archive_cold_items(
        store, location, RetentionRules(semantic_idle=timedelta(days=1)), T0 + timedelta(days=3650), None, batch_size
    )
    seconds = time.perf_counter() - started
    store.dispose()
    rows = totals.get("semantic_items", 0)
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds, 1)}


def pyarrow_raw(store_url: str, location: Any, batch_size: int) -> dict[str, float]:
    """The same rows (read from the store) written with pyarrow in the same batches, then read back and hashed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from engram.archive import archive_schema
    from engram.store import SEMANTIC, Store

    store = Store(store_url)
    with store.read() as conn:
        from sqlalchemy import select

        rows = [dict(r._mapping) for r in conn.execute(select(SEMANTIC).where(SEMANTIC.c.tenant == "bench"))]
    store.dispose()
    schema = archive_schema("semantic_items")
    for r in rows:
        r["tags"] = json.dumps(r["tags"])
    fs = location.filesystem()
    root = f"{location.bucket}/{location.prefix}/raw" if location.is_s3 else f"{location.prefix}/raw"
    if not location.is_s3:
        fs.makedirs(root, exist_ok=True)
    started = time.perf_counter()
    paths = []
    for n, start in enumerate(range(0, len(rows), batch_size)):
        table = pa.Table.from_pylist(rows[start : start + batch_size], schema=schema)
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
        "seconds": round(seconds, 3),
        "write_seconds": round(written, 3),
        "rows_per_s": round(count / seconds, 1),
    }


def measure(kind: str, rows: int, batch_size: int, tmp: Path, endpoint: str | None) -> dict[str, Any]:
    from engram.archive import ArchiveLocation, provision_archive

    if kind == "local":
        location = ArchiveLocation((tmp / kind / "archive").as_uri())
    else:
        from pydantic import SecretStr

        location = ArchiveLocation(
            f"s3://bench-{int(time.time() * 1000)}/archive",
            endpoint=endpoint,
            region="us-east-1",
            access_key=SecretStr("bench"),
            secret_key=SecretStr("bench"),
        )
    provision_archive(location)
    store_url = f"sqlite:///{tmp / kind / 'engram.db'}"
    fill_store(store_url, rows)
    raw = pyarrow_raw(store_url, location, batch_size)
    engram = engram_archive(store_url, location, batch_size)
    return {"engram": engram, "pyarrow": raw, "ratio": round(engram["rows_per_s"] / raw["rows_per_s"], 3)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="archival rows/s next to pyarrow's own write and read-back")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=20_000)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        with tempfile.TemporaryDirectory(prefix="engram-archive-bench-") as tmp:
            result = {
                "rows": args.rows,
                "batch_size": args.batch_size,
                "local": measure("local", args.rows, args.batch_size, Path(tmp), None),
                "s3_loopback": measure("s3", args.rows, args.batch_size, Path(tmp), f"http://{host}:{port}"),
            }
    finally:
        server.stop()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for kind in ("local", "s3_loopback"):
            r = result[kind]
            print(
                f"{kind:>12}: engram {r['engram']['rows_per_s']:>10.0f} rows/s, "
                f"pyarrow write+read {r['pyarrow']['rows_per_s']:>10.0f} rows/s (ratio {r['ratio']})"
            )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
