"""Heartbeats: a parent flow's run sends them, the subflows it runs in its own process do not, a flow run on its own
does. Read back from the Prefect server's event log."""

from __future__ import annotations

import time
from datetime import timedelta
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.events.filters import EventFilter, EventNameFilter
from prefect.events.worker import EventsWorker
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from engram import Memory
from flows.lifecycle import lifecycle
from flows.sessions import expire_working
from tests.conftest import T0
from tests.flows.helpers import conversation_rows

HEARTBEAT = "prefect.flow-run.heartbeat"


def heartbeat_runs(expected: set[str], timeout_s: float = 30.0) -> set[str]:
    """The flow run ids with a heartbeat in the server's event log, once every ``expected`` id has one (or at the
    timeout: the server stores events asynchronously)."""
    EventsWorker.drain_all()
    deadline = time.monotonic() + timeout_s
    while True:
        with get_client(sync_client=True) as client:
            page = client.read_events(EventFilter(event=EventNameFilter(name=[HEARTBEAT])), limit=50)
            events = list(page.events)
            while page.next_page:
                page = client.read_events_page(page.next_page)
                events += page.events
        seen = {e.resource.id.removeprefix("prefect.flow-run.") for e in events}
        if expected <= seen or time.monotonic() > deadline:
            return seen
        time.sleep(0.5)


def test_subflows_of_the_lifecycle_send_no_heartbeat_of_their_own(sqlite_memory: Memory) -> None:
    sqlite_memory.observe_many(conversation_rows("acme", sessions=2, start=T0))
    as_of = T0 + timedelta(days=5)
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        state = lifecycle(store_url=sqlite_memory.store_url, as_of=as_of, return_state=True)
        alone = expire_working(store_url=sqlite_memory.store_url, as_of=as_of, return_state=True)
    assert state.is_completed() and alone.is_completed()
    parent = str(state.state_details.flow_run_id)
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[UUID(parent)]))
        )
    subflows = {str(r.id) for r in children}
    assert len(subflows) == 4  # ingest, close_sessions, expire_working, consolidate

    seen = heartbeat_runs({parent, str(alone.state_details.flow_run_id)})
    assert parent in seen  # the process's liveness: the parent run's heartbeat
    assert str(alone.state_details.flow_run_id) in seen  # a flow run on its own keeps its heartbeat
    assert not subflows & seen
