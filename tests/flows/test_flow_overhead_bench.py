"""bench/flow_overhead.py runs end to end and writes the figures BENCHMARKS.md reads."""

from __future__ import annotations

import json
from pathlib import Path

from bench import flow_overhead
from bench.report import flow_overhead_section


def test_the_orchestration_benchmark_times_both_parents_and_renders(tmp_path: Path) -> None:
    out = tmp_path / "results" / "flow_overhead.json"
    assert flow_overhead.main(["--repeats", "1", "--out", str(out), "--note", "a test run"]) == 0
    data = json.loads(out.read_text())
    assert set(data["median_s"]) == {"lifecycle", "subflows_with_own_heartbeats"}
    assert all(len(runs) == 1 and runs[0] > 0 for runs in data["runs_s"].values())
    assert data["heartbeat_frequency_s"]  # heartbeats on, as Prefect ships them: what the comparison is about
    lines = flow_overhead_section(out.parent)
    assert any(line.startswith("| the same subflows, each with its heartbeat | ") for line in lines)
    assert "- a test run" in lines
