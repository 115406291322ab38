"""The S3 server slow, answering 503, or gone, midway through ``rehydrate`` and ``forget`` (``archive`` has its own
in ``tests/flows/test_archive_flows.py``): Prefect retries the task; the run then completes, or fails cleanly with
nothing lost, and a rerun once the server is back finishes the work.

A loopback proxy in front of the session's S3 server injects the faults (``s3_proxy.FaultyProxy``). The tasks' retry
delays are shortened for the test (the same retries, seconds apart instead of tens of seconds).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from engram import Memory
from engram.archive import ArchiveLocation
from engram.store import SEMANTIC, TRANSITIONS
from tests.conftest import s3_location
from tests.engram.archive_helpers import contents
from tests.reliability import figures
from tests.reliability.invariants import check_invariants
from tests.reliability.s3_proxy import FaultyProxy
from tests.reliability.scenario import LATER, TENANT, archive_env, memory_at, observe, run_flows_upto

pytestmark = [pytest.mark.reliability, pytest.mark.integration]
SESSIONS = 6


@pytest.fixture
def proxy(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyProxy]:
    import s3fs

    # s3fs retries a dead connection five times with growing pauses under botocore's own retries; one keeps the
    # test in seconds while Prefect's task retries, which are what is tested, stay as they are.
    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)
    p = FaultyProxy(s3_endpoint)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def archived(
    tmp_path: Path, proxy: FaultyProxy, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Memory, ArchiveLocation, ArchiveLocation]]:
    """Memory filled by the flows and wholly archived through the proxy; also the direct location for checks."""
    from engram.archive import provision_archive
    from flows.archive import archive

    direct = s3_location(s3_endpoint)
    provision_archive(direct)
    through = s3_location(proxy.endpoint, bucket=direct.bucket)
    for key, value in archive_env(through).items():
        monkeypatch.setenv(key, value)
    url = f"sqlite:///{tmp_path / 'engram.db'}"
    memory = memory_at(url, direct, tmp_path)
    observe(memory, SESSIONS)
    run_flows_upto(url, "archive")
    archive(store_url=url, as_of=LATER)
    try:
        yield memory, through, direct
    finally:
        memory.close()


def _short_retries(monkeypatch: pytest.MonkeyPatch, module: str, task_name: str) -> None:
    import importlib

    mod = importlib.import_module(module)
    monkeypatch.setattr(mod, task_name, getattr(mod, task_name).with_options(retry_delay_seconds=[1, 2]))


def _when(progress: Callable[[], bool], then: Callable[[], None], timeout: float = 60) -> threading.Thread:
    """Run ``then`` as soon as ``progress()`` holds (checked every few milliseconds) in a background thread."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not progress():
            time.sleep(0.005)
        then()

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def _count(memory: Memory, query) -> int:  # noqa: ANN001
    with memory.store.read() as conn:
        return conn.execute(query).scalar_one()


def _rehydrated(memory: Memory) -> int:
    return _count(memory, select(func.count()).select_from(TRANSITIONS).where(TRANSITIONS.c.action == "rehydrate"))


def _archived_facts(memory: Memory) -> list[str]:
    with memory.store.read() as conn:
        return sorted(
            r[0] for r in conn.execute(select(SEMANTIC.c.item_id).where(SEMANTIC.c.archived_manifest_id.is_not(None)))
        )


def _outage(proxy: FaultyProxy, mode: str, seconds: float | None) -> Callable[[], None]:
    def start() -> None:
        proxy.set(mode)
        figures.record_fault(f"s3_{mode}")
        if seconds is not None:
            time.sleep(seconds)
            proxy.set("pass")

    return start


def test_rehydrate_survives_a_slow_an_erroring_and_a_vanished_s3_server(
    archived: tuple[Memory, ArchiveLocation, ArchiveLocation], proxy: FaultyProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.archive import rehydrate

    memory, _, direct = archived
    _short_retries(monkeypatch, "flows.archive", "rehydrate_archived_items")
    before = contents(memory.store, direct, TENANT)
    facts = _archived_facts(memory)
    assert len(facts) >= 9
    thirds = [facts[: len(facts) // 3], facts[len(facts) // 3 : 2 * len(facts) // 3], facts[2 * len(facts) // 3 :]]

    # Slow: every chunk waits; the run is slower and complete.
    proxy.set("slow", delay=0.05)
    figures.record_fault("s3_slow")
    done = rehydrate(store_url=memory.store_url, as_of=LATER, tenant=TENANT, item_ids=thirds[0], batch_size=1)
    proxy.set("pass")
    assert done["rehydrated"] == len(thirds[0])

    # 503 for two seconds after the first item: the task's retry finishes the run.
    start = _rehydrated(memory)
    _when(lambda: _rehydrated(memory) > start, _outage(proxy, "error", 2.0))
    done = rehydrate(store_url=memory.store_url, as_of=LATER, tenant=TENANT, item_ids=thirds[1], batch_size=1)
    assert done["rehydrated"] == len(thirds[1])
    assert proxy.faulted > 0, "the fault came after the run"

    # The server goes away for good after the first item: the run fails once its retries are spent.
    start = _rehydrated(memory)
    _when(lambda: _rehydrated(memory) > start, _outage(proxy, "down", None))
    with pytest.raises(Exception, match="(?i)archive|connect|endpoint"):
        rehydrate(store_url=memory.store_url, as_of=LATER, tenant=TENANT, item_ids=thirds[2], batch_size=1)
    assert 0 < _rehydrated(memory) - start < len(thirds[2])
    check_invariants(memory.store, TENANT, direct).assert_ok("after the failed rehydrate")
    assert contents(memory.store, direct, TENANT) == before  # nothing lost, nothing half-restored

    proxy.set("pass")
    rehydrate(store_url=memory.store_url, as_of=LATER, tenant=TENANT, batch_size=1)
    assert _archived_facts(memory) == []
    assert contents(memory.store, direct, TENANT) == before
    check_invariants(memory.store, TENANT, direct).assert_ok("after the rerun")


def test_forget_survives_a_slow_an_erroring_and_a_vanished_s3_server(
    archived: tuple[Memory, ArchiveLocation, ArchiveLocation], proxy: FaultyProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.forget import forget
    from tests.reliability.scenario import subject_left

    memory, _, direct = archived
    _short_retries(monkeypatch, "flows.forget", "forget_subject")
    before = contents(memory.store, direct, TENANT)

    def forgotten(subject: str) -> None:
        left = subject_left(memory, direct, TENANT, subject)
        assert not left, f"{subject!r} is still in {left[:10]}"
        check_invariants(memory.store, TENANT, direct).assert_ok(f"after forgetting {subject!r}")
        after = contents(memory.store, direct, TENANT)
        assert set(after) <= set(before)  # only removals
        assert all(after[k] == before[k] for k in after)  # what stays is whole

    proxy.set("slow", delay=0.05)
    figures.record_fault("s3_slow")
    forget(tenant=TENANT, subject="pottery", store_url=memory.store_url)
    proxy.set("pass")
    forgotten("pottery")

    # 503 as the archive rewrite starts: the task's retry forgets on a server that answers again.
    requests = proxy.requests
    _when(lambda: proxy.requests > requests + 2, _outage(proxy, "error", 2.0))
    forget(tenant=TENANT, subject="shelter", store_url=memory.store_url)
    assert proxy.faulted > 0, "the fault came after the run"
    forgotten("shelter")

    # Gone for good midway through the rewrite: the run fails, nothing unrelated is lost, the rerun finishes.
    requests = proxy.requests
    _when(lambda: proxy.requests > requests + 3, _outage(proxy, "down", None))
    with pytest.raises(Exception):  # noqa: B017 - whichever error the storage client raised, wrapped by Prefect
        forget(tenant=TENANT, subject="Lisbon", store_url=memory.store_url)
    check_invariants(memory.store, TENANT, direct).assert_ok("after the failed forget")
    proxy.set("pass")
    forget(tenant=TENANT, subject="Lisbon", store_url=memory.store_url)
    forgotten("Lisbon")
