"""bench/flow_overhead.py runs end to end and writes the figures BENCHMARKS.md reads; here on the session's Prefect
server (tests/flows/conftest.py), which runs flows without heartbeats: the benchmark turns Prefect's default back on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import flow_overhead
from bench.report import flow_overhead_section


def test_the_orchestration_benchmark_times_both_parents_and_renders(tmp_path: Path) -> None:
    out = tmp_path / "results" / "flow_overhead.json"
    args = ["--repeats", "1", "--on-current-server", "--out", str(out), "--note", "a test run"]
    assert flow_overhead.main(args) == 0
    data = json.loads(out.read_text())
    assert set(data["median_s"]) == {"lifecycle", "subflows_with_own_heartbeats"}
    assert all(len(runs) == 1 and runs[0] > 0 for runs in data["runs_s"].values())
    assert data["heartbeat_frequency_s"]  # heartbeats on, as Prefect ships them: what the comparison is about
    assert data["prefect_server"] == "current"
    lines = flow_overhead_section(out.parent)
    assert any(line.startswith("| the same subflows, each with its heartbeat | ") for line in lines)
    assert "- a test run" in lines


def test_on_the_current_server_needs_a_server_to_be_named() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: None}), pytest.raises(SystemExit, match="PREFECT_API_URL"):
        flow_overhead.measure(1, on_current_server=True)
