"""A tenant's whole memory as a portable export: one Parquet file per table plus ``manifest.json``.

An export holds every row of the tenant in every table that has a tenant column (events, sessions, working items,
episodes and their turns, semantic items with their embeddings, lineage, the audit trail, quarantine, archive
manifests, the tenant's change counter and its metrics), and a copy of every archived object its archive manifests
list, under ``archive/``. The manifest records each file's table, row count and sha256, the source store's dialect and
schema revision.

An import checks every file against the manifest before it writes anything, refuses a tenant the target already
holds (unless asked to replace it), copies the archived objects into the target archive, writes every table in one
transaction and counts the rows again before it commits. It is how a tenant moves from SQLite to PostgreSQL, to
another machine, or out of a service being decommissioned.

Layout of an export::

    DEST/manifest.json
    DEST/tables/<table>.parquet
    DEST/archive/<path relative to the source archive root>

Values keep their types across stores: times are UTC ``timestamp[us]``, JSON columns are stored as JSON text (an
Arrow struct would change the shape of heterogeneous mappings), embeddings as binary.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, Integer, LargeBinary, Table

from engram.errors import ArchiveError, InvalidInput, StoreError
from engram.models import ALL_TABLES
from engram.store import Store
from engram.validation import check_tenant

FORMAT = "engram-tenant-export"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TABLES_DIR = "tables"
ARCHIVE_DIR = "archive"
BATCH_ROWS = 50_000
COPY_CHUNK_BYTES = 1 << 20

# Every table that holds tenant rows, in the order an import writes them.
TENANT_TABLES: tuple[Table, ...] = tuple(
    m.__table__  # type: ignore[attr-defined]
    for m in ALL_TABLES
    if "tenant" in m.__table__.c  # type: ignore[attr-defined]
)


@dataclass(frozen=True)
class ExportedFile:
    """One table's Parquet file in an export."""

    table: str
    path: str  # relative to the export's root
    rows: int
    sha256: str
    bytes: int
    created_at: str


@dataclass(frozen=True)
class ArchiveObject:
    """One archived object copied into an export."""

    path: str  # relative to the export's root, under ``archive/``
    source_uri: str
    sha256: str
    bytes: int
    manifest_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExportManifest:
    """What an export holds, as written to its ``manifest.json``.

    Attributes:
        tenant: whose memory it is.
        created_at: when the export was written (ISO-8601, UTC).
        source_dialect: ``sqlite`` or ``postgresql``.
        schema_revision: the Alembic revision of the source store's schema.
        files: one entry per table, with its row count and sha256.
        archive_objects: the archived objects copied with the export, each with its sha256.
        source_archive_url: the archive root the objects' relative paths are relative to, when it was known.
        url: where the export is (not written to the file).
    """

    tenant: str
    created_at: str
    source_dialect: str
    schema_revision: str | None
    files: tuple[ExportedFile, ...]
    archive_objects: tuple[ArchiveObject, ...] = ()
    source_archive_url: str | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    url: str = field(default="", compare=False)

    @property
    def rows(self) -> dict[str, int]:
        """Rows per table."""
        return {f.table: f.rows for f in self.files}

    def to_json(self) -> str:
        body = asdict(self)
        body.pop("url")
        return json.dumps(body, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, url: str = "") -> ExportManifest:
        """Parse a ``manifest.json``; raises ``InvalidInput`` when it is not an engram export this version reads."""
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput("src", f"{MANIFEST_NAME} at {url} is not JSON: {exc}") from exc
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise InvalidInput(
                "src", f"{url} is not an engram tenant export ({MANIFEST_NAME} has no format {FORMAT!r})"
            )
        if body.get("format_version") != FORMAT_VERSION:
            raise InvalidInput(
                "src",
                f"{url} has export format version {body.get('format_version')!r}; this engram reads {FORMAT_VERSION}",
            )
        _check_entries(body, url)
        try:
            return cls(
                tenant=body["tenant"],
                created_at=body["created_at"],
                source_dialect=body["source_dialect"],
                schema_revision=body.get("schema_revision"),
                files=tuple(ExportedFile(**f) for f in body["files"]),
                archive_objects=tuple(
                    ArchiveObject(**{**o, "manifest_ids": tuple(o.get("manifest_ids", ()))})
                    for o in body.get("archive_objects", [])
                ),
                source_archive_url=body.get("source_archive_url"),
                url=url,
            )
        except (KeyError, TypeError) as exc:
            raise InvalidInput("src", f"{MANIFEST_NAME} at {url} is missing or has a malformed field: {exc}") from exc


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_entries(body: dict[str, Any], url: str) -> None:
    """Refuse a manifest whose entries an import could not use safely, naming the entry and field: a wrong type, a
    count below zero, a checksum that is none, a path that leaves the export (absolute, ``..``) or a table or path
    listed twice (``InvalidInput`` on ``src``)."""

    def refuse(where: str, reason: str) -> InvalidInput:
        return InvalidInput("src", f"{MANIFEST_NAME} at {url}: {where}: {reason}")

    for name in ("tenant", "created_at", "source_dialect"):
        if not isinstance(body.get(name), str):
            raise refuse(name, f"must be a string, got {str(body.get(name))[:40]!r}")
    shapes = {
        "files": {"table": str, "path": str, "rows": int, "sha256": str, "bytes": int, "created_at": str},
        "archive_objects": {"path": str, "source_uri": str, "sha256": str, "bytes": int},
    }
    for kind, fields in shapes.items():
        entries = body.get(kind, [] if kind == "archive_objects" else None)
        if not isinstance(entries, list):
            raise refuse(kind, "must be a list")
        seen: set[tuple[str, Any]] = set()
        for n, entry in enumerate(entries):
            where = f"{kind}[{n}]"
            if not isinstance(entry, dict):
                raise refuse(where, "must be an object")
            for name, kind_of in fields.items():
                value = entry.get(name)
                if not isinstance(value, kind_of) or isinstance(value, bool):
                    raise refuse(f"{where}.{name}", f"must be {kind_of.__name__}, got {str(value)[:40]!r}")
                if kind_of is int and value < 0:
                    raise refuse(f"{where}.{name}", f"must not be negative, got {value}")
            if not _SHA256.fullmatch(entry["sha256"]):
                raise refuse(f"{where}.sha256", f"is not a sha256 in hex: {entry['sha256'][:70]!r}")
            path = entry["path"]
            parts = path.replace("\\", "/").split("/")
            if not path or path.startswith("/") or ":" in parts[0] or any(p in ("", ".", "..") for p in parts):
                raise refuse(f"{where}.path", f"must be a plain path inside the export, got {path[:80]!r}")
            if kind == "archive_objects" and parts[0] != ARCHIVE_DIR:
                raise refuse(f"{where}.path", f"must lie under {ARCHIVE_DIR}/, got {path[:80]!r}")
            ids = entry.get("manifest_ids", [])
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                raise refuse(f"{where}.manifest_ids", "must be a list of strings")
            for key in ("path", "table") if kind == "files" else ("path",):
                if (key, entry[key]) in seen:
                    raise refuse(f"{where}.{key}", f"{entry[key][:80]!r} is listed twice")
                seen.add((key, entry[key]))


@dataclass(frozen=True)
class ImportReport:
    """What an import wrote.

    Attributes:
        tenant: the tenant the rows were written under.
        source_tenant: the tenant named in the export (differs when imported under a new id).
        rows: rows written per table, counted again in the target before commit.
        replaced: rows of the tenant deleted first, per table (``replace=True`` only).
        archive_objects: archived objects copied into the target archive.
        schema_revision: the source store's schema revision, from the manifest.
    """

    tenant: str
    source_tenant: str
    rows: dict[str, int]
    replaced: dict[str, int]
    archive_objects: int
    schema_revision: str | None

    @property
    def total(self) -> int:
        return sum(self.rows.values())


# -- locations -----------------------------------------------------------------------------------------------------


def _fs(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    """The fsspec filesystem and the path within it of a local folder, ``file://`` or ``s3://`` URL."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    except (ValueError, ImportError) as exc:
        raise InvalidInput("url", f"cannot open {url!r}: {exc}") from exc
    return fs, path.rstrip("/")


def _has_scheme(location: str) -> bool:
    return "://" in location


def _join(root: str, relative: str) -> str:
    return root.rstrip("/") + "/" + relative.lstrip("/")


def _relative_to(location: str, root: str | None) -> str | None:
    """``location`` relative to ``root`` when it lies under it, else None."""
    if not root:
        return None
    root = root.rstrip("/") + "/"
    return location[len(root) :] if location.startswith(root) else None


def _entry_location(entry: Mapping[str, Any]) -> tuple[str, str] | None:
    """The key (``uri`` or ``path``) and value that locate an archive file entry."""
    for key in ("uri", "path", "key"):
        value = entry.get(key)
        if isinstance(value, str) and value:
            return key, value
    return None


def _archive_root(manifest: Mapping[str, Any], archive_url: str | None) -> str:
    """The archive root a manifest's relative file paths are relative to.

    ``engram.archive`` keeps a manifest's JSON at ``<root>/tenant=<t>/manifests/<id>.json`` and its files' paths
    relative to ``<root>``; without ``archive_url`` the root is read off the manifest's URI.
    """
    if archive_url:
        return archive_url.rstrip("/")
    uri = manifest["uri"]
    suffix = f"/tenant={manifest['tenant']}/manifests/{manifest['manifest_id']}.json"
    return uri[: -len(suffix)] if uri.endswith(suffix) else uri.rstrip("/")


def _entry_uri(entry: Mapping[str, Any], root: str) -> str | None:
    """The absolute location of an archive file entry: as given, or relative to the archive root."""
    found = _entry_location(entry)
    if found is None:
        return None
    value = found[1]
    if _has_scheme(value) or value.startswith("/"):
        return value
    return _join(root, value)


def _sha256_of(fs: Any, path: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with fs.open(path, "rb") as fh:
        while chunk := fh.read(COPY_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _copy(src_fs: Any, src: str, dst_fs: Any, dst: str) -> tuple[str, int]:
    """Copy one object, hashing it on the way; returns its sha256 and size."""
    digest = hashlib.sha256()
    size = 0
    dst_fs.makedirs(posixpath.dirname(dst), exist_ok=True)
    with src_fs.open(src, "rb") as fin, dst_fs.open(dst, "wb") as fout:
        while chunk := fin.read(COPY_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
            fout.write(chunk)
    return digest.hexdigest(), size


# -- Parquet ---------------------------------------------------------------------------------------------------------


def _arrow_schema(table: Table) -> Any:
    import pyarrow as pa

    fields = []
    for col in table.columns:
        meta = None
        if isinstance(col.type, JSON):
            arrow_type = pa.string()
            meta = {b"engram.json": b"1"}
        elif isinstance(col.type, LargeBinary):
            arrow_type = pa.binary()
        elif isinstance(col.type, Integer):
            arrow_type = pa.int64()
        elif isinstance(col.type, Float):
            arrow_type = pa.float64()
        elif isinstance(getattr(col.type, "impl_instance", col.type), DateTime) or col.type.python_type is datetime:
            arrow_type = pa.timestamp("us", tz="UTC")
        else:
            arrow_type = pa.string()
        fields.append(pa.field(col.name, arrow_type, nullable=bool(col.nullable), metadata=meta))
    return pa.schema(fields, metadata={b"engram.table": table.name.encode()})


def _json_columns(table: Table) -> list[str]:
    return [c.name for c in table.columns if isinstance(c.type, JSON)]


def _to_batch(table: Table, schema: Any, rows: Sequence[Mapping[str, Any]]) -> Any:
    import pyarrow as pa

    json_cols = set(_json_columns(table))
    columns = []
    for col in table.columns:
        values = [r[col.name] for r in rows]
        if col.name in json_cols:
            values = [json.dumps(v, ensure_ascii=False, separators=(",", ":")) for v in values]
        columns.append(values)
    return pa.record_batch(columns, schema=schema)


def _from_batch(batch: Any, json_cols: set[str], tenant: str) -> list[dict[str, Any]]:
    rows = batch.to_pylist()
    for row in rows:
        for name in json_cols & row.keys():
            row[name] = json.loads(row[name]) if row[name] is not None else None
        row["tenant"] = tenant
    return rows


# -- export ------------------------------------------------------------------------------------------------------------


def export_tenant(
    store: Store,
    tenant: str,
    dest_url: str,
    archive_url: str | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> ExportManifest:
    """Write a tenant's whole memory to ``dest_url`` as Parquet plus ``manifest.json``.

    The rows are read in one snapshot of the store, so the files agree with each other even while the service runs.
    Each file is read back after it is written and its sha256 is taken from the stored bytes. The manifest is written
    last: a location without one holds no complete export.

    Args:
        store: the source store.
        tenant: whose memory.
        dest_url: an empty local folder, ``file://`` URL or ``s3://bucket/prefix``.
        archive_url: the archive root; archived objects are laid out under ``archive/`` by their path relative to
            it (objects outside it, or all when it is not given, by manifest id and file name).
        storage_options: options for fsspec (s3fs: ``key``, ``secret``, ``client_kwargs``); default: the
            environment's.

    Returns:
        The manifest written.

    Raises:
        InvalidInput: for a bad tenant id, or a destination that already holds an export.
        ArchiveError: when the destination cannot be written, or an archived object is missing or no longer
            matches the sha256 its archive manifest recorded.

    Example:
        >>> export_tenant(Store("sqlite:///engram.db"), "acme", "/backups/acme")  # doctest: +SKIP
    """
    import pyarrow.parquet as pq

    from engram.migrations import revision_of

    tenant = check_tenant(tenant)
    fs, root = _fs(dest_url, storage_options)
    try:
        if fs.exists(_join(root, MANIFEST_NAME)):
            raise InvalidInput("dest", f"{dest_url} already holds an export; choose an empty location")
        fs.makedirs(_join(root, TABLES_DIR), exist_ok=True)
        files: list[ExportedFile] = []
        manifests: list[dict[str, Any]] = []
        with store.snapshot() as conn:
            revision = revision_of(conn)
            for table in TENANT_TABLES:
                schema = _arrow_schema(table)
                relative = f"{TABLES_DIR}/{table.name}.parquet"
                path = _join(root, relative)
                written = 0
                with fs.open(path, "wb") as fh, pq.ParquetWriter(fh, schema, compression="zstd") as writer:
                    for rows in store.tenant_rows(conn, table, tenant, BATCH_ROWS):
                        if table.name == "archive_manifests":
                            # A manifest not committed belongs to the archive run or compaction writing it (its
                            # rows are hot, or copies of committed ones): neither it nor its objects are copied.
                            rows = [r for r in rows if r["status"] == "committed"]
                            manifests += rows
                        if not rows:
                            continue
                        writer.write_batch(_to_batch(table, schema, rows))
                        written += len(rows)
                sha, size = _sha256_of(fs, path)
                stored_rows = pq.ParquetFile(fs.open(path, "rb")).metadata.num_rows
                if stored_rows != written:
                    raise ArchiveError(f"{path}: wrote {written} rows but read back {stored_rows}")
                files.append(ExportedFile(table.name, relative, written, sha, size, _now()))
        objects = _export_archive_objects(manifests, fs, root, archive_url, storage_options)
        manifest = ExportManifest(
            tenant=tenant,
            created_at=_now(),
            source_dialect=store.dialect,
            schema_revision=revision,
            files=tuple(files),
            archive_objects=tuple(objects),
            source_archive_url=archive_url.rstrip("/") if archive_url else None,
            url=dest_url,
        )
        with fs.open(_join(root, MANIFEST_NAME), "w") as fh:
            fh.write(manifest.to_json())
    except OSError as exc:
        raise ArchiveError(f"cannot write the export to {dest_url}: {exc}") from exc
    return manifest


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _export_archive_objects(
    manifests: Sequence[Mapping[str, Any]],
    fs: Any,
    root: str,
    archive_url: str | None,
    storage_options: Mapping[str, Any] | None,
) -> list[ArchiveObject]:
    """Copy every object the tenant's archive manifests list (and each manifest's own JSON, when it exists) into
    ``archive/`` under its path relative to the archive root, checking each recorded sha256."""
    by_path: dict[str, ArchiveObject] = {}

    def copy(uri: str, archive_root: str, manifest_id: str, recorded: str | None, required: bool) -> None:
        relative = _relative_to(uri, archive_root) or f"{manifest_id}/{posixpath.basename(uri)}"
        target = f"{ARCHIVE_DIR}/{relative}"
        if target in by_path:
            seen = by_path[target]
            by_path[target] = ArchiveObject(
                seen.path, seen.source_uri, seen.sha256, seen.bytes, (*seen.manifest_ids, manifest_id)
            )
            return
        src_fs, src_path = _fs(uri, storage_options)
        try:
            sha, size = _copy(src_fs, src_path, fs, _join(root, target))
        except FileNotFoundError as exc:
            if not required:
                return
            raise ArchiveError(
                f"archived object {uri} of manifest {manifest_id} is missing; the export would be incomplete"
            ) from exc
        if recorded and recorded != sha:
            raise ArchiveError(
                f"archived object {uri} of manifest {manifest_id} has sha256 {sha}, "
                f"but its manifest recorded {recorded}"
            )
        by_path[target] = ArchiveObject(target, uri, sha, size, (manifest_id,))

    for m in manifests:
        archive_root = _archive_root(m, archive_url)
        for entry in m["files"] or []:
            uri = _entry_uri(entry, archive_root)
            if uri is None:
                raise ArchiveError(
                    f"archive manifest {m['manifest_id']} lists a file without a path or uri: {str(entry)[:200]}"
                )
            copy(uri, archive_root, m["manifest_id"], entry.get("sha256"), required=True)
        if m["uri"].endswith(".json"):
            copy(m["uri"], archive_root, m["manifest_id"], None, required=False)
    return list(by_path.values())


# -- import ------------------------------------------------------------------------------------------------------------


def read_manifest(src_url: str, *, storage_options: Mapping[str, Any] | None = None) -> ExportManifest:
    """The manifest of the export at ``src_url``."""
    fs, root = _fs(src_url, storage_options)
    try:
        with fs.open(_join(root, MANIFEST_NAME), "r") as fh:
            text = fh.read()
    except FileNotFoundError as exc:
        raise InvalidInput("src", f"{src_url} holds no {MANIFEST_NAME}; it is not a complete engram export") from exc
    except OSError as exc:
        raise ArchiveError(f"cannot read {MANIFEST_NAME} at {src_url}: {exc}") from exc
    return ExportManifest.from_json(text, url=src_url)


def verify_export(src_url: str, *, storage_options: Mapping[str, Any] | None = None) -> ExportManifest:
    """Check every file of an export against its manifest: sha256, size and row count; reads, never writes.

    Raises:
        InvalidInput: when a table file names a table this schema does not have, or columns it cannot take.
        ArchiveError: naming the first file that is missing or does not match the manifest.
    """
    import pyarrow.parquet as pq

    manifest = read_manifest(src_url, storage_options=storage_options)
    fs, root = _fs(src_url, storage_options)
    known = {t.name: t for t in TENANT_TABLES}
    for f in manifest.files:
        table = known.get(f.table)
        if table is None:
            raise InvalidInput("src", f"{f.path} holds table {f.table!r}, which this store's schema does not have")
        path = _join(root, f.path)
        _check_object(fs, path, f.path, f.sha256, f.bytes)
        with fs.open(path, "rb") as fh:
            parquet = pq.ParquetFile(fh)
            rows = parquet.metadata.num_rows
            columns = set(parquet.schema_arrow.names)
        if rows != f.rows:
            raise ArchiveError(f"{f.path}: holds {rows} rows but the manifest says {f.rows}; the export is damaged")
        unknown = columns - set(table.c.keys())
        missing = {c.name for c in table.columns if not c.nullable and c.name not in columns}
        if unknown or missing:
            raise InvalidInput(
                "src",
                f"{f.path} does not fit table {f.table} of this store (unknown columns {sorted(unknown)}, "
                f"missing required columns {sorted(missing)}); the export is from schema revision "
                f"{manifest.schema_revision}",
            )
    for obj in manifest.archive_objects:
        _check_object(fs, _join(root, obj.path), obj.path, obj.sha256, obj.bytes)
    return manifest


def _check_object(fs: Any, path: str, name: str, sha256: str, size: int) -> None:
    try:
        sha, found = _sha256_of(fs, path)
    except FileNotFoundError as exc:
        raise ArchiveError(f"{name}: listed in the manifest but missing from the export") from exc
    except OSError as exc:
        raise ArchiveError(f"{name}: cannot be read: {exc}") from exc
    if found != size or sha != sha256:
        raise ArchiveError(
            f"{name}: sha256 {sha} ({found} bytes) does not match the manifest's {sha256} ({size} bytes); "
            "the export is damaged, nothing was imported"
        )


def import_tenant(
    store: Store,
    src_url: str,
    *,
    tenant: str | None = None,
    archive_url: str | None = None,
    replace: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> ImportReport:
    """Restore an export into ``store``, optionally under a new tenant id.

    Order of work: verify every file against the manifest; refuse a tenant the target already holds (unless
    ``replace``); copy the archived objects into ``archive_url`` under the same layout; then, in one transaction,
    delete the tenant's old rows (``replace`` only), insert every table, rewrite archive manifests to the new
    object locations, and count each table again before committing.

    Args:
        store: the target store (migrated).
        src_url: the export's location (local folder, ``file://`` or ``s3://``).
        tenant: import under this tenant id instead of the exported one.
        archive_url: the target archive root; required when the export holds archived objects.
        replace: delete the tenant's rows in the target first, in the same transaction.
        storage_options: options for fsspec, as for ``export_tenant``.

    Returns:
        An ``ImportReport`` with the rows written per table.

    Raises:
        ArchiveError: a file that is missing or does not match the manifest (nothing is written), or an archive
            object that cannot be copied.
        InvalidInput: a bad tenant id, a target that already holds the tenant, or an export this schema cannot take.
        StoreError: the database failed, or the rows counted in the target differ from the manifest (rolled back).

    Example:
        >>> import_tenant(Store("postgresql://postgres@127.0.0.1/engram"), "/backups/acme")  # doctest: +SKIP
    """
    manifest = verify_export(src_url, storage_options=storage_options)
    source_tenant = manifest.tenant
    target = check_tenant(tenant) if tenant is not None else check_tenant(source_tenant)
    if manifest.archive_objects and not archive_url:
        raise InvalidInput(
            "archive_url",
            f"the export holds {len(manifest.archive_objects)} archived objects; "
            "give the archive URL to copy them into",
        )
    if not replace:
        with store.read() as conn:
            _refuse_existing(store, conn, target)
    src_fs, src_root = _fs(src_url, storage_options)
    moved = _import_archive_objects(manifest, src_fs, src_root, archive_url, source_tenant, target, storage_options)
    rows: dict[str, int] = {}
    replaced: dict[str, int] = {}
    with store.write() as conn:
        old_state = [r for batch in store.tenant_rows(conn, _table("tenant_state"), target) for r in batch]
        if replace:
            for table in reversed(TENANT_TABLES):
                replaced[table.name] = store.delete_tenant_rows(conn, table, target)
        else:
            _refuse_existing(store, conn, target)
        for f in manifest.files:
            table = _table(f.table)
            inserted = 0
            for batch in _read_rows(src_fs, _join(src_root, f.path), table, target):
                if table.name == "archive_manifests":
                    batch = [
                        _relocate_manifest(r, moved, manifest.source_archive_url, archive_url, source_tenant)
                        for r in batch
                    ]
                elif table.name == "tenant_state" and old_state:
                    # Another process may hold a search index of the old rows: moving the epoch makes it rebuild.
                    batch = [dict(r, epoch=max(r["epoch"], old_state[0]["epoch"] + 1)) for r in batch]
                inserted += store.insert_ignore(conn, table, batch)
            counted = store.count_tenant_rows(conn, table, target)
            if inserted != f.rows or counted != f.rows:
                raise StoreError(
                    f"import of {f.table} wrote {inserted} rows and counts {counted}, but the manifest says {f.rows}; "
                    "rolled back"
                )
            rows[f.table] = counted
    return ImportReport(
        tenant=target,
        source_tenant=source_tenant,
        rows=rows,
        replaced=replaced,
        archive_objects=len(moved),
        schema_revision=manifest.schema_revision,
    )


def _table(name: str) -> Table:
    return next(t for t in TENANT_TABLES if t.name == name)


def _refuse_existing(store: Store, conn: Any, tenant: str) -> None:
    held = {t.name: n for t in TENANT_TABLES if (n := store.count_tenant_rows(conn, t, tenant))}
    if held:
        shown = ", ".join(f"{name}: {n}" for name, n in held.items())
        raise InvalidInput(
            "tenant",
            f"the target store already holds tenant {tenant!r} ({shown}); "
            "import under another tenant id, or replace it (replace=True, --replace)",
        )


def _read_rows(fs: Any, path: str, table: Table, tenant: str) -> Iterator[list[dict[str, Any]]]:
    import pyarrow.parquet as pq

    json_cols = set(_json_columns(table))
    with fs.open(path, "rb") as fh:
        for batch in pq.ParquetFile(fh).iter_batches(batch_size=BATCH_ROWS):
            yield _from_batch(batch, json_cols, tenant)


def _rename_tenant_in_path(relative: str, source: str, target: str) -> str:
    """Rename the tenant's own path segments (``acme`` or ``tenant=acme``) in an archive path."""
    if source == target:
        return relative
    renamed = {source: target, f"tenant={source}": f"tenant={target}"}
    return "/".join(renamed.get(part, part) for part in relative.split("/"))


def _import_archive_objects(
    manifest: ExportManifest,
    src_fs: Any,
    src_root: str,
    archive_url: str | None,
    source_tenant: str,
    tenant: str,
    storage_options: Mapping[str, Any] | None,
) -> dict[str, tuple[str, str, int]]:
    """Copy the export's archived objects into the target archive; returns, by path relative to the archive root,
    (new relative path, sha256, size).

    Under a new tenant id, the tenant's path segments are renamed, a Parquet object's ``tenant`` column is
    rewritten (so that rehydrating it brings the rows back under the new id), and a manifest's JSON names the new
    tenant and its files' new paths and checksums.
    """
    moved: dict[str, tuple[str, str, int]] = {}
    if not manifest.archive_objects or not archive_url:
        return moved
    dst_fs, dst_root = _fs(archive_url, storage_options)
    # Data files first: a manifest's JSON is rewritten with their new checksums.
    ordered = sorted(manifest.archive_objects, key=lambda o: o.path.endswith(".json"))
    for obj in ordered:
        relative = obj.path.removeprefix(f"{ARCHIVE_DIR}/")
        new_relative = _rename_tenant_in_path(relative, source_tenant, tenant)
        src, dst = _join(src_root, obj.path), _join(dst_root, new_relative)
        try:
            if tenant == source_tenant:
                sha, size = _copy(src_fs, src, dst_fs, dst)
            elif obj.path.endswith(".parquet"):
                sha, size = _copy_parquet_renamed(src_fs, src, dst_fs, dst, tenant)
            elif obj.path.endswith(".json"):
                sha, size = _copy_manifest_json_renamed(src_fs, src, dst_fs, dst, source_tenant, tenant, moved)
            else:
                sha, size = _copy(src_fs, src, dst_fs, dst)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid, for an object that is not Parquet, is one
            raise ArchiveError(f"cannot copy {obj.path} into the archive at {archive_url}: {exc}") from exc
        if tenant == source_tenant and sha != obj.sha256:
            raise ArchiveError(f"{obj.path}: copied bytes have sha256 {sha}, the manifest says {obj.sha256}")
        moved[relative] = (new_relative, sha, size)
    return moved


def _write_bytes(fs: Any, path: str, data: bytes) -> tuple[str, int]:
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    with fs.open(path, "wb") as fh:
        fh.write(data)
    return hashlib.sha256(data).hexdigest(), len(data)


def _copy_parquet_renamed(src_fs: Any, src: str, dst_fs: Any, dst: str, tenant: str) -> tuple[str, int]:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    with src_fs.open(src, "rb") as fh:
        data = pq.read_table(fh)
    if "tenant" in data.column_names:
        i = data.column_names.index("tenant")
        data = data.set_column(i, data.schema.field(i), pa.array([tenant] * data.num_rows, data.schema.field(i).type))
    out = io.BytesIO()
    pq.write_table(data, out, compression="zstd")
    return _write_bytes(dst_fs, dst, out.getvalue())


def _copy_manifest_json_renamed(
    src_fs: Any,
    src: str,
    dst_fs: Any,
    dst: str,
    source_tenant: str,
    tenant: str,
    moved: Mapping[str, tuple[str, str, int]],
) -> tuple[str, int]:
    with src_fs.open(src, "rb") as fh:
        doc = json.loads(fh.read())
    if isinstance(doc, dict):
        if doc.get("tenant") == source_tenant:
            doc["tenant"] = tenant
        doc["files"] = [_moved_entry(e, moved, source_tenant, tenant) for e in doc.get("files") or []]
    return _write_bytes(dst_fs, dst, json.dumps(doc, indent=2, sort_keys=True).encode("utf-8"))


def _moved_entry(
    entry: Mapping[str, Any], moved: Mapping[str, tuple[str, str, int]], source_tenant: str, tenant: str
) -> dict[str, Any]:
    """A relative file entry with its renamed path and, when its bytes changed, its new sha256 and size."""
    entry = dict(entry)
    found = _entry_location(entry)
    if found is None or _has_scheme(found[1]) or found[1].startswith("/"):
        return entry
    key, relative = found
    if relative in moved:
        new_relative, sha, size = moved[relative]
        entry[key] = new_relative
        if "sha256" in entry:
            entry["sha256"] = sha
        if "bytes" in entry:
            entry["bytes"] = size
    else:
        entry[key] = _rename_tenant_in_path(relative, source_tenant, tenant)
    return entry


def _relocate_manifest(
    row: dict[str, Any],
    moved: Mapping[str, tuple[str, str, int]],
    source_archive_url: str | None,
    archive_url: str | None,
    source_tenant: str,
) -> dict[str, Any]:
    """An archive manifest row pointing at the objects' new locations (and checksums, when they were rewritten)."""
    if not moved or not archive_url:
        return row
    source_row = dict(row, tenant=source_tenant)
    old_root = _archive_root(source_row, source_archive_url)
    tenant = row["tenant"]
    relative = _relative_to(row["uri"], old_root) or row["manifest_id"]
    new_uri = _join(archive_url, _rename_tenant_in_path(relative, source_tenant, tenant))
    files = []
    for entry in row["files"] or []:
        found = _entry_location(entry)
        if found is not None and (_has_scheme(found[1]) or found[1].startswith("/")):
            # An absolute entry: find it by its path under the old root, point it at the new one.
            rel = _relative_to(found[1], old_root)
            if rel is not None and rel in moved:
                new_relative, sha, size = moved[rel]
                entry = dict(entry, **{found[0]: _join(archive_url, new_relative)})
                if "sha256" in entry:
                    entry["sha256"] = sha
                if "bytes" in entry:
                    entry["bytes"] = size
            files.append(entry)
        else:
            files.append(_moved_entry(entry, moved, source_tenant, tenant))
    return dict(row, uri=new_uri, files=files)
