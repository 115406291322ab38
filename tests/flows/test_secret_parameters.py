"""A store password never reaches Prefect's run history: flows take the store URL as a ``SecretStr`` parameter,
which Prefect records as ``**********``, and reveal it only to their tasks."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.sorting import FlowRunSort
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from engram import Memory
from engram.settings import reveal, url_parameter
from flows.scale import scale
from tests.conftest import T0, FixedClock, fresh_store
from tests.flows.helpers import conversation_rows

PASSWORD = "hunter2-not-for-prefect"


def test_only_a_url_with_a_password_is_hidden() -> None:
    plain = ["sqlite:///tmp/engram.db", "postgresql://postgres@127.0.0.1:5432/test"]
    assert [url_parameter(u) for u in plain] == plain
    hidden = url_parameter(f"postgresql://app:{PASSWORD}@db:5432/engram")
    assert isinstance(hidden, SecretStr) and PASSWORD not in str(hidden) and PASSWORD not in repr(hidden)
    assert reveal(hidden) == f"postgresql://app:{PASSWORD}@db:5432/engram"
    assert isinstance(url_parameter(f"not a url {PASSWORD}"), SecretStr)  # unreadable: hidden whole
    assert reveal(None) is None and reveal(plain[0]) == plain[0]


@pytest.mark.postgres
def test_the_lifecycle_on_a_store_with_a_password_records_no_password(tmp_path: Path, clock: FixedClock) -> None:
    with fresh_store(tmp_path, "postgresql") as url:
        with_password = make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)
        memory = Memory(with_password, (tmp_path / "archive").as_uri(), clock=clock)
        try:
            memory.observe_many(conversation_rows("acme", sessions=2, start=T0))
            summary = memory.run_lifecycle(as_of=T0 + timedelta(days=5))
            assert summary["consolidate"]["episodes"] == 2  # the flows reached the store with the real URL
        finally:
            memory.close()

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=200)  # this test's are last
        names = {r.flow_id: client.read_flow(r.flow_id).name for r in runs}
    assert all(PASSWORD not in json.dumps(r.parameters, default=str) for r in runs)
    hidden = {names[r.flow_id] for r in runs if r.parameters.get("store_url") == "**********"}
    assert {"lifecycle", "ingest", "close_sessions", "expire_working", "consolidate"} <= hidden


def test_scale_refuses_to_hand_a_password_to_the_workers_it_starts() -> None:
    with pytest.raises(ValueError, match="store_url: a URL with a password"):
        scale(store_url=SecretStr(f"postgresql://app:{PASSWORD}@db/engram"), launch=True)
    with pytest.raises(ValueError, match="store_url: a URL with a password"):  # the same URL as plain text
        scale(store_url=f"postgresql://app:{PASSWORD}@db/engram", launch=True)
