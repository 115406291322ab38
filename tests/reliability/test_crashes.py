"""SIGKILL of a real subprocess running each flow at a random point, then a rerun: the invariant checker proves that
nothing was lost or duplicated, and each flow's own promise holds (archived rows readable, forgotten ones gone).

The kill comes after a seeded random delay from the moment the run starts; the seed is in every failure message,
and ``ENGRAM_CRASH_SEED`` replays it. ``ENGRAM_SOAK_TRIALS`` sets the trials per flow (one here, 20 in
``make soak``); trials alternate between SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import random
import time
import zlib
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from engram import Memory
from engram.archive import ArchiveLocation, manifest_path
from engram.store import EPISODES, SEMANTIC
from engram.text import mentions
from tests.conftest import T0, fresh_store
from tests.engram.archive_helpers import archive_objects, contents
from tests.reliability import figures
from tests.reliability.invariants import check_invariants
from tests.reliability.scenario import (
    AS_OF,
    LATER,
    SUBJECT,
    TENANT,
    FlowProcess,
    archive_env,
    memory_at,
    observe,
    run_flows_upto,
    soak_trials,
    subject_left,
    use_archive,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

SESSIONS = 8
TASK_ITEMS = 12
BAD_ROWS = 2
LEASE_SECONDS = 1.0
BASE_SEED = int(os.environ.get("ENGRAM_CRASH_SEED", "20261125"))
# Where the forget's archive half-way point lies: episodes that ended before it are archived, the others stay hot.
FORGET_ARCHIVE_AS_OF = T0 + timedelta(days=SESSIONS // 2 + 30)


class Case:
    """How to bring memory to the point where ``flow`` has work, run it, and check that it finished."""

    def __init__(self, flow: str, prepare_upto: str | None, batch_size: int, window: float, archive: bool = False):
        self.flow, self.prepare_upto, self.batch_size, self.window, self.archive = (
            flow,
            prepare_upto,
            batch_size,
            window,
            archive,
        )


# window: the seconds after the run starts within which the kill falls, about the flow's own duration here, so that
# most kills land while it works (the figures count the ones that came after it had finished).
CASES = {
    "ingest": Case("ingest", None, 8, 6.0),
    "close_sessions": Case("close_sessions", "close_sessions", 1, 6.0),
    "expire_working": Case("expire_working", "consolidate", 1, 5.0),
    "consolidate": Case("consolidate", "consolidate", 1, 8.0),
    "lifecycle": Case("lifecycle", None, 8, 14.0),
    "archive": Case("archive", "archive", 1, 8.0, archive=True),
    "rehydrate": Case("rehydrate", "rehydrate", 1, 6.0, archive=True),
    "compact_archive": Case("compact_archive", "compact_archive", 1, 6.0, archive=True),
    "forget": Case("forget", "forget", 1, 5.0, archive=True),
}


def _seed(flow: str, trial: int) -> int:
    return BASE_SEED ^ zlib.crc32(f"{flow}:{trial}".encode())


def _prepare(case: Case, memory: Memory) -> None:
    from flows.archive import archive

    url = memory.store_url
    if case.prepare_upto in (None, "ingest", "close_sessions", "consolidate", "archive"):
        run_flows_upto(url, case.prepare_upto or "ingest")
    elif case.prepare_upto == "rehydrate":
        run_flows_upto(url, "archive")
        archive(store_url=url, as_of=LATER)
    elif case.prepare_upto == "compact_archive":
        # One archived row per archive batch: many small manifests per layer, for the compaction to merge.
        run_flows_upto(url, "archive")
        archive(store_url=url, as_of=LATER, batch_size=1)
        layers = Counter(m["layer"] for m in memory.store.manifests(TENANT, ["committed"]))
        assert min(layers.values()) >= 8, layers
    elif case.prepare_upto == "forget":
        run_flows_upto(url, "archive")
        archive(store_url=url, as_of=FORGET_ARCHIVE_AS_OF)


def _args(case: Case) -> tuple[str, ...]:
    args = ("--batch-size", str(case.batch_size))
    if case.flow in ("rehydrate", "compact_archive"):
        args += ("--tenant", TENANT)
    if case.flow == "forget":
        args += ("--tenant", TENANT, "--subject", SUBJECT)
    return args


def _as_of(case: Case) -> Any:
    return LATER if case.flow in ("archive", "rehydrate", "compact_archive") else AS_OF


def _rerun(case: Case, url: str) -> None:
    """The interrupted flow again, in process, after its leases expired."""
    from flows.archive import archive, compact_archive, rehydrate
    from flows.consolidate import consolidate
    from flows.forget import forget
    from flows.ingest import ingest
    from flows.lifecycle import lifecycle
    from flows.sessions import close_sessions, expire_working

    time.sleep(LEASE_SECONDS + 0.2)
    runs = {
        "ingest": lambda: ingest(store_url=url, as_of=AS_OF),
        "close_sessions": lambda: close_sessions(store_url=url, as_of=AS_OF),
        "expire_working": lambda: expire_working(store_url=url, as_of=AS_OF),
        "consolidate": lambda: consolidate(store_url=url, as_of=AS_OF),
        "lifecycle": lambda: lifecycle(store_url=url, as_of=AS_OF),
        "archive": lambda: archive(store_url=url, as_of=LATER),
        "rehydrate": lambda: rehydrate(store_url=url, as_of=LATER, tenant=TENANT),
        "compact_archive": lambda: compact_archive(store_url=url, as_of=LATER, tenant=TENANT),
        "forget": lambda: forget(tenant=TENANT, subject=SUBJECT, store_url=url, as_of=AS_OF),
    }
    runs[case.flow]()


def _count(memory: Memory, query: Any) -> int:
    with memory.store.read() as conn:
        return conn.execute(query).scalar_one()


def _check_finished(case: Case, memory: Memory, location: ArchiveLocation | None, report: Any, before: Any) -> None:
    """What each flow promises once it has run to the end."""
    places = report.places
    episodes = _count(memory, select(func.count()).select_from(EPISODES).where(EPISODES.c.tenant == TENANT))
    if case.flow in ("ingest", "lifecycle"):
        assert places["sensory"] == 0 and places["quarantine"] == BAD_ROWS, places
    if case.flow in ("close_sessions", "lifecycle"):
        assert episodes == SESSIONS, episodes
    if case.flow in ("expire_working", "lifecycle"):
        assert places["discarded"] == TASK_ITEMS and places["working"] == 0, places
    if case.flow in ("consolidate", "lifecycle"):
        pending = select(func.count()).select_from(EPISODES).where(EPISODES.c.consolidated_at.is_(None))
        assert _count(memory, pending) == 0 and report.facts > 0
    if case.flow == "archive":
        assert {m["status"] for m in memory.store.manifests(TENANT)} == {"committed"}
        assert memory.stats(TENANT)["semantic_versions"] == 0
        assert contents(memory.store, location, TENANT) == before
    if case.flow == "rehydrate":
        archived = select(func.count()).select_from(SEMANTIC).where(SEMANTIC.c.archived_manifest_id.is_not(None))
        assert _count(memory, archived) == 0
        assert contents(memory.store, location, TENANT) == before
    if case.flow == "compact_archive":
        manifests = memory.store.manifests(TENANT)
        assert {m["status"] for m in manifests} == {"committed"}, "a compaction's copy was left behind"
        layers = Counter(m["layer"] for m in manifests)
        assert set(layers.values()) == {1}, f"each layer's small manifests were not merged into one: {layers}"
        assert contents(memory.store, location, TENANT) == before
        referenced = {e["path"] for m in manifests for e in m["files"]}
        referenced |= {manifest_path(TENANT, m["manifest_id"]) for m in manifests}
        stored = {path for path, _, _ in archive_objects(location)}
        assert stored == referenced, f"objects no manifest references: {sorted(stored - referenced)[:5]}"
    if case.flow == "forget":
        left = subject_left(memory, location, TENANT, SUBJECT)
        assert not left, f"{SUBJECT!r} is still in {left[:10]}"
        contents(memory.store, location, TENANT)  # every remaining row is hot with its text or readable


def _expected_events(case: Case, rows: list[dict[str, Any]]) -> set[str]:
    ids = {r["event_id"] for r in rows} | {f"bad-{i}" for i in range(BAD_ROWS)}
    if case.flow == "forget":
        ids -= {r["event_id"] for r in rows if mentions(r["text"], SUBJECT)}
    return ids


@pytest.mark.parametrize("flow", list(CASES))
def test_sigkill_at_a_random_point_then_rerun_loses_and_duplicates_nothing(
    flow: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    case = CASES[flow]
    monkeypatch.setenv("ENGRAM_LEASE_SECONDS", str(LEASE_SECONDS))
    endpoint = request.getfixturevalue("s3_endpoint") if case.archive else None
    for trial in range(soak_trials()):
        seed = _seed(flow, trial)
        rng = random.Random(seed)
        # Trials alternate backends; half the flows start on PostgreSQL, so one trial each covers both.
        backend = "postgresql" if (trial + list(CASES).index(flow)) % 2 else "sqlite"
        context = f"flow={flow} trial={trial} backend={backend} seed={seed} (replay: ENGRAM_CRASH_SEED={BASE_SEED})"
        with fresh_store(tmp_path, backend) as url:
            location = use_archive(monkeypatch, endpoint) if endpoint else None
            memory = memory_at(url, location, tmp_path)
            try:
                rows = observe(memory, SESSIONS, TASK_ITEMS, BAD_ROWS)
                _prepare(case, memory)
                before = contents(memory.store, location, TENANT) if location else None
                env = archive_env(location) if location else {}
                proc = FlowProcess(flow, url, _as_of(case), args=_args(case), extra_env=env)
                proc.wait_ready()
                delay = rng.uniform(0, case.window)
                time.sleep(delay)
                killed = proc.kill()
                figures.record_trial(flow, killed)
                context += f" kill_after={delay:.2f}s killed_while_running={killed}"

                _rerun(case, url)

                report = check_invariants(memory.store, TENANT, location, _expected_events(case, rows))
                report.assert_ok(context)
                try:
                    _check_finished(case, memory, location, report, before)
                except AssertionError as exc:
                    raise AssertionError(f"{context}: {exc}") from exc
            finally:
                memory.close()
