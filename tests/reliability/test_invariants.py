"""The invariant check itself: what it reports in a memory the lifecycle's steps filled, and after a row is broken."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import update

from engram import Memory
from engram.store import TURNS
from tests.engram.archive_helpers import fill
from tests.reliability.invariants import check_invariants


def test_a_turn_whose_item_id_is_not_its_event_id_is_reported(tmp_path: Path) -> None:
    memory = Memory(f"sqlite:///{tmp_path / 'engram.db'}", (tmp_path / "archive").as_uri())
    fill(memory, "acme", sessions=2)
    before = check_invariants(memory.store, "acme")
    assert before.events == 16 and before.turns_not_named_by_event == []

    with memory.store.write() as conn:
        conn.execute(update(TURNS).where(TURNS.c.tenant == "acme", TURNS.c.item_id == "acme-e1-3").values(item_id="x"))
    report = check_invariants(memory.store, "acme")

    assert report.turns_not_named_by_event == [("x", "acme-e1-3")]
    assert not report.ok and set(report.problems) - set(before.problems) == {"turns_not_named_by_event"}
    memory.close()
