"""Runs that overlap: two ``ingest`` runs on the same pending events (a scheduled run and a manual one), a
``forget`` while a ``consolidate`` of episodes that mention the subject is under way, and two shard workers of a
scaled-out consolidation on one pool, in real processes; two writers of overlapping events, in two threads with a
store engine each. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from engram import Memory
from engram.store import EPISODES, QUARANTINE, SEMANTIC, TRANSITIONS
from engram.text import mentions
from tests.conftest import T0
from tests.flows.helpers import conversation_rows
from tests.reliability import figures
from tests.reliability.invariants import check_invariants
from tests.reliability.scenario import (
    AS_OF,
    REPO,
    SUBJECT,
    TENANT,
    FlowProcess,
    memory_at,
    observe,
    run_flows_upto,
    subject_left,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration]


def _count(memory: Memory, query) -> int:  # noqa: ANN001
    with memory.store.read() as conn:
        return conn.execute(query).scalar_one()


def test_two_ingest_runs_at_once_route_each_event_once(memory: Memory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGRAM_LEASE_SECONDS", "120")
    rows = observe(memory, sessions=20, task_items=10, bad_rows=3)
    # One stands for the scheduled run, one for a run started by hand; both read the same oldest batches.
    runs = [FlowProcess("ingest", memory.store_url, AS_OF, args=("--batch-size", "16")) for _ in range(2)]
    for run in runs:
        assert run.wait() == 0, run.stderr
    figures.record_fault("overlapping_runs")
    report = check_invariants(memory.store, TENANT, expected={r["event_id"] for r in rows}).assert_ok("two ingests")
    assert report.places == {"working": len(rows), "quarantine": 3}
    with memory.store.read() as conn:
        ingests = conn.execute(
            select(TRANSITIONS.c.item_id, func.count())
            .where(TRANSITIONS.c.action == "ingest")
            .group_by(TRANSITIONS.c.item_id)
        ).all()
        runs_seen = {
            r[0] for r in conn.execute(select(TRANSITIONS.c.flow_run_id).where(TRANSITIONS.c.action == "ingest"))
        }
    assert len(ingests) == len(rows) and all(n == 1 for _, n in ingests)
    assert _count(memory, select(func.count()).select_from(QUARANTINE)) == 3
    assert len(runs_seen) in (1, 2) and None not in runs_seen


def test_two_writers_of_overlapping_events_at_once_count_each_event_new_once(memory: Memory) -> None:
    rows = conversation_rows(TENANT, sessions=50, start=T0)  # 400 events
    shared = len(rows) // 4
    parts = [rows[: len(rows) // 2 + shared], rows[len(rows) // 2 - shared :]]  # a quarter of the events in both
    start = threading.Barrier(2)
    reports: list[Any] = [None, None]

    def write(i: int) -> None:
        own = Memory(memory.store_url, memory.archive_url, migrate=False)  # its own engine and connections
        try:
            start.wait(timeout=30)
            reports[i] = own.observe_many(parts[i], batch_size=10)
        except Exception as exc:  # shown by the assertion below
            reports[i] = exc
        finally:
            own.close()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for r in reports:
        assert r is not None and not isinstance(r, Exception), f"a writer failed: {r!r}"
    # Each event is new to exactly one writer, whichever wrote it first, and a duplicate to the other.
    assert sum(r.accepted for r in reports) == len(rows)
    assert sum(r.duplicates for r in reports) == 2 * shared
    assert memory.stats(TENANT)["events"] == len(rows)


def test_forget_during_a_consolidation_leaves_nothing_of_the_subject(
    memory: Memory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.consolidate import consolidate
    from flows.forget import forget

    monkeypatch.setenv("ENGRAM_LEASE_SECONDS", "1")
    sessions = 16
    rows = observe(memory, sessions=sessions)
    run_flows_upto(memory.store_url, "consolidate")
    consolidated = select(func.count()).select_from(EPISODES).where(EPISODES.c.consolidated_at.is_not(None))
    run = FlowProcess("consolidate", memory.store_url, AS_OF, args=("--batch-size", "1"))
    run.wait_ready()
    deadline = time.monotonic() + 120
    while _count(memory, consolidated) < 2 and run.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert run.running(), "the consolidation ended before the forget could overlap it"
    forget(tenant=TENANT, subject=SUBJECT, store_url=memory.store_url, as_of=AS_OF)
    figures.record_fault("forget_during_consolidate")
    assert run.wait() == 0, run.stderr
    time.sleep(1.2)
    consolidate(store_url=memory.store_url, as_of=AS_OF)  # whatever the overlap left, a rerun converges

    left = subject_left(memory, None, TENANT, SUBJECT)
    assert not left, f"{SUBJECT!r} is still in {left[:10]}"
    kept = {r["event_id"] for r in rows if not mentions(r["text"], SUBJECT)}
    check_invariants(memory.store, TENANT, expected=kept).assert_ok("forget during consolidate")
    assert _count(memory, consolidated) == sessions

    reference = memory_at(f"sqlite:///{tmp_path / 'reference.db'}", None, tmp_path)
    try:
        observe(reference, sessions=sessions)
        run_flows_upto(reference.store_url, "archive")
        forget(tenant=TENANT, subject=SUBJECT, store_url=reference.store_url, as_of=AS_OF)

        def facts(m: Memory) -> set[str]:
            with m.store.read() as conn:
                return {r[0] for r in conn.execute(select(SEMANTIC.c.text).where(SEMANTIC.c.valid_to.is_(None)))}

        assert facts(memory) == facts(reference)  # the other memories are intact
    finally:
        reference.close()


_WORKER = """
import json, sys
from datetime import datetime
from flows.scale import consolidate_shards
done = consolidate_shards(store_url=sys.argv[1], as_of=datetime.fromisoformat(sys.argv[2]), batch_size=2, shard_count=8)
print("result " + json.dumps({"shards": done["shards"], "owner": done["owner"]}), flush=True)
"""


# On SQLite: tests/service/test_server.py runs the same two shard workers on PostgreSQL, as runs of Prefect workers.
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_two_shard_workers_on_one_pool_take_disjoint_shards(memory: Memory, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.ingest import ingest
    from flows.sessions import close_sessions

    tenants = [f"tenant{i}" for i in range(12)]
    for i, tenant in enumerate(tenants):
        memory.observe_many(conversation_rows(tenant, sessions=3, start=T0 + timedelta(hours=i)))
    ingest(store_url=memory.store_url, as_of=AS_OF)
    close_sessions(store_url=memory.store_url, as_of=AS_OF)
    env = dict(os.environ, PREFECT_API_URL=os.environ["ENGRAM_TEST_PREFECT_API_URL"], ENGRAM_LEASE_SECONDS="120")
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, memory.store_url, AS_OF.isoformat()],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-3000:]
        results.append(json.loads(next(line for line in out.splitlines() if line.startswith("result "))[7:]))
    figures.record_fault("overlapping_runs")
    shards = [set(r["shards"]) for r in results]
    assert not shards[0] & shards[1], f"both workers took shards {shards[0] & shards[1]}"
    assert _count(memory, select(func.count()).select_from(EPISODES).where(EPISODES.c.consolidated_at.is_(None))) == 0
    for tenant in tenants:
        check_invariants(memory.store, tenant).assert_ok(f"two shard workers, {tenant}")
