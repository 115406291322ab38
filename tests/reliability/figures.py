"""The figures of a reliability run: trials, faults injected, bad inputs tried, items lost.

Tests record what they do with the ``record_*`` functions (plain counters, harmless when nobody reads them). Loaded
as a pytest plugin (``-p tests.reliability.figures``, as ``make soak`` does), this module also counts every
Hypothesis example and every test outcome, and writes the figures as JSON at the end of the session to
``ENGRAM_RELIABILITY_JSON`` (default ``bench/results/reliability.json``); ``tests/reliability/report.py`` turns that
JSON into ``RELIABILITY.md``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_JSON = REPO / "bench" / "results" / "reliability.json"

TRIALS: dict[str, Counter[str]] = defaultdict(Counter)  # flow -> {"runs", "killed_midway", "finished_first"}
FAULTS: Counter[str] = Counter()
CHECKS: Counter[str] = Counter()  # "checks", "items_lost"
EXAMPLES: Counter[str] = Counter()  # test name -> Hypothesis examples run
LOAD: dict[str, Any] = {}
OUTCOMES: dict[str, Counter[str]] = defaultdict(Counter)  # category -> outcome -> tests

# The category of each file's tests, as the acceptance text names them.
CATEGORIES = {
    "test_crashes": "crashes",
    "test_crash_and_concurrency": "crashes",
    "test_forget_crash": "crashes",
    "test_archive_flows": "object storage faults",
    "test_object_storage_faults": "object storage faults",
    "test_database_faults": "database faults",
    "test_bad_input": "bad input",
    "test_ingest_gate": "bad input",
    "test_concurrency": "concurrency",
    "test_isolation": "isolation and secrets",
    "test_paths_and_secrets": "isolation and secrets",
    "test_load": "load",
}


def record_trial(flow: str, killed_midway: bool) -> None:
    """One crash trial of ``flow``: SIGKILL while it ran (``killed_midway``) or after it had already finished."""
    TRIALS[flow]["runs"] += 1
    TRIALS[flow]["killed_midway" if killed_midway else "finished_first"] += 1
    FAULTS["sigkill" if killed_midway else "sigkill_after_finish"] += 1


def record_fault(kind: str, n: int = 1) -> None:
    FAULTS[kind] += n


def record_check(lost: int) -> None:
    """One run of the invariant checker and the events it found lost."""
    CHECKS["checks"] += 1
    CHECKS["items_lost"] += lost


def record_load(**figures: Any) -> None:
    LOAD.update(figures)


def _count_example(observation: Any, *_: Any) -> None:
    if getattr(observation, "type", None) == "test_case" and getattr(observation, "status", None) != "gave_up":
        EXAMPLES[str(getattr(observation, "property", "?"))] += 1


_started = time.time()


def pytest_configure(config: pytest.Config) -> None:
    global _started
    _started = time.time()
    from hypothesis.internal.observability import add_observability_callback

    add_observability_callback(_count_example, all_threads=True)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call" and not (report.when == "setup" and report.outcome != "passed"):
        return
    module = Path(report.fspath).stem
    category = CATEGORIES.get(module, module)
    outcome = "xfailed" if hasattr(report, "wasxfail") else report.outcome
    OUTCOMES[category][outcome] += 1


def figures() -> dict[str, Any]:
    """Every figure recorded so far, as the JSON document."""
    tests = Counter()
    for counts in OUTCOMES.values():
        tests.update(counts)
    return {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - _started, 1),
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
        "settings": {
            "ENGRAM_SOAK_TRIALS": os.environ.get("ENGRAM_SOAK_TRIALS", "(default)"),
            "ENGRAM_LOAD_EVENTS": os.environ.get("ENGRAM_LOAD_EVENTS", "(default)"),
        },
        "tests": dict(tests),
        "tests_by_category": {k: dict(v) for k, v in sorted(OUTCOMES.items())},
        "trials": {k: dict(v) for k, v in sorted(TRIALS.items())},
        "trials_total": sum(v["runs"] for v in TRIALS.values()),
        "faults": dict(sorted(FAULTS.items())),
        "faults_total": sum(FAULTS.values()),
        "bad_inputs": {"hypothesis_examples": sum(EXAMPLES.values()), "by_test": dict(sorted(EXAMPLES.items()))},
        "invariant_checks": CHECKS["checks"],
        "items_lost": CHECKS["items_lost"],
        "load": LOAD,
    }


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = Path(os.environ.get("ENGRAM_RELIABILITY_JSON", str(DEFAULT_JSON)))
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = figures()
    doc["exit_status"] = int(exitstatus)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
