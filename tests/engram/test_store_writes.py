"""The store's bulk writes: SQLite's insert path, the JSON text of JSON columns, the sensory ledger's new events and
the tenants' change counters.

``Store.insert_ignore`` on SQLite makes a batch's parameters column by column with SQLAlchemy's own statement and
conversions; what it stores must be what SQLAlchemy's own path stores, and what SQLAlchemy would fill in or refuse it
must leave to SQLAlchemy. JSON columns are written with orjson where it reads back as ``json.dumps`` would.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from engram.layers import Layer
from engram.store import (
    EPISODES,
    EVENTS,
    SEMANTIC,
    TENANTS,
    TRANSITIONS,
    WORKING,
    Store,
    StoreError,
    _json_loads,
    json_text,
    transition_row,
)

AT = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'engram.db'}")
    s.migrate()
    return s


def _semantic_row(item_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "tenant": "t1",
        "item_id": item_id,
        "fact_key": "fact-" + item_id,
        "version": 2,
        "text": "Ana: I live in Lisbon — «café» 😀",
        "rendered": "(4 March 2026) Ana: I live in Lisbon",
        "actor": "Ana",
        "tags": ["home", "topic-3"],
        "valid_from": AT,
        "valid_to": None,
        "first_seen": AT - timedelta(days=3),
        "last_seen": AT,
        "support_count": 3,
        "salience": 0.417,
        "superseded_by": None,
        "embedding": b"\x00\x01\xfe\xff",
        "content_hash": "c" * 32,
        "seq": 7,
        **extra,
    }


def _stored(store: Store, table: Any, key: str, ids: list[str]) -> list[dict[str, Any]]:
    with store.read() as conn:
        rows = conn.execute(select(table).where(table.c[key].in_(ids)).order_by(table.c[key])).mappings().all()
    return [{k: v for k, v in r.items() if k != key} for r in rows]


def _raw(store: Store, table: str, key: str, ids: list[str]) -> list[tuple[Any, ...]]:
    """The stored text of each column, as SQLite holds it, for rows with these keys (without the key itself)."""
    with store.read() as conn:
        marks = ", ".join("?" * len(ids))
        rows = conn.exec_driver_sql(f"SELECT * FROM {table} WHERE {key} IN ({marks}) ORDER BY {key}", tuple(ids))
        names = list(rows.keys())
        return [tuple(v for n, v in zip(names, r, strict=True) if n != key) for r in rows]


def _sqlalchemy_insert(store: Store, table: Any, rows: list[dict[str, Any]]) -> int:
    with store.write() as conn:
        return conn.execute(store._insert(table).on_conflict_do_nothing(), rows).rowcount


def test_sqlite_bulk_insert_stores_what_sqlalchemys_own_path_stores(store: Store) -> None:
    def rows(prefix: str) -> list[dict[str, Any]]:
        return [
            _semantic_row(f"{prefix}{i}", fact_key=f"fact-{i}", salience=i / 7, valid_to=AT if i % 2 else None)
            for i in range(5)
        ]

    mine, theirs = rows("a"), rows("b")
    with store.write() as conn:
        assert store.insert_ignore(conn, SEMANTIC, mine) == 5
    assert _sqlalchemy_insert(store, SEMANTIC, theirs) == 5
    assert ("semantic_items", tuple(mine[0])) in store._insert_plans  # the rows went the column-by-column way

    # Byte for byte the same stored values (datetimes as SQLAlchemy's text, JSON as the serializer's text, blobs)...
    assert _raw(store, "semantic_items", "item_id", [f"a{i}" for i in range(5)]) == _raw(
        store, "semantic_items", "item_id", [f"b{i}" for i in range(5)]
    )
    # ...which read back as the values written.
    back = _stored(store, SEMANTIC, "item_id", ["a1"])[0]
    assert back["valid_to"] == AT and back["valid_to"].tzinfo is not None
    assert back["tags"] == ["home", "topic-3"]
    assert back["embedding"] == b"\x00\x01\xfe\xff"
    assert back["text"] == "Ana: I live in Lisbon — «café» 😀"
    assert back["salience"] == pytest.approx(1 / 7)


def test_sqlite_bulk_insert_skips_rows_whose_key_exists_and_counts_the_rest(store: Store) -> None:
    rows = [transition_row("t1", f"e{i}", Layer.SENSORY, Layer.WORKING, "ingest", AT, "run-1", 1) for i in range(4)]
    with store.write() as conn:
        assert store.insert_ignore(conn, TRANSITIONS, rows[:2]) == 2
    with store.write() as conn:
        assert store.insert_ignore(conn, TRANSITIONS, rows) == 2
    with store.read() as conn:
        assert conn.execute(select(TRANSITIONS.c.item_id).order_by(TRANSITIONS.c.item_id)).scalars().all() == [
            "e0",
            "e1",
            "e2",
            "e3",
        ]


def test_a_column_left_out_gets_sqlalchemys_default(store: Store) -> None:
    row = transition_row("t1", "e1", Layer.SENSORY, Layer.WORKING, "ingest", AT, None, 5)
    del row["seq"]  # its column's default (0) is filled in by SQLAlchemy, not by the database
    with store.write() as conn:
        assert store.insert_ignore(conn, TRANSITIONS, [row]) == 1
    with store.read() as conn:
        assert conn.execute(select(TRANSITIONS.c.seq)).scalar_one() == 0
    assert store._insert_plans[("transitions", tuple(row))] is None  # SQLAlchemy's path, remembered


def test_rows_that_differ_in_their_columns_are_written_as_sqlalchemy_writes_them(store: Store) -> None:
    full = transition_row("t1", "e1", Layer.SENSORY, Layer.WORKING, "ingest", AT, None, 5)
    short = {k: v for k, v in transition_row("t1", "e2", None, None, "x", AT, None, 6).items() if k != "detail"}
    with store.write() as conn, pytest.raises(Exception, match="detail"):
        # SQLAlchemy refuses a later row that lacks a column of the first: the fast path must not write it either.
        store.insert_ignore(conn, TRANSITIONS, [full, short])


def test_a_value_a_conversion_refuses_fails_the_write_with_a_store_error(store: Store) -> None:
    row = transition_row("t1", "e1", Layer.SENSORY, Layer.WORKING, "ingest", AT.replace(tzinfo=None), None, 1)
    with pytest.raises(StoreError, match="timezone"), store.write() as conn:
        store.insert_ignore(conn, TRANSITIONS, [row])
    with store.read() as conn:
        assert conn.execute(select(TRANSITIONS)).all() == []


def test_a_working_item_written_in_bulk_reads_back_whole(store: Store) -> None:
    row = {
        "tenant": "t1",
        "item_id": "e1",
        "event_id": "e1",
        "session_id": "s1",
        "actor": "Ana",
        "text": "hello",
        "at": AT,
        "scope": "session",
        "tags": [],
        "metadata": {"n": 2**70, "nested": {"k": [1, 2.5, None]}},
        "expires_at": AT + timedelta(days=1),
        "created_run_id": None,
        "seq": 1,
    }
    with store.write() as conn:
        assert store.insert_ignore(conn, WORKING, [row]) == 1
    back = _stored(store, WORKING, "item_id", ["e1"])[0]
    assert back["metadata"] == {"n": 2**70, "nested": {"k": [1, 2.5, None]}}
    assert back["at"] == AT


@pytest.mark.parametrize(
    "value",
    [
        {"session": "s1", "episodes": ["ep-1", "ep-2"], "version": 3},
        {"text": "café «x» 😀 \u0000 \n"},
        {"big": 2**64 + 1},  # past 64 bits: orjson refuses it, json writes it
        {"flag": True, "none": None, "neg": -0.0, "small": 1e-300, "x": 0.1 + 0.2},
        [1, "two", [3.0, {"four": None}]],
        {"lone": "\ud800"},  # a lone surrogate: orjson refuses it
        "plain",
        None,
    ],
)
def test_json_text_reads_back_as_json_dumps_text_does(value: Any) -> None:
    assert _json_loads(json_text(value)) == _json_loads(json.dumps(value))


@pytest.mark.parametrize("value", [{"x": math.nan}, {"x": math.inf}, [-math.inf]])
def test_json_text_keeps_nan_and_infinities_where_orjson_would_write_null(value: Any) -> None:
    text = json_text(value)
    assert "null" not in text
    assert json.dumps(_json_loads(text)) == json.dumps(value)


@pytest.mark.parametrize(
    "value",
    [
        {"b": 1, "a": {"d": [{"z": 1, "y": 2}], "c": "é"}},
        {"b": None, "a": math.nan},  # json's text, keys sorted
        {"lone": "\ud800", "a": 1},
        [{"y": 1, "x": 2}],
        None,
    ],
)
def test_json_text_with_sorted_keys_is_the_same_for_any_key_order_and_reads_back(value: Any) -> None:
    text = json_text(value, sort_keys=True)
    assert json.dumps(json.loads(text), sort_keys=True) == json.dumps(value, sort_keys=True)
    orders: list[list[str]] = []
    json.loads(text, object_pairs_hook=lambda pairs: orders.append([k for k, _ in pairs]) or dict(pairs))
    assert all(keys == sorted(keys) for keys in orders)  # every object's keys, nested ones too
    if isinstance(value, dict):
        assert json_text(_reversed_keys(value), sort_keys=True) == text


def _reversed_keys(value: Any) -> Any:
    """``value`` with the keys of every object, nested ones too, in reverse order."""
    if isinstance(value, dict):
        return {k: _reversed_keys(v) for k, v in reversed(value.items())}
    if isinstance(value, list):
        return [_reversed_keys(v) for v in value]
    return value


def test_json_text_of_keys_that_are_not_strings_is_json_dumps_text() -> None:
    assert json_text({1: "a", 2.5: "b"}) == json.dumps({1: "a", 2.5: "b"})


def test_json_text_of_a_datetime_is_refused_as_json_dumps_refuses_it() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        json_text({"at": AT})


def test_a_batchs_times_are_each_stored_as_their_own_instant(store: Store) -> None:
    paris = timezone(timedelta(hours=2))
    times = [AT, AT.astimezone(paris), AT + timedelta(microseconds=1), AT, AT - timedelta(days=400)]
    rows = [transition_row("t1", f"e{i}", None, None, "x", at, None, 1) for i, at in enumerate(times)]
    with store.write() as conn:
        assert store.insert_ignore(conn, TRANSITIONS, rows) == len(rows)
    with store.read() as conn:
        stored = dict(conn.execute(select(TRANSITIONS.c.item_id, TRANSITIONS.c.at)).all())
    assert [stored[f"e{i}"] for i in range(len(times))] == times
    with store.read() as conn:
        text = dict(conn.exec_driver_sql("SELECT item_id, at FROM transitions").all())
    assert text["e0"] == text["e1"] == text["e3"] == "2026-03-04 05:06:07.891011"  # one instant, one UTC text
    assert text["e2"] == "2026-03-04 05:06:07.891012"


def test_the_two_instants_of_an_hour_a_clock_change_repeats_are_stored_apart(store: Store) -> None:
    new_york = ZoneInfo("America/New_York")
    first = datetime(2026, 11, 1, 1, 30, tzinfo=new_york)  # 05:30 UTC
    second = first.replace(fold=1)  # the same wall time an hour later, 06:30 UTC; equal to ``first`` in Python
    rows = [transition_row("t1", f"e{i}", None, None, "x", at, None, 1) for i, at in enumerate([first, second])]
    with store.write() as conn:
        assert store.insert_ignore(conn, TRANSITIONS, rows) == 2
    with store.read() as conn:
        text = dict(conn.exec_driver_sql("SELECT item_id, at FROM transitions").all())
    assert text == {"e0": "2026-11-01 05:30:00.000000", "e1": "2026-11-01 06:30:00.000000"}


@pytest.fixture
def any_store(store_url: str) -> Iterator[Store]:
    """A migrated store on each backend."""
    s = Store(store_url)
    s.migrate()
    try:
        yield s
    finally:
        s.dispose()


def _event(tenant: str, event_id: str, text: str = "hello") -> dict[str, Any]:
    return {
        "tenant": tenant,
        "event_id": event_id,
        "session_id": "s1",
        "actor": "user",
        "text": text,
        "at": AT,
        "metadata": {},
    }


def test_add_events_returns_only_the_new_events_and_leaves_those_present_as_they_were(any_store: Store) -> None:
    first = any_store.add_events([_event("a", "e1"), _event("a", "e2"), _event("b", "e1")], AT)
    assert first == {("a", "e1"), ("a", "e2"), ("b", "e1")}
    # a and b hold e1 each: an event id is one tenant's, so c's e1 is new; a's e2 again, with another text,
    # is a duplicate and keeps the text it was first written with.
    again = [
        _event("a", "e2", "changed"),
        _event("a", "e3"),
        _event("b", "e1"),
        _event("b", "e2"),
        _event("c", "e1"),
    ]
    assert any_store.add_events(again, AT + timedelta(seconds=1)) == {("a", "e3"), ("b", "e2"), ("c", "e1")}
    with any_store.read() as conn:
        stored = {(r.tenant, r.event_id): r.text for r in conn.execute(select(EVENTS))}
    assert stored == {
        ("a", "e1"): "hello",
        ("a", "e2"): "hello",
        ("a", "e3"): "hello",
        ("b", "e1"): "hello",
        ("b", "e2"): "hello",
        ("c", "e1"): "hello",
    }


def test_add_events_over_hundreds_of_tenants_finds_every_new_event(any_store: Store) -> None:
    tenants = [f"t{i:04d}" for i in range(450)]  # a batch over many tenants, half of whose events are there
    assert len(any_store.add_events([_event(t, "e1") for t in tenants[::2]], AT)) == 225
    both = [_event(t, e) for t in tenants for e in ("e1", "e2")]
    want = {(t, e) for t in tenants for e in ("e1", "e2")} - {(t, "e1") for t in tenants[::2]}
    assert any_store.add_events(both, AT) == want
    with any_store.read() as conn:
        assert conn.execute(select(func.count()).select_from(EVENTS)).scalar_one() == 900


def test_a_write_advances_the_change_counter_of_each_of_its_tenants_once(any_store: Store) -> None:
    tenants = [f"t{i:05d}" for i in range(2_100)]  # past one statement's chunk of tenants
    with any_store.write() as conn:
        assert any_store.bump_seq(conn, tenants[:3], AT) == {t: 1 for t in tenants[:3]}
    with any_store.write() as conn:
        seqs = any_store.bump_seq(conn, [*reversed(tenants), tenants[0]], AT)  # order and repeats do not matter
    assert seqs == {t: 2 if t in tenants[:3] else 1 for t in tenants}
    with any_store.read() as conn:
        assert dict(conn.execute(select(TENANTS.c.tenant, TENANTS.c.seq)).all()) == seqs


def test_an_event_skipped_for_another_reason_than_its_key_fails_the_write_and_keeps_nothing(store: Store) -> None:
    # SQLite counts new events by looking them up under its write lock; an insert the conflict clause skips for
    # another unique index would be counted new without the driver's count to check it against.
    with store.write() as conn:
        conn.exec_driver_sql("CREATE UNIQUE INDEX ix_test_one_text ON events (tenant, text)")
    assert store.add_events([_event("a", "e1", "same words")], AT) == {("a", "e1")}
    with pytest.raises(StoreError, match="1 of 2 new events"):
        store.add_events([_event("a", "e2", "same words"), _event("b", "e1", "other words")], AT)
    with store.read() as conn:
        assert sorted(conn.execute(select(EVENTS.c.tenant, EVENTS.c.event_id)).all()) == [("a", "e1")]


def test_the_consolidation_audit_names_each_facts_own_tenants_episodes(memory: Any) -> None:
    """Event ids are unique within a tenant only; one batch consolidates several tenants. The audit's episodes were
    looked up by event id alone, so a fact of one tenant named another tenant's episode."""
    from engram.store import EPISODES, TRANSITIONS
    from tests.conftest import T0
    from tests.engram.archive_helpers import consolidate_pending

    for tenant in ("acme", "globex"):
        memory.observe(tenant, "s1", "Ada", f"My favorite color is {tenant}blue.", T0, event_id="e1")
    consolidate_pending(memory.store, None, T0 + timedelta(days=1))
    with memory.store.read() as conn:
        episodes = dict(conn.execute(select(EPISODES.c.tenant, EPISODES.c.episode_id)).all())
        audit = conn.execute(
            select(TRANSITIONS.c.tenant, TRANSITIONS.c.detail).where(TRANSITIONS.c.action == "consolidate")
        ).all()
    assert sorted(t for t, _ in audit) == ["acme", "globex"]
    for tenant, detail in audit:
        assert (json.loads(detail) if isinstance(detail, str) else detail)["episodes"] == [episodes[tenant]]


@pytest.mark.postgres
def test_a_claim_during_a_commit_on_postgresql_does_not_take_the_batch_over(tmp_path: Path) -> None:
    """A's lease has run out when it commits; B claims the same episodes meanwhile. The commit's lease check locks
    the rows: B's claim passes over them (SKIP LOCKED) and A commits once. Unlocked, B took them over between A's
    check and A's writes, A committed under a lease it no longer held, and B did the batch again."""
    import threading

    from engram import Memory
    from engram.consolidate import LocalConsolidator, plan_changes
    from engram.testing import FixedClock
    from tests.conftest import T0, fresh_store
    from tests.engram.archive_helpers import close_pending

    with fresh_store(tmp_path, "postgresql") as url, Memory(url, tmp_path.as_uri(), clock=FixedClock(T0)) as memory:
        store = memory.store
        memory.observe("acme", "s1", "Ada", "I live in Lisbon now.", T0, event_id="e1")
        close_pending(store, "acme", T0 + timedelta(hours=1))
        episodes = store.claim_episodes(T0 + timedelta(hours=1), "A", 0.1, 10, "acme")  # a lease of 0.1 s
        frames, turns = store.load_episodes(episodes)
        facts = LocalConsolidator().distill(frames, turns)
        time.sleep(0.3)  # leases run on the wall clock: A's has run out
        checked, claimed = threading.Event(), []
        check = Store._check_leases

        def check_then_let_b_claim(self: Store, *args: Any) -> None:
            check(self, *args)
            if args[1] is EPISODES:
                checked.set()
                time.sleep(1.0)  # B claims while A's transaction is open

        def b_claims() -> None:
            checked.wait(30)
            claimed.extend(Store(url).claim_episodes(T0 + timedelta(hours=2), "B", 300, 10, "acme"))

        worker = threading.Thread(target=b_claims)
        worker.start()
        try:
            Store._check_leases = check_then_let_b_claim  # type: ignore[method-assign]
            counts = store.commit_consolidation(episodes, facts, "A", T0 + timedelta(hours=2), None, plan_changes)
        finally:
            Store._check_leases = check  # type: ignore[method-assign]
            worker.join()
        assert counts["episodes"] == len(episodes) and claimed == []
        with store.read() as conn:
            owner = conn.execute(select(EPISODES.c.consolidated_run_id, EPISODES.c.lease_owner)).one()
        assert owner.lease_owner is None
