"""The database connection dropped in the middle of a flow's transaction (PostgreSQL backend terminated): the
transaction rolls back whole, the task retries on a fresh connection, and nothing is half-written."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import create_engine, text

from engram import Memory
from flows.consolidate import consolidate
from flows.ingest import ingest
from flows.sessions import close_sessions
from tests.conftest import PG_OK, PG_URL, T0
from tests.flows.helpers import assert_every_event_in_exactly_one_place, conversation_rows, semantic_state

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.postgres,
    pytest.mark.skipif(not PG_OK, reason=f"no PostgreSQL server at {PG_URL}"),
]
AS_OF = T0 + timedelta(days=30)


def _schema_of(url: str) -> str:
    return url.rsplit("search_path%3D", 1)[1]


def _block_then_terminate(url: str, table: str, done: threading.Event, killed: list[int]) -> None:
    """Hold a lock on ``table`` so the flow's transaction stops inside its write, then terminate that backend."""
    schema = _schema_of(url)
    engine = create_engine(PG_URL)
    with engine.connect() as locker:
        locker.execute(text(f'LOCK TABLE "{schema}"."{table}" IN ACCESS EXCLUSIVE MODE'))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            rows = (
                engine.connect()
                .execute(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid() "
                        "AND datname = current_database() AND query ILIKE :q"
                    ),
                    {"q": f"%{table}%"},
                )
                .all()
            )
            for (pid,) in rows:
                with engine.connect() as admin:
                    admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                    admin.commit()
                killed.append(pid)
            time.sleep(0.05)
        locker.rollback()
    engine.dispose()
    done.set()


@pytest.mark.parametrize(
    ("flow", "table"),
    [
        ("ingest", "working_items"),  # blocked after the events were claimed, before working items were written
        ("consolidate", "semantic_items"),  # blocked after the leases were checked, before facts were written
    ],
)
def test_terminated_backend_mid_transaction_leaves_nothing_half_written(
    flow: str, table: str, store_url: str, memory: Memory, tmp_path
) -> None:
    if not store_url.startswith("postgresql"):
        pytest.skip("backend termination is a PostgreSQL fault")
    memory.observe_many(conversation_rows("acme", sessions=4, start=T0))
    if flow == "consolidate":
        ingest(store_url=store_url, as_of=AS_OF)
        close_sessions(store_url=store_url, as_of=AS_OF)
    done, killed = threading.Event(), []
    fault = threading.Thread(target=_block_then_terminate, args=(store_url, table, done, killed), daemon=True)
    fault.start()
    time.sleep(0.3)  # the lock is held before the flow starts
    if flow == "ingest":
        result = ingest(store_url=store_url, as_of=AS_OF)
    else:
        result = consolidate(store_url=store_url, as_of=AS_OF)
    done.wait(70)
    assert killed, "the fault was not injected: no backend waited on the lock"
    # The task's retry finished the work on a fresh connection.
    if flow == "ingest":
        assert result["routed"] == 32
        close_sessions(store_url=store_url, as_of=AS_OF)
    else:
        assert result["episodes"] == 4
    consolidate(store_url=store_url, as_of=AS_OF)
    assert_every_event_in_exactly_one_place(memory.store, "acme")

    reference = Memory(f"sqlite:///{tmp_path / 'reference.db'}", (tmp_path / "ref").as_uri())
    try:
        reference.observe_many(conversation_rows("acme", sessions=4, start=T0))
        reference.run_lifecycle(as_of=AS_OF)
        assert semantic_state(memory.store, "acme") == semantic_state(reference.store, "acme")
    finally:
        reference.close()
