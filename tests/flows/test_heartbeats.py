"""Heartbeats: the lifecycle's run sends them, the subflows it runs in its own process do not; subflows called outside
``heartbeat_of_parent`` and a flow run on its own do. Read back from the Prefect server's event log."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.client.schemas.objects import State
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
    EventsWorker.drain_all(timeout=timeout_s)
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


@flow(name="parent_of_subflows_with_heartbeats")
def parent_of_subflows_with_heartbeats(store_url: str, as_of: datetime) -> None:
    """Two of the lifecycle's subflows called as Prefect calls any subflow: each with its own heartbeat."""
    expire_working(store_url=store_url, as_of=as_of)
    expire_working(store_url=store_url, as_of=as_of)


def subflow_runs(state: State) -> set[str]:
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    return {str(r.id) for r in children}


def test_subflows_of_the_lifecycle_send_no_heartbeat_of_their_own(sqlite_memory: Memory) -> None:
    sqlite_memory.observe_many(conversation_rows("acme", sessions=2, start=T0))
    as_of = T0 + timedelta(days=5)
    url = sqlite_memory.store_url
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):
        state = lifecycle(store_url=url, as_of=as_of, return_state=True)
        # Run after the lifecycle: once their heartbeats are stored, any the lifecycle's subflows sent would be too.
        control = parent_of_subflows_with_heartbeats(store_url=url, as_of=as_of, return_state=True)
        alone = expire_working(store_url=url, as_of=as_of, return_state=True)
    assert state.is_completed() and control.is_completed() and alone.is_completed()
    parent, standalone = str(state.state_details.flow_run_id), str(alone.state_details.flow_run_id)
    subflows, control_subflows = subflow_runs(state), subflow_runs(control)
    assert len(subflows) == 4 and len(control_subflows) == 2  # ingest, close_sessions, expire_working, consolidate

    seen = heartbeat_runs({parent, standalone, *control_subflows})
    assert parent in seen  # the process's liveness: the lifecycle run's heartbeat
    assert standalone in seen  # a flow run on its own keeps its heartbeat
    assert control_subflows <= seen  # subflows outside heartbeat_of_parent send theirs: the log holds subflows' too
    assert not subflows & seen
