"""bench/archive_throughput.py runs end to end at a small size, on every storage, and renders."""

from __future__ import annotations

import json
from pathlib import Path

from bench import archive_throughput
from bench.report import archive_section


def test_the_archive_benchmark_measures_engram_and_both_references_on_each_storage(tmp_path: Path) -> None:
    out = tmp_path / "archive_throughput.json"
    args = ["--rows", "300", "--tenants", "3", "--days", "60", "--batch-size", "100", "--delay", "0.001"]
    assert archive_throughput.main([*args, "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    for kind in archive_throughput.STORAGES:
        d = data[kind]
        filled = sum(d["filled"].values())
        # every row moved by engram and by both references, each read back
        assert d["engram"]["rows"] == d["pyarrow"]["rows"] == d["pyarrow_same_files"]["rows"] == filled, d
        assert d["pyarrow_same_files"]["files"] > d["pyarrow"]["files"] >= 3, d
        assert d["engram"]["manifests"] >= 6, d  # a manifest per tenant and layer, batches of 100 keys
        assert 0 < d["engram"]["store_seconds"] < d["engram"]["seconds"], d
    assert data["s3_delayed"]["requests_through_proxy"] > data["s3_delayed"]["pyarrow_same_files"]["files"]
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "archive_throughput.json").write_text(out.read_text())
    lines = archive_section(tmp_path / "results")
    assert [line.split(" | ")[0] for line in lines if line.startswith("| s3")] == ["| s3_loopback", "| s3_delayed"]
    assert any("1 ms" in line for line in lines)


def test_the_store_timer_counts_blocks_and_nested_calls_once(tmp_path: Path) -> None:
    """A ``write`` block is timed from entering it to leaving it, and a block or method of the store inside it is not
    timed a second time."""
    import time

    from engram.store import Store

    store = Store(f"sqlite:///{tmp_path / 'engram.db'}")
    store.migrate()
    spent = archive_throughput._time_store_calls(store)
    started = time.perf_counter()
    with store.write():
        with store.read():  # nested: counted twice, the sum would pass the wall time
            store.manifests(None)
            time.sleep(0.05)
        time.sleep(0.05)
    whole = time.perf_counter() - started
    store.dispose()
    assert 0.1 <= spent[0] <= whole
