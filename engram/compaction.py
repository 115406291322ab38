"""Archive compaction: many small manifests of a tenant's layer rewritten as one.

Every archive run writes one manifest per tenant it moves rows of, so a tenant archived daily for a year has hundreds
of manifests of a few hundred rows each, and a search that loads the tenant's archive pays for each manifest and
file. Compaction merges a tenant's small committed manifests of one layer, oldest first, into manifests of up to
``target_rows`` rows, keeping the tenant/layer/date layout: one file per table and month. The day partitions of
earlier archives merge into their months.

It never overwrites an object a manifest points at, and it deletes nothing before the merged copy is committed:

1. read every file of the group and check it against its manifest (sha256, row count), keeping the rows that
   tombstones point at: a stale copy (of an item rehydrated since, which may have been archived again elsewhere) is
   left out and counted, and a manifest lacking a row its tombstones point at stops the compaction;
2. record the new manifest (status ``compacting``), then upload its files and JSON under new names;
3. read the upload back: every file's sha256 and row count, and the same ids, table by table, as the group held;
4. commit, in one transaction: if every manifest of the group is still committed with the files it was read with,
   point their tombstones at the new manifest, delete their rows, mark the new one ``committed`` and move the
   tenant's epoch (search indexes reload the tenant's archive). This is the commit point: before it the old
   manifests are the archive and the new files unreferenced; after it, the reverse;
5. delete the old manifests' files and JSON, every version.

A crash before 4 leaves a ``compacting`` manifest, which the next compaction of the tenant (or a forget) drops with
its objects; a crash after 4 leaves unreferenced old objects, which the next compaction's sweep deletes. A forget
that rewrote one of the manifests meanwhile makes the compaction leave the group alone: found before its files are
read, when a read fails, or at the commit, which then finds different files (the compaction drops its copy).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from engram.archive import (
    _ID_COLUMN,
    StorageLike,
    _index_terms,
    _parquet_bytes,
    _put_many,
    _read_many,
    _storage_errors,
    _verify,
    archive_schema,
    manifest_json,
    manifest_path,
    new_manifest_id,
    partition_month,
    remove_manifest_objects,
    remove_orphan_objects,
    tenant_prefix,
)
from engram.errors import ArchiveError, ArchiveMismatch, StoreError
from engram.store import Store

COMPACTING = "compacting"
# Rows a compacted manifest holds at most: bounds what one group holds in memory while it is rewritten.
TARGET_ROWS = 250_000
# A manifest with fewer rows than this is small, and merged with its neighbours.
SMALL_ROWS = 50_000
# A tenant's layer is compacted once it has this many small manifests.
MIN_MANIFESTS = 8
# Manifests one group merges at most (one commit's IN lists).
MAX_GROUP = 500


def plan_groups(
    manifests: Sequence[Mapping[str, Any]],
    target_rows: int = TARGET_ROWS,
    small_rows: int = SMALL_ROWS,
    min_manifests: int = MIN_MANIFESTS,
) -> list[list[Mapping[str, Any]]]:
    """The groups to merge among one tenant's committed manifests: per layer, its small manifests oldest first,
    packed into groups of at most ``target_rows`` rows (and ``MAX_GROUP`` manifests), each of two or more; none for
    a layer with fewer than ``min_manifests`` small manifests."""
    groups: list[list[Mapping[str, Any]]] = []
    for layer in sorted({m["layer"] for m in manifests}):
        small = [m for m in manifests if m["layer"] == layer and m["row_count"] < small_rows]
        if len(small) < min_manifests:
            continue
        current: list[Mapping[str, Any]] = []
        rows = 0
        for m in small:
            if current and (rows + m["row_count"] > target_rows or len(current) >= MAX_GROUP):
                groups.append(current)
                current, rows = [], 0
            current.append(m)
            rows += m["row_count"]
        groups.append(current)
    return [g for g in groups if len(g) >= 2]


def compact_tenant(
    store: Store,
    storage: StorageLike,
    tenant: str,
    now: datetime,
    flow_run_id: str | None = None,
    target_rows: int = TARGET_ROWS,
    small_rows: int = SMALL_ROWS,
    min_manifests: int = MIN_MANIFESTS,
) -> dict[str, int]:
    """Merge a tenant's small archive manifests (see the module's description); returns counts.

    A tenant with a forget under way (its intent recorded) is left alone: the forget's rerun finishes first.

    Raises:
        ArchiveMismatch: a file of a manifest to merge is missing or differs from it; nothing of its group changed.
        ArchiveError: the storage failed; what was written is unreferenced or ``compacting``, removed by a rerun.
    """
    counts = {
        "manifests_merged": 0,
        "manifests_written": 0,
        "rows_compacted": 0,
        "stale_rows_dropped": 0,
        "files_before": 0,
        "files_after": 0,
        "groups_abandoned": 0,
        "leftovers_dropped": 0,
        "object_versions_deleted": 0,
    }
    if store.forget_intents(tenant):
        counts["skipped_forget_under_way"] = 1
        return counts
    counts["leftovers_dropped"] = drop_leftovers(store, storage, tenant)
    # Objects of committed compactions whose old files a crash kept, and of dropped leftovers.
    counts["object_versions_deleted"] += remove_orphan_objects(store, storage, tenant)
    fs = storage.filesystem()
    for group in plan_groups(store.manifests(tenant, ["committed"]), target_rows, small_rows, min_manifests):
        merged = _compact_group(store, storage, fs, tenant, group, now, flow_run_id)
        if merged is None:
            counts["groups_abandoned"] += 1
            continue
        counts["manifests_merged"] += len(group)
        counts["manifests_written"] += 1
        counts["rows_compacted"] += merged["row_count"]
        counts["stale_rows_dropped"] += merged["stale_rows"]
        counts["files_before"] += sum(len(m["files"]) for m in group)
        counts["files_after"] += len(merged["files"])
        for manifest in group:
            counts["object_versions_deleted"] += remove_manifest_objects(storage, manifest)
    return counts


def drop_leftovers(store: Store, storage: StorageLike, tenant: str) -> int:
    """Drop the ``compacting`` manifests an interrupted compaction left, row first, then objects; returns how many.

    No tombstone points at one (a commit moves the tombstones and marks it ``committed`` together), so its row can
    go; a compaction still running finds its manifest gone at its commit and commits nothing.
    """
    return sum(_drop_compacting(store, storage, manifest) for manifest in store.manifests(tenant, [COMPACTING]))


def _read_group(
    storage: StorageLike, fs: Any, group: Sequence[Mapping[str, Any]], pointed: Mapping[str, Mapping[str, set[str]]]
) -> tuple[dict[tuple[str, str], list[Any]], int]:
    """The rows of the group's files that the tombstones point at (``pointed``: by table, manifest id), each file
    checked and read whole, as Arrow tables in the archive schema of its table, by (table, month) in the group's
    order; and how many rows were stale copies (of an item rehydrated since, say, whose tombstone, if it was
    archived again, points at another manifest). A file written before the terms column gets them, as the archive
    step would have written them.

    Raises:
        ArchiveMismatch: a file is missing, differs from its manifest, has columns the archive schema lacks, or a
            manifest lacks a row its tombstones point at.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out: dict[tuple[str, str], list[Any]] = {}
    stale = 0
    for manifest in group:
        found: dict[str, set[str]] = {}
        for entry, data in zip(manifest["files"], _read_many(storage, fs, manifest), strict=True):
            name = entry["table"]
            try:
                table = pq.ParquetFile(pa.BufferReader(data)).read()
            except Exception as exc:  # a file with the right checksum but unreadable was written wrong
                raise ArchiveMismatch(
                    manifest["manifest_id"], entry["path"], f"is not readable Parquet: {exc}"
                ) from exc
            if table.num_rows != entry["rows"]:
                raise ArchiveMismatch(
                    manifest["manifest_id"],
                    entry["path"],
                    f"has {table.num_rows} rows, the manifest says {entry['rows']}",
                )
            schema = archive_schema(name)
            unknown = sorted(set(table.column_names) - set(schema.names))
            if unknown:  # a merged copy in today's schema would lose them
                raise ArchiveMismatch(
                    manifest["manifest_id"], entry["path"], f"has columns the archive schema lacks: {unknown}"
                )
            ids = pointed.get(name, {}).get(manifest["manifest_id"], set())
            keep = pc.is_in(table[_ID_COLUMN[name]], value_set=pa.array(sorted(ids), pa.string()))
            table = table.filter(keep)
            stale += entry["rows"] - table.num_rows
            found.setdefault(name, set()).update(table[_ID_COLUMN[name]].to_pylist())
            columns = []
            for f in schema:
                if f.name in table.column_names:
                    columns.append(table[f.name].cast(f.type))
                elif f.name == "terms":
                    stems = _index_terms(table["text"].to_pylist(), table["actor"].to_pylist())
                    columns.append(pa.array(stems, f.type))
                else:
                    columns.append(pa.nulls(table.num_rows, f.type))
            out.setdefault((name, partition_month(entry["date"])), []).append(pa.table(columns, schema=schema))
        for name, by_manifest in pointed.items():
            lacking = by_manifest.get(manifest["manifest_id"], set()) - found.get(name, set())
            if lacking:
                raise ArchiveMismatch(
                    manifest["manifest_id"], f"({name} files)", f"lack {len(lacking)} rows its tombstones point at"
                )
    return out, stale


def _unchanged(store: Store, tenant: str, group: Sequence[Mapping[str, Any]]) -> bool:
    """Whether every manifest of the group is still committed with the files it was listed with."""
    current = {m["manifest_id"]: m for m in store.manifests(tenant, ["committed"])}
    return all(m["manifest_id"] in current and current[m["manifest_id"]]["files"] == m["files"] for m in group)


def _ids(tables: Mapping[str, Any]) -> dict[str, list[str]]:
    """The ids of each table's rows, sorted: what a merged copy must hold exactly."""
    return {name: sorted(t[_ID_COLUMN[name]].to_pylist()) for name, t in tables.items() if t.num_rows}


def _compact_group(
    store: Store,
    storage: StorageLike,
    fs: Any,
    tenant: str,
    group: Sequence[Mapping[str, Any]],
    now: datetime,
    flow_run_id: str | None,
) -> dict[str, Any] | None:
    """Steps 1 to 4 for one group; returns the committed manifest, or None when the group changed meanwhile."""
    import pyarrow as pa

    layer = group[0]["layer"]
    # A forget may have rewritten (or another compaction merged) a manifest since the group was planned, or be under
    # way. The pointers are read after this check: from then on they can only go (rehydrate, forget), never come to
    # the group.
    if store.forget_intents(tenant) or not _unchanged(store, tenant, group):
        return None
    pointed = store.archived_ids(tenant, [m["manifest_id"] for m in group])
    try:
        parts, stale = _read_group(storage, fs, group, pointed)
    except ArchiveMismatch:
        if store.forget_intents(tenant) or not _unchanged(store, tenant, group):
            return None  # a forget replaced the files, or its tombstones are still to go, while they were read
        raise
    manifest_id = new_manifest_id()
    entries: list[dict[str, Any]] = []
    objects: list[tuple[str, bytes]] = []
    before: dict[str, list[Any]] = {}
    for (name, date), tables in sorted(parts.items()):
        table = pa.concat_tables(tables)
        if not table.num_rows:
            continue
        before.setdefault(name, []).append(table.select([_ID_COLUMN[name]]))
        data = _parquet_bytes(table)
        path = f"{tenant_prefix(tenant)}/layer={layer}/date={date}/{manifest_id}-{len(entries)}.parquet"
        entries.append(
            {
                "path": path,
                "table": name,
                "date": date,
                "rows": table.num_rows,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
        objects.append((path, data))
    row = {
        "tenant": tenant,
        "manifest_id": manifest_id,
        "layer": layer,
        "uri": f"{storage.url}/{manifest_path(tenant, manifest_id)}",
        "files": entries,
        "row_count": sum(e["rows"] for e in entries),
        "status": COMPACTING,
        "flow_run_id": flow_run_id,
        "created_at": now,
    }
    store.add_manifests([row])
    try:
        with _storage_errors(f"writing compacted manifest {manifest_id}", storage):
            document = manifest_json({**row, "compacted_from": [m["manifest_id"] for m in group]})
            _put_many(fs, storage, [*objects, (manifest_path(tenant, manifest_id), document)])
        verified = _verify(storage, fs, row)
    except ArchiveError:
        if not store.manifests_exist(tenant, [manifest_id]):
            return None  # a forget (or another compaction's clean-up) dropped this copy meanwhile
        raise
    expected = _ids({name: pa.concat_tables(tables) for name, tables in before.items()})
    if _ids(verified.keys) != expected:
        raise ArchiveMismatch(manifest_id, "(compacted files)", "do not hold the rows of the manifests they merge")
    old = [(m["manifest_id"], m["files"]) for m in group]
    if not store.commit_compaction(tenant, manifest_id, old, now):
        # Only this copy: another compaction's may be under way.
        _drop_compacting(store, storage, row)
        return None
    return {**row, "status": "committed", "stale_rows": stale}


def _drop_compacting(store: Store, storage: StorageLike, manifest: Mapping[str, Any]) -> int:
    """Drop a ``compacting`` manifest, row first, then its objects; returns 1 when it dropped the row. One another
    run committed meanwhile (its tombstones point at it) is no leftover and stays."""
    try:
        dropped = store.drop_manifest(manifest["tenant"], manifest["manifest_id"])
    except StoreError:
        return 0
    remove_manifest_objects(storage, manifest)
    return dropped
