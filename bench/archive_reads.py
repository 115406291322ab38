"""Reading an archived manifest back (``get`` and ``rehydrate`` of archived items go through it): seconds of
``engram.archive.read_manifest_rows`` (fetch, sha256 check, decode) next to a plain fetch of the same files, on an
S3 server on loopback (moto's) reached directly and through a proxy that delays what it forwards, as a network does.

One tenant's rows, dated over ``--days`` days, are archived by engram's own archive step in one batch, so that one
manifest per layer holds a file per table and month. Each figure is the median of ``--repeats`` reads of the
largest manifest, measured in the same run:

- ``fetch``: fsspec's ``cat_ranges`` of every file of the manifest, all at once (the fetch alone, no check);
- ``engram``: ``read_manifest_rows`` as it is (``READ_GROUP`` files fetched at a time);
- ``one_at_a_time``: the same with ``READ_GROUP = 1``, one request after another.

    python bench/archive_reads.py [--rows N] [--days N] [--delay SECONDS] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.archive_throughput import engram_archive, fill_store, s3_archive  # noqa: E402


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 4)


def measure(location: Any, manifest: dict[str, Any], repeats: int) -> dict[str, Any]:
    from engram import archive

    paths = [archive._abs(location, e["path"]) for e in manifest["files"]]
    fs = location.filesystem()

    def fetch() -> list[bytes]:
        return fs.cat_ranges(paths, None, None, on_error="raise")

    def read() -> dict[str, list[dict[str, Any]]]:
        return archive.read_manifest_rows(location, manifest)

    expected = read()  # also warms the connection pool
    if [len(b) for b in fetch()] != [e["bytes"] for e in manifest["files"]]:
        raise SystemExit("the plain fetch did not return every file whole")
    out = {"fetch_s": median_seconds(fetch, repeats), "engram_s": median_seconds(read, repeats)}
    group = archive.READ_GROUP
    try:
        archive.READ_GROUP = 1
        out["one_at_a_time_s"] = median_seconds(read, repeats)
        one_at_a_time = read()
    finally:
        archive.READ_GROUP = group
    if one_at_a_time != expected or read() != expected:
        raise SystemExit("a later read gave other rows than the first")
    out["engram_over_fetch"] = round(out["engram_s"] / out["fetch_s"], 2)
    out["one_at_a_time_over_engram"] = round(out["one_at_a_time_s"] / out["engram_s"], 2)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="reading an archived manifest back, next to a plain fetch")
    parser.add_argument("--rows", type=int, default=4_000)
    parser.add_argument("--days", type=int, default=730, help="the days the tenant's rows are dated over")
    parser.add_argument("--delay", type=float, default=0.02, help="seconds the proxy holds each chunk it forwards")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "archive_reads.json",
        help="where to write the figures (bench/report.py puts them in BENCHMARKS.md)",
    )
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    from moto.server import ThreadedMotoServer

    from engram.archive import provision_archive
    from engram.store import Store
    from tests.reliability.s3_proxy import FaultyProxy  # the suite's own loopback proxy, in its "slow" mode

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    direct_endpoint = f"http://{host}:{port}"
    proxy = FaultyProxy(direct_endpoint)
    bucket = f"bench-reads-{int(time.time() * 1000)}"
    result: dict[str, Any] = {"rows": args.rows, "days": args.days, "delay_s": args.delay, "repeats": args.repeats}
    try:
        with tempfile.TemporaryDirectory(prefix="engram-reads-bench-") as tmp:
            direct = s3_archive(direct_endpoint, bucket)
            provision_archive(direct)
            store_url = f"sqlite:///{Path(tmp) / 'engram.db'}"
            fill_store(store_url, args.rows, 1, args.days)
            engram_archive(store_url, direct, args.rows * 2)
            store = Store(store_url)
            (tenant,) = {m["tenant"] for m in store.manifests(None, ["committed"])}
            manifest = max(store.manifests(tenant, ["committed"]), key=lambda m: len(m["files"]))
            store.dispose()
            result["files"] = len(manifest["files"])
            result["manifest_rows"] = sum(e["rows"] for e in manifest["files"])
            result["direct"] = measure(direct, manifest, args.repeats)
            proxy.set("slow", args.delay)
            result["delayed"] = measure(s3_archive(proxy.endpoint, bucket), manifest, args.repeats)
    finally:
        proxy.close()
        server.stop()
    result["load_average_after"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
