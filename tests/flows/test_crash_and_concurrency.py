"""A flow killed with SIGKILL midway, then rerun, converges to the state of a run that was never interrupted;
two consolidations at once never process an episode twice. On SQLite and PostgreSQL, with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from engram import Memory
from engram.store import EPISODES, EVENTS, TRANSITIONS, Store
from flows.consolidate import consolidate
from flows.ingest import ingest
from flows.sessions import close_sessions
from tests.conftest import T0
from tests.flows.helpers import assert_every_event_in_exactly_one_place, conversation_rows, semantic_state

pytestmark = [pytest.mark.integration, pytest.mark.reliability]
REPO = Path(__file__).resolve().parents[2]
AS_OF = T0 + timedelta(days=60)
SESSIONS = 30
LEASE_SECONDS = 1.0


def _spawn(flow: str, store_url: str, batch_size: int, meet: Path | None = None) -> subprocess.Popen:
    """The flow in a process of its own; with ``meet``, a consolidation waits after its first claim for one other
    process's."""
    env = dict(os.environ)
    env["PREFECT_API_URL"] = os.environ["ENGRAM_TEST_PREFECT_API_URL"]
    env.setdefault("ENGRAM_LEASE_SECONDS", str(LEASE_SECONDS))
    meeting = ["--meet", str(meet)] if meet is not None else []
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.flows.flow_process",
            flow,
            store_url,
            AS_OF.isoformat(),
            "--batch-size",
            str(batch_size),
            *meeting,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _scalar(store: Store, query) -> int:  # noqa: ANN001
    with store.read() as conn:
        return conn.execute(query).scalar_one()


def _routed(store: Store) -> int:
    return _scalar(store, select(func.count()).select_from(EVENTS).where(EVENTS.c.routed_at.is_not(None)))


def _episodes(store: Store) -> int:
    return _scalar(store, select(func.count()).select_from(EPISODES))


def _consolidated(store: Store) -> int:
    return _scalar(store, select(func.count()).select_from(EPISODES).where(EPISODES.c.consolidated_at.is_not(None)))


def _prepare(memory: Memory, upto: str) -> None:
    memory.observe_many(conversation_rows("acme", sessions=SESSIONS, start=T0))
    if upto in ("close_sessions", "consolidate"):
        ingest(store_url=memory.store_url, as_of=AS_OF)
    if upto == "consolidate":
        close_sessions(store_url=memory.store_url, as_of=AS_OF)


def _finish(memory: Memory, upto: str) -> None:
    """Rerun the interrupted flow (after its leases expired) and the ones after it."""
    time.sleep(LEASE_SECONDS + 0.5)
    if upto == "ingest":
        ingest(store_url=memory.store_url, as_of=AS_OF)
    if upto in ("ingest", "close_sessions"):
        close_sessions(store_url=memory.store_url, as_of=AS_OF)
    consolidate(store_url=memory.store_url, as_of=AS_OF)


CASES: dict[str, tuple[Callable[[Store], int], int, int]] = {
    # flow: (progress counter, its value when the flow is done, batch size small enough to be caught midway)
    "ingest": (_routed, SESSIONS * 8, 8),
    "close_sessions": (_episodes, SESSIONS, 1),
    "consolidate": (_consolidated, SESSIONS, 1),
}


# Each flow is killed midway on one backend here; tests/reliability/test_crashes.py kills it again at a random point
# on the other one (its first trial of ingest runs on SQLite, of close_sessions and consolidate on PostgreSQL).
MIDWAY_BACKENDS = {"ingest": "postgresql", "close_sessions": "sqlite", "consolidate": "sqlite"}


@pytest.mark.parametrize(
    ("flow", "store_url"),
    [
        pytest.param(flow, backend, marks=[pytest.mark.postgres] if backend == "postgresql" else [])
        for flow, backend in MIDWAY_BACKENDS.items()
    ],
    indirect=["store_url"],
)
def test_sigkill_midway_then_rerun_loses_and_duplicates_nothing(
    flow: str, memory: Memory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENGRAM_LEASE_SECONDS", str(LEASE_SECONDS))
    progress, done, batch_size = CASES[flow]
    _prepare(memory, flow)
    proc = _spawn(flow, memory.store_url, batch_size)
    deadline = time.monotonic() + 120
    try:
        while progress(memory.store) < 1:
            assert proc.poll() is None, f"the flow process ended before doing any work: {proc.stderr.read()!r}"
            assert time.monotonic() < deadline, "the flow process made no progress in 120 s"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    reached = progress(memory.store)
    assert 0 < reached < done, f"the kill was not midway: {reached} of {done}"

    _finish(memory, flow)

    reference = Memory(f"sqlite:///{tmp_path / 'reference.db'}", (tmp_path / "ref-archive").as_uri())
    try:
        _prepare(reference, "ingest")
        _finish(reference, "ingest")
        assert semantic_state(memory.store, "acme") == semantic_state(reference.store, "acme")
        assert memory.stats("acme") == reference.stats("acme")
    finally:
        reference.close()
    assert_every_event_in_exactly_one_place(memory.store, "acme")


# On PostgreSQL, where two claims run at once (FOR UPDATE SKIP LOCKED); SQLite serialises its writers, and
# tests/reliability/test_concurrency.py runs two consolidating shard workers at once on it.
@pytest.mark.parametrize("store_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_two_consolidations_at_once_never_process_an_episode_twice(
    memory: Memory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENGRAM_LEASE_SECONDS", "120")  # long leases: nothing is retaken while both run
    _prepare(memory, "consolidate")
    # Each run waits after its first claim until the other has claimed too: otherwise a run whose flow started a
    # second later could find every episode taken already.
    meet = tmp_path / "meet"
    meet.mkdir()
    procs = [_spawn("consolidate", memory.store_url, 1, meet=meet) for _ in range(2)]
    codes = [p.wait(timeout=300) for p in procs]
    # One run's failure (say, before its first claim) shows as the other's wait timing out: show both.
    assert codes == [0, 0], [p.stderr.read().decode(errors="replace")[-3000:] for p in procs]
    assert _consolidated(memory.store) == SESSIONS

    with memory.store.read() as conn:
        runs = dict(
            conn.execute(
                select(EPISODES.c.episode_id, EPISODES.c.consolidated_run_id).where(EPISODES.c.tenant == "acme")
            ).all()
        )
        audit = conn.execute(
            select(TRANSITIONS.c.flow_run_id, TRANSITIONS.c.detail).where(
                TRANSITIONS.c.action.in_(["consolidate", "merge"])
            )
        ).all()
    # Each episode was committed by exactly one run: the one it names, and no other run's audit rows mention it.
    writers: dict[str, set[str]] = {}
    for run_id, detail in audit:
        for episode_id in detail.get("episodes", []):
            writers.setdefault(episode_id, set()).add(run_id)
    assert set(writers) == set(runs)
    assert all(writers[e] == {runs[e]} for e in runs)
    assert len(set(runs.values())) == 2, "both runs should have taken part"

    reference = Memory(f"sqlite:///{tmp_path / 'reference.db'}", (tmp_path / "ref-archive").as_uri())
    try:
        _prepare(reference, "consolidate")
        consolidate(store_url=reference.store_url, as_of=AS_OF)
        # Interleaved commits may pick a different first wording for a merged fact, so compare what ordering
        # cannot change: the facts, their total support (an episode done twice would add to it) and the lineage.
        mine, ref = semantic_state(memory.store, "acme"), semantic_state(reference.store, "acme")
        assert {r[1] for r in mine} == {r[1] for r in ref}
        assert sum(r[4] for r in mine) == sum(r[4] for r in ref)
        assert {e for r in mine for e in r[6]} == {e for r in ref for e in r[6]}
    finally:
        reference.close()
