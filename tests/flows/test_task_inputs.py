"""Large task parameters (a batch's sessions, episodes, archive keys and manifests, a gate's result) go to their task
runs wrapped in Prefect's ``opaque``: the task gets the plain value, Prefect does not walk it item by item, and the
run graph still links each task run to the one whose result it takes. Read back from the Prefect server."""

from __future__ import annotations

import time
from datetime import timedelta

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId
from prefect.client.schemas.objects import TaskRun, TaskRunResult
from prefect.events.worker import EventsWorker

from engram import Memory
from flows.archive import archive
from flows.lifecycle import lifecycle
from tests.conftest import T0
from tests.flows.helpers import conversation_rows

# For each task run, the parameter that takes an earlier task's result, and the task that made it.
LIFECYCLE_LINKS = {
    "route_to_working": ("gate", "gate_sensory_batch"),
    "turn_sessions_into_episodes": ("sessions", "claim_sessions_to_close"),
    "announce_closed_sessions": ("sessions", "claim_sessions_to_close"),
    "distill_facts": ("episodes", "claim_episodes"),
    "commit_facts": ("episodes", "claim_episodes"),
}
ARCHIVE_LINKS = {
    "write_archive_files": ("keys", "select_cold_items"),
    "verify_archive_files": ("manifests", "write_archive_files"),
    "tombstone_archived_rows": ("verified", "verify_archive_files"),
}


def task_runs(flow_run_ids: set[str], names: set[str], timeout_s: float = 30.0) -> dict[str, list[TaskRun]]:
    """The completed task runs of those flow runs, by task name, once every name in ``names`` has one (the server
    records task runs from their events, asynchronously)."""
    EventsWorker.drain_all(timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(flow_run_ids))))
        by_name: dict[str, list[TaskRun]] = {}
        for run in runs:
            if run.state is not None and run.state.is_completed():
                by_name.setdefault(run.name.rsplit("-", 1)[0], []).append(run)
        if names <= set(by_name) or time.monotonic() > deadline:
            return by_name
        time.sleep(0.5)


def upstream(run: TaskRun, parameter: str) -> set[str]:
    return {str(i.id) for i in run.task_inputs.get(parameter, []) if isinstance(i, TaskRunResult)}


def assert_linked(by_name: dict[str, list[TaskRun]], links: dict[str, tuple[str, str]]) -> None:
    for name, (parameter, producer) in links.items():
        assert by_name.get(name), f"no completed {name} task run recorded"
        producers = {str(r.id) for r in by_name[producer]}
        for run in by_name[name]:
            got = upstream(run, parameter)
            assert got, f"{name}.{parameter} is linked to no task run"
            assert got <= producers, f"{name}.{parameter} is linked to {got}, not to a {producer} run"


def test_lifecycle_and_archive_task_runs_are_linked_to_the_results_they_take(sqlite_memory: Memory) -> None:
    sqlite_memory.observe_many(conversation_rows("acme", sessions=3, start=T0))
    url = sqlite_memory.store_url
    state = lifecycle(store_url=url, as_of=T0 + timedelta(days=5), return_state=True)
    assert state.is_completed()
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    by_name = task_runs({str(r.id) for r in children}, set(LIFECYCLE_LINKS))
    assert_linked(by_name, LIFECYCLE_LINKS)
    assert "embed_facts" not in by_name  # embeddings are off here (tests/conftest.py): no task run that does nothing
    assert sqlite_memory.stats()["semantic"] > 0  # the linked tasks got their plain values and did their work

    moved = archive(
        store_url=url, archive_url=sqlite_memory.archive_url, as_of=T0 + timedelta(days=3650), return_state=True
    )
    assert moved.is_completed()
    summary = moved.result()
    assert summary["rows_verified"] > 0
    assert_linked(task_runs({str(moved.state_details.flow_run_id)}, set(ARCHIVE_LINKS)), ARCHIVE_LINKS)
