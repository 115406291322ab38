"""Flows run against Prefect's test harness: a real temporary Prefect server, opened once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_harness() -> Iterator[str]:
    """A temporary Prefect API for the session; yields its URL so subprocesses can report to the same server."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        url = PREFECT_API_URL.value()
        os.environ["ENGRAM_TEST_PREFECT_API_URL"] = url or ""
        yield url or ""
