"""The monitor benchmark measures the history it describes, and files each run beside the others."""

from __future__ import annotations

import json
from pathlib import Path

from bench.monitor_counts import main


def test_two_labelled_runs_share_a_file_and_count_the_history_they_wrote(tmp_path: Path) -> None:
    out = tmp_path / "monitor.json"
    for label in ("before", "after"):
        assert main(["--label", label, "--sizes", "2000", "--repeats", "1", "--out", str(out)]) == 0

    runs = json.loads(out.read_text())["runs"]
    assert list(runs) == ["before", "after"]
    (entry,) = runs["after"]["sizes"]
    # 2,000 events: 100 episodes, 1,600 facts (every tenth closed), 90% of each archived.
    assert entry["layers"] == {
        "layer.sensory": 0,
        "layer.working": 0,
        "layer.episodic": 10,
        "layer.semantic": 144,
        "layer.archival": 1_440 + 1_800,
        "layer.quarantine": 0,
    }
    assert entry["counts"]["events"] == 2_000 and entry["counts"]["semantic_versions"] == 160
    assert entry["monitor_ms"] > 0 and entry["every_count_ms"] > 0
    # The monitor's count statements: sensory, working, episodic, semantic, archival (facts, turns), quarantine; not
    # every event, version and turn.
    assert len(entry["plans"]) == 7 and not any("ix_events_seq" in plan for plan in entry["plans"])
