"""The archival layer: Parquet files and manifests on object storage (S3, MinIO) or in a local folder.

Layout under the archive's root (``s3://bucket/prefix`` or ``file:///folder``)::

    tenant=<t>/layer=<semantic|episodic>/date=<YYYY-MM>/<manifest_id>-<n>.parquet
    tenant=<t>/layer=<semantic|episodic>/date=<YYYY-MM>/<manifest_id>-<n>.<rewrite>.parquet   (after a forget)
    tenant=<t>/manifests/<manifest_id>.json

A row's ``date=`` partition is the month of its date (a fact's last sighting, an episode's end; a turn goes with its
episode). Archives written by earlier versions have day partitions (``date=<YYYY-MM-DD>``): they are read alike, and
compaction merges them into months.

One manifest is one archive write of one tenant and layer: its files, each with its table, row count and sha256,
and the flow run that wrote it. The same manifest is a row of ``archive_manifests`` whose status moves
``written -> verified -> committed``:

1. the batch's rows are encoded as Parquet in memory, their checksums taken, and the manifest rows of the batch (one
   per tenant) written in one transaction;
2. the files and the manifests' JSON are uploaded;
3. every file is read back once: its sha256 and row count compared with the manifest, and the columns the commit
   compares with the hot rows decoded from those checked bytes (``verified``);
4. one database transaction for the batch swaps the hot rows for tombstones that point at their manifest and audits
   each move (``committed``): each manifest is committed whole or not at all.

A crash or an outage at any step leaves each row hot or tombstoned over a verified file. The next run takes up any
manifest left ``written`` or ``verified``: it verifies and commits it, or, when a file is missing or differs,
removes the manifest's objects and lets the rows be archived again.

Compaction (``engram.compaction``) merges a tenant's many small manifests of a layer into one, in the same layout;
like a forget, it writes new objects first and deletes the old ones only after one transaction moved the
tombstones to the new manifest.

A forget never overwrites an object a manifest points at: it writes the rewritten files under new names, swaps the
manifest's file list in one transaction, then deletes the old objects; what a crash leaves is unreferenced and swept
by the rerun, which also finds the ids the first run recorded (see ``forget_in_archive``).

Errors of fsspec, s3fs, botocore and the MinIO client are translated into ``ArchiveError`` in one place
(``_storage_errors``); messages name paths, never credentials.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from pydantic import SecretStr

from engram.errors import ArchiveError, ArchiveMismatch
from engram.layers import Layer
from engram.store import EPISODES, SEMANTIC, TURNS, Store, json_text
from engram.text import mentions, render

_log = logging.getLogger("engram.archive")

ARCHIVED_TABLES = {"semantic_items": SEMANTIC, "episodes": EPISODES, "episode_turns": TURNS}
LAYER_OF_TABLE = {"semantic_items": Layer.SEMANTIC, "episodes": Layer.EPISODIC, "episode_turns": Layer.EPISODIC}
# The hot rows' own bookkeeping, which means nothing once archived.
_DROPPED_COLUMNS = {"archived_manifest_id", "lease_owner", "lease_expires_at", "consolidation_failures"}
# Archived turns carry the rendering their hot search document had, so an archived hit reads the same. Searchable
# rows carry their index terms (``engram.search.search_terms`` of text and actor), so that loading a file for search
# tokenises nothing; a file written before that column was added is tokenised when it is loaded.
_EXTRA_COLUMNS = {"episode_turns": {"rendered", "terms"}, "semantic_items": {"terms"}}
# Columns that exist for search alone: not part of an archived row as ``decode_parquet`` returns it.
_SEARCH_ONLY_COLUMNS = {"terms"}
_S3_CONFIG = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2, "mode": "standard"}}


@dataclass(frozen=True)
class RetentionRules:
    """Which hot rows the archive flow moves to the archive (the ``RetentionPolicy`` block's fields).

    Attributes:
        semantic_idle: a semantic item version not accessed for this long (by ``last_accessed``, or ``last_seen``
            when never accessed) is archived.
        min_salience: a semantic item version below this salience is archived.
        episode_age: a consolidated episode that ended this long ago is archived with its turns.
        archive_superseded: superseded fact versions are archived whatever their age.
    """

    semantic_idle: timedelta = timedelta(days=90)
    min_salience: float = 0.0
    episode_age: timedelta = timedelta(days=30)
    archive_superseded: bool = True


class StorageLike(Protocol):
    """What the archive needs of its storage: the ``ArchiveStorage`` block and ``ArchiveLocation`` both fit."""

    url: str

    @property
    def is_s3(self) -> bool: ...

    @property
    def bucket(self) -> str | None: ...

    @property
    def prefix(self) -> str: ...

    def filesystem(self) -> Any: ...

    def minio_client(self) -> Any: ...


@dataclass(frozen=True)
class ArchiveLocation:
    """Where an archive lives, with the credentials to reach it (kept as ``SecretStr``, never printed).

    Args:
        url: ``file:///folder`` or ``s3://bucket/prefix``.
        endpoint: the S3 endpoint of MinIO or another S3-compatible server (``http://127.0.0.1:9000``).
        region: the bucket's region, when the server needs one.
        access_key: S3 access key id.
        secret_key: S3 secret access key.

    Example:
        >>> location = ArchiveLocation("s3://engram/archive", endpoint="http://127.0.0.1:9000")  # doctest: +SKIP
        >>> provision_archive(location)  # doctest: +SKIP
        {'bucket': 'engram', 'created': True, 'versioning_enabled': True, 'changed': True}
    """

    url: str
    endpoint: str | None = None
    region: str | None = None
    access_key: SecretStr | None = field(default=None, repr=False)
    secret_key: SecretStr | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, url: str, settings: Any | None = None) -> ArchiveLocation:
        """A location for ``url`` with the endpoint and keys of the ``ENGRAM_ARCHIVE_*`` settings, if any."""
        return cls(
            url.rstrip("/"),
            endpoint=getattr(settings, "archive_endpoint", None),
            region=getattr(settings, "archive_region", None),
            access_key=getattr(settings, "archive_access_key", None),
            secret_key=getattr(settings, "archive_secret_key", None),
        )

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")

    @property
    def bucket(self) -> str | None:
        """The bucket of an ``s3://`` URL."""
        return self.url.removeprefix("s3://").split("/", 1)[0] if self.is_s3 else None

    @property
    def prefix(self) -> str:
        """The key prefix (or folder) under which engram writes."""
        if self.is_s3:
            parts = self.url.removeprefix("s3://").split("/", 1)
            return parts[1].strip("/") if len(parts) > 1 else ""
        return self.url.removeprefix("file://")

    def storage_options(self) -> dict[str, Any]:
        """Options for s3fs (empty for a local folder)."""
        if not self.is_s3:
            return {}
        opts: dict[str, Any] = {"config_kwargs": dict(_S3_CONFIG)}
        if self.access_key is not None:
            opts["key"] = self.access_key.get_secret_value()
        if self.secret_key is not None:
            opts["secret"] = self.secret_key.get_secret_value()
        client_kwargs: dict[str, Any] = {}
        if self.endpoint:
            client_kwargs["endpoint_url"] = self.endpoint
        if self.region:
            client_kwargs["region_name"] = self.region
        if client_kwargs:
            opts["client_kwargs"] = client_kwargs
        return opts

    def filesystem(self) -> Any:
        """An fsspec filesystem: s3fs for ``s3://``, the local filesystem for ``file://``."""
        import fsspec

        return fsspec.filesystem("s3" if self.is_s3 else "file", **self.storage_options())

    def minio_client(self) -> Any:
        """A MinIO client for bucket administration (S3 archives with an endpoint only)."""
        from urllib.parse import urlparse

        from minio import Minio

        if not self.is_s3 or not self.endpoint:
            raise ArchiveError("endpoint: a MinIO client needs an s3:// archive URL and an endpoint")
        parsed = urlparse(self.endpoint)
        return Minio(
            parsed.netloc,
            access_key=self.access_key.get_secret_value() if self.access_key else None,
            secret_key=self.secret_key.get_secret_value() if self.secret_key else None,
            secure=parsed.scheme == "https",
            region=self.region,
        )


def as_location(storage: StorageLike | str) -> StorageLike:
    """An archive URL as a location without credentials; a location or block as it is."""
    return ArchiveLocation(storage) if isinstance(storage, str) else storage


# -- errors ------------------------------------------------------------------------------------------------------


@contextmanager
def _storage_errors(action: str, storage: StorageLike) -> Iterator[None]:
    """Translate object-storage errors into ``ArchiveError``: the one place driver errors are caught."""
    try:
        yield
    except ArchiveError:
        raise
    except FileNotFoundError as exc:
        raise ArchiveError(f"{action} in {_where(storage)}: not found ({exc.__class__.__name__})") from exc
    except Exception as exc:  # botocore, aiohttp, urllib3 and minio raise from unrelated trees
        if not _is_storage_error(exc):
            raise
        raise ArchiveError(f"{action} in {_where(storage)} failed: {exc.__class__.__name__}: {_safe(exc)}") from exc


def _is_storage_error(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, TimeoutError, ConnectionError)):
        return True
    module = type(exc).__module__.split(".", 1)[0]
    return module in {"botocore", "aiobotocore", "s3fs", "minio", "urllib3", "aiohttp", "fsspec", "pyarrow"}


def _safe(exc: BaseException) -> str:
    """An error's message, cut short; driver messages carry paths and codes, not keys, but keep them brief."""
    return str(exc).replace("\n", " ")[:300]


def _listed(kind: str, names: Sequence[str], most: int = 3) -> str:
    """``kind`` and its names for an error message ("manifest m1", "manifests m1, m2, m3 and 4 more"): the first
    ``most`` names and how many more."""
    shown = ", ".join(names[:most])
    if len(names) > most:
        shown = f"{shown} and {len(names) - most} more"
    return f"{kind}{'s' if len(names) > 1 else ''} {shown}"


def _where(storage: StorageLike) -> str:
    return storage.url


# -- paths -------------------------------------------------------------------------------------------------------


def _root(storage: StorageLike) -> str:
    if storage.is_s3:
        return f"{storage.bucket}/{storage.prefix}".rstrip("/")
    return storage.prefix.rstrip("/") or "/"


def _abs(storage: StorageLike, rel: str) -> str:
    return f"{_root(storage)}/{rel}"


def tenant_prefix(tenant: str) -> str:
    return f"tenant={tenant}"


def manifest_path(tenant: str, manifest_id: str) -> str:
    return f"{tenant_prefix(tenant)}/manifests/{manifest_id}.json"


def _put(fs: Any, storage: StorageLike, rel: str, data: bytes) -> None:
    path = _abs(storage, rel)
    if not storage.is_s3:
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, data)


# -- provisioning ------------------------------------------------------------------------------------------------


def provision_archive(storage: StorageLike) -> dict[str, Any]:
    """Create the archive's bucket (or folder) if missing and turn on object versioning; idempotent.

    Args:
        storage: an ``ArchiveStorage`` block or an ``ArchiveLocation``.

    Returns:
        ``{"bucket", "created", "versioning_enabled", "changed"}``; ``changed`` is False when a second call found
        everything in place.

    Raises:
        ArchiveError: when the storage cannot be reached or refuses.
    """
    if not storage.is_s3:
        import os

        root = _root(storage)
        with _storage_errors("creating the archive folder", storage):
            created = not os.path.isdir(root)
            os.makedirs(root, exist_ok=True)
        return {"bucket": None, "created": created, "versioning_enabled": False, "changed": created}
    from minio.commonconfig import ENABLED
    from minio.versioningconfig import VersioningConfig

    client = storage.minio_client()
    bucket = storage.bucket
    with _storage_errors(f"provisioning bucket {bucket}", storage):
        created = False
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket, location=getattr(storage, "region", None) or None)
            created = True
        versioning_changed = client.get_bucket_versioning(bucket).status != ENABLED
        if versioning_changed:
            client.set_bucket_versioning(bucket, VersioningConfig(ENABLED))
        enabled = client.get_bucket_versioning(bucket).status == ENABLED
    return {
        "bucket": bucket,
        "created": created,
        "versioning_enabled": enabled,
        "changed": created or versioning_changed,
    }


# -- Parquet encoding ----------------------------------------------------------------------------------------------


def _arrow_type(column: Any) -> Any:
    import pyarrow as pa
    from sqlalchemy import JSON, DateTime, Float, Integer, LargeBinary
    from sqlmodel.sql.sqltypes import UTCDateTime

    kind = column.type
    if isinstance(kind, JSON):
        return pa.string()  # JSON text: lists and mappings of any shape round-trip exactly
    if isinstance(kind, (UTCDateTime, DateTime)):
        return pa.timestamp("us", tz="UTC")
    if isinstance(kind, Integer):
        return pa.int64()
    if isinstance(kind, Float):
        return pa.float64()
    if isinstance(kind, LargeBinary):
        return pa.binary()
    return pa.string()


def archive_schema(table_name: str) -> Any:
    """The Arrow schema of an archived table: the hot table's columns, typed, plus what search needs."""
    import pyarrow as pa

    table = ARCHIVED_TABLES[table_name]
    fields = [pa.field(c.name, _arrow_type(c)) for c in table.columns if c.name not in _DROPPED_COLUMNS]
    fields += [
        pa.field(name, pa.list_(pa.string()) if name == "terms" else pa.string())
        for name in sorted(_EXTRA_COLUMNS.get(table_name, ()))
    ]
    return pa.schema(fields)


def _json_columns(table_name: str) -> set[str]:
    from sqlalchemy import JSON

    return {c.name for c in ARCHIVED_TABLES[table_name].columns if isinstance(c.type, JSON)}


def encode_parquet(table_name: str, rows: Sequence[Mapping[str, Any]]) -> tuple[bytes, int]:
    """Rows of one table as Parquet bytes (zstd, or snappy for a few rows), and their count."""
    table = _arrow_table(table_name, rows)
    return _parquet_bytes(table), table.num_rows


def _arrow_table(table_name: str, rows: Sequence[Mapping[str, Any]]) -> Any:
    """Rows of one table as an Arrow table of its archive schema, built column by column."""
    import pyarrow as pa

    schema = archive_schema(table_name)
    json_cols = _json_columns(table_name)
    columns: dict[str, list[Any]] = {}
    for n in schema.names:
        if n == "rendered" and table_name == "episode_turns":
            columns[n] = [render(r["text"], r["actor"], r["at"]) for r in rows]
        elif n == "terms":
            columns[n] = _index_terms([r["text"] for r in rows], [r.get("actor") for r in rows])
        elif n in json_cols:
            columns[n] = [json_text(r.get(n), sort_keys=True) for r in rows]
        else:
            columns[n] = [r.get(n) for r in rows]
    return pa.Table.from_pydict(columns, schema=schema)


# Below this many rows a file is compressed with snappy: zstd makes a file of a few dozen rows no smaller and takes
# twice as long (its per-column setup dominates), and a quiet tenant's month partition holds only that many.
_ZSTD_FROM_ROWS = 64
# Rows per Parquet row group: a search reads a hit's text from its row group, not from the whole file.
ROW_GROUP_ROWS = 4_096


def _parquet_bytes(table: Any) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(
        table,
        buf,
        compression="zstd" if table.num_rows >= _ZSTD_FROM_ROWS else "snappy",
        row_group_size=ROW_GROUP_ROWS,
    )
    return buf.getvalue()


def decode_parquet(
    table_name: str, data: bytes, columns: Sequence[str] | None = None, ids: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """Rows of an archived file, JSON columns parsed back into lists and mappings; with ``ids``, only the rows of
    those ids (item ids; episode ids for episodes), found by their id column before anything else is decoded.

    A nullable column of the hot table that the file lacks reads as None: a file keeps the schema it was written
    with, so one written before such a column was added (``semantic_items.content_hash``, migration 0004) has none.
    Any other column missing is an error, as a damaged file's would be.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    present = pq.read_schema(io.BytesIO(data)).names
    hot = ARCHIVED_TABLES[table_name].c
    wanted = list(columns) if columns else archive_schema(table_name).names
    missing = [c for c in wanted if c not in present and c in hot and hot[c].nullable]
    read = [c for c in wanted if c not in missing] if columns else [c for c in present if c not in _SEARCH_ONLY_COLUMNS]
    if ids is not None:
        key = _ID_COLUMN[table_name]
        found = pc.is_in(
            pq.read_table(io.BytesIO(data), columns=[key])[key], value_set=pa.array(sorted(ids), pa.string())
        )
        if not pc.any(found).as_py():
            return []
        table = pq.read_table(io.BytesIO(data), columns=read).filter(found)
    else:
        table = pq.read_table(io.BytesIO(data), columns=read)
    json_cols = _json_columns(table_name) & set(table.column_names)
    rows = table.to_pylist()
    for r in rows:
        for c in json_cols:
            r[c] = json.loads(r[c]) if r[c] is not None else None
        r.update(dict.fromkeys(missing))
    return rows


# -- write, verify, commit -------------------------------------------------------------------------------------------


def new_manifest_id() -> str:
    return f"man-{uuid.uuid4().hex}"


# The id column of each archived table.
_ID_COLUMN = {"semantic_items": "item_id", "episode_turns": "item_id", "episodes": "episode_id"}
# Which column of each archived table puts a row in a ``date=`` partition; a turn goes with its episode.
_DATE_COLUMN = {"semantic_items": "last_seen", "episodes": "ended_at"}


def partition(at: datetime) -> str:
    """The ``date=`` partition of a row dated ``at``: its month, ``YYYY-MM``.

    A month, not a day: a tenant's day holds a few dozen rows, and a file of a few dozen rows costs its fixed part
    (footer, column chunks, one object, one read back) for each of them. Day partitions made the archive step spend
    a third of its time per file, and a tenant's first archival search open hundreds of files.
    """
    return f"{at.year:04d}-{at.month:02d}"


def partition_month(date: str) -> str:
    """The month of a file's ``date`` partition, whether it is a month or a day (earlier archives)."""
    return date[:7]


def _encode_manifests(
    storage: StorageLike,
    layer: Layer,
    rows_by_tenant: Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]],
    now: datetime,
    flow_run_id: str | None,
) -> list[tuple[dict[str, Any], list[tuple[str, bytes]]]]:
    """One manifest row per tenant with hot rows, and its files' (path, bytes): one file per table and month.

    Each table's rows of the whole batch become one Arrow table, cut into the files by ``take``, so that the
    per-row work (JSON text, rendering) is done column by column and once.
    """
    tenants = sorted(t for t, rows in rows_by_tenant.items() if any(rows.values()))
    ids = {t: new_manifest_id() for t in tenants}
    files: dict[str, list[tuple[dict[str, Any], bytes]]] = {t: [] for t in tenants}
    for table_name in sorted({name for t in tenants for name in rows_by_tenant[t]}):
        rows: list[Mapping[str, Any]] = []
        groups: dict[tuple[str, str], list[int]] = {}
        for t in tenants:
            part = rows_by_tenant[t].get(table_name) or []
            if table_name == "episode_turns":
                ended = {e["episode_id"]: e["ended_at"] for e in rows_by_tenant[t].get("episodes") or []}
                dates = [partition(ended[r["episode_id"]]) for r in part]
            else:
                dates = [partition(r[_DATE_COLUMN[table_name]]) for r in part]
            for offset, date in enumerate(dates, start=len(rows)):
                groups.setdefault((t, date), []).append(offset)
            rows.extend(part)
        if not rows:
            continue
        table = _arrow_table(table_name, rows)
        for (t, date), indices in sorted(groups.items()):
            data = _parquet_bytes(table.take(indices))
            blobs = files[t]
            entry = {
                "path": f"{tenant_prefix(t)}/layer={layer.value}/date={date}/{ids[t]}-{len(blobs)}.parquet",
                "table": table_name,
                "date": date,
                "rows": len(indices),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
            blobs.append((entry, data))
    out = []
    for t in tenants:
        entries = [entry for entry, _ in files[t]]
        row = {
            "tenant": t,
            "manifest_id": ids[t],
            "layer": layer.value,
            "uri": f"{storage.url}/{manifest_path(t, ids[t])}",
            "files": entries,
            "row_count": sum(f["rows"] for f in entries),
            "status": "written",
            "flow_run_id": flow_run_id,
            "created_at": now,
        }
        objects = [(entry["path"], data) for entry, data in files[t]]
        out.append((row, [*objects, (manifest_path(t, ids[t]), manifest_json(row))]))
    return out


def _put_many(fs: Any, storage: StorageLike, objects: Sequence[tuple[str, bytes]]) -> None:
    """Upload objects by path relative to the archive's root; s3fs sends them concurrently."""
    if not objects:
        return
    if not storage.is_s3:
        for folder in sorted({_abs(storage, rel).rsplit("/", 1)[0] for rel, _ in objects}):
            fs.makedirs(folder, exist_ok=True)
    fs.pipe({_abs(storage, rel): data for rel, data in objects})


def manifest_json(row: Mapping[str, Any]) -> bytes:
    """The manifest as the JSON object kept next to its files."""
    doc = {k: row[k] for k in ("tenant", "manifest_id", "layer", "files", "row_count", "flow_run_id")}
    doc["created_at"] = row["created_at"].isoformat()
    if row.get("compacted_from"):  # the manifests a compaction merged into this one
        doc["compacted_from"] = list(row["compacted_from"])
    return json.dumps(doc, indent=2, sort_keys=True).encode("utf-8")


def read_file(storage: StorageLike, manifest: Mapping[str, Any], entry: Mapping[str, Any], fs: Any = None) -> bytes:
    """One archived file's bytes, checked against the manifest's sha256 and size.

    Raises:
        ArchiveMismatch: the file is missing or differs from the manifest.
        ArchiveError: the storage failed.
    """
    fs = fs or storage.filesystem()
    try:
        with _storage_errors(f"reading {entry['path']}", storage):
            data = fs.cat_file(_abs(storage, entry["path"]))
    except ArchiveError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            raise ArchiveMismatch(manifest["manifest_id"], entry["path"], "is missing from the archive") from exc
        raise
    return _checked(manifest, entry, data)


def _checked(manifest: Mapping[str, Any], entry: Mapping[str, Any], data: bytes) -> bytes:
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise ArchiveMismatch(
            manifest["manifest_id"],
            entry["path"],
            f"has sha256 {digest[:12]}..., the manifest says {entry['sha256'][:12]}...: the file was changed or "
            "damaged; restore it from a bucket version or rerun the archive flow",
        )
    return data


# Files fetched at once by ``read_manifest_rows``.
READ_GROUP = 16


def _read_many(storage: StorageLike, fs: Any, manifest: Mapping[str, Any]) -> list[bytes]:
    """The bytes of every file of a manifest, in the manifest's order, each checked like ``read_file``; s3fs
    fetches them concurrently."""
    return _read_files(storage, fs, [(manifest, entry) for entry in manifest["files"]])


def _read_files(
    storage: StorageLike, fs: Any, files: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]
) -> list[bytes]:
    """The bytes of (manifest, file entry) pairs, in their order, each checked like ``read_file``, fetched by one
    call (concurrent requests on S3) whichever manifests they belong to."""
    if not files:
        return []
    paths = [_abs(storage, entry["path"]) for _, entry in files]
    manifests = list(dict.fromkeys(m["manifest_id"] for m, _ in files))
    with _storage_errors(f"reading the files of {_listed('manifest', manifests)}", storage):
        got = fs.cat_ranges(paths, None, None, on_error="return")
    out = []
    for (manifest, entry), data in zip(files, got, strict=True):
        if isinstance(data, FileNotFoundError):
            raise ArchiveMismatch(manifest["manifest_id"], entry["path"], "is missing from the archive") from data
        if isinstance(data, BaseException):
            with _storage_errors(f"reading {entry['path']}", storage):
                raise data
        out.append(_checked(manifest, entry, data))
    return out


def read_manifest_rows(
    storage: StorageLike,
    manifest: Mapping[str, Any],
    columns: Mapping[str, Sequence[str]] | None = None,
    ids: Iterable[str] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Every row of a manifest's files (with ``ids``, only those ids' rows), by table, after checking each file's
    checksum and row count.

    The files are fetched ``READ_GROUP`` at a time (concurrently on S3), so that what is held at once stays within a
    group's bytes whatever the manifest's size.
    """
    fs = storage.filesystem()
    wanted = None if ids is None else set(ids)
    out: dict[str, list[dict[str, Any]]] = {}
    files = list(manifest["files"])
    for start in range(0, len(files), READ_GROUP):
        group = files[start : start + READ_GROUP]
        for entry, data in zip(group, _read_many(storage, fs, {**manifest, "files": group}), strict=True):
            out.setdefault(entry["table"], []).extend(_decoded(manifest, entry, data, columns, wanted))
    return out


def _decoded(
    manifest: Mapping[str, Any],
    entry: Mapping[str, Any],
    data: bytes,
    columns: Mapping[str, Sequence[str]] | None,
    wanted: set[str] | None,
) -> list[dict[str, Any]]:
    """One checked file's rows, after comparing its row count with the manifest's."""
    import pyarrow.parquet as pq

    try:
        count = pq.ParquetFile(io.BytesIO(data)).metadata.num_rows
        rows = decode_parquet(entry["table"], data, (columns or {}).get(entry["table"]), wanted)
    except Exception as exc:  # a file with the right checksum but unreadable was written wrong
        raise ArchiveMismatch(manifest["manifest_id"], entry["path"], f"is not readable Parquet: {exc}") from exc
    if count != entry["rows"]:
        raise ArchiveMismatch(
            manifest["manifest_id"], entry["path"], f"has {count} rows, the manifest says {entry['rows']}"
        )
    return rows


# What the commit compares with the hot rows (see ``Store.commit_archives``); the rest need not be decoded.
_COMMIT_COLUMNS = {
    "semantic_items": ["item_id", "seq", "valid_to", "last_accessed", "support_count"],
    "episodes": ["episode_id", "seq", "summary", "turn_count"],
    "episode_turns": ["item_id", "episode_id", "event_id", "seq", "text"],
}


@dataclass(frozen=True)
class VerifiedManifest:
    """A manifest whose files were read back and matched it (sha256 and row count), with what the commit compares
    of their rows: the ``_COMMIT_COLUMNS`` as read from those very bytes, one Arrow table per archived table.

    The tables are Arrow, not lists of rows, so that passing a batch between Prefect tasks costs nothing.
    """

    manifest: dict[str, Any]
    keys: dict[str, Any]

    @property
    def rows(self) -> int:
        """The rows the manifest's files hold."""
        return sum(f["rows"] for f in self.manifest["files"])


def _verify(storage: StorageLike, fs: Any, manifest: Mapping[str, Any]) -> VerifiedManifest:
    """Read a manifest's files back once: compare sha256 and row counts, and keep the columns the commit needs."""
    return _verified(manifest, _read_many(storage, fs, manifest))


def _verified(manifest: Mapping[str, Any], contents: Sequence[bytes]) -> VerifiedManifest:
    """A manifest checked against its files' bytes (already checked for sha256): row counts compared, and the
    columns the commit needs kept."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts: dict[str, list[Any]] = {}
    for entry, data in zip(manifest["files"], contents, strict=True):
        try:
            table = pq.ParquetFile(pa.BufferReader(data)).read(columns=_COMMIT_COLUMNS[entry["table"]])
        except Exception as exc:  # a file with the right checksum but unreadable was written wrong
            raise ArchiveMismatch(manifest["manifest_id"], entry["path"], f"is not readable Parquet: {exc}") from exc
        if table.num_rows != entry["rows"]:
            raise ArchiveMismatch(
                manifest["manifest_id"], entry["path"], f"has {table.num_rows} rows, the manifest says {entry['rows']}"
            )
        parts.setdefault(entry["table"], []).append(table)
    keys = {name: pa.concat_tables(tables) for name, tables in parts.items()}
    return VerifiedManifest({**manifest, "status": "verified"}, keys)


# Files read back at once when verifying a batch of manifests: one call for many tenants' small files, so that on S3
# their requests overlap, while the number of files held at once stays bounded (a manifest with more is read alone).
VERIFY_GROUP = 256


def _file_groups(manifests: Sequence[Mapping[str, Any]], most: int) -> Iterator[list[Mapping[str, Any]]]:
    """Consecutive manifests in groups of at most ``most`` files; a manifest with more files is a group alone."""
    group: list[Mapping[str, Any]] = []
    files = 0
    for m in manifests:
        if group and files + len(m["files"]) > most:
            yield group
            group, files = [], 0
        group.append(m)
        files += len(m["files"])
    if group:
        yield group


def verify_manifests(
    store: Store, storage: StorageLike, manifests: Sequence[Mapping[str, Any]]
) -> list[VerifiedManifest]:
    """Read every file of the manifests back, compare row counts and checksums, and mark them ``verified`` (one
    statement for the batch); returns them with the rows the commit compares, as read back.

    A manifest discarded meanwhile (a forget of its tenant removed its row and swept its objects) is left out: the
    others are verified without it.

    Raises:
        ArchiveMismatch: a file is missing or differs; no manifest of the batch is marked and nothing is tombstoned.
    """
    fs = storage.filesystem()
    verified = []
    try:
        for group in _file_groups(manifests, VERIFY_GROUP):
            contents = iter(_read_files(storage, fs, [(m, entry) for m in group for entry in m["files"]]))
            verified += [_verified(m, [next(contents) for _ in m["files"]]) for m in group]
    except ArchiveMismatch:
        status = {
            (tenant, m["manifest_id"]): m["status"]
            for tenant in {m["tenant"] for m in manifests}
            for m in store.manifests(tenant)
        }
        keys = [(m["tenant"], m["manifest_id"]) for m in manifests]
        kept = [m for m, key in zip(manifests, keys, strict=True) if status.get(key) in ("written", "verified")]
        if len(kept) == len(manifests):
            raise
        # A manifest with no row was discarded (by a forget): what its upload wrote after the forget swept its
        # objects is no one's, and goes now. One another run committed meanwhile is left out, and left alone.
        for m, key in zip(manifests, keys, strict=True):
            if key not in status:
                remove_manifest_objects(storage, m)
        return verify_manifests(store, storage, kept) if kept else []
    store.mark_manifests_verified(
        [(m["tenant"], m["manifest_id"]) for m in manifests if m.get("status", "written") == "written"]
    )
    return verified


def verify_manifest(store: Store, storage: StorageLike, manifest: Mapping[str, Any]) -> int:
    """Read a manifest's files back, compare row counts and checksums, and mark it ``verified``; returns rows.

    Raises:
        ArchiveMismatch: a file is missing or differs (or the manifest was discarded meanwhile); the manifest stays
            ``written`` and nothing is tombstoned.
    """
    verified = verify_manifests(store, storage, [manifest])
    if not verified:
        raise ArchiveMismatch(manifest["manifest_id"], "(manifest)", "was discarded meanwhile (by a forget)")
    return verified[0].rows


def commit_manifests(
    store: Store,
    storage: StorageLike,
    verified: Sequence[VerifiedManifest],
    now: datetime,
    flow_run_id: str | None,
) -> dict[str, int]:
    """Tombstone the hot rows of verified manifests and mark them ``committed``, in one transaction.

    The rows compared with the hot ones are those the verification read back from the files' checked bytes: the
    files are not read a second time. A manifest discarded meanwhile (a forget of its tenant removed it, since its
    files may hold what was forgotten) is not committed: its objects are deleted after the transaction and counted
    as ``manifests_discarded``.
    """
    discarded: list[tuple[str, str]] = []
    counts = store.commit_archives(
        [
            (v.manifest["tenant"], v.manifest["manifest_id"], {t: k.to_pylist() for t, k in v.keys.items()})
            for v in verified
        ],
        now,
        flow_run_id,
        discarded,
    )
    gone = set(discarded)
    for v in verified:
        if (v.manifest["tenant"], v.manifest["manifest_id"]) in gone:
            remove_manifest_objects(storage, v.manifest)
    return {**counts, "manifests_discarded": len(gone)} if gone else counts


def settle_unfinished(
    store: Store, storage: StorageLike, tenant: str | None, now: datetime, flow_run_id: str | None
) -> dict[str, int]:
    """Finish what an interrupted run left: commit each ``written``/``verified`` manifest whose files check out,
    remove the objects of the others (their rows are still hot and will be archived again).
    """
    counts = {"manifests_resumed": 0, "manifests_discarded": 0}
    for manifest in store.manifests(tenant, ["written", "verified"]):
        try:
            (verified,) = verify_manifests(store, storage, [manifest]) or [None]
        except ArchiveMismatch:
            # The row goes first, under its lock: a run that verified the same manifest meanwhile and is about to
            # commit it then finds it gone and commits nothing, instead of tombstoning rows over deleted files. What
            # a crash between the two leaves is unreferenced, and a forget's sweep removes it.
            store.drop_manifest(manifest["tenant"], manifest["manifest_id"])
            remove_manifest_objects(storage, manifest)
            counts["manifests_discarded"] += 1
            continue
        if verified is None:  # discarded by a forget since it was listed; verify_manifests removed its objects
            counts["manifests_discarded"] += 1
            continue
        committed = commit_manifests(store, storage, [verified], now, flow_run_id)
        for k, v in committed.items():
            counts[k] = counts.get(k, 0) + v
        if not committed.get("manifests_discarded"):
            counts["manifests_resumed"] += 1
    return counts


def remove_manifest_objects(storage: StorageLike, manifest: Mapping[str, Any]) -> int:
    """Delete a manifest's files and JSON, every version of them; returns the object versions deleted."""
    rels = [e["path"] for e in manifest["files"]] + [manifest_path(manifest["tenant"], manifest["manifest_id"])]
    return sum(delete_all_versions(storage, rel) for rel in rels)


def delete_all_versions(storage: StorageLike, rel: str) -> int:
    """Delete an object and, in a versioned bucket, every older version and delete marker of it."""
    if storage.is_s3 and getattr(storage, "endpoint", None):
        client = storage.minio_client()
        key = f"{storage.prefix}/{rel}" if storage.prefix else rel
        n = 0
        with _storage_errors(f"deleting {rel}", storage):
            for obj in client.list_objects(storage.bucket, prefix=key, recursive=True, include_version=True):
                if obj.object_name == key:
                    client.remove_object(storage.bucket, key, version_id=obj.version_id)
                    n += 1
        return n
    fs = storage.filesystem()
    with _storage_errors(f"deleting {rel}", storage):
        path = _abs(storage, rel)
        if not fs.exists(path):
            return 0
        fs.rm(path)
    return 1


def purge_old_versions(storage: StorageLike, tenant: str) -> int:
    """Delete every noncurrent version and delete marker under a tenant's prefix; returns how many."""
    if not (storage.is_s3 and getattr(storage, "endpoint", None)):
        return 0
    client = storage.minio_client()
    prefix = f"{storage.prefix}/{tenant_prefix(tenant)}/" if storage.prefix else f"{tenant_prefix(tenant)}/"
    n = 0
    with _storage_errors(f"removing old versions of tenant {tenant!r}", storage):
        for obj in list(client.list_objects(storage.bucket, prefix=prefix, recursive=True, include_version=True)):
            if obj.is_delete_marker or str(obj.is_latest).lower() != "true":
                client.remove_object(storage.bucket, obj.object_name, version_id=obj.version_id)
                n += 1
    return n


def purge_tenant(storage: StorageLike, tenant: str) -> int:
    """Delete every object (every version) under a tenant's prefix; returns the object versions deleted."""
    if storage.is_s3 and getattr(storage, "endpoint", None):
        client = storage.minio_client()
        prefix = f"{storage.prefix}/{tenant_prefix(tenant)}/" if storage.prefix else f"{tenant_prefix(tenant)}/"
        n = 0
        with _storage_errors(f"deleting tenant {tenant!r}", storage):
            for obj in list(client.list_objects(storage.bucket, prefix=prefix, recursive=True, include_version=True)):
                client.remove_object(storage.bucket, obj.object_name, version_id=obj.version_id)
                n += 1
        return n
    fs = storage.filesystem()
    path = _abs(storage, tenant_prefix(tenant))
    with _storage_errors(f"deleting tenant {tenant!r}", storage):
        fs.invalidate_cache()
        if not fs.exists(path):
            return 0
        n = len(fs.find(path))
        fs.rm(path, recursive=True)
    return n


# -- search and rehydrate -----------------------------------------------------------------------------------------

# What loading a manifest for search reads of each file (``terms`` may be missing from a file written before it was
# added, and is then made from the text and actor); the texts are read from the same checked bytes for hits only.
_SEARCH_COLUMNS = {
    "semantic_items": ["item_id", "embedding", "terms"],
    "episode_turns": ["item_id", "at", "terms"],
}
_SEARCH_OPTIONAL = {"terms", "embedding"}
_CONTENT_COLUMNS = ("text", "rendered", "actor", "tags")
# What a semantic tombstone blanks and its archived copy holds. Every other column of the hot row (validity,
# supersession, support, last seen) goes on changing after the archive, and the tombstone's value is the true one.
ARCHIVED_CONTENT = ("text", "rendered", "embedding")


def _index_terms(texts: Sequence[str], actors: Sequence[str | None]) -> list[list[str]]:
    """The search index's terms of each row, from its text and actor as the hot index tokenises them."""
    from engram.search import search_terms

    return search_terms([f"{text} {actor or ''}" for text, actor in zip(texts, actors, strict=True)])


@dataclass
class Tombstones:
    """What the hot store says of a tenant's archived rows, by manifest, read in one pass: the current semantic
    tombstones (``item_id -> (seq, last_seen)``) and how many turn tombstones point at each manifest."""

    facts: dict[str, dict[str, tuple[int, datetime]]]
    turns: dict[str, int]


def tenant_tombstones(store: Store, tenant: str) -> Tombstones:
    """The tenant's tombstone summary, read once for a pass that loads many manifests. Read it after listing the
    manifests to load: every manifest committed by then has its tombstones in it."""
    from sqlalchemy import func, select

    with store.read() as conn:
        facts: dict[str, dict[str, tuple[int, datetime]]] = {}
        for r in conn.execute(
            select(SEMANTIC.c.archived_manifest_id, SEMANTIC.c.item_id, SEMANTIC.c.seq, SEMANTIC.c.last_seen).where(
                SEMANTIC.c.tenant == tenant,
                SEMANTIC.c.valid_to.is_(None),
                # Through the current facts (hot ones and tombstones), not every tombstone, superseded ones included.
                store.not_a_key(SEMANTIC.c.archived_manifest_id).is_not(None),
            )
        ):
            facts.setdefault(r[0], {})[r[1]] = (r[2], r[3])
        turns = {
            r[0]: r[1]
            for r in conn.execute(
                select(TURNS.c.archived_manifest_id, func.count())
                .where(TURNS.c.tenant == tenant, TURNS.c.archived_manifest_id.is_not(None))
                .group_by(TURNS.c.archived_manifest_id)
            )
        }
    return Tombstones(facts, turns)


def _archived_turn_ids(store: Store, tenant: str, manifest_id: str) -> set[str]:
    from sqlalchemy import select

    with store.read() as conn:
        return set(
            conn.execute(
                select(TURNS.c.item_id).where(TURNS.c.tenant == tenant, TURNS.c.archived_manifest_id == manifest_id)
            ).scalars()
        )


@functools.cache
def _search_schemas() -> dict[str, Any]:
    """The archive schema of each searchable table (built once: a tenant's first search loads hundreds of files)."""
    return {name: archive_schema(name) for name in _SEARCH_COLUMNS}


# The terms column is read dictionary-encoded: a file's distinct stems are decoded once, not once per row.
_TERMS_AS_DICTIONARY = ["terms.list.element"]


@dataclass(frozen=True)
class SearchTable:
    """One archived table's searchable rows of a manifest, as loaded from its checked files: the ``_SEARCH_COLUMNS``
    but the terms as one Arrow table, each row's terms (list arrays, one or more per file; dictionary-encoded
    strings, or plain strings for a file written before the terms column) and a reader of each file's
    ``_CONTENT_COLUMNS`` from the same checked bytes, called when one of its rows is a hit."""

    columns: Any
    terms: list[Any]
    contents: list[tuple[int, Any]]


@dataclass(frozen=True)
class SearchTables:
    """A committed manifest's searchable files as loaded, before the hot store is asked which of their rows are
    still archived (see ``search_segment``)."""

    manifest: Mapping[str, Any]
    tables: dict[str, SearchTable]


def load_search_tables(storage: StorageLike, manifest: Mapping[str, Any]) -> SearchTables | None:
    """Read and check a manifest's searchable files (sha256, row count, columns); None when it has none.

    Touches the storage only, never the hot store, so that a tenant's manifests can be loaded on several threads.

    Raises:
        ArchiveMismatch: a file is missing, differs from the manifest or is not readable.
        ArchiveError: the storage failed.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = [e for e in manifest["files"] if e["table"] in _SEARCH_COLUMNS]
    if not files:
        return None
    fs = storage.filesystem()
    schema = _search_schemas()
    parts: dict[str, list[tuple[Any, list[Any], list[tuple[int, Any]]]]] = {}
    for entry, data in zip(files, _read_many(storage, fs, {**manifest, "files": files}), strict=True):
        name = entry["table"]
        wanted = _SEARCH_COLUMNS[name]
        try:
            try:
                parquet = pq.ParquetFile(pa.BufferReader(data), read_dictionary=_TERMS_AS_DICTIONARY)
            except KeyError:  # a file written before the terms column
                parquet = pq.ParquetFile(pa.BufferReader(data))
            present = set(parquet.schema_arrow.names)
            lacking = [c for c in wanted if c not in present]
            if any(c not in _SEARCH_OPTIONAL for c in lacking) or not {"text", "actor", "tags"} <= present:
                raise ValueError(f"lacks some of the columns {[*wanted, 'text', 'actor', 'tags']}")
            # Row group by row group: pyarrow reads a dictionary-encoded list column of several row groups in one
            # call as "not implemented"; one chunk per group is what ``_term_codes`` takes.
            read = [c for c in wanted if c in present]
            groups = [parquet.read_row_group(i, columns=read) for i in range(parquet.num_row_groups)]
            table = pa.concat_tables(groups) if groups else parquet.read(columns=read)
            if table.num_rows != entry["rows"]:
                raise ArchiveMismatch(
                    manifest["manifest_id"],
                    entry["path"],
                    f"has {table.num_rows} rows, the manifest says {entry['rows']}",
                )
            if "terms" in present:
                terms = table["terms"].chunks
            else:  # a file written before the terms column: tokenised now, as the archive step does
                texts = parquet.read(columns=["text", "actor"])
                stems = _index_terms(texts["text"].to_pylist(), texts["actor"].to_pylist())
                terms = [pa.array(stems, pa.list_(pa.string()))]
            fields = [schema[name].field(c) for c in wanted if c != "terms"]
            columns = pa.table(
                [table[f.name].cast(f.type) if f.name in present else pa.nulls(table.num_rows, f.type) for f in fields],
                schema=pa.schema(fields),
            )
        except ArchiveMismatch:
            raise
        except Exception as exc:  # a file with the right checksum but unreadable was written wrong
            raise ArchiveMismatch(manifest["manifest_id"], entry["path"], f"is not readable Parquet: {exc}") from exc
        # A hit's text is read from its row group only.
        readers = [
            (parquet.metadata.row_group(i).num_rows, functools.partial(_file_contents, data, i, "rendered" in present))
            for i in range(parquet.num_row_groups)
        ]
        parts.setdefault(name, []).append((columns, terms, readers))
    return SearchTables(
        manifest,
        {
            name: SearchTable(
                columns=pa.concat_tables([columns for columns, _, _ in pieces]),
                terms=[chunk for _, terms, _ in pieces for chunk in terms],
                contents=[reader for _, _, readers in pieces for reader in readers],
            )
            for name, pieces in parts.items()
        },
    )


def search_parts(manifest: Mapping[str, Any], files_per_part: int) -> list[dict[str, Any]]:
    """A manifest cut into parts of at most ``files_per_part`` searchable files each (at least one part), for
    ``load_search_tables`` to load on several threads; ``merge_search_tables`` joins what they load."""
    files = [e for e in manifest["files"] if e["table"] in _SEARCH_COLUMNS]
    step = max(1, files_per_part)
    return [{**manifest, "files": files[i : i + step]} for i in range(0, len(files), step)] or [
        {**manifest, "files": []}
    ]


def merge_search_tables(manifest: Mapping[str, Any], parts: Sequence[SearchTables | None]) -> SearchTables | None:
    """One manifest's ``SearchTables`` from those of its parts, in order (see ``search_parts``)."""
    import pyarrow as pa

    loaded = [p for p in parts if p is not None]
    if not loaded:
        return None
    if len(loaded) == 1:
        return SearchTables(manifest, loaded[0].tables)
    tables: dict[str, SearchTable] = {}
    for name in sorted({name for p in loaded for name in p.tables}):
        pieces = [p.tables[name] for p in loaded if name in p.tables]
        tables[name] = SearchTable(
            columns=pa.concat_tables([t.columns for t in pieces]),
            terms=[chunk for t in pieces for chunk in t.terms],
            contents=[content for t in pieces for content in t.contents],
        )
    return SearchTables(manifest, tables)


def _file_contents(data: bytes, row_group: int, has_rendered: bool) -> tuple[Any, Any, Any, Any]:
    """The ``_CONTENT_COLUMNS`` of a row group of an archived file's bytes (checked when it was loaded)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.ParquetFile(pa.BufferReader(data)).read_row_group(
        row_group, columns=[c for c in _CONTENT_COLUMNS if c != "rendered" or has_rendered]
    )
    rendered = table["rendered"] if has_rendered else pa.nulls(table.num_rows, pa.string())
    return table["text"], rendered, table["actor"], table["tags"]


def _term_codes(chunks: Sequence[Any]) -> tuple[Any, Any, Any]:
    """Each row's number of terms, every term as a number, and the distinct terms those numbers index, from list
    arrays of terms (dictionary-encoded per file, or plain strings)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = pa.list_(pa.dictionary(pa.int32(), pa.string()))
    lists = []
    for chunk in chunks:
        if chunk.type != kind:  # plain strings (a file written before the terms column): encoded here
            lengths = pc.fill_null(pc.list_value_length(chunk), 0).to_numpy(zero_copy_only=False)
            offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]), pa.int32())
            values = pc.dictionary_encode(pc.list_flatten(chunk)).cast(kind.value_type)
            chunk = pa.ListArray.from_arrays(offsets, values, type=kind)
        lists.append(chunk)
    if not lists:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32), pa.array([], pa.string())
    terms = pa.chunked_array(lists, kind)
    lengths = pc.fill_null(pc.list_value_length(terms), 0).to_numpy().astype(np.int64)
    flat = pc.list_flatten(terms).unify_dictionaries()
    codes = pa.chunked_array([c.indices for c in flat.chunks], pa.int32()).to_numpy()
    return lengths, codes, flat.chunk(0).dictionary if flat.num_chunks else pa.array([], pa.string())


def search_segment(store: Store, loaded: SearchTables, tombstones: Tombstones) -> Any:
    """The search documents of a loaded manifest's rows that are still archived (not rehydrated since), as an
    ``engram.search.ArchiveSegment`` (an empty list when the manifest holds nothing searchable).

    Facts are documents like their hot selves, with layer ``archival``; an archived episode's turns are searched
    only when the archival layer is asked for by name, as a consolidated episode's turns are in the hot layers.
    Which facts are current, when each was last seen and its change stamp come from ``tombstones`` (read after the
    manifest was committed), not from the archived copies: a version superseded since it was archived is left out,
    as a superseded hot version is.

    Column-wise: the files' index terms, timestamps and texts stay Arrow and numpy arrays, and only the facts (a
    small share of the rows) are matched with their tombstones one by one; the turns of a manifest are all
    searchable when as many turn tombstones point at it as its files hold turns, and only otherwise are their ids
    read.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from engram.search import ArchiveSegment, RowContents

    tenant, manifest_id = loaded.manifest["tenant"], loaded.manifest["manifest_id"]
    pieces: list[dict[str, Any]] = []
    facts = loaded.tables.get("semantic_items")
    if facts is not None and facts.columns.num_rows:
        current = tombstones.facts.get(manifest_id, {})
        states = [current.get(i) for i in facts.columns["item_id"].to_pylist()]
        vectors: list[tuple[int, Any]] = []
        for row, blob in enumerate(facts.columns["embedding"].to_pylist()):
            if blob and states[row] is not None:
                vectors.append((row, np.frombuffer(blob, dtype=np.float32)))
        pieces.append(
            {
                "table": facts,
                "alive": np.array([s is not None for s in states], dtype=bool),
                "seq": np.array([s[0] if s else 0 for s in states], dtype=np.int64),
                "at": np.array([s[1].timestamp() if s else 0.0 for s in states], dtype=np.float64),
                "shadowed": np.zeros(facts.columns.num_rows, dtype=bool),
                "vectors": vectors,
            }
        )
    turns = loaded.tables.get("episode_turns")
    if turns is not None and turns.columns.num_rows:
        n = turns.columns.num_rows
        if tombstones.turns.get(manifest_id, 0) == n:
            alive = np.ones(n, dtype=bool)
        else:
            pointed = _archived_turn_ids(store, tenant, manifest_id)
            alive = (
                pc.is_in(turns.columns["item_id"], value_set=pa.array(sorted(pointed), pa.string()))
                .combine_chunks()
                .to_numpy(zero_copy_only=False)
            )
        pieces.append(
            {
                "table": turns,
                "alive": alive,
                "seq": np.zeros(n, dtype=np.int64),
                "at": pc.cast(turns.columns["at"], pa.int64()).combine_chunks().to_numpy(zero_copy_only=False) / 1e6,
                "shadowed": np.ones(n, dtype=bool),
                "vectors": [],
            }
        )
    if not pieces:
        return []

    lengths, codes, terms = _term_codes([c for p in pieces for c in p["table"].terms])
    vectors, rows = [], []
    base = 0
    for p in pieces:
        for row, vector in p["vectors"]:
            rows.append(base + row)
            vectors.append(vector)
        base += p["table"].columns.num_rows
    dense = None
    if vectors:
        dim = len(vectors[0])
        keep = [i for i, v in enumerate(vectors) if len(v) == dim]  # a vector of another model stays lexical-only
        dense = (np.stack([vectors[i] for i in keep]), np.array([rows[i] for i in keep], dtype=np.int64))
    return ArchiveSegment(
        manifest_id,
        item_ids=pa.chunked_array([c for p in pieces for c in p["table"].columns["item_id"].chunks], pa.string()),
        contents=RowContents([content for p in pieces for content in p["table"].contents]),
        at=np.concatenate([p["at"] for p in pieces]),
        seq=np.concatenate([p["seq"] for p in pieces]),
        shadowed=np.concatenate([p["shadowed"] for p in pieces]),
        alive=np.concatenate([p["alive"] for p in pieces]),
        token_offsets=np.concatenate([[0], np.cumsum(lengths)]),
        token_terms=codes,
        terms=terms,
        vectors=dense,
    )


def search_documents(
    store: Store, storage: StorageLike, manifest: Mapping[str, Any], tombstones: Tombstones | None = None
) -> Any:
    """``search_segment`` of one committed manifest, loaded now (with the tenant's tombstones read now unless
    given): an ``engram.search.ArchiveSegment``, or an empty list when the manifest holds nothing searchable.

    Raises:
        ArchiveMismatch: a file is missing, differs from the manifest or is not readable.
        ArchiveError: the storage failed.
    """
    loaded = load_search_tables(storage, manifest)
    if loaded is None:
        return []
    return search_segment(store, loaded, tombstones or tenant_tombstones(store, manifest["tenant"]))


def archived_record(
    store: Store,
    storage: StorageLike,
    tenant: str,
    manifest_id: str,
    item_id: str,
    tombstone: Mapping[str, Any] | None = None,
) -> dict | None:
    """One archived row (semantic item, turn or episode), or None.

    Args:
        tombstone: the item's hot row (``Store.find_item``). Its ``table`` and date narrow the files read (see
            ``find_archived_rows``), so that a large (compacted) manifest is not read whole. For a semantic item, its
            columns other than ``ARCHIVED_CONTENT`` (validity, supersession, support, last seen) replace the archived
            copy's, which are as they were when the item was archived. Without it, every file may be read and the
            row is exactly as archived.
    """
    manifest = next((m for m in store.manifests(tenant) if m["manifest_id"] == manifest_id), None)
    if manifest is None:
        return None
    tombstone = tombstone or {}
    table = tombstone.get("table")
    at = tombstone.get("episode_ended_at" if table == "episode_turns" else _DATE_COLUMN.get(table or "", ""))
    for table_name in [table] if table in _ID_COLUMN else sorted(_ID_COLUMN):
        for r in find_archived_rows(storage, manifest, table_name, {item_id}, [at] if at is not None else []):
            state = {}
            if table_name == "semantic_items" and tombstone:
                state = {k: tombstone[k] for k in r if k in tombstone and k not in ARCHIVED_CONTENT}
            return {**r, **state, "_table": table_name}
    return None


def find_archived_rows(
    storage: StorageLike, manifest: Mapping[str, Any], table_name: str, ids: set[str], dates: Iterable[datetime]
) -> list[dict[str, Any]]:
    """The rows of ``ids`` in a manifest's files of one table, each file checked as ``read_manifest_rows`` does.

    A row is filed under the month of a date (``_DATE_COLUMN``; a turn under its episode's end): the files of the
    months of ``dates`` are read first, and the table's other files only for the ids not found there, so that finding
    a few rows in a large (compacted) manifest reads a few of its files, and a date that moved since the row was
    archived costs time, not the row.
    """
    key = _ID_COLUMN[table_name]
    months = {partition(d) for d in dates}
    files = [e for e in manifest["files"] if e["table"] == table_name]
    near: list[Mapping[str, Any]] = []
    rest: list[Mapping[str, Any]] = []
    for e in files:
        (near if partition_month(e.get("date") or "") in months else rest).append(e)
    found: list[dict[str, Any]] = []
    for step in (near, rest):
        wanted = ids - {r[key] for r in found}
        if not wanted:
            break
        if step:
            rows = read_manifest_rows(storage, {**manifest, "files": step}, ids=wanted).get(table_name, [])
            found.extend(r for r in rows if r[key] in wanted)
    return found


def rehydrate_batch(
    store: Store,
    storage: StorageLike,
    tenant: str | None,
    item_ids: Sequence[str] | None,
    now: datetime,
    flow_run_id: str | None,
    limit: int,
) -> dict[str, int]:
    """Bring up to ``limit`` archived semantic items back to the semantic layer, audited; idempotent.

    The archive's copy stays where it is (its manifest is unchanged); the hot row is whole again. An item whose
    tombstone a compaction pointed at its new manifest between the pick and the commit (the commit then matches
    nothing) is picked again from where it points now, up to ``REHYDRATE_ROUNDS`` times.
    """
    picked = store.archived_semantic(tenant, item_ids, limit)
    counts = {"rehydrated": 0, "candidates": len(picked)}
    for _ in range(REHYDRATE_ROUNDS):
        moved = _rehydrate_picked(store, storage, picked, now, flow_run_id, counts)
        if not moved:
            return counts
        picked = store.archived_semantic(tenant, sorted(moved), len(moved))
    if picked:
        raise ArchiveError(
            f"{len(picked)} archived items moved to other manifests during each of {REHYDRATE_ROUNDS} attempts to "
            "bring them back (compactions running); rerun the rehydrate"
        )
    return counts


# Picks a rehydrate makes of items whose manifest a compaction replaced meanwhile.
REHYDRATE_ROUNDS = 3


def _rehydrate_picked(
    store: Store,
    storage: StorageLike,
    picked: Sequence[tuple[str, str, str, datetime | None]],
    now: datetime,
    flow_run_id: str | None,
    counts: dict[str, int],
) -> set[str]:
    """Rehydrate picked (tenant, item id, manifest id, last seen) rows manifest by manifest; returns the ids of the
    manifests that were replaced before their rows could be brought back (to be picked again)."""
    by_manifest: dict[tuple[str, str], set[str]] = {}
    seen: dict[tuple[str, str], list[datetime]] = {}
    for t, item_id, manifest_id, last_seen in picked:
        by_manifest.setdefault((t, manifest_id), set()).add(item_id)
        if last_seen is not None:
            seen.setdefault((t, manifest_id), []).append(last_seen)
    moved: set[str] = set()
    for (t, manifest_id), ids in sorted(by_manifest.items()):
        manifest = next((m for m in store.manifests(t, ["committed"]) if m["manifest_id"] == manifest_id), None)
        if manifest is None:  # compacted away since the pick: the tombstones point at its replacement
            moved |= ids
            continue
        try:
            found = find_archived_rows(storage, manifest, "semantic_items", ids, seen.get((t, manifest_id), []))
        except ArchiveMismatch:
            # A compaction that committed since the lookup deletes the files it replaced: picked again if so.
            if any(m["manifest_id"] == manifest_id for m in store.manifests(t, ["committed"])):
                raise
            moved |= ids
            continue
        missing = ids - {r["item_id"] for r in found}
        if missing:
            raise ArchiveMismatch(manifest_id, "(semantic files)", f"lacks {len(missing)} archived items")
        done = store.commit_rehydrate(t, manifest_id, found, now, flow_run_id)
        counts["rehydrated"] += done
        if done < len(found):
            moved |= ids
    return moved


# -- forget -------------------------------------------------------------------------------------------------------


def forget_in_archive(store: Store, storage: StorageLike, tenant: str, subject: str | None, now: datetime) -> dict:
    """Remove a subject (or, with None, the whole tenant) from the archive: rewrite the files and manifests that
    held it, delete every old object version, and drop the matching tombstones from the hot store.

    Runs before the hot store's forget: the archive's copy is what says which tombstones name the subject, and the
    lineage it follows must still be there.

    A subject's forget never overwrites an object that a manifest row points at, so a crash at any step leaves every
    manifest readable, and a rerun of the forget finishes the work:

    1. find what names the subject (hot events, archived turns, the items distilled from them), add the ids that an
       interrupted run recorded, and record them all (ids and the subject's sha256, never the subject);
    2. write each rewritten file under a new name beside the old one;
    3. swap the manifest row's file list: the commit point. Before it the old files are the archive and the new ones
       unreferenced; after it, the reverse;
    4. rewrite the manifest's JSON, then delete the replaced files, every version;
    5. remove the tombstones, events, lineage and audit rows from the hot store, by id;
    6. delete the tenant's objects that no manifest references (what a crash between 2 and 4 left) and every old
       version, then drop the recorded ids.

    Returns:
        Counts by place: ``archive_rows``, ``archive_files_rewritten``, ``archive_files_deleted``,
        ``archive_manifests_rewritten``, ``archive_object_versions_deleted`` and the hot rows removed by id.

    Raises:
        ArchiveMismatch: an archived file is missing or differs from its manifest, found before any is changed.
        ArchiveError: the storage failed, or another forget of the tenant rewrote a manifest first; a rerun resumes.
    """
    manifests = store.manifests(tenant)
    counts: dict[str, int] = {
        "archive_rows": 0,
        "archive_files_rewritten": 0,
        "archive_files_deleted": 0,
        "archive_manifests_rewritten": 0,
        "archive_object_versions_deleted": 0,
    }
    if not manifests:
        return counts
    if subject is None:
        # A manifest an interrupted compaction left holds copies of committed rows, not rows of its own.
        counts["archive_rows"] = sum(m["row_count"] for m in manifests if m["status"] != "compacting")
        counts["archive_object_versions_deleted"] = purge_tenant(storage, tenant)
        return counts
    fs = storage.filesystem()
    # Settle unfinished writes first: their rows are hot and the hot forget removes them there.
    # The row goes before its objects (see ``settle_unfinished``); one an archive run committed meanwhile is not
    # dropped (StoreError) and a rerun of the forget takes it as committed.
    # So is what an interrupted compaction left (``engram.compaction``): copies, pointed at by no tombstone.
    for manifest in store.manifests(tenant, ["written", "verified", "compacting"]):
        store.drop_manifest(tenant, manifest["manifest_id"])
        counts["archive_object_versions_deleted"] += remove_manifest_objects(storage, manifest)
    subject_sha256 = hashlib.sha256(subject.encode()).hexdigest()
    earlier = next((i for i in store.forget_intents(tenant) if i["subject_sha256"] == subject_sha256), {})
    events = store.events_mentioning(tenant, subject) | set(earlier.get("event_ids", ()))
    loaded: list[tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]] = []
    for manifest in store.manifests(tenant, ["committed"]):
        by_path = {
            e["path"]: decode_parquet(e["table"], read_file(storage, manifest, e, fs)) for e in manifest["files"]
        }
        loaded.append((manifest, by_path))
        for e in manifest["files"]:
            if e["table"] == "episode_turns":
                events |= {t["event_id"] for t in by_path[e["path"]] if mentions(t["text"], subject)}
    derived = store.derived_items(tenant, events) | set(earlier.get("item_ids", ()))
    # Decide every change before making any, so that the ids are recorded before the archive loses them.
    plans: list[tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]] = []
    gone_items: set[str] = set()
    for manifest, by_path in loaded:
        kept_by_path: dict[str, list[dict[str, Any]]] = {}
        for entry in manifest["files"]:
            file_rows = by_path[entry["path"]]
            kept, dropped, changed = _without_subject(entry["table"], file_rows, subject, events, derived)
            if changed:
                kept_by_path[entry["path"]] = kept
                counts["archive_rows"] += len(file_rows) - len(kept)
                gone_items |= dropped
        if kept_by_path:
            plans.append((manifest, kept_by_path))
    items = gone_items | derived
    rewritten = {manifest["manifest_id"] for manifest, _ in plans}
    started = rewritten | set(earlier.get("manifest_ids", ()))
    store.save_forget_intent(tenant, subject_sha256, events, items, started, now)
    for manifest, kept_by_path in plans:
        _rewrite_manifest(store, storage, fs, manifest, kept_by_path, counts)
    # An interrupted run may have committed a manifest's new files but not written its JSON.
    for manifest, _ in loaded:
        if manifest["manifest_id"] in started - rewritten:
            with _storage_errors(f"rewriting manifest {manifest['manifest_id']}", storage):
                _put_manifest_json(storage, fs, manifest)
            counts["archive_manifests_rewritten"] += 1
    hot = store.forget_archived(tenant, events, items, now)
    counts.update({f"{k}_archived": v for k, v in hot.items()})
    counts["archive_object_versions_deleted"] += remove_orphan_objects(store, storage, tenant, subject_sha256)
    counts["archive_object_versions_deleted"] += purge_old_versions(storage, tenant)
    store.drop_forget_intent(tenant, subject_sha256)
    return counts


def _rewrite_manifest(
    store: Store,
    storage: StorageLike,
    fs: Any,
    manifest: Mapping[str, Any],
    kept_by_path: Mapping[str, list[dict[str, Any]]],
    counts: dict[str, int],
) -> None:
    """Steps 2 to 4 of a forget for one manifest: its files' rows without the subject, by the path they replace."""
    tenant, manifest_id = manifest["tenant"], manifest["manifest_id"]
    files: list[dict[str, Any]] = []
    written: list[dict[str, Any]] = []
    for entry in manifest["files"]:
        kept = kept_by_path.get(entry["path"])
        if kept is None:
            files.append(dict(entry))
            continue
        if not kept:
            counts["archive_files_deleted"] += 1
            continue
        data, count = encode_parquet(entry["table"], kept)
        path = _rewritten_path(entry["path"])
        with _storage_errors(f"writing {path}", storage):
            _put(fs, storage, path, data)
        written.append(
            {**entry, "path": path, "rows": count, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        )
        files.append(written[-1])
        counts["archive_files_rewritten"] += 1
    # Read the new files back before the manifest names them and the old ones go: a write that stored other bytes
    # than were sent (checksum), or that does not decode to the rows counted, stops the forget here with the old files
    # still referenced and whole; the new ones are unreferenced and the orphan sweep takes them.
    try:
        _verified({**manifest, "files": written}, _read_files(storage, fs, [(manifest, entry) for entry in written]))
    except ArchiveMismatch as exc:
        raise ArchiveError(
            f"a file this forget wrote for manifest {manifest_id} of tenant {tenant!r} did not read back as written "
            f"({exc}); the manifest still names its old files, whole; rerun the forget"
        ) from exc
    if not store.swap_manifest_files(tenant, manifest_id, manifest["files"], files):
        raise ArchiveError(
            f"manifest {manifest_id} of tenant {tenant!r} changed while this forget rewrote it (another forget of the "
            "tenant?); its new files are unreferenced and removed later; rerun the forget to finish it"
        )
    row = {**manifest, "files": files, "row_count": sum(f["rows"] for f in files)}
    with _storage_errors(f"rewriting manifest {manifest_id}", storage):
        _put_manifest_json(storage, fs, row)
    counts["archive_manifests_rewritten"] += 1
    for path in kept_by_path:
        counts["archive_object_versions_deleted"] += delete_all_versions(storage, path)


def _put_manifest_json(storage: StorageLike, fs: Any, row: Mapping[str, Any]) -> None:
    """Overwrite a manifest's JSON object with ``row``, keeping what only the object records (``compacted_from``)."""
    path = manifest_path(row["tenant"], row["manifest_id"])
    try:
        earlier = json.loads(fs.cat_file(_abs(storage, path)))
    except FileNotFoundError:
        earlier = {}
    except ValueError as exc:  # the forget goes on: the manifest row, not this object, is what the archive trusts
        _log.warning(
            "manifest %s: %s is not readable JSON (%s); rewritten without its compacted_from",
            row["manifest_id"],
            path,
            exc,
        )
        earlier = {}
    compacted_from = earlier.get("compacted_from") if isinstance(earlier, dict) else None
    _put(fs, storage, path, manifest_json({**row, "compacted_from": compacted_from or row.get("compacted_from")}))


def _rewritten_path(path: str) -> str:
    """A new name beside an archived file for its rewritten copy: ``<manifest_id>-<n>.<random>.parquet``."""
    folder, name = path.rsplit("/", 1)
    return f"{folder}/{name.split('.', 1)[0]}.{uuid.uuid4().hex[:12]}.parquet"


def remove_orphan_objects(store: Store, storage: StorageLike, tenant: str, own_forget: str | None = None) -> int:
    """Delete the tenant's objects that no manifest row of the tenant references, every version of them; returns
    the object versions deleted.

    These are what a forget interrupted between writing new files and deleting the replaced ones leaves behind. The
    objects are listed before the rows are read: an archive run records its manifest before it uploads, and a forget
    records its intent before it writes, so a listed object is either referenced by a row read afterwards or an
    orphan. While another forget of the tenant is unfinished (its intent is recorded) nothing is deleted, since the
    files it wrote are unreferenced until it commits; ``own_forget`` is the subject sha256 of the calling forget.
    """
    listed = _tenant_objects(storage, tenant)
    if any(i["subject_sha256"] != own_forget for i in store.forget_intents(tenant)):
        return 0
    referenced: set[str] = set()
    for manifest in store.manifests(tenant):
        referenced.add(manifest_path(tenant, manifest["manifest_id"]))
        referenced.update(e["path"] for e in manifest["files"])
    return sum(delete_all_versions(storage, rel) for rel in sorted(listed - referenced))


def _tenant_objects(storage: StorageLike, tenant: str) -> set[str]:
    """The path, relative to the archive's root, of every object under a tenant's prefix (in any version)."""
    if storage.is_s3 and getattr(storage, "endpoint", None):
        client = storage.minio_client()
        base = f"{storage.prefix}/" if storage.prefix else ""
        with _storage_errors(f"listing the objects of tenant {tenant!r}", storage):
            return {
                obj.object_name.removeprefix(base)
                for obj in client.list_objects(
                    storage.bucket, prefix=f"{base}{tenant_prefix(tenant)}/", recursive=True, include_version=True
                )
            }
    fs = storage.filesystem()
    root = f"{_root(storage).rstrip('/')}/"
    with _storage_errors(f"listing the objects of tenant {tenant!r}", storage):
        fs.invalidate_cache()
        path = _abs(storage, tenant_prefix(tenant))
        if not fs.exists(path):
            return set()
        # A path outside the root (a link, another spelling of it) is left alone rather than guessed at.
        return {p.removeprefix(root) for p in fs.find(path) if p.startswith(root)}


def _without_subject(
    table_name: str, rows: list[dict[str, Any]], subject: str, events: set[str], derived: set[str]
) -> tuple[list[dict[str, Any]], set[str], bool]:
    """The rows that keep nothing of the subject, the ids of those dropped, and whether anything changed.

    An episode row stays with its summary rewritten without the lines that name the subject, as in the hot store.
    """
    kept: list[dict[str, Any]] = []
    dropped: set[str] = set()
    changed = False
    for r in rows:
        if table_name == "episodes":
            if mentions(r["summary"], subject):
                r = {**r, "summary": "\n".join(s for s in r["summary"].split("\n") if not mentions(s, subject))}
                changed = True
            kept.append(r)
            continue
        hit = mentions(r["text"], subject) or r["item_id"] in derived or r.get("event_id") in events
        if hit:
            dropped.add(r["item_id"])
        else:
            kept.append(r)
    return kept, dropped, changed or bool(dropped)


# -- the whole move, without Prefect ------------------------------------------------------------------------------


def archive_batch(
    store: Store,
    storage: StorageLike,
    layer: Layer,
    keys: Sequence[tuple[str, str]],
    now: datetime,
    flow_run_id: str | None,
) -> list[dict[str, Any]]:
    """Write one manifest per tenant of a batch of cold (tenant, id) keys; returns the manifests written.

    Every manifest row of the batch is recorded (one transaction) before any of its objects is uploaded: a crash
    during the uploads leaves ``written`` manifests that the next run verifies and commits, or discards.

    Raises:
        ArchiveError: when the storage fails; the manifest rows stay ``written`` for the next run to settle.
    """
    # The epochs before the rows: a forget that commits after the rows are read moves its tenant's epoch, and that
    # tenant's manifest is then not recorded (its rows may hold what the forget removed; the next run reads them
    # again). One committing before the rows are read is seen in them.
    epochs = store.tenant_epochs(t for t, _ in keys)
    planned = _encode_manifests(storage, layer, store.archive_rows_by_tenant(layer, keys), now, flow_run_id)
    if not planned:
        return []
    recorded = {row["manifest_id"] for row in store.add_manifests([row for row, _ in planned], epochs)}
    planned = [(row, objects) for row, objects in planned if row["manifest_id"] in recorded]
    if not planned:
        return []
    fs = storage.filesystem()
    ids = [row["manifest_id"] for row, _ in planned]
    with _storage_errors(f"writing archive {_listed('manifest', ids)}", storage):
        _put_many(fs, storage, [obj for _, objects in planned for obj in objects])
    return [row for row, _ in planned]


def archive_cold_items(
    store: Store,
    storage: StorageLike,
    rules: RetentionRules,
    as_of: datetime,
    tenant: str | None = None,
    batch_size: int = 5_000,
    flow_run_id: str | None = None,
    max_batches: int = 10_000,
) -> dict[str, int]:
    """What the ``archive`` flow does, in one process: settle unfinished manifests, then write, verify and
    tombstone batch after batch until no row is cold.
    """
    totals: dict[str, int] = dict(settle_unfinished(store, storage, tenant, as_of, flow_run_id))
    for layer in (Layer.SEMANTIC, Layer.EPISODIC):
        for _ in range(max_batches):
            keys = store.archive_candidates(layer, as_of, rules, tenant, batch_size)
            if not keys:
                break
            verified = verify_manifests(store, storage, archive_batch(store, storage, layer, keys, as_of, flow_run_id))
            counts = commit_manifests(store, storage, verified, as_of, flow_run_id)
            for k, v in counts.items():
                totals[k] = totals.get(k, 0) + v
            totals["manifests"] = totals.get("manifests", 0) + len(verified)
            if not counts["semantic_items"] + counts["episodes"]:
                break  # every picked row changed under us; the next run takes them as they are then
    return totals
