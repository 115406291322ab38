"""A batch's statements find their rows through an index: what a batch costs does not grow with a table's history.

SQLite answers ``(tenant, id) IN (VALUES ...)`` by reading the whole table, a backlog query with no index in its
order by reading and sorting the whole table, and ``tenant = ? AND event_id IN (...) AND routed_at IS NULL`` by
reading every pending event of the tenant through the index on (tenant, routed_at); each made a run's cost grow with
the square of its size. It answered ``tenant = ? AND event_id IN (...)`` on the lineage through the primary key's
tenant prefix (every lineage row of the tenant) while the event index lacked the item id, expired every tenant's
working items by reading and sorting the whole layer, and found the facts and episodes a compaction merges by reading
every fact and episode of the tenant.
"""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select

from engram import Memory
from engram.archive import archive_cold_items, rehydrate_batch
from engram.compaction import compact_tenant
from engram.service import measure_store
from engram.store import LINEAGE, PAIR_FIRSTS, Store, pair_chunks
from tests.conftest import T0
from tests.engram.archive_helpers import COLD, LATER, consolidate_pending
from tests.flows.helpers import conversation_rows

AS_OF = T0 + timedelta(days=30)
# Scans over these indexes read the waiting rows only (they are partial), in the order a batch takes them: events,
# sessions and episodes waiting for the lifecycle, facts and episodes not archived yet.
BACKLOG_INDEXES = {
    "ix_events_unrouted",
    "ix_sessions_unclosed",
    "ix_episodes_unconsolidated",
    "ix_semantic_hot_seq",
    "ix_episodes_unarchived",
}


def test_pair_chunks_keep_every_pair_in_order_within_both_caps() -> None:
    pairs = [(f"t{i % 450:03d}", f"id{i}") for i in range(1_000)]

    chunks = list(pair_chunks(pairs, size=300))

    assert [p for c in chunks for p in c] == pairs
    assert all(len(c) <= 300 and len({t for t, _ in c}) <= PAIR_FIRSTS for c in chunks)
    # 450 tenants in the first 450 pairs: the tenant cap cuts before the size cap does.
    assert len({t for t, _ in chunks[0]}) == PAIR_FIRSTS
    # Three tenants: the size cap cuts, at exactly ``size`` pairs.
    few = [(f"t{i % 3}", f"id{i}") for i in range(10)]
    assert [len(c) for c in pair_chunks(few, size=4)] == [4, 4, 2]
    assert list(pair_chunks([])) == []
    with pytest.raises(ValueError, match="size"):
        list(pair_chunks(few, size=0))


def test_a_pair_lookup_finds_exactly_its_pairs_across_many_tenants(store_url: str) -> None:
    store = Store(store_url)
    store.migrate()
    rows = [
        {"tenant": f"t{t:03d}", "item_id": f"item-{i}", "event_id": f"e-{t}-{i}"}
        for t in range(PAIR_FIRSTS + 50)
        for i in range(3)
    ]
    with store.write() as conn:
        store.insert_ignore(conn, LINEAGE, rows)
    # Every tenant's item-1, and pairs that match a column each but not both.
    wanted = [(f"t{t:03d}", "item-1") for t in range(PAIR_FIRSTS + 50)] + [("t000", "item-9"), ("t999", "item-1")]

    found = []
    with store.read() as conn:
        for chunk in pair_chunks(wanted):
            query = select(LINEAGE.c.tenant, LINEAGE.c.item_id, LINEAGE.c.event_id)
            found += conn.execute(query.where(store._pairs_in(LINEAGE.c.tenant, LINEAGE.c.item_id, chunk))).all()

    assert sorted(found) == [(f"t{t:03d}", "item-1", f"e-{t}-1") for t in range(PAIR_FIRSTS + 50)]
    with store.read() as conn:
        # No pairs match no row, as IN () would (an OR of no terms would drop the WHERE).
        none = select(LINEAGE.c.tenant).where(store._pairs_in(LINEAGE.c.tenant, LINEAGE.c.item_id, []))
        assert conn.execute(none).all() == []
    if store.dialect == "sqlite":
        with pytest.raises(ValueError, match=f"at most {PAIR_FIRSTS}"):
            store._pairs_in(LINEAGE.c.tenant, LINEAGE.c.item_id, wanted)
    store.dispose()


# Conditions that narrow a tenant's rows rather than name them: a tenant's manifests (one per archive batch) are read
# whole and filtered by status.
NOT_LOOKUPS = {("archive_manifests", "status")}


def _reads_past_an_index(db_path: Path, statements: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    """(plan line, statement) for every step of a plan that reads a whole table or index, bar the backlog indexes,
    and for every step that finds rows the statement names (``t.tenant = ? AND t.col IN (...)`` or ``= ?``) through
    an index that does not look them up by that column: it reads all of the tenant's rows the index holds."""
    found = []
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        for sql, params in statements:
            keyed: dict[str, set[str]] = {}
            for table, column in re.findall(r"\b(\w+)\.tenant = \? AND \1\.(\w+) (?:IN \(|= \?)", sql):
                if (table, column) not in NOT_LOOKUPS:
                    keyed.setdefault(table, set()).add(column)
            for *_, detail in db.execute("EXPLAIN QUERY PLAN " + sql, params):
                scan = re.match(r"SCAN (\w+)(?: USING (?:COVERING )?INDEX (\w+))?", detail)
                if scan and "CONSTANT ROW" not in detail and scan.group(2) not in BACKLOG_INDEXES:
                    found.append((detail, sql[:200]))
                search = re.match(r"SEARCH (\w+) USING .*\((.*)\)$", detail)
                columns = keyed.get(search.group(1), set()) if search else set()
                if columns and not any(f"{c}=?" in search.group(2) for c in columns):
                    found.append((detail, sql[:200]))
    finally:
        db.close()
    return found


def _three_tenants(tmp_path: Path) -> Memory:
    """A SQLite memory with three sessions of events for each of three tenants."""
    memory = Memory(f"sqlite:///{tmp_path / 'engram.db'}", (tmp_path / "archive").as_uri())
    for tenant in ("acme", "globex", "initech"):
        memory.observe_many(conversation_rows(tenant, sessions=3, start=T0, prefix=f"{tenant}-e"))
    return memory


def _recorded(store: Store, step: Callable[[], Any]) -> tuple[list[tuple[str, Any]], Any]:
    """The single (not executemany) SELECT, UPDATE and DELETE statements ``step`` ran, and what it returned."""
    statements: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, sql: str, params: Any, _context: Any, executemany: bool) -> None:
        if not executemany and sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE")):
            statements.append((sql, tuple(params)))

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        result = step()
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    return statements, result


def test_no_statement_of_the_layer_moves_reads_a_whole_table(tmp_path: Path) -> None:
    db_path = tmp_path / "engram.db"
    memory = _three_tenants(tmp_path)
    store = memory.store
    statements, counts = _recorded(store, lambda: consolidate_pending(store, None, AS_OF))

    # The steps did their work over every tenant: 9 sessions became episodes, and their facts were written.
    assert counts["episodes"] == 9
    assert counts["new"] > 0
    assert len(statements) > 20
    assert _reads_past_an_index(db_path, statements) == []
    memory.close()


def test_no_statement_of_the_archive_step_reads_a_whole_table(tmp_path: Path) -> None:
    """Each batch of the archive step picks its cold rows from the hot ones, not past every tombstone left by the
    batches before it (a run's cost grew with the square of what it archived)."""
    db_path = tmp_path / "engram.db"
    memory = _three_tenants(tmp_path)
    store = memory.store
    consolidate_pending(store, None, AS_OF)
    statements, totals = _recorded(store, lambda: archive_cold_items(store, memory.archive, COLD, LATER, batch_size=4))

    # Many batches over every tenant, the later ones after the tombstones of the earlier ones.
    assert totals["manifests"] > 10 and totals["semantic_items"] > 0 and totals["episodes"] == 9
    assert _reads_past_an_index(db_path, statements) == []
    memory.close()


# Merge every manifest of a tenant, however small and few.
MERGE_ALL = {"target_rows": 1_000, "small_rows": 1_000, "min_manifests": 2}


def _unpointed_manifest(store: Store, tenant: str) -> str:
    """The id of a new committed manifest of the tenant that no tombstone points at (as a discarded write)."""
    row = {**store.manifests(tenant, ["committed"])[0], "manifest_id": "m-unpointed", "files": [], "row_count": 0}
    store.add_manifests([row])
    return row["manifest_id"]


def _route_open_sessions(memory: Memory, as_of: Any) -> tuple[Counter[str], str]:
    """Two more sessions per tenant routed to working memory and left open, half their events as task scratch, all
    of them past their TTL at ``as_of``; returns how many are task-scoped per tenant, and the id of an acme item that
    is not."""
    store = memory.store
    for tenant in ("acme", "globex", "initech"):
        memory.observe_many(conversation_rows(tenant, sessions=2, start=T0 + timedelta(days=40), prefix=f"{tenant}-l"))
    pending = store.pending_events(1_000)
    working = [
        {
            **{k: e[k] for k in ("tenant", "event_id", "session_id", "actor", "text", "at", "metadata")},
            "item_id": e["event_id"],
            "scope": "task" if n % 2 else "session",
            "tags": [],
            "expires_at": e["at"] + timedelta(hours=1),
            "created_run_id": None,
        }
        for n, e in enumerate(pending)
    ]
    assert store.route_events(working, [], as_of, None)["routed"] == len(working) == 48
    kept = next(w["item_id"] for w in working if w["scope"] == "session" and w["tenant"] == "acme")
    return Counter(w["tenant"] for w in working if w["scope"] == "task"), kept


def test_no_statement_of_expiry_search_reads_rehydrate_or_forget_reads_past_an_index(tmp_path: Path) -> None:
    """What runs beside the layer moves: expiring every tenant's stale working items while sessions are open,
    search (hot and archival), an item and its history, stats, the monitor's backlog and set-aside episodes,
    rehydrating, compacting, dropping a manifest, and both kinds of forget."""
    db_path = tmp_path / "engram.db"
    memory = _three_tenants(tmp_path)
    store = memory.store
    consolidate_pending(store, None, AS_OF)
    archive_cold_items(store, memory.archive, COLD, LATER, batch_size=4)
    tasks, in_open_session = _route_open_sessions(memory, LATER)
    # A tenant whose episodes and facts are all hot, for a forget that finds its turns in the hot store.
    memory.observe_many(conversation_rows("hooli", sessions=3, start=T0, prefix="hooli-e"))
    consolidate_pending(store, "hooli", AS_OF)
    # Three of a tenant's archived facts, by id: from three ids on, SQLite would rank the tombstone index by manifest
    # above the primary key.
    named = [item_id for _, item_id, _, _ in store.archived_semantic("globex", None, 3)]
    steps: dict[str, Callable[[], Any]] = {
        "expire a tenant": lambda: store.expire_working(LATER + timedelta(days=1), None, tenant="acme"),
        "expire every tenant": lambda: store.expire_working(LATER + timedelta(days=1), None),
        "search hot": lambda: memory.search("acme", "week topic", layers=["working"]),
        "search archival": lambda: memory.search("acme", "dog Rex", layers=["archival"]),
        "get an archived turn": lambda: memory.get("acme", "acme-e1-0"),
        "get a working item": lambda: memory.get("acme", in_open_session),
        "history": lambda: memory.history("acme", "acme-e1-0"),
        "stats": lambda: memory.stats("acme"),
        "backlog": lambda: store.consolidation_backlog(LATER),
        "backlog of a tenant": lambda: store.consolidation_backlog(LATER, "acme"),
        "set aside": lambda: store.set_aside_episodes(),
        "set aside of a tenant": lambda: store.set_aside_episodes("acme"),
        "monitor": lambda: measure_store(store, LATER),
        "monitor a tenant": lambda: measure_store(store, LATER, "acme"),
        "rehydrate": lambda: rehydrate_batch(store, memory.archive, "acme", None, LATER, None, 50),
        "rehydrate named items": lambda: rehydrate_batch(store, memory.archive, "globex", named, LATER, None, 50),
        "compact": lambda: compact_tenant(store, memory.archive, "globex", LATER, **MERGE_ALL),
        "drop a manifest": lambda: store.drop_manifest("acme", _unpointed_manifest(store, "acme")),
        "forget a subject": lambda: memory.forget("globex", "Rex"),
        "forget a subject in hot turns": lambda: memory.forget("hooli", "Rex"),
        "forget a tenant": lambda: memory.forget("initech"),
    }
    results, flagged = {}, {}
    for name, step in steps.items():
        statements, results[name] = _recorded(store, step)
        assert statements, name
        flagged[name] = _reads_past_an_index(db_path, statements)

    # Each step found and did what it names (so its statements are the ones that do the work).
    assert results["expire a tenant"] == tasks["acme"] == 8
    assert results["expire every tenant"] == sum(tasks.values()) - tasks["acme"] == 16
    assert results["search hot"] and {h.layer for h in results["search archival"]} == {"archival"}
    assert results["get an archived turn"].layer == "archival" and results["get a working item"].layer == "working"
    assert [e.action for e in results["history"]][:3] == ["ingest", "close_session", "archive"]
    assert results["stats"]["archival"] > 0 and results["rehydrate"]["rehydrated"] > 0
    assert len(named) == 3 and results["rehydrate named items"]["rehydrated"] == 3
    # Every layer's manifests of the tenant merged, in groups; a manifest no tombstone points at dropped.
    assert results["compact"]["manifests_merged"] > results["compact"]["manifests_written"] > 0
    assert results["drop a manifest"] == 1
    # Every episode is consolidated (and the store applies the setting's limit: its statements are the monitor's).
    assert store.consolidate_attempts == 5 and results["backlog"] == results["backlog of a tenant"] == {}
    assert results["set aside"] == results["set aside of a tenant"] == []
    measured = {(m.tenant, m.name) for m in results["monitor a tenant"]}
    assert measured >= {("acme", "layer.semantic"), ("acme", "lag.seconds")}
    assert ("*", "quarantine.growth") in {(m.tenant, m.name) for m in results["monitor"]}
    # The subject's events are archived ones (their tombstones, turns and lineage go by id) and open-session items.
    removed = results["forget a subject"].removed
    assert removed["episode_turns_archived"] > 0 and removed["lineage_archived"] > 0 and removed["working_items"] > 0
    # Hot: every turn of a forgotten event goes with it, as do the facts distilled from them and their lineage.
    hot = results["forget a subject in hot turns"].removed
    assert hot["episode_turns"] == hot["events"] > 0 and hot["semantic_items"] > 0 and hot["lineage"] > 0
    assert results["forget a tenant"].removed["events"] == 24 + 16  # its first three sessions and the two open ones
    # The service-wide monitor reads three things whole, as it must: the tenants, the unfinished forgets, and the
    # quarantine's size (rows with an invalid tenant id belong to no tenant). Every layer it counts tenant by tenant.
    whole = {re.match(r"SCAN (\w+)", detail).group(1) for detail, _ in flagged.pop("monitor")}
    assert whole == {"tenant_state", "forget_intents", "quarantine"}
    assert flagged == {name: [] for name in steps if name != "monitor"}
    memory.close()


def test_the_scan_check_sees_a_whole_table_read_and_a_lookup_past_the_key(tmp_path: Path) -> None:
    # Guards the tests above against passing vacuously: the row-value lookup, the claim of pending events and the
    # lookup of a turn by item id they replaced are reported.
    db_path = tmp_path / "engram.db"
    Store(f"sqlite:///{db_path}").migrate()
    row_value = "SELECT tenant FROM lineage WHERE (tenant, item_id) IN (VALUES (?, ?), (?, ?))"
    backlog = "SELECT tenant FROM events WHERE routed_at IS NULL ORDER BY received_at, tenant, event_id LIMIT 5"
    # The claim of pending events as it was: for three ids or more, SQLite takes the index on (tenant, routed_at),
    # not the primary key.
    pending = (
        "UPDATE events SET routed_at = ? WHERE events.tenant = ? AND events.event_id IN (?, ?, ?)"
        " AND events.routed_at IS NULL"
    )
    by_key = pending.replace("AND events.routed_at IS NULL", "AND +events.routed_at IS NULL")
    ids = ("1", "2", "3")
    # A turn found by its item id as it was (no index leads with it), and through the event index; a tenant's
    # manifests filtered by status, which names no rows.
    turn = "SELECT text FROM episode_turns WHERE episode_turns.tenant = ? AND episode_turns.item_id = ?"
    turn_by_event = turn.replace("item_id = ?", "event_id = ? AND episode_turns.item_id = ?")
    manifests = (
        "SELECT manifest_id FROM archive_manifests"
        " WHERE archive_manifests.tenant = ? AND archive_manifests.status IN (?)"
    )

    scans = _reads_past_an_index(
        db_path,
        [
            (row_value, ("a", "1", "b", "2")),
            (backlog, ()),
            (pending, ("now", "a", *ids)),
            (by_key, ("now", "a", *ids)),
            (turn, ("a", "e1")),
            (turn_by_event, ("a", "e1", "e1")),
            (manifests, ("a", "written")),
        ],
    )

    assert [detail.split(" (")[0] for detail, _ in scans] == [
        "SCAN lineage",
        "SEARCH events USING INDEX ix_events_pending",
        "SEARCH episode_turns USING INDEX ix_turns_event",
    ]


def test_insert_ignore_writes_and_counts_only_the_new_rows(memory: Memory) -> None:
    """The count is what the statement wrote: rows whose key exists are skipped, and left as they were."""
    from sqlalchemy import func

    from engram.layers import Layer
    from engram.store import TRANSITIONS, transition_row

    def rows(items: list[str], note: str) -> list[dict[str, Any]]:
        return [
            transition_row("acme", i, Layer.SENSORY, Layer.WORKING, "ingest", T0, "run", 1, {"note": note})
            for i in items
        ]

    store = memory.store
    with store.write() as conn:
        assert store.insert_ignore(conn, TRANSITIONS, rows(["a", "b", "c"], "first")) == 3
    with store.write() as conn:
        assert store.insert_ignore(conn, TRANSITIONS, rows(["b", "c", "d", "e"], "second")) == 2
        assert store.insert_ignore(conn, TRANSITIONS, []) == 0
        assert store.insert_ignore(conn, TRANSITIONS, iter(rows(["f"], "third"))) == 1  # any iterable of rows
        assert store.insert_ignore(conn, TRANSITIONS, iter(())) == 0
    with store.read() as conn:
        assert conn.execute(select(func.count()).select_from(TRANSITIONS)).scalar_one() == 6
        notes = dict(conn.execute(select(TRANSITIONS.c.item_id, TRANSITIONS.c.detail)).all())
    assert {i: d["note"] for i, d in notes.items()} == {
        "a": "first",
        "b": "first",
        "c": "first",
        "d": "second",
        "e": "second",
        "f": "third",
    }


def test_merging_into_a_long_lived_fact_reads_only_the_lineage_its_batch_names(tmp_path: Path) -> None:
    """A fact restated in every session keeps a lineage row per restatement. A later batch asks the lineage only
    whether the item already holds the batch's own sources, so it reads those rows, not the whole history."""
    from sqlalchemy import func

    from engram.store import SEMANTIC

    memory = Memory(f"sqlite:///{tmp_path / 'engram.db'}", (tmp_path / "archive").as_uri())
    store = memory.store
    dog = "I have a dog named Rex and we walk every morning."

    def restate(first: int, sessions: int) -> None:
        memory.observe_many(
            [
                {
                    "tenant": "acme",
                    "event_id": f"e{s}",
                    "session_id": f"s{s}",
                    "actor": "Caroline",
                    "text": dog,
                    "at": T0 + timedelta(days=s),
                }
                for s in range(first, first + sessions)
            ]
        )

    restate(0, 30)
    consolidate_pending(store, "acme", AS_OF + timedelta(days=40))
    restate(30, 1)
    statements, counts = _recorded(store, lambda: consolidate_pending(store, "acme", AS_OF + timedelta(days=41)))

    assert (counts["episodes"], counts["merged"], counts["new"]) == (1, 1, 0)
    with store.read() as conn:
        item = conn.execute(select(SEMANTIC.c.item_id, SEMANTIC.c.support_count)).one()
        lineage = conn.execute(select(func.count()).select_from(LINEAGE).where(LINEAGE.c.item_id == item[0]))
        assert (item[1], lineage.scalar_one()) == (31, 31)
    # The batch's reads of the lineage, run again now that it committed: of the item's 31 rows, they find the one
    # row of the batch's own source (the read before the commit found none, so the batch merged it).
    db = sqlite3.connect(f"file:{tmp_path / 'engram.db'}?mode=ro", uri=True)
    try:
        lineage_reads = [sql_params for sql_params in statements if re.search(r"\bFROM lineage\b", sql_params[0])]
        found = [db.execute(sql, params).fetchall() for sql, params in lineage_reads]
    finally:
        db.close()
    assert [row for rows in found for row in rows] == [(item[0], "e30")]
    # And through the index on the events: the primary key's tenant prefix would read all 31.
    assert lineage_reads and _reads_past_an_index(tmp_path / "engram.db", statements) == []
    memory.close()
