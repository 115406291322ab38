"""Export and import of a tenant's whole memory, across SQLite and PostgreSQL, without Prefect.

The memory here is written directly (events through ``observe_many``, the later layers as rows), so every table
holds rows, including an archived semantic item whose Parquet object lives in the archive folder. The lifecycle
under Prefect is exercised in ``tests/flows/test_portable_roundtrip.py``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from engram import ArchiveError, InvalidInput, Memory
from engram.archive import encode_parquet, manifest_json
from engram.cli import app
from engram.portable import MANIFEST_NAME, TENANT_TABLES, read_manifest
from engram.store import (
    LINEAGE,
    MANIFESTS,
    SEMANTIC,
    TRANSITIONS,
    Store,
    stable_id,
)
from engram.testing import FixedClock
from tests.conftest import PG_OK, PG_URL, T0, _drop_pg_schema, _fresh_pg_schema
from tests.flows.helpers import conversation_rows

METRICS = next(t for t in TENANT_TABLES if t.name == "metrics")
FILE_REL = "tenant=acme/layer=semantic/date=2024-03-01/m-1-0.parquet"
MANIFEST_REL = "tenant=acme/manifests/m-1.json"


# -- helpers shared with tests/flows/test_portable_roundtrip.py ------------------------------------------------------


@contextmanager
def other_store(source_url: str, tmp_path: Path) -> Iterator[str]:
    """An empty store on the other backend: PostgreSQL for a SQLite source, SQLite for a PostgreSQL one."""
    if source_url.startswith("sqlite"):
        if not PG_OK:
            pytest.skip(f"no PostgreSQL server at {PG_URL}")
        schema, url = _fresh_pg_schema()
        try:
            yield url
        finally:
            _drop_pg_schema(schema)
    else:
        yield f"sqlite:///{tmp_path / 'target.db'}"


def table_rows(store: Store, tenant: str, *, skip: dict[str, set[str]] | None = None) -> dict[str, list[dict]]:
    """Every row of the tenant in every tenant table, in primary-key order, minus the columns named in ``skip``."""
    out: dict[str, list[dict]] = {}
    with store.read() as conn:
        for table in TENANT_TABLES:
            drop = (skip or {}).get(table.name, set()) | {"tenant"}
            out[table.name] = [
                {k: v for k, v in row.items() if k not in drop}
                for batch in store.tenant_rows(conn, table, tenant)
                for row in batch
            ]
    return out


def open_memory(url: str, tmp_path: Path, name: str) -> Memory:
    # The same clock as the ``memory`` fixture: searches stamp access times, and both sides must stamp alike.
    return Memory(url, (tmp_path / name).as_uri(), clock=FixedClock(T0))


# -- a memory with rows in every table ---------------------------------------------------------------------------------


def seed(memory: Memory, tenant: str = "acme") -> None:
    """Events (one quarantined), then semantic items (one archived to a Parquet object), lineage, audit rows,
    an archive manifest and metrics, written as the flows would write them."""
    memory.observe_many(conversation_rows(tenant, sessions=2, start=T0, turns_per_session=3))
    memory.observe_many([{"tenant": tenant, "session": "s", "actor": "a", "text": "", "at": T0}])
    store = memory.store
    root = Path(memory.archive_url.removeprefix("file://"))
    archived = {
        "tenant": tenant,
        "item_id": "sem-old",
        "fact_key": "k-lisbon",
        "version": 1,
        "text": "Caroline lives in Porto.",
        "rendered": "(1 March 2024) Caroline: lives in Porto.",
        "actor": "Caroline",
        "tags": ["place", "ünïcode"],
        "support_count": 2,
        "first_seen": T0,
        "last_seen": T0 + timedelta(hours=1),
        "last_accessed": None,
        "salience": 0.125,
        "valid_from": T0,
        "valid_to": T0 + timedelta(days=1, microseconds=7),
        "superseded_by": "sem-new",
        "embedding": bytes(range(256)),
        "created_run_id": "run-1",
        "archived_manifest_id": "m-1",
        "content_hash": "5f1c0b9e2d7a4c3b8e6f1a2d9c4b7e0f",
        "seq": 3,
    }
    current = dict(
        archived,
        item_id="sem-new",
        version=2,
        text="Caroline is moving to Lisbon in June.",
        rendered="(2 March 2024) Caroline: is moving to Lisbon in June.",
        valid_from=T0 + timedelta(days=1, microseconds=7),
        valid_to=None,
        superseded_by=None,
        archived_manifest_id=None,
        embedding=b"\x00\x01\x02\xff",
        content_hash=None,  # written before migration 0004: the import keeps the null
        seq=4,
    )
    # The archived version as the archive flow leaves it: its Parquet file, its manifest's JSON, its tombstone.
    data, _ = encode_parquet("semantic_items", [archived])
    file_rel = FILE_REL.replace("acme", tenant)
    (root / file_rel).parent.mkdir(parents=True)
    (root / file_rel).write_bytes(data)
    files = [
        {
            "path": file_rel,
            "table": "semantic_items",
            "date": "2024-03-01",
            "rows": 1,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    ]
    manifest = {
        "tenant": tenant,
        "manifest_id": "m-1",
        "layer": "semantic",
        "uri": f"{memory.archive_url}/{MANIFEST_REL.replace('acme', tenant)}",
        "files": files,
        "row_count": 1,
        "status": "committed",
        "flow_run_id": "run-2",
        "created_at": T0 + timedelta(days=2),
    }
    (root / MANIFEST_REL.replace("acme", tenant)).parent.mkdir(parents=True)
    (root / MANIFEST_REL.replace("acme", tenant)).write_bytes(manifest_json(manifest))
    with store.write() as conn:
        store.insert_ignore(conn, SEMANTIC, [archived, current])
        store.insert_ignore(
            conn,
            LINEAGE,
            [{"tenant": tenant, "item_id": i, "event_id": e} for i in ("sem-old", "sem-new") for e in ("e0-0", "e1-0")],
        )
        store.insert_ignore(conn, MANIFESTS, [manifest])
        store.insert_ignore(
            conn,
            TRANSITIONS,
            [
                {
                    "tenant": tenant,
                    "transition_id": stable_id("tr", tenant, "sem-old", "archive"),
                    "item_id": "sem-old",
                    "from_layer": "semantic",
                    "to_layer": "archival",
                    "action": "archive",
                    "flow_run_id": "run-2",
                    "at": T0 + timedelta(days=2),
                    "detail": {"manifest": "m-1", "nested": {"n": [1, 2.5, None, True]}},
                    "seq": 5,
                }
            ],
        )
        store.insert_ignore(
            conn,
            METRICS,
            [{"tenant": tenant, "name": "layer_size", "at": T0, "value": 1.5e-300, "flow_run_id": None}],
        )


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def source(memory: Memory) -> Memory:
    seed(memory)
    return memory


# -- round trips ---------------------------------------------------------------------------------------------------


def test_export_import_round_trip_to_the_other_backend(source: Memory, tmp_path: Path) -> None:
    manifest = source.export("acme", str(tmp_path / "export"))
    assert {f.table for f in manifest.files} == {t.name for t in TENANT_TABLES}
    # Six events (the empty one is quarantined), the rows seed() writes; the flow layers are covered under flows/.
    assert manifest.rows == {
        "tenant_state": 1,
        "events": 6,
        "sessions": 0,
        "working_items": 0,
        "episodes": 0,
        "episode_turns": 0,
        "semantic_items": 2,
        "lineage": 4,
        "archive_manifests": 1,
        "transitions": 1,
        "quarantine": 1,
        "metrics": 1,
        "forget_intents": 0,
    }
    assert len(manifest.archive_objects) == 2
    assert read_manifest(str(tmp_path / "export")) == manifest

    with other_store(source.store_url, tmp_path) as url:
        target = open_memory(url, tmp_path, "archive2")
        try:
            report = target.import_(str(tmp_path / "export"))
            assert report.rows == manifest.rows and report.archive_objects == 2
            # Only where the archived objects live must differ.
            skip = {"archive_manifests": {"uri", "files"}}
            assert table_rows(target.store, "acme", skip=skip) == table_rows(source.store, "acme", skip=skip)
            assert target.stats("acme") == source.stats("acme")
            assert target.get("acme", "sem-new") == source.get("acme", "sem-new")
            assert target.history("acme", "sem-new") == source.history("acme", "sem-new")
            assert _hits(target, "Lisbon") == _hits(source, "Lisbon")

            (row,) = table_rows(target.store, "acme")["archive_manifests"]
            assert row["uri"] == f"{target.archive_url}/{MANIFEST_REL}"
            assert row["files"] == table_rows(source.store, "acme")["archive_manifests"][0]["files"]
            copied = Path(target.archive_url.removeprefix("file://"))
            assert _sha(copied / FILE_REL) == row["files"][0]["sha256"]
            assert (copied / MANIFEST_REL).is_file()
        finally:
            target.close()


def _hits(memory: Memory, query: str, layers: list[str] | None = None) -> list[tuple[Any, ...]]:
    return [(h.item_id, h.layer, h.text, h.sources) for h in memory.search("acme", query, layers=layers)]


def test_import_under_a_new_tenant_id_keeps_tenants_isolated(source: Memory, tmp_path: Path) -> None:
    source.export("acme", str(tmp_path / "export"))
    before = table_rows(source.store, "acme")

    report = source.import_tenant(str(tmp_path / "export"), tenant="acme-copy")

    assert (report.tenant, report.source_tenant) == ("acme-copy", "acme")
    assert table_rows(source.store, "acme") == before  # the original is untouched
    copy = table_rows(source.store, "acme-copy", skip={"archive_manifests": {"uri", "files"}})
    assert copy == table_rows(source.store, "acme", skip={"archive_manifests": {"uri", "files"}})
    assert source.stats("acme-copy") == source.stats("acme")
    assert [h.item_id for h in source.search("acme-copy", "Lisbon")] == [
        h.item_id for h in source.search("acme", "Lisbon")
    ]
    # The copy's archived objects are its own, under its own tenant path, with its tenant inside.
    (row,) = table_rows(source.store, "acme-copy")["archive_manifests"]
    root = Path(source.archive_url.removeprefix("file://"))
    assert row["uri"] == f"{source.archive_url}/tenant=acme-copy/manifests/m-1.json"
    (entry,) = row["files"]
    assert entry["path"] == FILE_REL.replace("tenant=acme", "tenant=acme-copy")
    assert pq.read_table(root / entry["path"]).column("tenant").to_pylist() == ["acme-copy"]
    assert (entry["sha256"], entry["bytes"]) == (_sha(root / entry["path"]), (root / entry["path"]).stat().st_size)
    doc = json.loads((root / "tenant=acme-copy/manifests/m-1.json").read_text())
    assert (doc["tenant"], doc["files"]) == ("acme-copy", [entry])


def test_importing_a_tenant_the_store_holds_is_refused_unless_replaced(source: Memory, tmp_path: Path) -> None:
    source.export("acme", str(tmp_path / "export"))
    with pytest.raises(InvalidInput, match="already holds tenant 'acme'"):
        source.import_tenant(str(tmp_path / "export"))

    source.observe("acme", "later", "Caroline", "a row written after the export", T0)
    before_epoch = source.store.tenant_epoch("acme")
    report = source.import_tenant(str(tmp_path / "export"), replace=True)
    assert report.replaced["events"] == report.rows["events"] + 1
    assert [h for h in source.search("acme", "written after the export")] == []
    # Other processes' search indexes of the replaced rows see a new epoch and rebuild.
    assert source.store.tenant_epoch("acme") > before_epoch


# -- refusals before anything is written ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damaged",
    [
        "tables/events.parquet",  # a table's rows
        "tables/semantic_items.parquet",  # embeddings
        f"archive/{FILE_REL}",  # an archived object
    ],
)
def test_a_flipped_byte_is_refused_before_anything_is_written(
    sqlite_memory: Memory, tmp_path: Path, damaged: str
) -> None:
    seed(sqlite_memory)
    export = tmp_path / "export"
    sqlite_memory.export("acme", str(export))
    data = bytearray((export / damaged).read_bytes())
    data[len(data) // 2] ^= 0x01
    (export / damaged).write_bytes(bytes(data))

    target = open_memory(f"sqlite:///{tmp_path / 'target.db'}", tmp_path, "archive2")
    try:
        with pytest.raises(ArchiveError, match=damaged.replace(".", r"\.")):
            target.import_tenant(str(export))
        assert all(rows == [] for rows in table_rows(target.store, "acme").values())
        assert not (tmp_path / "archive2").exists()
    finally:
        target.close()


def test_a_row_count_that_disagrees_with_the_manifest_is_refused(sqlite_memory: Memory, tmp_path: Path) -> None:
    seed(sqlite_memory)
    export = tmp_path / "export"
    sqlite_memory.export("acme", export.as_uri())
    body = json.loads((export / MANIFEST_NAME).read_text())
    entry = next(f for f in body["files"] if f["table"] == "lineage")
    entry["rows"] += 1
    (export / MANIFEST_NAME).write_text(json.dumps(body))

    target = open_memory(f"sqlite:///{tmp_path / 'target.db'}", tmp_path, "archive2")
    try:
        with pytest.raises(ArchiveError, match=r"tables/lineage\.parquet: holds 4 rows but the manifest says 5"):
            target.import_tenant(export.as_uri())
        assert target.stats("acme")["events"] == 0
    finally:
        target.close()


def _object(path: str) -> dict[str, Any]:
    return {"path": path, "source_uri": "file:///elsewhere", "sha256": "0" * 64, "bytes": 1, "manifest_ids": []}


# A manifest.json edited by hand or damaged: each edit, and what the refusal names.
MANIFEST_EDITS = {
    "a path that is null": (lambda b: b["files"][1].update(path=None), r"files\[1\]\.path: must be str"),
    "a table that is a list": (lambda b: b["files"][1].update(table=["events"]), r"files\[1\]\.table: must be str"),
    "a count in quotes": (lambda b: b["files"][1].update(rows="3"), r"files\[1\]\.rows: must be int"),
    "a negative size": (lambda b: b["files"][0].update(bytes=-1), r"files\[0\]\.bytes: must not be negative"),
    "a checksum that is none": (lambda b: b["files"][0].update(sha256="abc"), r"files\[0\]\.sha256: is not"),
    "a file listed twice": (lambda b: b["files"].append(dict(b["files"][0])), r"\.path: '.*' is listed twice"),
    "a path out of the export": (
        lambda b: b["files"][0].update(path="../outside.parquet"),
        r"files\[0\]\.path: must be a plain path inside the export",
    ),
    "an archived object out of the archive": (
        lambda b: b.update(archive_objects=[_object("archive/../../../etc/evil.parquet")]),
        r"archive_objects\[0\]\.path: must be a plain path",
    ),
    "an archived object elsewhere in the export": (
        lambda b: b.update(archive_objects=[_object("tables/events.parquet")]),
        r"archive_objects\[0\]\.path: must lie under archive/",
    ),
    "files that are no list": (lambda b: b.update(files={"events": 1}), r"files: must be a list"),
}


@pytest.mark.parametrize("edit", list(MANIFEST_EDITS))
def test_a_manifest_entry_an_import_cannot_use_is_refused_naming_it(
    sqlite_memory: Memory, tmp_path: Path, edit: str
) -> None:
    """A damaged or hand-edited manifest.json is refused before anything is read or written, naming the entry and
    field (these raised AttributeError or TypeError, or contradicted themselves; a path with ``..`` would have
    been copied outside the target archive)."""
    seed(sqlite_memory)
    export = tmp_path / "export"
    sqlite_memory.export("acme", export.as_uri())
    body = json.loads((export / MANIFEST_NAME).read_text())
    change, refusal = MANIFEST_EDITS[edit]
    change(body)
    (export / MANIFEST_NAME).write_text(json.dumps(body))

    target = open_memory(f"sqlite:///{tmp_path / 'target.db'}", tmp_path, "archive2")
    try:
        with pytest.raises(InvalidInput, match=refusal) as err:
            target.import_tenant(export.as_uri())
        assert err.value.field == "src"
        assert target.stats("acme")["events"] == 0
        assert not (tmp_path / "archive2").exists() or not any((tmp_path / "archive2").rglob("*.parquet"))
    finally:
        target.close()


def test_a_manifest_not_committed_stays_out_of_an_export_and_keeps_a_moved_tenant_in_place(
    sqlite_memory: Memory, tmp_path: Path
) -> None:
    """An archive run under way (its manifest written, not committed) belongs to that run: the export leaves the
    manifest and its objects out (the rows are hot and exported as such), and removing a tenant after a move
    (``unchanged_since``) is refused while it lasts, since the run deletes its objects when it finds its manifest
    gone, and they may be what the copy's manifests name."""
    from engram import TenantChanged
    from engram.archive import archive_batch
    from engram.layers import Layer
    from tests.engram.archive_helpers import COLD, LATER, consolidate_pending

    store = sqlite_memory.store
    sqlite_memory.observe_many(conversation_rows("acme", sessions=2, start=T0))
    consolidate_pending(store, "acme", T0 + timedelta(days=3))
    keys = store.archive_candidates(Layer.SEMANTIC, LATER, COLD, "acme", 5000)
    written = archive_batch(store, sqlite_memory.archive, Layer.SEMANTIC, keys, LATER, None)
    assert written and all(m["status"] == "written" for m in store.manifests("acme"))
    seq = store.tenant_seq("acme")

    export = read_manifest(sqlite_memory.export("acme", (tmp_path / "export").as_uri()).url)
    assert export.rows["archive_manifests"] == 0 and export.archive_objects == ()
    with pytest.raises(TenantChanged, match="archive run or compaction under way"):
        store.forget("acme", None, LATER, None, unchanged_since=seq)
    assert store.manifests("acme") and sqlite_memory.stats("acme")["semantic"] > 0


def test_export_refuses_a_location_that_already_holds_one(sqlite_memory: Memory, tmp_path: Path) -> None:
    seed(sqlite_memory)
    sqlite_memory.export("acme", str(tmp_path / "export"))
    with pytest.raises(InvalidInput, match="already holds an export"):
        sqlite_memory.export("acme", str(tmp_path / "export"))


def test_a_folder_without_a_manifest_is_not_an_export(sqlite_memory: Memory, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="holds no manifest.json"):
        sqlite_memory.import_tenant(str(tmp_path))


# -- the command line ------------------------------------------------------------------------------------------------


def test_cli_exports_and_imports_and_reports_refusals_in_one_line(sqlite_memory: Memory, tmp_path: Path) -> None:
    seed(sqlite_memory)
    sqlite_memory.close()
    runner = CliRunner()
    src = ["--store", sqlite_memory.store_url, "--archive", sqlite_memory.archive_url]
    dst = ["--store", f"sqlite:///{tmp_path / 'target.db'}", "--archive", (tmp_path / "archive2").as_uri()]
    export = str(tmp_path / "export")

    result = runner.invoke(app, ["export", "acme", export, *src])
    assert result.exit_code == 0, result.output
    assert "semantic_items" in result.output

    result = runner.invoke(app, ["import", export, "--json", *dst])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rows"]["events"] == 6

    result = runner.invoke(app, ["import", export, *dst])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "error: tenant: the target store already holds" in result.output

    result = runner.invoke(app, ["import", export, "--replace", *dst])
    assert result.exit_code == 0, result.output
