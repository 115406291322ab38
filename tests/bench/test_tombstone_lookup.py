"""The tombstone benchmark measures what it names: both revisions, every group found and moved whole."""

from __future__ import annotations

import json
from pathlib import Path

from bench.tombstone_lookup import main


def test_a_small_run_finds_each_group_through_the_index_only_at_the_head(tmp_path: Path) -> None:
    out = tmp_path / "tombstones.json"

    assert main(["--sizes", "4000", "--manifest-rows", "50", "--group", "4", "--repeats", "3", "--out", str(out)]) == 0

    (entry,) = json.loads(out.read_text())["sizes"]
    # 90% of 4,000 facts in manifests of 50: 72 manifests; the run checks each group's rows itself.
    assert entry["0010"]["manifests"] == entry["head"]["manifests"] == 72
    assert all("ix_semantic_archived" in line for line in entry["head"]["plan"]) and len(entry["head"]["plan"]) == 2
    assert not any("ix_semantic_archived" in line for line in entry["0010"]["plan"])
    assert entry["head"]["read_ms"] > 0 and entry["0010"]["commit_ms"] > 0
