"""An episode the consolidator or the summary fails on holds back itself alone: the rest of its batch is written, the
failure is quarantined with its reason, the run shows failed, and the episode is consolidated once it can be."""

from __future__ import annotations

import json
import pickle
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import select, update

import engram.consolidate as consolidate_module
import flows.scale as scale_flows
import tasks.sessions as session_tasks
from blocks.consolidator import LLMConsolidatorEndpoint
from engram import Memory
from engram.consolidate import FACT_COLUMNS, LocalConsolidator, distill_isolating, plan_changes
from engram.errors import EpisodesHeldBack
from engram.service import MonitorThresholds, decide_signals, measure_store
from engram.store import EPISODES, LINEAGE, QUARANTINE, SEMANTIC, TRANSITIONS, TURNS, Store
from flows.consolidate import consolidate
from flows.ingest import ingest
from flows.lifecycle import lifecycle
from flows.scale import consolidate_shards
from flows.sessions import close_sessions
from tests.conftest import T0
from tests.flows.helpers import assert_every_event_in_exactly_one_place, conversation_rows
from tests.flows.test_llm_consolidator import ChatHandler, chat_server  # noqa: F401 - its fixture

AS_OF = T0 + timedelta(days=10)
real_turn_statements = consolidate_module._turn_statements
real_summarize = consolidate_module.summarize_episode
MARK = "zanzibar"  # a word of one turn; the injected fault fires on it


def _episodes(memory: Memory) -> dict[str, dict[str, Any]]:
    with memory.store.read() as conn:
        return {r.session_id: r._asdict() for r in conn.execute(select(EPISODES))}


def _quarantine(memory: Memory) -> list[dict[str, Any]]:
    with memory.store.read() as conn:
        return [r._asdict() for r in conn.execute(select(QUARANTINE))]


def _expire_leases(memory: Memory) -> None:
    """As if the episodes' leases (wall clock, five minutes) had run out."""
    with memory.store.write() as conn:
        conn.execute(
            update(EPISODES)
            .where(EPISODES.c.lease_owner.is_not(None))
            .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )


def _rows_with_a_marked_session(tenant: str = "acme") -> list[dict[str, Any]]:
    rows = conversation_rows(tenant, sessions=3, start=T0)
    marked = next(r for r in rows if r["session"] == f"{tenant}-s1")
    marked["text"] = f"I sailed to {MARK} with my sister last spring"
    return rows


@pytest.fixture
def failing_distil(monkeypatch: pytest.MonkeyPatch) -> None:
    """The local consolidator raises on any episode that holds the marked turn, as a defect in it would."""
    real = consolidate_module._turn_statements

    def statements(turns: list[dict[str, Any]], names: list[str]) -> Any:
        if any(MARK in str(t["text"]) for t in turns):
            raise KeyError("la\u017ft")
        return real(turns, names)

    monkeypatch.setattr(consolidate_module, "_turn_statements", statements)


@pytest.fixture
def two_attempts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two failed runs set an episode aside, for the flows and for a ``Memory`` made after this fixture (a
    ``Memory`` and the flows' stores take the limit from the settings when they open the store)."""
    monkeypatch.setenv("ENGRAM_CONSOLIDATE_ATTEMPTS", "2")


def test_one_episode_the_consolidator_fails_on_holds_back_itself_not_its_batch(
    memory: Memory, failing_distil: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory.observe_many(_rows_with_a_marked_session())
    with pytest.raises(EpisodesHeldBack) as raised:
        memory.run_lifecycle(as_of=AS_OF)

    episodes = _episodes(memory)
    held = episodes["acme-s1"]
    assert set(raised.value.episodes) == {("acme", held["episode_id"])}
    assert "KeyError" in str(raised.value) and held["episode_id"] in str(raised.value)
    # The failed run still tells what it did, every subflow's summary included.
    summaries = raised.value.summaries
    assert list(summaries) == ["ingest", "close_sessions", "expire_working", "consolidate"]
    assert summaries["ingest"]["routed"] == len(_rows_with_a_marked_session())
    assert summaries["close_sessions"]["episodes"] == 3 and summaries["consolidate"]["episodes"] == 2
    # The two others are consolidated, with their facts; the failing one waits under its lease, nothing of it lost.
    assert episodes["acme-s0"]["consolidated_at"] is not None and episodes["acme-s2"]["consolidated_at"] is not None
    assert held["consolidated_at"] is None and held["lease_owner"] is not None
    with memory.store.read() as conn:
        sourced = set(conn.execute(select(LINEAGE.c.event_id)).scalars())
    assert any(e.startswith("e0-") for e in sourced) and any(e.startswith("e2-") for e in sourced)
    assert not any(e.startswith("e1-") for e in sourced)
    assert_every_event_in_exactly_one_place(memory.store, "acme")
    [row] = _quarantine(memory)
    assert (row["tenant"], row["source"], row["field"]) == ("acme", "consolidate", "episode")
    assert row["reason"].startswith("KeyError") and json.loads(row["raw_payload"]) == {"episode_id": held["episode_id"]}

    # The first run after the lease retries it; the same failure again is quarantined once, not twice.
    _expire_leases(memory)
    with pytest.raises(EpisodesHeldBack):
        memory.run_lifecycle(as_of=AS_OF)
    assert len(_quarantine(memory)) == 1

    # Once the consolidator can handle it (the defect fixed), the first run after the lease consolidates it.
    monkeypatch.undo()
    _expire_leases(memory)
    assert memory.run_lifecycle(as_of=AS_OF)["consolidate"]["episodes"] == 1
    assert all(e["consolidated_at"] is not None for e in _episodes(memory).values())
    hits = memory.search("acme", f"sailed to {MARK}", layers=["semantic"])
    assert hits and MARK in hits[0].text


def test_an_episode_failed_on_as_many_times_as_allowed_is_set_aside_until_retried(
    two_attempts: None, memory: Memory, failing_distil: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault = consolidate_module._turn_statements
    assert memory.store.consolidate_attempts == 2
    memory.observe_many(_rows_with_a_marked_session())
    with pytest.raises(EpisodesHeldBack) as first:
        memory.run_lifecycle(as_of=AS_OF)
    held = _episodes(memory)["acme-s1"]
    assert held["consolidation_failures"] == 1 and first.value.summaries["consolidate"]["set_aside"] == 0
    assert "set aside" not in str(first.value) and memory.set_aside() == []

    # The second failure reaches the limit: the run says so, and the episode is set aside.
    _expire_leases(memory)
    with pytest.raises(EpisodesHeldBack, match="1 of them set aside") as second:
        consolidate(store_url=memory.store_url, as_of=AS_OF)
    assert second.value.summaries["consolidate"]["set_aside"] == 1
    [aside] = memory.set_aside("acme")
    assert (aside["episode_id"], aside["session_id"], aside["consolidation_failures"]) == (
        held["episode_id"],
        "acme-s1",
        2,
    )
    assert aside["ended_at"].tzinfo is not None
    assert aside["ended_at"].replace(tzinfo=None) == held["ended_at"].replace(tzinfo=None)
    measured = {(m.tenant, m.name): m.value for m in measure_store(memory.store, AS_OF)}
    assert measured[("*", "set_aside.episodes")] == 1
    signals = decide_signals([], measure_store(memory.store, AS_OF), MonitorThresholds(max_lag_hours=10_000))
    assert [(s.event, s.payload) for s in signals] == [("engram.alert.set_aside", {"episodes": 1, "threshold": 0})]

    # The next runs leave it alone and succeed; it stays unconsolidated, every turn of it kept, one quarantine row.
    _expire_leases(memory)
    assert consolidate(store_url=memory.store_url, as_of=AS_OF).get("episodes", 0) == 0  # nothing claimed
    assert _episodes(memory)["acme-s1"]["consolidated_at"] is None and len(_quarantine(memory)) == 1
    assert_every_event_in_exactly_one_place(memory.store, "acme")
    assert memory.retry_set_aside("globex") == 0  # another tenant's: nothing to retry

    # Once the consolidator is fixed, an operator gives it its attempts back and the next run consolidates it.
    monkeypatch.setattr(consolidate_module, "_turn_statements", real_turn_statements)
    assert fault is not real_turn_statements
    assert memory.retry_set_aside("acme", [held["episode_id"]]) == 1
    assert memory.set_aside() == [] and _episodes(memory)["acme-s1"]["consolidation_failures"] is None
    assert consolidate(store_url=memory.store_url, as_of=AS_OF)["episodes"] == 1
    assert all(e["consolidated_at"] is not None for e in _episodes(memory).values())
    assert memory.retry_set_aside("acme") == 0


def test_the_limit_is_the_stores_and_a_store_opened_without_it_counts_and_sets_aside_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'engram.db'}"
    with pytest.raises(ValueError, match="consolidate_attempts"):
        Store(url, consolidate_attempts=0)
    limited, plain = Store(url, consolidate_attempts=3), Store(url)
    try:
        _limit_applied_by(limited, plain)
    finally:
        limited.dispose()
        plain.dispose()


def _limit_applied_by(limited: Store, plain: Store) -> None:
    limited.migrate()
    episode = {"tenant": "acme", "session_id": "s", "started_at": T0, "ended_at": T0, "participants": [], "tags": []}
    with limited.write() as conn:
        conn.execute(
            EPISODES.insert(),
            [{**episode, "summary": "", "episode_id": f"ep-{n}", "consolidation_failures": n} for n in (None, 2, 3)],
        )
    as_of = T0 + timedelta(days=1)
    assert [r["episode_id"] for r in limited.set_aside_episodes()] == ["ep-3"]
    assert limited.consolidation_backlog(as_of)["acme"][0] == 2
    assert plain.set_aside_episodes() == [] and plain.consolidation_backlog(as_of)["acme"][0] == 3

    # A failure counts only through the store that holds the limit: ep-2 reaches it there, not through the other.
    no_facts = pd.DataFrame(columns=FACT_COLUMNS)
    claimed = plain.claim_episodes(as_of, "w1", 60, 10, "acme")
    assert sorted(e for _, e in claimed) == ["ep-2", "ep-3", "ep-None"]
    held = {("acme", "ep-2"): "KeyError: boom"}
    assert plain.commit_consolidation([], no_facts, "w1", as_of, None, plan_changes, held=held)["set_aside"] == 0
    assert _failures(limited) == {"ep-None": None, "ep-2": 2, "ep-3": 3}
    _expire(limited)
    assert sorted(e for _, e in limited.claim_episodes(as_of, "w2", 60, 10, "acme")) == ["ep-2", "ep-None"]
    assert limited.commit_consolidation([], no_facts, "w2", as_of, None, plan_changes, held=held)["set_aside"] == 1
    assert [r["episode_id"] for r in limited.set_aside_episodes("acme")] == ["ep-2", "ep-3"]
    assert plain.retry_set_aside("acme") == 0 and limited.retry_set_aside("acme", ["ep-3"]) == 1
    assert _failures(limited) == {"ep-None": None, "ep-2": 3, "ep-3": None}


def _failures(store: Store) -> dict[str, int | None]:
    with store.read() as conn:
        return dict(conn.execute(select(EPISODES.c.episode_id, EPISODES.c.consolidation_failures)).all())


def _expire(store: Store) -> None:
    with store.write() as conn:
        conn.execute(update(EPISODES).values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1)))


def test_episodes_failed_on_alone_before_are_counted_when_later_their_batch_fails_whole(
    two_attempts: None, sqlite_memory: Memory, failing_distil: None
) -> None:
    assert sqlite_memory.store.consolidate_attempts == 2
    rows = conversation_rows("acme", sessions=3, start=T0)
    for session in ("acme-s0", "acme-s2"):
        next(r for r in rows if r["session"] == session)["text"] = f"I sailed to {MARK} last spring"
    sqlite_memory.observe_many(rows)
    with pytest.raises(EpisodesHeldBack):
        sqlite_memory.run_lifecycle(as_of=AS_OF)  # the good episode is distilled beside the two bad ones
    bad = {s: e for s, e in _episodes(sqlite_memory).items() if s != "acme-s1"}
    assert [e["consolidation_failures"] for e in bad.values()] == [1, 1]

    # Nothing new came: the next batch is the two bad episodes alone, and fails whole. They were failed on alone
    # before, so this failure counts too, and they are set aside rather than retried without end.
    _expire_leases(sqlite_memory)
    with pytest.raises(EpisodesHeldBack) as raised:
        consolidate(store_url=sqlite_memory.store_url, as_of=AS_OF)
    assert raised.value.summaries["consolidate"]["set_aside"] == 2
    assert sorted(r["session_id"] for r in sqlite_memory.set_aside("acme")) == ["acme-s0", "acme-s2"]
    _expire_leases(sqlite_memory)
    assert consolidate(store_url=sqlite_memory.store_url, as_of=AS_OF).get("held_back", 0) == 0


def test_a_batch_of_several_that_fails_whole_is_held_back_and_ends_the_runs_claiming(
    sqlite_memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(turns: list[dict[str, Any]], names: list[str]) -> Any:
        raise RuntimeError("the consolidator is broken")

    monkeypatch.setattr(consolidate_module, "_turn_statements", broken)
    sqlite_memory.observe_many(conversation_rows("acme", sessions=3, start=T0))
    with pytest.raises(EpisodesHeldBack, match="RuntimeError: the consolidator is broken") as raised:
        lifecycle(store_url=sqlite_memory.store_url, as_of=AS_OF, batch_size=2)
    # The first batch (the two oldest episodes) failed whole: the run claimed no other, which waits unleased.
    episodes = _episodes(sqlite_memory)
    assert {e for _, e in raised.value.episodes} == {episodes[s]["episode_id"] for s in ("acme-s0", "acme-s1")}
    assert episodes["acme-s2"]["lease_owner"] is None
    assert all(e["consolidated_at"] is None for e in episodes.values())
    reasons = [r["reason"] for r in _quarantine(sqlite_memory)]
    assert reasons == ["RuntimeError: the consolidator is broken"] * 2
    # The consolidator failed, not its episodes: no failure is counted against them, none comes nearer being set aside.
    assert all(e["consolidation_failures"] is None for e in episodes.values())
    assert raised.value.summaries["consolidate"]["set_aside"] == 0


def test_a_shard_worker_holds_back_the_failing_episode_and_drains_the_rest(
    sqlite_memory: Memory, failing_distil: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims: list[tuple[int, int] | None] = []
    claim_shard = scale_flows.claim_shard

    def counted_claim(*args: Any) -> tuple[int, int] | None:
        claims.append(claim_shard(*args))
        return claims[-1]

    monkeypatch.setattr(scale_flows, "claim_shard", counted_claim)
    for tenant in ("acme", "globex"):
        sqlite_memory.observe_many(_rows_with_a_marked_session(tenant))
    ingest(store_url=sqlite_memory.store_url, as_of=AS_OF)
    close_sessions(store_url=sqlite_memory.store_url, as_of=AS_OF)
    with pytest.raises(EpisodesHeldBack) as raised:
        consolidate_shards(store_url=sqlite_memory.store_url, as_of=AS_OF, shard_count=8, max_shards=6)
    # Each shard was taken once: the held-back episodes left in them, leased, did not bring the worker back.
    claimed = [shard for shard, _ in filter(None, claims)]
    assert claimed and len(claimed) == len(set(claimed))
    assert {t for t, _ in raised.value.episodes} == {"acme", "globex"} and len(raised.value.episodes) == 2
    assert raised.value.summaries["consolidate_shards"]["episodes"] == 4
    waiting = [e for e in _episodes(sqlite_memory).values() if e["consolidated_at"] is None]
    assert sorted(e["session_id"] for e in waiting) == ["acme-s1", "globex-s1"]
    assert len(_quarantine(sqlite_memory)) == 2


def test_distilling_alone_gives_the_other_episodes_the_facts_they_give_in_a_batch_of_their_own(
    sqlite_memory: Memory, failing_distil: None
) -> None:
    sqlite_memory.observe_many(_rows_with_a_marked_session())
    ingest(store_url=sqlite_memory.store_url, as_of=AS_OF)
    close_sessions(store_url=sqlite_memory.store_url, as_of=AS_OF)
    keys = sorted((e["tenant"], e["episode_id"]) for e in _episodes(sqlite_memory).values())
    episodes, turns = sqlite_memory.store.load_episodes(keys)
    facts, held = distill_isolating(LocalConsolidator(), episodes, turns)
    [(tenant, episode_id)] = held
    others = [k for k in keys if k != (tenant, episode_id)]
    expected = LocalConsolidator().distill(*sqlite_memory.store.load_episodes(others))
    assert len(facts) > 0 and list(facts.columns) == FACT_COLUMNS
    pd.testing.assert_frame_equal(facts, expected)


def test_a_batch_that_fails_only_whole_is_distilled_one_by_one_and_says_so(
    sqlite_memory: Memory, caplog: pytest.LogCaptureFixture
) -> None:
    class OneAtATime(LocalConsolidator):
        def distill(self, episodes: pd.DataFrame, turns: pd.DataFrame) -> pd.DataFrame:
            if len(episodes) > 1:
                raise MemoryError("too many episodes at once")
            return super().distill(episodes, turns)

    sqlite_memory.observe_many(conversation_rows("acme", sessions=3, start=T0))
    ingest(store_url=sqlite_memory.store_url, as_of=AS_OF)
    close_sessions(store_url=sqlite_memory.store_url, as_of=AS_OF)
    keys = sorted((e["tenant"], e["episode_id"]) for e in _episodes(sqlite_memory).values())
    with caplog.at_level("WARNING", logger="engram.consolidate"):
        facts, held = distill_isolating(OneAtATime(), *sqlite_memory.store.load_episodes(keys))
    assert held == {}
    pd.testing.assert_frame_equal(facts, LocalConsolidator().distill(*sqlite_memory.store.load_episodes(keys)))
    assert "failed whole (MemoryError: too many episodes at once)" in caplog.text


def test_a_chat_model_consolidator_sets_apart_the_episode_its_fallback_fails_on_asking_each_once(
    sqlite_memory: Memory,
    chat_server: str,  # noqa: F811 - the fixture imported above
    failing_distil: None,
) -> None:
    LLMConsolidatorEndpoint(base_url=chat_server, model="test-model").save("engram-test-held", overwrite=True)
    rows = _rows_with_a_marked_session()
    marked = next(r for r in rows if MARK in r["text"])
    marked["text"] += " garble"  # the model garbles its answer, and the local fallback fails on the mark
    sqlite_memory.observe_many(rows)
    ingest(store_url=sqlite_memory.store_url, as_of=AS_OF)
    close_sessions(store_url=sqlite_memory.store_url, as_of=AS_OF)
    with pytest.raises(EpisodesHeldBack) as raised:
        consolidate(store_url=sqlite_memory.store_url, as_of=AS_OF, consolidator_block="engram-test-held")
    episodes = _episodes(sqlite_memory)
    assert set(raised.value.episodes) == {("acme", episodes["acme-s1"]["episode_id"])}
    assert [s for s, e in sorted(episodes.items()) if e["consolidated_at"]] == ["acme-s0", "acme-s2"]
    assert len(ChatHandler.requests) == 3  # one request per episode: none asked again to find the failing one


def test_forgetting_a_subject_removes_the_quarantine_rows_whose_reason_quotes_it(
    sqlite_memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def quoting(turns: list[dict[str, Any]], names: list[str]) -> Any:
        quoted = next((t["text"] for t in turns if MARK in str(t["text"])), None)
        if quoted is not None:
            raise ValueError(f"cannot read {quoted!r}")
        return real(turns, names)

    real = consolidate_module._turn_statements
    monkeypatch.setattr(consolidate_module, "_turn_statements", quoting)
    sqlite_memory.observe_many(_rows_with_a_marked_session())
    with pytest.raises(EpisodesHeldBack):
        sqlite_memory.run_lifecycle(as_of=AS_OF)
    [row] = _quarantine(sqlite_memory)
    assert MARK in row["reason"] and MARK not in row["raw_payload"]
    receipt = sqlite_memory.forget("acme", MARK)
    assert receipt.removed["quarantine"] == 1
    assert _quarantine(sqlite_memory) == []


def test_the_held_back_error_survives_pickling_and_keeps_its_message_short() -> None:
    error = EpisodesHeldBack(
        {("acme", f"ep-{i}"): "KeyError: " + "x" * 5000 for i in range(7)}, {"consolidate": {"episodes": 3}}
    )
    again = pickle.loads(pickle.dumps(error))
    assert again.episodes == error.episodes and str(again) == str(error)
    assert again.summaries == {"consolidate": {"episodes": 3}}
    assert "and 2 more" in str(error) and len(str(error)) < 2000


def _summary_failing_on_the_mark(turns: Any) -> str:
    """The summarizer, except that it raises on the episode that holds the marked turn."""
    if any(MARK in str(t["text"]) for t in turns):
        raise ValueError("year 0 is out of range")
    return real_summarize(turns)


def _closed_unsummarized(memory: Memory, monkeypatch: pytest.MonkeyPatch, rows: list[dict[str, Any]]) -> None:
    """``rows`` ingested and their sessions closed while the summarizer fails on the marked turn's episodes."""
    monkeypatch.setattr(session_tasks, "summarize_episode", _summary_failing_on_the_mark)
    memory.observe_many(rows)
    ingest(store_url=memory.store_url, as_of=AS_OF)
    close_sessions(store_url=memory.store_url, as_of=AS_OF)


def _turns(memory: Memory, episode_id: str) -> list[dict[str, Any]]:
    """An episode's turns, in order, as the summarizer gets them."""
    with memory.store.read() as conn:
        query = select(TURNS).where(TURNS.c.episode_id == episode_id).order_by(TURNS.c.position)
        return [r._asdict() for r in conn.execute(query)]


def test_a_summary_that_fails_leaves_its_episode_unsummarized_and_quarantined_not_its_batch_unclosed(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, summarize = real_summarize, _summary_failing_on_the_mark
    monkeypatch.setattr(session_tasks, "summarize_episode", summarize)
    memory.observe_many(_rows_with_a_marked_session())
    summary = memory.run_lifecycle(as_of=AS_OF)
    assert summary["close_sessions"]["episodes"] == 3 and summary["close_sessions"]["unsummarized"] == 1
    assert summary["consolidate"]["episodes"] == 3
    episodes = _episodes(memory)
    assert episodes["acme-s1"]["summary"] == "" and episodes["acme-s1"]["turn_count"] == 8
    assert episodes["acme-s0"]["summary"] and episodes["acme-s2"]["summary"]
    [row] = _quarantine(memory)
    assert (row["source"], row["field"]) == ("close_sessions", "summary")
    assert row["reason"] == "ValueError: year 0 is out of range"
    assert json.loads(row["raw_payload"])["episode_id"] == episodes["acme-s1"]["episode_id"]
    assert_every_event_in_exactly_one_place(memory.store, "acme")
    with memory.store.read() as conn:
        assert conn.execute(select(SEMANTIC.c.item_id)).first() is not None

    # Resummarizing while the summarizer still fails leaves the episode as it is.
    held_id = episodes["acme-s1"]["episode_id"]
    monkeypatch.setattr(consolidate_module, "summarize_episode", summarize)
    assert memory.resummarize("acme") == {"episodes": 1, "resummarized": 0, "failed": 1, "empty": 0, "skipped": 0}
    assert _episodes(memory)["acme-s1"]["summary"] == ""
    # Once it is fixed, the episode gets its summary, audited, with a new change stamp; the others are untouched.
    monkeypatch.setattr(consolidate_module, "summarize_episode", real)
    assert memory.resummarize("acme") == {"episodes": 1, "resummarized": 1, "failed": 0, "empty": 0, "skipped": 0}
    after = _episodes(memory)
    with memory.store.read() as conn:
        actions = conn.execute(select(TRANSITIONS.c.action).where(TRANSITIONS.c.item_id == held_id)).scalars().all()
    assert after["acme-s1"]["summary"] == real(_turns(memory, held_id)) != ""
    assert after["acme-s1"]["seq"] > episodes["acme-s1"]["seq"] and actions.count("resummarize") == 1
    assert {s: e["summary"] for s, e in after.items() if s != "acme-s1"} == {
        s: e["summary"] for s, e in episodes.items() if s != "acme-s1"
    }
    assert memory.resummarize("acme")["episodes"] == 0  # nothing left to do
    [row] = _quarantine(memory)  # the record of the failure stays
    assert row["field"] == "summary"


def test_a_forget_during_a_resummarize_does_not_come_back_through_the_summary(
    sqlite_memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory, real = sqlite_memory, real_summarize
    _closed_unsummarized(memory, monkeypatch, _rows_with_a_marked_session())
    assert _episodes(memory)["acme-s1"]["summary"] == ""

    def forgetting_meanwhile(turns: Any) -> str:
        # The summary is made from the turns as read, the subject among them; a forget commits before the write.
        memory.forget("acme", MARK)
        return real(turns)

    monkeypatch.setattr(consolidate_module, "summarize_episode", forgetting_meanwhile)
    counts = memory.resummarize("acme")
    assert counts == {"episodes": 1, "resummarized": 0, "failed": 0, "empty": 0, "skipped": 1}
    assert _episodes(memory)["acme-s1"]["summary"] == ""
    # Afterwards the episode has fewer turns than it was written with: a summary of the rest is not made either.
    monkeypatch.setattr(consolidate_module, "summarize_episode", real)
    assert memory.resummarize("acme")["skipped"] == 1
    assert MARK not in _episodes(memory)["acme-s1"]["summary"]


class Crash(Exception):
    """The injected crash: raised in the process at a step, as a SIGKILL there would leave the store."""


# (step, which of the two episodes, in order, the crash leaves summarized)
RESUMMARIZE_CRASHES = [
    ("first_audit_insert", 0),  # inside the first batch's transaction, its summary updated: rolled back whole
    ("second_batch_write", 1),  # the first batch committed; the second's transaction fails as it starts
]


@pytest.mark.parametrize(("step", "left_summarized"), RESUMMARIZE_CRASHES, ids=[c[0] for c in RESUMMARIZE_CRASHES])
def test_a_resummarize_that_crashes_midway_loses_nothing_and_its_rerun_finishes(
    sqlite_memory: Memory, monkeypatch: pytest.MonkeyPatch, step: str, left_summarized: int
) -> None:
    memory = sqlite_memory
    rows = conversation_rows("acme", sessions=3, start=T0)
    for session in ("acme-s0", "acme-s2"):
        next(r for r in rows if r["session"] == session)["text"] = f"I sailed to {MARK} last spring"
    _closed_unsummarized(memory, monkeypatch, rows)
    before = _episodes(memory)
    unsummarized = sorted(e["episode_id"] for e in before.values() if e["summary"] == "")
    assert len(unsummarized) == 2

    calls: list[str] = []
    if step == "first_audit_insert":
        insert = Store.insert_ignore

        def crashing(self: Store, conn: Any, table: Any, rows: Any) -> int:
            if table is TRANSITIONS and not calls:
                calls.append(step)
                raise Crash(step)
            return insert(self, conn, table, rows)

        monkeypatch.setattr(Store, "insert_ignore", crashing)
    else:
        bump = Store.bump_seq

        def crashing(self: Store, conn: Any, tenants: Any, now: datetime) -> dict[str, int]:
            calls.append(step)
            if len(calls) == 2:
                raise Crash(step)
            return bump(self, conn, tenants, now)

        monkeypatch.setattr(Store, "bump_seq", crashing)
    with pytest.raises(Crash):
        memory.store.resummarize_episodes("acme", real_summarize, AS_OF, None, batch_size=1)

    crashed = _episodes(memory)
    written = unsummarized[:left_summarized]
    assert sorted(e["episode_id"] for e in crashed.values() if e["summary"] == "") == unsummarized[left_summarized:]
    assert _resummarize_audit(memory) == dict.fromkeys(written, 1)
    for session, episode in crashed.items():  # nothing else of any episode changed
        changed = {k for k in episode if episode[k] != before[session][k]}
        assert changed == ({"summary", "seq"} if episode["episode_id"] in written else set()), session
    assert_every_event_in_exactly_one_place(memory.store, "acme")

    monkeypatch.undo()  # the store as it is, and the real summarizer
    assert memory.resummarize("acme") == {
        "episodes": 2 - left_summarized,
        "resummarized": 2 - left_summarized,
        "failed": 0,
        "empty": 0,
        "skipped": 0,
    }
    done = {e["episode_id"]: e["summary"] for e in _episodes(memory).values()}
    for episode_id in unsummarized:
        assert done[episode_id] == real_summarize(_turns(memory, episode_id)) != ""
    assert _resummarize_audit(memory) == dict.fromkeys(unsummarized, 1)
    assert len(_quarantine(memory)) == 2 and memory.resummarize("acme")["episodes"] == 0
    assert_every_event_in_exactly_one_place(memory.store, "acme")


def _resummarize_audit(memory: Memory) -> dict[str, int]:
    """Per episode, its ``resummarize`` audit rows."""
    with memory.store.read() as conn:
        ids = conn.execute(select(TRANSITIONS.c.item_id).where(TRANSITIONS.c.action == "resummarize")).scalars()
        return dict(Counter(ids))


def test_a_summarizer_that_fails_on_every_episode_of_a_batch_fails_the_close_and_writes_nothing(
    sqlite_memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(turns: Any) -> str:
        raise ValueError("the summarizer is broken")

    monkeypatch.setattr(session_tasks, "summarize_episode", broken)
    sqlite_memory.observe_many(conversation_rows("acme", sessions=3, start=T0))
    ingest(store_url=sqlite_memory.store_url, as_of=AS_OF)
    with pytest.raises(ValueError, match="the summarizer is broken"):
        close_sessions(store_url=sqlite_memory.store_url, as_of=AS_OF)
    # Nothing written: the sessions are closed, with their summaries, once the summarizer works.
    assert _episodes(sqlite_memory) == {} and _quarantine(sqlite_memory) == []
    assert sqlite_memory.stats("acme")["working"] == 24
