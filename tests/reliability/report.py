"""Writes RELIABILITY.md from the figures of the last reliability run (bench/results/reliability.json).

Usage: ``python tests/reliability/report.py [figures.json] [RELIABILITY.md]``; ``make soak`` runs it after the tests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _by_category(doc: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Outcomes by category; a file recorded under its own name before it had a category is folded into it."""
    sys.path.insert(0, str(REPO))
    from tests.reliability.figures import CATEGORIES

    merged: dict[str, dict[str, int]] = {}
    for name, counts in doc.get("tests_by_category", {}).items():
        into = merged.setdefault(CATEGORIES.get(name, name), {})
        for k, v in counts.items():
            into[k] = into.get(k, 0) + v
    return merged


def render(doc: dict[str, Any]) -> str:
    tests = doc.get("tests", {})
    load = doc.get("load") or {}
    lines = [
        "# engram: reliability figures",
        "",
        "Written by `tests/reliability/report.py` from `bench/results/reliability.json`, the figures the last",
        "`make soak` recorded (`pytest -m reliability` with the soak settings below). Do not edit by hand.",
        "",
        f"- finished: {doc.get('finished_at')} after {doc.get('duration_s')} s; exit status {doc.get('exit_status')}",
        f"- machine: {doc.get('machine', {}).get('nproc')} cores, Python {doc.get('machine', {}).get('python')}, "
        f"load average at the end {doc.get('machine', {}).get('load_avg')}",
        f"- settings: {', '.join(f'{k}={v}' for k, v in doc.get('settings', {}).items())}",
        "",
        "## Summary",
        "",
        *_table(
            ["figure", "value"],
            [
                ["reliability tests passed / failed / skipped / xfailed"]
                + [
                    " / ".join(str(tests.get(k, 0)) for k in ("passed", "failed", "skipped", "xfailed")),
                ],
                ["crash trials (SIGKILL of a real flow process, then a rerun)", doc.get("trials_total", 0)],
                ["faults injected, all kinds", doc.get("faults_total", 0)],
                ["bad inputs tried (Hypothesis examples)", doc.get("bad_inputs", {}).get("hypothesis_examples", 0)],
                ["invariant checks run", doc.get("invariant_checks", 0)],
                ["**items lost**", f"**{doc.get('items_lost', 0)}**"],
            ],
        ),
        "",
        "## Tests by category",
        "",
        *_table(
            ["category", "passed", "failed", "skipped", "xfailed"],
            [
                [cat, *(counts.get(k, 0) for k in ("passed", "failed", "skipped", "xfailed"))]
                for cat, counts in sorted(_by_category(doc).items())
            ],
        ),
        "",
        "## Crash trials by flow",
        "",
        "A trial kills the flow's process after a seeded random delay from the start of its run; `after it finished`",
        "counts the kills whose delay outlasted the run (the rerun and the checks still ran).",
        "",
        *_table(
            ["flow", "trials", "killed while running", "after it finished"],
            [
                [flow, t.get("runs", 0), t.get("killed_midway", 0), t.get("finished_first", 0)]
                for flow, t in doc.get("trials", {}).items()
            ],
        ),
        "",
        "## Faults injected by kind",
        "",
        *_table(["kind", "count"], [[k, v] for k, v in doc.get("faults", {}).items()]),
        "",
        "## Bad inputs by test",
        "",
        *_table(["test", "examples"], [[k, v] for k, v in doc.get("bad_inputs", {}).get("by_test", {}).items()]),
        "",
        "## Load",
        "",
    ]
    if load:
        lines += _table(["figure", "value"], [[k, v] for k, v in load.items()])
    else:
        lines.append("The load test did not run.")
    return "\n".join(lines) + "\n"


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "bench" / "results" / "reliability.json"
    dest = Path(sys.argv[2]) if len(sys.argv) > 2 else REPO / "RELIABILITY.md"
    dest.write_text(render(json.loads(src.read_text(encoding="utf-8"))), encoding="utf-8")
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
