"""The audit-trail growth benchmark: rows shaped like ``transitions``, random or ordered keys, a figure per step."""

from __future__ import annotations

import json
import sqlite3

from bench import index_growth
from bench.index_growth import SCHEMA, batch_rows, grow, main, open_table


def test_ordered_ids_append_in_key_order_and_random_ones_do_not() -> None:
    ordered, random = batch_rows(0, 500, ordered=True), batch_rows(0, 500, ordered=False)
    assert [r[1] for r in ordered] == sorted(r[1] for r in ordered)
    assert [r[1] for r in random] != sorted(r[1] for r in random)
    # The same rows otherwise, and rows that the table's schema takes.
    assert [r[0] for r in ordered] == [r[0] for r in random] and [r[9] for r in ordered] == list(range(500))
    # Ordering the transition ids alone leaves the item ids as random as before.
    partial = batch_rows(0, 500, ordered=True, ordered_items=False)
    assert [r[1] for r in partial] == [r[1] for r in ordered] and [r[2] for r in partial] == [r[2] for r in random]
    conn = sqlite3.connect(":memory:")
    for statement in SCHEMA:
        conn.execute(statement)
    conn.executemany("INSERT INTO transitions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", ordered + random)
    assert conn.execute("SELECT count(*) FROM transitions").fetchone() == (1000,)


def test_a_run_reports_each_step_of_each_variant(tmp_path) -> None:
    out = tmp_path / "growth.json"
    assert main(["--rows", "5000", "--batch", "1000", "--step", "2000", "--out", str(out), "--dir", str(tmp_path)]) == 0
    result = json.loads(out.read_text())
    assert set(result["variants"]) == {"random", "ordered"}
    for variant in result["variants"].values():
        assert variant["finished"] is True
        assert [s["rows"] for s in variant["steps"]] == [2000, 4000, 5000]
        assert all(s["us_per_row"] > 0 for s in variant["steps"])
        assert variant["last_to_first"] > 0
    assert list(tmp_path.glob("engram-index-growth-*")) == []  # each variant's file is removed after it


def test_the_cache_variant_sets_its_page_cache_and_the_others_keep_sqlite_s_default(tmp_path) -> None:
    default = sqlite3.connect(":memory:").execute("PRAGMA cache_size").fetchone()[0]
    assert open_table(tmp_path / "a.db").execute("PRAGMA cache_size").fetchone() == (default,)
    assert open_table(tmp_path / "b.db", cache_mb=8).execute("PRAGMA cache_size").fetchone() == (-8192,)
    out = tmp_path / "growth.json"
    args = ["--rows", "2000", "--batch", "1000", "--step", "1000", "--variants", "random_cache", "--cache-mb", "8"]
    assert main([*args, "--out", str(out), "--dir", str(tmp_path)]) == 0
    result = json.loads(out.read_text())
    assert result["cache_mb"] == 8 and list(result["variants"]) == ["random_cache"]
    assert [s["rows"] for s in result["variants"]["random_cache"]["steps"]] == [1000, 2000]


def test_the_mixed_variants_share_their_rows_and_differ_only_in_the_table_s_key(tmp_path) -> None:
    rows = batch_rows(0, 300, ordered=False, ordered_items="mixed")
    items = [r[2] for r in rows]
    events, facts = items[0::3] + items[1::3], items[2::3]  # two rows of three name an event, one a fact
    assert sorted(items[k] for k in range(300) if k % 3 != 2) == [i for k, i in enumerate(items) if k % 3 != 2]
    assert facts != sorted(facts) and len(events) == 200
    engram, keyed = open_table(tmp_path / "e.db"), open_table(tmp_path / "k.db", schema="item_keyed")
    for conn in (engram, keyed):
        conn.executemany("INSERT INTO transitions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    indexes = {
        name: {r[1] for r in conn.execute("PRAGMA index_list(transitions)")}
        for name, conn in (("engram", engram), ("keyed", keyed))
    }
    assert "ix_transitions_item" in indexes["engram"] and "ix_transitions_item" not in indexes["keyed"]
    key = [r[2] for r in keyed.execute("PRAGMA index_info(sqlite_autoindex_transitions_1)")]
    assert key == ["tenant", "item_id", "transition_id"]
    assert sorted(keyed.execute("SELECT * FROM transitions")) == sorted(engram.execute("SELECT * FROM transitions"))


def test_grow_gives_the_page_cache_only_to_the_variant_that_uses_it(tmp_path, monkeypatch) -> None:
    opened: dict[str, int | None] = {}

    def spy(path, cache_mb=None, schema="engram"):  # noqa: ANN001, ANN202 - the real open_table, recorded
        opened[path.stem] = cache_mb
        return open_table(path, cache_mb, schema)

    monkeypatch.setattr(index_growth, "open_table", spy)
    for variant in ("random", "random_cache", "ordered"):
        grow(tmp_path / f"{variant}.db", 100, 100, 100, variant, lambda steps: None, cache_mb=8)
    assert opened == {"random": None, "random_cache": 8, "ordered": None}
