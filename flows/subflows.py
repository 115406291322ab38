"""Subflows run in their parent's process: the parent's heartbeat is the one liveness signal of that process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def heartbeat_of_parent() -> Iterator[None]:
    """Run the subflows called inside without heartbeats of their own.

    Prefect (3.9) gives every flow run a heartbeat thread and joins it when the run ends. The thread sleeps in whole
    seconds, so the end of a run waits for the rest of the current second: a run of a tenth of a second lasts a
    second. A lifecycle run with nothing to move took 5.1 s with its four subflows' heartbeats and 1.1 s without
    (``bench/flow_overhead.py``).

    A subflow called from a flow runs in its parent's process, so its heartbeat would only repeat the parent's: the
    process is alive. Heartbeats drive Prefect's zombie-flow detection (an automation, where one is set up), which
    marks the parent run Crashed when the process dies; the subflow runs under it are not marked, as when only the
    runner of a deployment sent heartbeats (before Prefect moved them into the flow engine). A flow started on its
    own, by a deployment or by hand, keeps its heartbeat.
    """
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
