"""Flows run against Prefect's test harness: a real temporary Prefect server, opened once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_harness() -> Iterator[str]:
    """A temporary Prefect API for the session; yields its URL so subprocesses can report to the same server.

    Flow runs in this process send no heartbeats: at the end of every flow run, Prefect (3.9) joins its heartbeat
    thread, which sleeps in whole seconds, so each run would wait up to a second for it (a parent flow with four
    subflows: 5.1 s against 0.9 s). ``test_heartbeats.py`` turns them back on for what it checks; the deployment
    tests (tests/service) keep them.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        url = PREFECT_API_URL.value()
        os.environ["ENGRAM_TEST_PREFECT_API_URL"] = url or ""
        yield url or ""
