"""A sustained ingest while the flows run: ``observe_many`` writes ``ENGRAM_LOAD_EVENTS`` events (20,000 here; ``make
soak`` sets the size) from one thread while the lifecycle's flows run again and again in bounded batches; at the end
the invariant checker accounts for every event of every tenant."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from engram import Memory
from tests.conftest import PG_OK, T0, fresh_store
from tests.reliability import figures
from tests.reliability.invariants import check_invariants

pytestmark = [pytest.mark.reliability, pytest.mark.integration]
EVENTS = int(os.environ.get("ENGRAM_LOAD_EVENTS", "20000"))
TENANTS = 50
PER_SESSION = 20
CHUNK = 5_000
AS_OF = T0 + timedelta(days=400)  # later than every event: every session is idle


def _rows(start: int, stop: int) -> list[dict]:
    return [
        {
            "tenant": f"load{i % TENANTS}",
            "session": f"s{(i // TENANTS) // PER_SESSION}",
            "actor": "Caroline" if i % 2 else "Melanie",
            "text": f"event {i}: the shelter, the pottery class and the move to city {i % 97}",
            "at": T0 + timedelta(seconds=i // TENANTS * 10),
            "event_id": f"ev{i}",
            "metadata": {"scope": "task"} if i % 53 == 0 else None,
        }
        for i in range(start, stop)
    ]


def test_sustained_ingest_while_the_flows_run_loses_nothing(tmp_path: Path) -> None:
    from flows.consolidate import consolidate
    from flows.ingest import ingest
    from flows.sessions import close_sessions, expire_working

    backend = "postgresql" if PG_OK else "sqlite"
    with fresh_store(tmp_path, backend) as url:
        memory = Memory(url, (tmp_path / "archive").as_uri())
        failure: list[BaseException] = []
        written = Counter()

        def produce() -> None:
            try:
                for start in range(0, EVENTS, CHUNK):
                    report = memory.observe_many(_rows(start, min(start + CHUNK, EVENTS)))
                    written["accepted"] += report.accepted
            except BaseException as exc:  # handed to the test thread
                failure.append(exc)

        started = time.monotonic()
        producer = threading.Thread(target=produce)
        producer.start()
        runs = Counter()
        while producer.is_alive() or runs["rounds"] < 1:
            ingest(store_url=url, as_of=AS_OF, batch_size=2_000, max_batches=2)
            close_sessions(store_url=url, as_of=AS_OF, batch_size=100, max_batches=1)
            expire_working(store_url=url, as_of=AS_OF, batch_size=2_000, max_batches=1)
            consolidate(store_url=url, as_of=AS_OF, batch_size=50, max_batches=1)
            runs["rounds"] += 1
        producer.join()
        ingest_seconds = time.monotonic() - started
        assert not failure, failure
        assert written["accepted"] == EVENTS

        places: Counter[str] = Counter()
        for t in range(TENANTS):
            tenant = f"load{t}"
            expected = {f"ev{i}" for i in range(t, EVENTS, TENANTS)}
            report = check_invariants(memory.store, tenant, expected=expected).assert_ok(f"load, {tenant}")
            places.update(report.places)
        memory.close()
        assert sum(places.values()) == EVENTS
        figures.record_load(
            events=EVENTS,
            tenants=TENANTS,
            backend=backend,
            seconds=round(ingest_seconds, 1),
            events_per_s=round(EVENTS / ingest_seconds),
            lifecycle_rounds=runs["rounds"],
            flow_runs=runs["rounds"] * 4,
            places_at_end=dict(places),
        )
