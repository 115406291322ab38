"""Rows written straight to the sensory table, past the API's checks, meet the ``ingest`` flow's Great Expectations
gate: each bad row is quarantined with the failed expectation named, and the valid rows of the same batches are
routed to working memory."""

from __future__ import annotations

import os
import uuid
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select

from engram import Memory
from engram.store import EVENTS, QUARANTINE, TRANSITIONS, WORKING, stable_id
from tests.conftest import T0
from tests.reliability.scenario import AS_OF

pytestmark = [pytest.mark.reliability, pytest.mark.integration]
EXAMPLES = int(os.environ.get("ENGRAM_GATE_EXAMPLES", "8"))

# (value, the field the gate names, the expectation its reason names); None: the value is valid.
TENANTS = st.sampled_from(
    [
        ("ok", None),
        ("../x", "expect_column_values_to_match_regex"),
        ("a/b", "expect_column_values_to_match_regex"),
        ("x'; DROP TABLE events;--", "expect_column_values_to_match_regex"),
        ("a b", "expect_column_values_to_match_regex"),
        ("%2e%2e", "expect_column_values_to_match_regex"),
        ("-leading", "expect_column_values_to_match_regex"),
    ]
)
TEXTS = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=200)
    .filter(lambda s: len(s.encode()) <= 65_536)
    .map(lambda s: (s, None)),
    st.just(("", "expect_column_values_to_be_between")),
    st.integers(65_537, 80_000).map(lambda n: ("x" * n, "expect_column_values_to_be_between")),
    st.just(("é" * 32_769, "expect_column_values_to_be_between")),  # 65,538 bytes in fewer characters
    st.just(("x'; DROP TABLE events;-- \x07\x1b[2J", None)),
)
ROW = st.tuples(TENANTS, TEXTS, st.text(min_size=1, max_size=20), st.text(max_size=20))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(ROW, min_size=1, max_size=12))
def test_rows_past_the_api_are_gated_by_the_ingest_flow(
    sqlite_memory: Memory, rows: list[tuple[tuple[str, str | None], tuple[str, str | None], str, str]]
) -> None:
    from flows.ingest import ingest

    memory = sqlite_memory  # reused across examples: each example has a tenant and event ids of its own
    tag = uuid.uuid4().hex[:10]
    good_tenant = f"t{tag}"
    events, expect = [], {}
    for i, ((tenant, tenant_fails), (text, text_fails), session, actor) in enumerate(rows):
        tenant = good_tenant if tenant == "ok" else tenant
        event_id = f"{tag}-{i}"
        events.append(
            {
                "tenant": tenant,
                "event_id": event_id,
                "session_id": session,
                "actor": actor,
                "text": text,
                "at": T0 + timedelta(minutes=i),
                "metadata": {},
                "received_at": T0,
                "routed_at": None,
                "seq": 0,
            }
        )
        failed = [e for e in (tenant_fails, text_fails) if e]
        expect[(tenant, event_id)] = failed
    with memory.store.write() as conn:
        conn.execute(insert(EVENTS), events)

    ingest(store_url=memory.store_url, as_of=AS_OF, max_reject_fraction=1.0)

    with memory.store.read() as conn:
        pending = conn.execute(select(EVENTS.c.event_id).where(EVENTS.c.routed_at.is_(None))).all()
        working = {r[0] for r in conn.execute(select(WORKING.c.event_id))}
        quarantine = {r.quarantine_id: r for r in conn.execute(select(QUARANTINE))}
        audited = {
            r[0] for r in conn.execute(select(TRANSITIONS.c.item_id).where(TRANSITIONS.c.action == "quarantine"))
        }
    assert not pending, "the gate left rows in the sensory layer"
    for (tenant, event_id), failed in expect.items():
        if not failed:
            assert event_id in working, f"valid row {event_id} was not routed"
            continue
        assert event_id not in working, f"bad row {event_id} reached working memory"
        row = quarantine.get(stable_id("q", tenant, event_id, "ingest"))
        assert row is not None and event_id in audited, f"bad row {event_id} was not quarantined with an audit row"
        assert any(expectation in row.reason for expectation in failed), (row.field, row.reason, failed)
