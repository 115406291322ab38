"""A Prefect server on PostgreSQL (``engram.testing.prefect_server``: a fresh database, dropped afterwards), as the
benchmark and the service tests run it, and the benchmark's count of the API requests Prefect's client retried."""

from __future__ import annotations

import json
import logging
import urllib.request

import pytest
from sqlalchemy import create_engine, text

from bench.perf import ApiRetryCounter
from engram.testing import prefect_server
from tests.conftest import PG_OK, PG_URL, REQUIRE_PG


def test_retried_requests_are_counted_by_status_and_their_debug_records_stay_out_of_the_log(caplog) -> None:
    logger = logging.getLogger(ApiRetryCounter.LOGGER)
    level_before = logger.level
    counter = ApiRetryCounter()
    counter.install()
    try:
        with caplog.at_level(logging.DEBUG):
            logger.debug("Received response with retryable status code 503. Another attempt will be made in 2.1s.")
            logger.debug("Received response with retryable status code 503. Another attempt will be made in 4.0s.")
            logger.debug("Encountered retryable exception during request. Another attempt will be made in 2s.")
            logger.debug("Connecting to API at http://127.0.0.1:4200/api/")
            logger.warning("the API answered slowly")
    finally:
        counter.uninstall()
    assert counter.count == 3
    assert counter.codes == {"503": 2, "exception": 1}
    logged = [r.getMessage() for r in caplog.records if r.name == ApiRetryCounter.LOGGER]
    assert logged == ["the API answered slowly"]
    assert logger.level == level_before
    logger.debug("Received response with retryable status code 503.")  # uninstalled: no longer counted
    assert counter.count == 3


def databases() -> set[str]:
    engine = create_engine(PG_URL)
    try:
        with engine.connect() as conn:
            return set(conn.execute(text("SELECT datname FROM pg_database")).scalars())
    finally:
        engine.dispose()


@pytest.mark.skipif(not PG_OK and not REQUIRE_PG, reason="no PostgreSQL server")
def test_a_prefect_server_on_a_fresh_postgres_database_answers_and_its_database_is_dropped_after(tmp_path) -> None:
    before = databases()
    with prefect_server(tmp_path, PG_URL) as url:
        created = databases() - before
        assert len(created) == 1 and next(iter(created)).startswith("prefect_")
        with urllib.request.urlopen(f"{url}/api/health", timeout=10) as response:
            assert json.loads(response.read()) is True
        # The server's own tables are in that database: Prefect migrated it.
        engine = create_engine(PG_URL.rsplit("/", 1)[0] + "/" + next(iter(created)))
        try:
            with engine.connect() as conn:
                tables = set(conn.execute(text("SELECT tablename FROM pg_tables")).scalars())
        finally:
            engine.dispose()
        assert {"flow_run", "task_run"} <= tables
    assert databases() == before
