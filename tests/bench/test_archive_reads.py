"""bench/archive_reads.py runs end to end at a small size and writes the figures BENCHMARKS.md reads."""

from __future__ import annotations

import json
from pathlib import Path

from bench import archive_reads
from bench.report import archive_reads_section


def test_the_read_benchmark_measures_each_way_on_both_servers_and_renders(tmp_path: Path) -> None:
    out = tmp_path / "archive_reads.json"
    args = ["--rows", "200", "--days", "150", "--repeats", "1", "--delay", "0.001", "--out", str(out)]
    assert archive_reads.main(args) == 0
    data = json.loads(out.read_text())
    assert data["files"] > 3 and data["manifest_rows"] > 0  # a file per table and month
    for kind in ("direct", "delayed"):
        figures = data[kind]
        assert all(figures[k] > 0 for k in ("fetch_s", "engram_s", "one_at_a_time_s")), figures
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "archive_reads.json").write_text(out.read_text())
    lines = archive_reads_section(tmp_path / "results")
    assert any(line.startswith("| loopback, delayed | ") for line in lines)
