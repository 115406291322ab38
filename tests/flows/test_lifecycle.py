"""The lifecycle flows under Prefect, on SQLite and PostgreSQL: every layer, the gates, the audit trail."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prefect.client.orchestration import get_client
from sqlalchemy import select

from engram import Memory
from engram.store import EPISODES, QUARANTINE, SEMANTIC, WORKING
from flows.ingest import ingest
from flows.sessions import close_sessions, expire_working
from tests.conftest import T0
from tests.flows.helpers import assert_every_event_in_exactly_one_place, conversation_rows, count


def test_lifecycle_moves_memory_through_every_hot_layer(memory: Memory) -> None:
    rows = conversation_rows("acme", sessions=3, start=T0)
    memory.observe_many(rows)
    summary = memory.run_lifecycle(as_of=T0 + timedelta(days=10))

    assert summary["ingest"]["routed"] == len(rows)
    assert summary["close_sessions"]["episodes"] == 3
    assert summary["consolidate"]["episodes"] == 3
    stats = memory.stats("acme")
    assert (stats["sensory"], stats["working"], stats["episodic"]) == (0, 0, 3)
    # Consolidation keeps the informative statements and drops chit-chat ("Wow, cool!", "Thanks!").
    assert 0 < stats["semantic"] < len(rows)
    assert_every_event_in_exactly_one_place(memory.store, "acme")

    hits = memory.search("acme", "where is Caroline moving for her new job", layers=["semantic"])
    assert hits and "Lisbon" in hits[0].text and "Caroline" in hits[0].text
    assert "2024" in hits[0].text  # the rendering carries the date

    history = memory.history("acme", hits[0].item_id)
    actions = [h.action for h in history]
    assert actions[0] == "observe"
    assert {"ingest", "close_session", "consolidate"} <= set(actions)
    assert all(h.flow_run_id for h in history if h.action != "observe")


def test_rerunning_the_lifecycle_changes_nothing(memory: Memory) -> None:
    memory.observe_many(conversation_rows("acme", sessions=2, start=T0))
    as_of = T0 + timedelta(days=5)
    memory.run_lifecycle(as_of=as_of)
    before = memory.stats("acme")
    again = memory.run_lifecycle(as_of=as_of)
    assert memory.stats("acme") == before
    assert again["ingest"].get("routed", 0) == 0 and again["consolidate"].get("episodes", 0) == 0


def test_explicitly_closed_session_becomes_an_episode_before_its_idle_timeout(memory: Memory) -> None:
    memory.observe_many(conversation_rows("acme", sessions=1, start=T0))
    as_of = T0 + timedelta(minutes=10)  # the session's last turn was 7 minutes earlier: not idle yet
    ingest(store_url=memory.store_url, as_of=as_of)
    assert close_sessions(store_url=memory.store_url, as_of=as_of).get("episodes", 0) == 0
    assert count(memory.store, EPISODES, tenant="acme") == 0
    memory.close_session("acme", "acme-s0", at=as_of)
    result = close_sessions(store_url=memory.store_url, as_of=as_of)
    assert result["episodes"] == 1
    assert count(memory.store, WORKING, tenant="acme") == 0


def test_expire_discards_task_scoped_working_memory_after_its_ttl_and_audits_it(memory: Memory) -> None:
    memory.observe("acme", "job-1", "planner", "scratch: step 3 of 5 done", T0, metadata={"scope": "task"})
    memory.observe("acme", "chat-1", "Caroline", "I love hiking", T0)
    ingest(store_url=memory.store_url, as_of=T0 + timedelta(minutes=1))
    assert expire_working(store_url=memory.store_url, as_of=T0 + timedelta(hours=1))["discarded"] == 0
    result = expire_working(store_url=memory.store_url, as_of=T0 + timedelta(hours=25))
    assert result["discarded"] == 1  # the task item; the chat turn waits for its session to close
    assert [w.item_id for w in memory.search("acme", "hiking", layers=["working"])]
    assert memory.search("acme", "scratch step") == []
    expired = [h for h in memory.history("acme", _only_task_event(memory)) if h.action == "expire"]
    assert expired and expired[0].flow_run_id


def _only_task_event(memory: Memory) -> str:
    from sqlalchemy import select

    from engram.store import EVENTS

    with memory.store.read() as conn:
        return conn.execute(select(EVENTS.c.event_id).where(EVENTS.c.session_id == "job-1")).scalar_one()


def _raw_event(tenant: str, event_id: str, text: str, at) -> dict:  # noqa: ANN001
    return {
        "tenant": tenant,
        "event_id": event_id,
        "session_id": "s1",
        "actor": "A",
        "text": text,
        "at": at,
        "metadata": {},
    }


def test_ingest_gate_quarantines_bad_rows_and_keeps_the_valid_ones(memory: Memory) -> None:
    # Rows written to the sensory table by a producer that skipped the API's validation.
    good = [_raw_event("acme", f"g{i}", f"good row {i}", T0) for i in range(9)]
    bad = [_raw_event("acme", "b0", "x" * (memory.settings.max_text_bytes + 1), T0)]
    memory.store.add_events(good + bad, T0)
    result = ingest(store_url=memory.store_url, as_of=T0 + timedelta(minutes=1))
    assert (result["routed"], result["quarantined"]) == (9, 1)
    with memory.store.read() as conn:
        from sqlalchemy import select

        row = conn.execute(select(QUARANTINE).where(QUARANTINE.c.source == "ingest")).one()
    assert row.field == "text" and "expect" in row.reason.lower()
    assert "b0" in row.raw_payload
    assert_every_event_in_exactly_one_place(memory.store, "acme")


def test_ingest_gate_applies_the_configured_text_limit_not_the_default(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ENGRAM_MAX_TEXT_BYTES raised, events that observe accepts pass the flow's gate too (the gate used to hold
    the default 64 KiB: a batch of them failed as a whole, run after run), and one past the raised limit is still
    quarantined."""
    monkeypatch.setenv("ENGRAM_MAX_TEXT_BYTES", "200000")
    rows = [_raw_event("acme", f"big{i}", "y" * 100_000, T0) for i in range(3)]
    rows += [_raw_event("acme", "small", "fine", T0), _raw_event("acme", "huge", "z" * 200_001, T0)]
    memory.store.add_events(rows, T0)
    result = ingest(store_url=memory.store_url, as_of=T0 + timedelta(minutes=1))
    assert (result["routed"], result["quarantined"]) == (4, 1)
    with memory.store.read() as conn:
        row = conn.execute(select(QUARANTINE).where(QUARANTINE.c.source == "ingest")).one()
    assert row.field == "text" and "huge" in row.raw_payload


def test_an_event_dated_at_the_end_of_the_calendar_does_not_block_ingest(memory: Memory) -> None:
    """9999-12-31 is a valid time; its working-memory lifetime added to it is past the calendar. That raised in the
    routing task and failed the batch, which every later run read again first."""
    memory.observe("acme", "s1", "Ada", "written far ahead", "9999-12-31T12:00:00Z", event_id="far")
    memory.observe("acme", "s1", "Ada", "written today", T0, event_id="today")
    result = ingest(store_url=memory.store_url, as_of=T0 + timedelta(minutes=1))
    assert (result["routed"], result["quarantined"]) == (2, 0)
    assert memory.stats("acme")["working"] == 2


def test_ingest_gate_failure_stops_the_run_before_it_writes(memory: Memory) -> None:
    # Most of the batch is broken: a batch-level failure, not a few rows to quarantine.
    rows = [_raw_event("acme", f"b{i}", "", T0) for i in range(8)] + [_raw_event("acme", "g0", "fine", T0)]
    memory.store.add_events(rows, T0)
    state = ingest(store_url=memory.store_url, as_of=T0 + timedelta(minutes=1), return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception) as err:
        state.result()
    assert "expect" in str(err.value).lower()
    assert memory.stats("acme")["sensory"] == 9  # nothing moved
    assert count(memory.store, QUARANTINE) == 0 and count(memory.store, WORKING) == 0


def test_the_forget_flow_dates_its_receipt_at_as_of(memory: Memory) -> None:
    """The receipt's time (and so its id) is the run's as_of, as in every flow: a backfill or a retried task records
    the same receipt, not one stamped with the wall clock."""
    from engram.store import TRANSITIONS
    from flows.forget import forget

    memory.observe("acme", "s1", "Ada", "Lisbon is lovely in spring", T0, event_id="e1")
    as_of = T0 + timedelta(days=3)
    receipt = forget(tenant="acme", subject="Lisbon", store_url=memory.store_url, as_of=as_of)
    assert receipt["removed"]["events"] == 1
    with memory.store.read() as conn:
        audit = conn.execute(
            select(TRANSITIONS.c.action, TRANSITIONS.c.at).where(TRANSITIONS.c.item_id == receipt["receipt_id"])
        ).all()
    assert audit == [("forget", as_of)]


def test_a_fact_the_gate_turns_away_is_quarantined_with_its_text(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consolidator's fact that fails the episodic -> semantic gate (a salience past 1, as a plugged-in
    consolidator may write) was only counted: its episode was marked consolidated and the fact was gone without a
    trace. It is now a quarantine row (source consolidate) with the fact as its payload; the other facts are kept."""
    from engram.consolidate import LocalConsolidator
    from flows.consolidate import consolidate

    distill = LocalConsolidator.distill

    def one_too_salient(self: LocalConsolidator, episodes, turns):  # noqa: ANN001, ANN202
        facts = distill(self, episodes, turns)
        facts.loc[facts.index[0], "salience"] = 1.7
        return facts

    monkeypatch.setattr(LocalConsolidator, "distill", one_too_salient)
    memory.observe_many(conversation_rows("acme", sessions=2, start=T0))
    as_of = T0 + timedelta(days=30)
    ingest(store_url=memory.store_url, as_of=as_of)
    close_sessions(store_url=memory.store_url, as_of=as_of)
    result = consolidate(store_url=memory.store_url, as_of=as_of)
    assert result["quarantined"] >= 1 and memory.stats("acme")["semantic"] > 0
    with memory.store.read() as conn:
        rows = conn.execute(select(QUARANTINE).where(QUARANTINE.c.source == "consolidate")).all()
        waiting = conn.execute(select(EPISODES.c.episode_id).where(EPISODES.c.consolidated_at.is_(None))).all()
    assert len(rows) == result["quarantined"] and waiting == []
    assert all(
        r.field == "salience" and '"salience": 1.7' in r.raw_payload and '"text": ' in r.raw_payload for r in rows
    )


def test_two_rejected_statements_of_one_fact_are_two_quarantine_rows() -> None:
    """Two statements of one fact (one key: where Ann lives) rejected for the same field got one quarantine id, and
    the second was dropped while counted."""
    import pandas as pd

    from engram.quality import validate_fact_batch
    from tasks.consolidation import _rejected_facts

    base = {"tenant": "acme", "fact_key": "k1", "actor": "Ann", "at": T0, "rendered": "", "tags": [], "sources": ["e1"]}
    candidates = pd.DataFrame(
        [
            {**base, "text": "Ann: I live in Paris.", "content_hash": "h-paris", "salience": 1.7},
            {**base, "text": "Ann: I live in Rome.", "content_hash": "h-rome", "salience": 1.8},
        ]
    )
    gate = validate_fact_batch(candidates, max_reject_fraction=1.0)
    rows = _rejected_facts(candidates, gate.rejected, T0)
    assert len(gate.rejected) == 2 and len({r["quarantine_id"] for r in rows}) == 2
    assert {"Paris" in r["raw_payload"] for r in rows} == {True, False}


def test_flow_runs_are_in_prefects_run_history(memory: Memory) -> None:
    memory.observe_many(conversation_rows("acme", sessions=1, start=T0))
    memory.run_lifecycle(as_of=T0 + timedelta(days=2))
    with get_client(sync_client=True) as client:
        names = {client.read_flow(r.flow_id).name for r in client.read_flow_runs(limit=200)}
    assert {"lifecycle", "ingest", "close_sessions", "expire_working", "consolidate"} <= names
    assert count(memory.store, SEMANTIC, tenant="acme") > 0


def test_a_changed_fact_gets_a_new_version_and_the_old_one_stays_readable(memory: Memory) -> None:
    memory.observe("acme", "s1", "Maya", "I live in Portland.", T0, event_id="home-1")
    memory.run_lifecycle(as_of=T0 + timedelta(days=1))
    memory.observe("acme", "s2", "Maya", "I live in Denver.", T0 + timedelta(days=30), event_id="home-2")
    memory.run_lifecycle(as_of=T0 + timedelta(days=31))

    hits = memory.search("acme", "where does Maya live", layers=["semantic"])
    assert [h.text for h in hits][:1] == ["(31 March 2024) Maya: I live in Denver."]
    assert all("Portland" not in h.text for h in hits)  # the superseded version left the index

    current = memory.get("acme", hits[0].item_id)
    assert (current.version, current.valid_to, current.superseded_by) == (2, None, None)
    history = memory.history("acme", current.item_id)
    superseded = [h for h in history if h.action == "supersede"]
    assert len(superseded) == 1 and superseded[0].detail["superseded_by"] == current.item_id
    old = memory.get("acme", superseded[0].item_id)
    assert (old.version, old.text, old.superseded_by) == (1, "Maya: I live in Portland.", current.item_id)
    assert old.valid_to == current.valid_from
    assert {"home-1", "home-2"} <= {h.item_id for h in history if h.action == "observe"}


def test_default_search_returns_facts_not_the_turns_they_were_distilled_from(memory: Memory) -> None:
    memory.observe_many(conversation_rows("acme", sessions=1, start=T0))
    memory.run_lifecycle(as_of=T0 + timedelta(days=1))
    # Indexes the episode before its consolidation is visible: the index must follow the change.
    default = memory.search("acme", "pottery class blue bowl")
    assert default and {h.layer for h in default} == {"semantic"}
    turns = memory.search("acme", "pottery class blue bowl", layers=["episodic"])
    assert turns and {h.layer for h in turns} == {"episodic"}


def test_relative_dates_with_odd_letters_or_past_the_calendar_are_resolved_or_left_as_said_not_a_crash(
    sqlite_memory: Memory,
) -> None:
    # "la\u017ft" (a long s) and "th\u0131s" (a dotless i) match the relative-date pattern as "last" and "this" do;
    # "800000 days ago" names a day before year 1. One such turn used to fail every run that closed or consolidated
    # its session.
    texts = [
        "I moved to Oslo la\u017ft year",
        "I started pottery th\u0131s month",
        "My town was founded 800000 days ago",
    ]
    rows = [
        {"tenant": "acme", "session": "s1", "actor": "Caroline", "text": text, "at": T0 + timedelta(minutes=i)}
        for i, text in enumerate(texts)
    ]
    assert sqlite_memory.observe_many(rows).accepted == 3
    summary = sqlite_memory.run_lifecycle(as_of=T0 + timedelta(days=1))
    assert summary["close_sessions"]["episodes"] == 1
    assert summary["consolidate"]["episodes"] == 1
    with sqlite_memory.store.read() as conn:
        facts = sorted(conn.execute(select(SEMANTIC.c.text)).scalars())
    year, month = T0.year - 1, T0.strftime("%B %Y")
    assert any(f"la\u017ft year ({year})" in f for f in facts), facts
    assert any(f"th\u0131s month ({month})" in f for f in facts), facts
    assert any(f.endswith("founded 800000 days ago") for f in facts), facts
