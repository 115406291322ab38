"""The hot store: the only code in engram that speaks SQL.

One ``Store`` wraps one SQLAlchemy engine (SQLite by default, PostgreSQL through a URL). Writes go through
``Store.write()``, a transaction that translates driver errors into ``StoreError`` in one place; bulk writes are
batched multi-row INSERTs with ``ON CONFLICT DO NOTHING`` (never one statement per row), which is also what makes them
idempotent on their natural keys.

Every write that touches a tenant first bumps that tenant's change counter (``tenant_state.seq``) under a row lock
and stamps the rows it writes with the new value. Writers of one tenant are therefore serialised for the length of a
transaction, so a reader that has seen counter N has seen every row stamped N or lower: the search index follows the
counter to stay current without rebuilding.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (
    Connection,
    DateTime,
    Engine,
    LargeBinary,
    Table,
    and_,
    bindparam,
    case,
    cast,
    create_engine,
    event,
    false,
    func,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql import operators
from sqlalchemy.sql.expression import UnaryExpression

from engram.errors import StoreError, TenantChanged, failed_whole, failure_reason
from engram.layers import LEAVES_SOURCE_LAYER, Layer
from engram.models import (
    ArchiveManifest,
    Episode,
    EpisodeTurn,
    Event,
    ForgetIntent,
    Lineage,
    Metric,
    QuarantinedRow,
    SemanticItem,
    SessionState,
    ShardLease,
    TenantState,
    Transition,
    WorkingItem,
)

EVENTS: Table = Event.__table__  # type: ignore[attr-defined]
SESSIONS: Table = SessionState.__table__  # type: ignore[attr-defined]
WORKING: Table = WorkingItem.__table__  # type: ignore[attr-defined]
EPISODES: Table = Episode.__table__  # type: ignore[attr-defined]
TURNS: Table = EpisodeTurn.__table__  # type: ignore[attr-defined]
SEMANTIC: Table = SemanticItem.__table__  # type: ignore[attr-defined]
LINEAGE: Table = Lineage.__table__  # type: ignore[attr-defined]
MANIFESTS: Table = ArchiveManifest.__table__  # type: ignore[attr-defined]
TRANSITIONS: Table = Transition.__table__  # type: ignore[attr-defined]
QUARANTINE: Table = QuarantinedRow.__table__  # type: ignore[attr-defined]
TENANTS: Table = TenantState.__table__  # type: ignore[attr-defined]
METRICS: Table = Metric.__table__  # type: ignore[attr-defined]
SHARDS: Table = ShardLease.__table__  # type: ignore[attr-defined]
FORGET_INTENTS: Table = ForgetIntent.__table__  # type: ignore[attr-defined]

# Rows per multi-row INSERT. SQLite allows 32,766 bound parameters per statement; the widest table has 14 columns.
INSERT_CHUNK = 2_000
# Distinct first keys (tenants, mostly) in one ``Store._pairs_in`` lookup. SQLite parses a chain of N ORs into an
# expression N deep and refuses one deeper than 1,000.
PAIR_FIRSTS = 200


def pair_chunks(pairs: Iterable[tuple[Any, Any]], size: int = INSERT_CHUNK) -> Iterator[list[tuple[Any, Any]]]:
    """``pairs`` in order, in chunks of at most ``size`` pairs and ``PAIR_FIRSTS`` distinct first values: what one
    ``Store._pairs_in`` lookup takes. No chunk is empty."""
    if size < 1:
        raise ValueError(f"size: a chunk holds at least one pair, not {size}")
    chunk: list[tuple[Any, Any]] = []
    firsts: set[Any] = set()
    for pair in pairs:
        if len(chunk) >= size or (pair[0] not in firsts and len(firsts) >= PAIR_FIRSTS):
            yield chunk
            chunk, firsts = [], set()
        chunk.append(pair)
        firsts.add(pair[0])
    if chunk:
        yield chunk


def _not_set_aside(consolidate_attempts: int | None) -> Any:
    """Episodes that fewer than ``consolidate_attempts`` consolidation runs failed on (every one when None): the
    ones claims take."""
    if consolidate_attempts is None:
        return true()
    failures = EPISODES.c.consolidation_failures
    return or_(failures.is_(None), failures < consolidate_attempts)


def _delete_in(conn: Connection, table: Table, tenant: str, col: str, ids: Iterable[str]) -> int:
    """Delete the tenant's rows of ``table`` whose ``col`` is one of ``ids``, in chunks; returns how many.

    A turn is deleted by its event id (``col="event_id"``), which the turns' index holds: its item id is that same
    id, and no index leads with it."""
    ordered = sorted(set(ids))
    n = 0
    for start in range(0, len(ordered), INSERT_CHUNK):
        chunk = ordered[start : start + INSERT_CHUNK]
        n += conn.execute(table.delete().where(table.c.tenant == tenant, table.c[col].in_(chunk))).rowcount or 0
    return n


# A run of 19 digits or more may be an integer past 64 bits, which orjson reads as a float without a word.
_LONG_NUMBER = re.compile(r"\d{19,}")


def _json_loads(text: str | bytes) -> Any:
    """JSON columns as Python values: orjson (several times faster than ``json``, and every row read of tags and
    metadata pays it), except for text orjson would read otherwise than ``json``: a long run of digits (an integer
    past 64 bits, which orjson turns into a float) and what it refuses (NaN, which ``json.dumps`` writes)."""
    if _LONG_NUMBER.search(text if isinstance(text, str) else text.decode("utf-8", "replace")):
        return json.loads(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


# orjson hands these back to the caller instead of writing them its own way: json.dumps refuses a datetime and a
# dataclass, and writes a subclass of str, int or dict as its base type, so ``json_text`` leaves them to it.
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS


def json_text(value: Any, sort_keys: bool = False) -> str:
    """JSON columns as text: orjson (about five times faster than ``json``; every row written of an audit detail,
    tags or metadata pays it), except where its text would read back otherwise than ``json.dumps``'s: orjson writes
    NaN and infinities as ``null`` (the text then holds ``null``, and ``json`` writes it), and refuses an integer past
    64 bits, a key that is not a string, a lone surrogate and the types above (``json`` writes or refuses those as it
    always did). Either text reads back to the same value through ``_json_loads``. What orjson writes that ``json``
    would refuse (a UUID, an enum that is not a str) never gets here: metadata is checked with ``json`` on the way
    in (``engram.validation``), and engram's own values are plain. ``sort_keys`` orders the keys of every object,
    for text that is the same whatever order a value's keys were set in (archived files)."""
    try:
        text = orjson.dumps(value, option=(_ORJSON_OPTIONS | orjson.OPT_SORT_KEYS) if sort_keys else _ORJSON_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value, sort_keys=sort_keys)
    if b"null" in text:
        return json.dumps(value, sort_keys=sort_keys)
    return text.decode("utf-8")


def _converted(process: Any, values: list[Any], repeats: bool) -> list[Any]:
    """``values`` through a bind processor (None: as they are). With ``repeats`` (a datetime column: a batch's rows
    share their run's time), each distinct instant is converted once. The key holds the offset from UTC beside the
    time: two times of one zone compare by their wall clock, so the two instants of an hour that a clock change
    repeats are equal (PEP 495), and only their offsets tell them apart."""
    if process is None:
        return values
    if not repeats:
        return list(map(process, values))
    seen: dict[Any, Any] = {}
    out = []
    for v in values:
        key = (v, v.utcoffset()) if v is not None else None
        if key not in seen:
            seen[key] = process(v)
        out.append(seen[key])
    return out


def _dicts(result: Any) -> list[dict[str, Any]]:
    """A result's rows as plain dicts, the column names read once: ``dict(row._mapping)`` per row costs more than
    the query it reads."""
    keys = list(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result]


def new_id(prefix: str) -> str:
    """A random id for rows that have no natural key (quarantine, manifests)."""
    return f"{prefix}-{uuid.uuid4().hex}"


def stable_id(prefix: str, *parts: str) -> str:
    """A deterministic id from its parts, so that a rerun writes the same row and the conflict clause skips it."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()
    return f"{prefix}-{digest[:32]}"


def _episode_quarantine_row(
    tenant: str,
    episode_id: str,
    source: str,
    field: str,
    reason: str,
    at: datetime,
    flow_run_id: str | None,
    payload: Mapping[str, str],
) -> dict[str, Any]:
    """A quarantine row for a step that failed on one episode (``reason`` is ``"ErrorType: message"``): one per
    episode, step and kind of error, so a retry that fails alike adds none, whatever its message."""
    return {
        "tenant": tenant,
        "quarantine_id": stable_id("q", tenant, episode_id, source, reason.split(":", 1)[0]),
        "source": source,
        "field": field,
        "reason": reason,
        "raw_payload": json.dumps({"episode_id": episode_id, **payload}),
        "flow_run_id": flow_run_id,
        "quarantined_at": at,
    }


def transition_row(
    tenant: str,
    item_id: str,
    from_layer: Layer | None,
    to_layer: Layer | None,
    action: str,
    at: datetime,
    flow_run_id: str | None,
    seq: int,
    detail: Mapping[str, Any] | None = None,
    key: str = "",
) -> dict[str, Any]:
    """One audit row. Its id derives from the move itself (plus ``key``), so a rerun of the move is a no-op."""
    return {
        "tenant": tenant,
        "transition_id": stable_id("tr", tenant, item_id, str(from_layer or ""), str(to_layer or ""), action, key),
        "item_id": item_id,
        "from_layer": from_layer.value if from_layer else None,
        "to_layer": to_layer.value if to_layer else None,
        "action": action,
        "flow_run_id": flow_run_id,
        "at": at,
        "detail": dict(detail or {}),
        "seq": seq,
    }


def _sources_by_tenant(candidates: Any) -> dict[str, set[str]]:
    """The source event ids of a consolidator's candidate facts, by tenant."""
    wanted: dict[str, set[str]] = {}
    for tenant, sources in zip(candidates["tenant"], candidates["sources"], strict=True):
        wanted.setdefault(tenant, set()).update(sources if sources is not None else [])
    return wanted


def _sqlite_url_with_dirs(url: str) -> str:
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
    return url


class _Changed(Exception):
    """A compaction's commit found its manifests changed: the transaction is rolled back."""


class Store:
    """The hot store behind one database URL.

    Args:
        url: a SQLAlchemy URL: ``sqlite:///path/to/engram.db`` or ``postgresql://user@host:5432/db``.
        consolidate_attempts: how many consolidation runs may fail on one episode before it is set aside (the
            ``consolidate_attempts`` setting, which the flows' stores and ``Memory`` pass): claims, the backlog,
            ``set_aside_episodes`` and ``retry_set_aside`` apply it, and ``commit_consolidation`` counts the
            failures. None (a store opened without settings) counts no failure and sets nothing aside.

    Example:
        >>> store = Store("sqlite:///:memory:")  # doctest: +SKIP
        >>> store.migrate()  # doctest: +SKIP
    """

    def __init__(self, url: str, *, consolidate_attempts: int | None = None):
        if consolidate_attempts is not None and consolidate_attempts < 1:
            raise ValueError(f"consolidate_attempts: at least 1, not {consolidate_attempts}")
        self.consolidate_attempts = consolidate_attempts
        if url.startswith("postgres://"):
            url = "postgresql://" + url.removeprefix("postgres://")
        self.url = url
        try:
            if url.startswith("sqlite"):
                memory_db = ":memory:" in url or url.rstrip("/") in ("sqlite:", "sqlite://")
                self.engine: Engine = create_engine(
                    _sqlite_url_with_dirs(url),
                    connect_args={"timeout": 60, "check_same_thread": False},
                    json_serializer=json_text,
                    json_deserializer=_json_loads,
                    # A file is shared with other processes (flows run elsewhere) through WAL; pooled connections
                    # save the connect-and-PRAGMA cost on every search. An in-memory database is one connection.
                    **({"poolclass": StaticPool} if memory_db else {"pool_size": 5, "max_overflow": 5}),
                )
                self._setup_sqlite(self.engine)
            else:
                self.engine = create_engine(
                    url,
                    pool_pre_ping=True,
                    pool_size=5,
                    max_overflow=5,
                    json_serializer=json_text,
                    json_deserializer=_json_loads,
                )
        except (SQLAlchemyError, ImportError, OSError) as exc:  # OSError: a SQLite file's folder cannot be made
            raise StoreError(f"cannot open the store at {self.safe_url}: {exc}") from exc

        # Per (table, columns): the SQL, parameter order and conversions of ``_sqlite_insert_ignore``'s statement.
        self._insert_plans: dict[tuple[str, tuple[str, ...]], tuple[str, tuple[str, ...], tuple[Any, ...]] | None]
        self._insert_plans = {}

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def safe_url(self) -> str:
        """The URL with any password masked, for messages."""
        try:
            from sqlalchemy.engine import make_url

            return make_url(self.url).render_as_string(hide_password=True)
        except Exception:  # an unparsable URL is shown as its scheme only
            return self.url.split(":", 1)[0] + "://..."

    @staticmethod
    def _setup_sqlite(engine: Engine) -> None:
        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event issue BEGIN itself, so a write can ask for BEGIN IMMEDIATE: it takes the
            # write lock up front instead of failing to upgrade a read lock halfway through a transaction.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("engram_write") else "BEGIN")

    def not_a_key(self, column: Any) -> Any:
        """``column`` in a form SQLite does not look rows up by (``+column``), for a condition that only narrows rows
        a statement names by key, or a grouping that should not pick the index the rows are read through.

        SQLite plans without table statistics. For ``tenant = ? AND event_id IN (...) AND routed_at IS NULL`` it
        ranks the index on (tenant, routed_at) above the primary key, and so reads every pending event of the tenant
        for each chunk of ids: a batch's cost then grows with the backlog, and draining a backlog with its square
        (ingest after ten million events went into the sensory layer spent two thirds of its time there). With the
        condition on ``+routed_at`` only the primary key can serve. PostgreSQL plans by statistics and gets the
        column as it is.
        """
        if self.dialect != "sqlite":
            return column
        return UnaryExpression(column, operator=operators.custom_op("+"), type_=column.type)

    def may_mention(self, column: Any, subject: str) -> Any:
        """A condition every row whose text ``column`` names ``subject`` (``engram.text.mentions``) meets, for the
        database to narrow a forget's scan before ``mentions`` decides on each row.

        SQL's ``lower`` and ``LIKE`` fold case in ASCII only on SQLite, and by the database's locale on PostgreSQL,
        where Python folds every script (``Émile``, ``Straße``): a text with a character past ASCII is therefore
        always handed to ``mentions``. A text in ASCII names the subject only if its subject's words are all ASCII,
        and then it holds the longest of them, which ``lower(text) LIKE`` finds alike on both databases (a word has
        no ``%``, ``_`` or backslash). A subject with no word names nothing.
        """
        from engram.text import words

        said = words(subject)
        if not said:
            return false()
        if self.dialect == "sqlite":
            past_ascii = func.length(cast(column, LargeBinary)) != func.length(column)
        else:
            past_ascii = func.octet_length(column) != func.char_length(column)
        if not all(w.isascii() for w in said):
            return past_ascii
        return or_(func.lower(column).like(f"%{max(said, key=len)}%"), past_ascii)

    def _pairs_in(self, first: Any, second: Any, pairs: Sequence[tuple[Any, Any]]) -> Any:
        """``(first, second) IN pairs``, written so that the database finds the rows through its index on the two
        columns (a table's primary key, mostly), whatever the table's size.

        SQLite (3.40) answers the row-value form, ``(a, b) IN (VALUES ...)``, by scanning the whole table for every
        statement: a batch's cost then grows with the table, and a run's with the square of its size. It gets
        ``(a = ? AND b IN (...)) OR ...`` instead, one term per distinct first value, which it looks up term by term
        in the index. PostgreSQL plans the row-value form through the index itself.

        No pairs match no row, as ``IN ()`` would: an OR of no terms would vanish from the statement, and a DELETE
        would lose its WHERE.

        Raises:
            ValueError: on SQLite, more than ``PAIR_FIRSTS`` distinct first values (use ``pair_chunks``).
        """
        if not pairs:
            return false()
        if self.dialect != "sqlite":
            return tuple_(first, second).in_(list(pairs))
        by_first: dict[Any, list[Any]] = {}
        for a, b in pairs:
            by_first.setdefault(a, []).append(b)
        if len(by_first) > PAIR_FIRSTS:
            raise ValueError(f"{len(by_first)} distinct {first.name} values in one lookup; at most {PAIR_FIRSTS}")
        return or_(*(and_(first == a, second.in_(bs)) for a, bs in by_first.items()))

    # -- schema ------------------------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Upgrade the schema to the newest Alembic revision (idempotent).

        Raises:
            StoreError: the database failed, or its schema is at a revision this code does not know (migrated by a
                newer engram): this code cannot use the store.
        """
        from alembic.util.exc import CommandError

        from engram.migrations import upgrade_to_head

        try:
            upgrade_to_head(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot migrate the store at {self.safe_url}: {exc}") from exc
        except CommandError as exc:  # alembic's own: a revision that none of this code's migrations is
            raise StoreError(
                f"cannot migrate the store at {self.safe_url}: its schema is at a revision this engram does not know"
                f" (a newer engram migrated it?): {exc}"
            ) from exc

    def schema_revision(self) -> str | None:
        """The Alembic revision the schema is at (None before the first migration): one row of one table."""
        from engram.migrations import revision_of

        with self.read() as conn:
            return revision_of(conn)

    def dispose(self) -> None:
        self.engine.dispose()

    # -- transactions ------------------------------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A read-write transaction; commits on success, rolls back and raises ``StoreError`` on a driver error."""
        try:
            with self.engine.connect() as conn:
                conn.info["engram_write"] = True
                try:
                    with conn.begin():
                        yield conn
                finally:
                    conn.info.pop("engram_write", None)
        except SQLAlchemyError as exc:
            raise StoreError(f"write to {self.safe_url} failed: {exc.__class__.__name__}: {exc}") from exc

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction."""
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"read from {self.safe_url} failed: {exc.__class__.__name__}: {exc}") from exc

    # -- generic bulk helpers ----------------------------------------------------------------------------------

    def _insert(self, table: Table):  # noqa: ANN202 - dialect-specific Insert
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    def insert_ignore(self, conn: Connection, table: Table, rows: Iterable[Mapping[str, Any]]) -> int:
        """Insert rows, skipping rows whose primary key exists; returns how many were inserted.

        PostgreSQL: COPY into a temporary table, then one INSERT ... SELECT (``_copy_insert_many``). SQLite: one
        compiled statement over all the rows, which the driver loops over in C (``_sqlite_insert_ignore``); the count
        is the driver's sum of the rows each execution changed, so no RETURNING is needed, whose multi-row
        statements SQLAlchemy would build and parse per chunk in Python (about a third of the insert's time).
        """
        rows = list(rows)
        if not rows:
            return 0
        if self.dialect == "sqlite":
            return self._sqlite_insert_ignore(conn, table, rows)
        pk = table.primary_key.columns.values()[0]
        return len(self._insert_many(conn, table, rows, pk.name))

    def _sqlite_insert_ignore(self, conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> int:
        """SQLite: ``INSERT ... ON CONFLICT DO NOTHING`` executed once per row, as ``conn.execute(stmt, rows)`` does,
        with the parameters made column by column; returns the driver's count of rows inserted.

        The statement, its parameter order and each column's conversion (datetimes and JSON to text) are
        SQLAlchemy's own, taken from the compiled statement and the column types; what this saves is the work
        SQLAlchemy does per row and per value around them (building each row's parameters, finding each value's
        processor), which cost more than the driver's insert. Rows that differ in their columns, name a column the
        table lacks, leave out a column whose default SQLAlchemy fills in, or hold a value a conversion refuses go
        through ``conn.execute``, which fills, converts or refuses them as it always does.
        """
        stmt = self._insert(table).on_conflict_do_nothing()
        names = tuple(rows[0])
        plan = self._insert_plans.get((table.name, names), False)
        if plan is False:
            plan = None  # remembered too: these columns need SQLAlchemy's own path
            if names and all(n in table.c for n in names):
                compiled = stmt.compile(dialect=conn.dialect, column_keys=list(names))
                order = tuple(compiled.positiontup or ())
                if sorted(order) == sorted(names):
                    processors = tuple(
                        (
                            table.c[n].type.dialect_impl(conn.dialect).bind_processor(conn.dialect),
                            table.c[n].type._type_affinity is DateTime,
                        )
                        for n in order
                    )
                    plan = (compiled.string, order, processors)
            self._insert_plans[(table.name, names)] = plan
        params: list[tuple[Any, ...]] | None = None
        if plan is not None and all(len(r) == len(names) for r in rows):
            sql, order, processors = plan
            try:
                columns = [
                    _converted(process, [r[n] for r in rows], repeats)
                    for n, (process, repeats) in zip(order, processors, strict=True)
                ]
                params = list(zip(*columns, strict=True))
            except Exception:  # SQLAlchemy's path below raises its own error for the same rows
                params = None
        if params is None:
            return conn.execute(stmt, rows).rowcount or 0
        return conn.exec_driver_sql(plan[0], params).rowcount or 0

    def _insert_many(
        self, conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], *keys: str
    ) -> list[tuple[Any, ...]]:
        if self.dialect == "postgresql":
            return self._copy_insert_many(conn, table, rows, keys)
        stmt = self._insert(table).on_conflict_do_nothing().returning(*(table.c[k] for k in keys))
        out: list[tuple[Any, ...]] = []
        for start in range(0, len(rows), INSERT_CHUNK):
            chunk = [dict(r) for r in rows[start : start + INSERT_CHUNK]]
            out += [tuple(r) for r in conn.execute(stmt, chunk)]
        return out

    def _copy_insert_many(
        self, conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]], keys: Sequence[str]
    ) -> list[tuple[Any, ...]]:
        """PostgreSQL: COPY the rows into a temporary table, then one INSERT ... SELECT ... ON CONFLICT.

        COPY streams rows without building a statement; the driver's multi-row VALUES path spends more time parsing
        its own placeholders than the server spends inserting.
        """
        from sqlalchemy import JSON

        columns = [c for c in table.columns if c.name in rows[0]]
        names = ", ".join(f'"{c.name}"' for c in columns)
        temp = f"engram_load_{table.name}"
        is_json = [isinstance(c.type, JSON) for c in columns]
        raw = conn.connection.dbapi_connection
        with raw.cursor() as cur:  # type: ignore[union-attr]
            cur.execute(
                f'CREATE TEMP TABLE IF NOT EXISTS "{temp}" (LIKE "{table.name}" INCLUDING DEFAULTS) '
                "ON COMMIT DELETE ROWS"
            )
            cur.execute(f'TRUNCATE "{temp}"')
            with cur.copy(f'COPY "{temp}" ({names}) FROM STDIN') as copy:
                for row in rows:
                    copy.write_row(
                        [
                            json_text(row[c.name]) if j and row[c.name] is not None else row[c.name]
                            for c, j in zip(columns, is_json, strict=True)
                        ]
                    )
            returning = ", ".join(f'"{k}"' for k in keys)
            cur.execute(
                f'INSERT INTO "{table.name}" ({names}) SELECT {names} FROM "{temp}" '
                f"ON CONFLICT DO NOTHING RETURNING {returning}"
            )
            out = [tuple(r) for r in cur.fetchall()]
            cur.execute(f'TRUNCATE "{temp}"')
        return out

    def bump_seq(self, conn: Connection, tenants: Iterable[str], now: datetime) -> dict[str, int]:
        """Advance each tenant's change counter, locking its row until the transaction ends."""
        seqs: dict[str, int] = {}
        ordered = sorted(set(tenants))  # two PostgreSQL writers lock tenants in the same order: no deadlock
        if self.dialect == "sqlite":
            # One writer at a time holds SQLite's lock for the whole transaction, so the order does not matter, and
            # a statement for all the tenants of a batch costs what one per tenant did for each.
            self.insert_ignore(conn, TENANTS, [{"tenant": t, "seq": 0, "created_at": now} for t in ordered])
            for start in range(0, len(ordered), INSERT_CHUNK):
                bumped = conn.execute(
                    update(TENANTS)
                    .where(TENANTS.c.tenant.in_(ordered[start : start + INSERT_CHUNK]))
                    .values(seq=TENANTS.c.seq + 1)
                    .returning(TENANTS.c.tenant, TENANTS.c.seq)
                )
                seqs.update((t, n) for t, n in bumped)
            return seqs
        for tenant in ordered:
            conn.execute(self._insert(TENANTS).values(tenant=tenant, seq=0, created_at=now).on_conflict_do_nothing())
            seqs[tenant] = conn.execute(
                update(TENANTS).where(TENANTS.c.tenant == tenant).values(seq=TENANTS.c.seq + 1).returning(TENANTS.c.seq)
            ).scalar_one()
        return seqs

    def current_seq(self, conn: Connection, tenant: str) -> int:
        return conn.execute(select(TENANTS.c.seq).where(TENANTS.c.tenant == tenant)).scalar() or 0

    # -- sensory -----------------------------------------------------------------------------------------------

    def add_events(self, events: Sequence[Mapping[str, Any]], now: datetime) -> set[tuple[str, str]]:
        """Write events to the sensory layer; returns the (tenant, event_id) pairs that were new.

        Args:
            events: rows with the columns of ``events`` except ``received_at``, ``routed_at`` and ``seq``.
        """
        if not events:
            return set()
        with self.write() as conn:
            seqs = self.bump_seq(conn, (e["tenant"] for e in events), now)
            rows = [{**e, "received_at": now, "routed_at": None, "seq": seqs[e["tenant"]]} for e in events]
            if self.dialect == "sqlite":
                # The transaction began with BEGIN IMMEDIATE, which holds SQLite's one write lock until the commit:
                # no other writer can add one of these events between the look-up and the insert, so the new ones
                # are those not there before. Cheaper than RETURNING, whose multi-row statements SQLAlchemy builds
                # and parses per chunk (``insert_ignore``). The driver's count of rows inserted must agree: a row
                # skipped for another reason than its key (a unique index the key does not cover) is not new.
                keys = {(e["tenant"], e["event_id"]) for e in rows}
                new = keys - self._present_events(conn, keys)
                inserted = self._sqlite_insert_ignore(conn, EVENTS, rows)
                if inserted != len(new):
                    raise StoreError(
                        f"{inserted} of {len(new)} new events were written; the batch is rolled back, nothing kept"
                    )
                return new
            # RETURNING gives (tenant, event_id) of the rows that were inserted; duplicates are skipped by the
            # conflict clause and counted by the caller.
            added = {(t, e) for t, e in self._insert_many(conn, EVENTS, rows, "tenant", "event_id")}
        return added

    def _present_events(self, conn: Connection, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """SQLite: the (tenant, event id) keys among ``keys`` that the sensory ledger holds, looked up by primary key.

        The statement is plain SQL with a placeholder per id: a batch's events span many tenants, and building one
        SQLAlchemy statement per tenant cost more than the look-ups.
        """
        by_tenant: dict[str, list[str]] = {}
        for tenant, event_id in keys:
            by_tenant.setdefault(tenant, []).append(event_id)
        present: set[tuple[str, str]] = set()
        for tenant, ids in sorted(by_tenant.items()):
            ids.sort()
            for start in range(0, len(ids), INSERT_CHUNK):
                chunk = ids[start : start + INSERT_CHUNK]
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT event_id FROM {EVENTS.name} WHERE tenant = ? AND event_id IN ({marks})"
                present.update((tenant, e) for (e,) in conn.exec_driver_sql(sql, (tenant, *chunk)))
        return present

    def add_quarantine(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Write rejected rows with their raw payload and reason."""
        if not rows:
            return 0
        with self.write() as conn:
            return self.insert_ignore(conn, QUARANTINE, rows)

    def pending_events(self, limit: int, tenant: str | None = None) -> list[dict[str, Any]]:
        """Up to ``limit`` events still in the sensory layer, oldest first."""
        query = select(EVENTS).where(EVENTS.c.routed_at.is_(None))
        if tenant is not None:
            query = query.where(EVENTS.c.tenant == tenant)
        query = query.order_by(EVENTS.c.received_at, EVENTS.c.tenant, EVENTS.c.event_id).limit(limit)
        with self.read() as conn:
            return _dicts(conn.execute(query))

    def route_events(
        self,
        working: Sequence[Mapping[str, Any]],
        rejected: Sequence[Mapping[str, Any]],
        now: datetime,
        flow_run_id: str | None,
    ) -> dict[str, int]:
        """Move validated events to working memory and rejected ones to quarantine, in one transaction.

        Only events still pending are moved (``routed_at IS NULL`` is re-checked under the write lock), so two
        ingest runs that read the same batch move each event once.

        Args:
            working: working-item rows (``WorkingItem`` columns but ``seq``), one per event; ``item_id`` is the
                event id.
            rejected: ``{"tenant", "event_id", "field", "reason"}`` for events that failed the quality gate.

        Returns:
            counts: ``routed``, ``quarantined``, ``skipped`` (already moved by another run).
        """
        counts = {"routed": 0, "quarantined": 0, "skipped": 0}
        if not working and not rejected:
            return counts
        tenants = {r["tenant"] for r in working} | {r["tenant"] for r in rejected}
        with self.write() as conn:
            seqs = self.bump_seq(conn, tenants, now)
            claimed = self._claim_pending(conn, [(r["tenant"], r["item_id"]) for r in working], now)
            claimed_rejects = self._claim_pending(conn, [(r["tenant"], r["event_id"]) for r in rejected], now)
            keep = [dict(r, seq=seqs[r["tenant"]]) for r in working if (r["tenant"], r["item_id"]) in claimed]
            self.insert_ignore(conn, WORKING, keep)
            self._touch_sessions(conn, keep)
            audit = [
                transition_row(
                    r["tenant"],
                    r["item_id"],
                    Layer.SENSORY,
                    Layer.WORKING,
                    "ingest",
                    now,
                    flow_run_id,
                    seqs[r["tenant"]],
                    {"session": r["session_id"]},
                )
                for r in keep
            ]
            bad = [r for r in rejected if (r["tenant"], r["event_id"]) in claimed_rejects]
            if bad:
                payloads = self._raw_events(conn, [(r["tenant"], r["event_id"]) for r in bad])
                self.insert_ignore(
                    conn,
                    QUARANTINE,
                    [
                        {
                            "tenant": r["tenant"],
                            "quarantine_id": stable_id("q", r["tenant"], r["event_id"], "ingest"),
                            "source": "ingest",
                            "field": r["field"],
                            "reason": r["reason"],
                            "raw_payload": payloads.get((r["tenant"], r["event_id"]), "{}"),
                            "flow_run_id": flow_run_id,
                            "quarantined_at": now,
                        }
                        for r in bad
                    ],
                )
                audit += [
                    transition_row(
                        r["tenant"],
                        r["event_id"],
                        Layer.SENSORY,
                        None,
                        "quarantine",
                        now,
                        flow_run_id,
                        seqs[r["tenant"]],
                        {"field": r["field"], "reason": r["reason"]},
                    )
                    for r in bad
                ]
            self.insert_ignore(conn, TRANSITIONS, audit)
            counts["routed"] = len(keep)
            counts["quarantined"] = len(bad)
            counts["skipped"] = len(working) + len(rejected) - len(keep) - len(bad)
        return counts

    def _claim_pending(self, conn: Connection, keys: list[tuple[str, str]], now: datetime) -> set[tuple[str, str]]:
        """Mark pending events as routed; returns the keys this transaction marked."""
        claimed: set[tuple[str, str]] = set()
        by_tenant: dict[str, list[str]] = {}
        for tenant, event_id in keys:
            by_tenant.setdefault(tenant, []).append(event_id)
        for tenant, ids in by_tenant.items():
            for start in range(0, len(ids), INSERT_CHUNK):
                chunk = ids[start : start + INSERT_CHUNK]
                result = conn.execute(
                    update(EVENTS)
                    .where(
                        EVENTS.c.tenant == tenant,
                        EVENTS.c.event_id.in_(chunk),
                        self.not_a_key(EVENTS.c.routed_at).is_(None),
                    )
                    .values(routed_at=now)
                    .returning(EVENTS.c.event_id)
                )
                claimed.update((tenant, r[0]) for r in result)
        return claimed

    def _raw_events(self, conn: Connection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
        import json

        out: dict[tuple[str, str], str] = {}
        by_tenant: dict[str, list[str]] = {}
        for tenant, event_id in keys:
            by_tenant.setdefault(tenant, []).append(event_id)
        for tenant, ids in by_tenant.items():
            for r in conn.execute(select(EVENTS).where(EVENTS.c.tenant == tenant, EVENTS.c.event_id.in_(ids))):
                m = r._mapping
                out[(tenant, m["event_id"])] = json.dumps(
                    {
                        "tenant": m["tenant"],
                        "event_id": m["event_id"],
                        "session": m["session_id"],
                        "actor": m["actor"],
                        "text": m["text"],
                        "at": m["at"].isoformat(),
                        "metadata": m["metadata"],
                    },
                    ensure_ascii=True,
                )
        return out

    def _touch_sessions(self, conn: Connection, working: Sequence[Mapping[str, Any]]) -> None:
        """Create or extend the session rows of newly routed working items."""
        spans: dict[tuple[str, str], tuple[datetime, datetime]] = {}
        for r in working:
            if r.get("scope", "session") != "session":
                continue
            key = (r["tenant"], r["session_id"])
            lo, hi = spans.get(key, (r["at"], r["at"]))
            spans[key] = (min(lo, r["at"]), max(hi, r["at"]))
        if not spans:
            return
        stmt = self._insert(SESSIONS)
        stmt = stmt.on_conflict_do_update(
            index_elements=[SESSIONS.c.tenant, SESSIONS.c.session_id],
            set_={
                "first_event_at": func.min(SESSIONS.c.first_event_at, stmt.excluded.first_event_at)
                if self.dialect == "sqlite"
                else func.least(SESSIONS.c.first_event_at, stmt.excluded.first_event_at),
                "last_event_at": func.max(SESSIONS.c.last_event_at, stmt.excluded.last_event_at)
                if self.dialect == "sqlite"
                else func.greatest(SESSIONS.c.last_event_at, stmt.excluded.last_event_at),
                # New turns reopen a session that was already turned into an episode; a close asked for after the
                # newest turn still stands, an older one does not.
                "episode_id": None,
                "close_requested_at": case(
                    (SESSIONS.c.close_requested_at >= stmt.excluded.last_event_at, SESSIONS.c.close_requested_at),
                    else_=None,
                ),
            },
        )
        rows = [
            {"tenant": t, "session_id": s, "first_event_at": lo, "last_event_at": hi}
            for (t, s), (lo, hi) in sorted(spans.items())
        ]
        for start in range(0, len(rows), INSERT_CHUNK):
            conn.execute(stmt, rows[start : start + INSERT_CHUNK])

    def request_session_close(self, tenant: str, session_id: str, at: datetime) -> None:
        """Mark a session to be closed by the next ``close_sessions`` run, whether or not it has been ingested."""
        stmt = self._insert(SESSIONS).values(
            tenant=tenant, session_id=session_id, first_event_at=at, last_event_at=at, close_requested_at=at
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[SESSIONS.c.tenant, SESSIONS.c.session_id],
            set_={"close_requested_at": stmt.excluded.close_requested_at},
        )
        with self.write() as conn:
            conn.execute(stmt)

    # -- leases -----------------------------------------------------------------------------------------------

    def _claim(
        self,
        table: Table,
        key_cols: Sequence[str],
        ready: Any,
        order_by: Any,
        owner: str,
        lease_seconds: float,
        limit: int,
        tenant: str | Sequence[str] | None,
    ) -> list[tuple[str, ...]]:
        """Lease up to ``limit`` ready rows of ``table`` to ``owner``; returns their keys.

        A lease is a pair of columns (owner, expiry) set in one statement, so it survives the process that took it
        and expires by itself when that process dies. Leases use the wall clock, never a flow's ``as_of``. On
        PostgreSQL, ``FOR UPDATE SKIP LOCKED`` lets two claimers take disjoint rows at the same time; SQLite
        serialises writers, which has the same effect.
        """
        from datetime import UTC, timedelta

        now = datetime.now(UTC)
        keys = [table.c[k] for k in key_cols]
        free = or_(table.c.lease_expires_at.is_(None), table.c.lease_expires_at < now)
        pick = select(*keys).where(ready, free)
        if isinstance(tenant, str):
            pick = pick.where(table.c.tenant == tenant)
        elif tenant is not None:
            pick = pick.where(table.c.tenant.in_(sorted(tenant)))
        pick = pick.order_by(*order_by).limit(limit)
        if self.dialect == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        with self.write() as conn:
            # Pick, then lease, in one transaction: an UPDATE ... WHERE key IN (SELECT ... LIMIT n) may evaluate
            # its subquery more than once on PostgreSQL and lease more than n rows. The picked rows stay locked
            # (FOR UPDATE) until the lease is written.
            picked = [tuple(r) for r in conn.execute(pick)]
            if not picked:
                return []
            leased: list[tuple[str, ...]] = []
            for chunk in pair_chunks(picked):
                leased += [
                    tuple(r)
                    for r in conn.execute(
                        update(table)
                        .where(self._pairs_in(*keys, chunk))
                        .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds))
                        .returning(*keys)
                    )
                ]
            return sorted(leased)

    def _check_leases(
        self, conn: Connection, table: Table, key_cols: Sequence[str], keys: Sequence[tuple[str, ...]], owner: str
    ) -> None:
        """Raise ``LeaseLost`` unless every key is still leased to ``owner`` (checked under the write lock).

        On PostgreSQL the rows are locked until the transaction ends: a claim by another worker (``FOR UPDATE SKIP
        LOCKED``) then passes over them, instead of taking them over between this check and the commit's writes,
        which would commit the batch under a lease it no longer holds. SQLite's writer holds the database."""
        from engram.errors import LeaseLost

        held = 0
        cols = [table.c[k] for k in key_cols]
        for chunk in pair_chunks(keys):
            if self.dialect == "postgresql":
                query = select(*cols).where(self._pairs_in(*cols, chunk), table.c.lease_owner == owner)
                held += len(conn.execute(query.with_for_update()).all())
                continue
            query = select(func.count()).select_from(table)
            held += conn.execute(query.where(self._pairs_in(*cols, chunk), table.c.lease_owner == owner)).scalar_one()
        if held != len(keys):
            raise LeaseLost(
                f"{len(keys) - held} of {len(keys)} claimed {table.name} rows were taken over by another worker; "
                "this batch was not written and will be done by the new holder"
            )

    # -- working -> episodic -------------------------------------------------------------------------------------

    def claim_sessions_to_close(
        self,
        as_of: datetime,
        idle_seconds: float,
        owner: str,
        lease_seconds: float = 300,
        limit: int = 500,
        tenant: str | None = None,
    ) -> list[tuple[str, str]]:
        """Lease sessions that are over: closed explicitly at or before ``as_of``, or idle for ``idle_seconds``."""
        from datetime import timedelta

        cutoff = as_of - timedelta(seconds=idle_seconds)
        ready = and_(
            SESSIONS.c.episode_id.is_(None),
            or_(
                and_(SESSIONS.c.close_requested_at.is_not(None), SESSIONS.c.close_requested_at <= as_of),
                SESSIONS.c.last_event_at < cutoff,
            ),
        )
        return self._claim(
            SESSIONS, ("tenant", "session_id"), ready, (SESSIONS.c.last_event_at,), owner, lease_seconds, limit, tenant
        )

    def close_sessions(
        self,
        sessions: Sequence[tuple[str, str]],
        owner: str,
        as_of: datetime,
        flow_run_id: str | None,
        summarize: Any,
    ) -> dict[str, int]:
        """Turn leased sessions into episodes: their working items become ordered turns, in one transaction.

        Args:
            summarize: ``f(turn rows) -> str``, the extractive summary (``engram.consolidate.summarize_episode``).
                A summary that raises does not hold back its session nor the batch: the episode is written with
                an empty summary (every turn is kept) and a quarantine row (source ``close_sessions``, field
                ``summary``) gives the error. When every summary of a batch of several episodes raises, the
                summarizer itself is broken: its first error is raised and nothing of the batch is written.

        Returns:
            counts: ``episodes``, ``turns``, ``empty`` (sessions that had no working items left),
            ``unsummarized`` (episodes written without a summary because ``summarize`` raised).
        """
        counts = {"episodes": 0, "turns": 0, "empty": 0, "unsummarized": 0}
        if not sessions:
            return counts
        with self.write() as conn:
            seqs = self.bump_seq(conn, {t for t, _ in sessions}, as_of)
            self._check_leases(conn, SESSIONS, ("tenant", "session_id"), sessions, owner)
            items: list[dict[str, Any]] = []
            for chunk in pair_chunks(sessions):
                items += _dicts(
                    conn.execute(
                        select(WORKING).where(
                            self._pairs_in(WORKING.c.tenant, WORKING.c.session_id, chunk), WORKING.c.scope == "session"
                        )
                    )
                )
            by_session: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for it in items:
                by_session.setdefault((it["tenant"], it["session_id"]), []).append(it)
            episodes, turns, audit, closed, unsummarized = [], [], [], [], []
            first_error: Exception | None = None
            for tenant, session_id in sessions:
                rows = sorted(by_session.get((tenant, session_id), []), key=lambda r: (r["at"], r["item_id"]))
                if not rows:
                    counts["empty"] += 1
                    closed.append({"t": tenant, "s": session_id, "e": ""})
                    continue
                episode_id = stable_id("ep", tenant, session_id, rows[0]["item_id"])
                ep_turns = [
                    {
                        "tenant": tenant,
                        "episode_id": episode_id,
                        "position": i,
                        "item_id": r["item_id"],
                        "event_id": r["event_id"],
                        "actor": r["actor"],
                        "text": r["text"],
                        "at": r["at"],
                        "tags": r["tags"],
                        "metadata": r["metadata"],
                        "archived_manifest_id": None,
                        "seq": seqs[tenant],
                    }
                    for i, r in enumerate(rows)
                ]
                tags = sorted({t for r in rows for t in (r["tags"] or [])})
                try:
                    summary = summarize(ep_turns)
                except Exception as exc:  # noqa: BLE001 - the episode's own failure, recorded with it
                    summary, first_error = "", first_error or exc
                    unsummarized.append(
                        _episode_quarantine_row(
                            tenant,
                            episode_id,
                            "close_sessions",
                            "summary",
                            failure_reason(exc),
                            as_of,
                            flow_run_id,
                            {"session_id": session_id},
                        )
                    )
                episodes.append(
                    {
                        "tenant": tenant,
                        "episode_id": episode_id,
                        "session_id": session_id,
                        "started_at": rows[0]["at"],
                        "ended_at": rows[-1]["at"],
                        "participants": list(dict.fromkeys(r["actor"] for r in rows)),
                        "summary": summary,
                        "turn_count": len(rows),
                        "tags": tags,
                        "created_run_id": flow_run_id,
                        "consolidated_at": None,
                        "consolidated_run_id": None,
                        "lease_owner": None,
                        "lease_expires_at": None,
                        "archived_manifest_id": None,
                        "seq": seqs[tenant],
                    }
                )
                turns += ep_turns
                audit += [
                    transition_row(
                        tenant,
                        r["item_id"],
                        Layer.WORKING,
                        Layer.EPISODIC,
                        "close_session",
                        as_of,
                        flow_run_id,
                        seqs[tenant],
                        {"episode_id": episode_id, "position": r["position"]},
                    )
                    for r in ep_turns
                ]
                closed.append({"t": tenant, "s": session_id, "e": episode_id})
            if first_error is not None and failed_whole(len(episodes), len(unsummarized)):
                # Not one summary of the batch could be made: the summarizer is broken, not an episode. Fail the
                # batch (nothing written) so that it is closed with its summaries once the summarizer is fixed.
                raise first_error
            self.insert_ignore(conn, EPISODES, episodes)
            self.insert_ignore(conn, TURNS, turns)
            self.insert_ignore(conn, TRANSITIONS, audit)
            self.insert_ignore(conn, QUARANTINE, unsummarized)
            keys = [(r["tenant"], r["item_id"]) for r in items]
            for chunk in pair_chunks(keys):
                conn.execute(WORKING.delete().where(self._pairs_in(WORKING.c.tenant, WORKING.c.item_id, chunk)))
            for c in closed:
                conn.execute(
                    update(SESSIONS)
                    .where(SESSIONS.c.tenant == c["t"], SESSIONS.c.session_id == c["s"])
                    .values(episode_id=c["e"], lease_owner=None, lease_expires_at=None)
                )
            counts["episodes"] = len(episodes)
            counts["turns"] = len(turns)
            counts["unsummarized"] = len(unsummarized)
        return counts

    def resummarize_episodes(
        self, tenant: str, summarize: Any, now: datetime, flow_run_id: str | None = None, batch_size: int = 200
    ) -> dict[str, int]:
        """Summarize again the tenant's hot episodes that were written without a summary because ``summarize``
        raised (``close_sessions``: each is named by a quarantine row, source ``close_sessions``, field ``summary``),
        typically once the summarizer is fixed.

        The episodes go in batches of ``batch_size``, each in two steps, so that memory holds one batch's turns:
        its turns are read and summarized outside any write transaction; its summaries are then written in one
        transaction, each only while the episode's summary is still empty and it is hot, with an audit row
        (``resummarize``) and a new change stamp (so that an archive copy taken before, with the empty summary, is
        not taken for it). A batch written stays written if a later one fails; a rerun finds what is left. An
        episode whose summary raises again, or comes out empty, is left as it is. The quarantine rows stay, as the
        record of the failure.

        A forget must not come back through a summary: an episode that lost turns to a forget (fewer turns than it
        was written with) is skipped, and when a forget of the tenant commits between a batch's read and its write
        (the tenant's epoch moved), nothing of that batch is written and its summaries count as skipped; a rerun
        does the rest. The epoch also moves when an archive compaction of the tenant commits: a batch that meets
        one is skipped the same way.

        Returns:
            ``episodes`` (written without a summary and still hot), ``resummarized``, ``failed`` (raised again),
            ``empty`` (the summarizer found nothing to say) and ``skipped`` (turns forgotten, or changed meanwhile).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size: at least 1, not {batch_size}")
        counts = {"episodes": 0, "resummarized": 0, "failed": 0, "empty": 0, "skipped": 0}
        named: set[str] = set()
        written_with: dict[str, int] = {}
        with self.read() as conn:
            for payload in conn.execute(
                select(QUARANTINE.c.raw_payload).where(
                    QUARANTINE.c.tenant == tenant,
                    QUARANTINE.c.source == "close_sessions",
                    QUARANTINE.c.field == "summary",
                )
            ).scalars():
                try:
                    episode_id = _json_loads(payload).get("episode_id")
                except (ValueError, AttributeError):  # not a row engram wrote: nothing of an episode to find
                    continue
                if isinstance(episode_id, str):
                    named.add(episode_id)
            ids = sorted(named)
            for start in range(0, len(ids), INSERT_CHUNK):
                chunk = ids[start : start + INSERT_CHUNK]
                for episode_id, turn_count in conn.execute(
                    select(EPISODES.c.episode_id, EPISODES.c.turn_count).where(
                        EPISODES.c.tenant == tenant,
                        EPISODES.c.episode_id.in_(chunk),
                        EPISODES.c.summary == "",
                        EPISODES.c.archived_manifest_id.is_(None),
                    )
                ):
                    written_with[episode_id] = turn_count
        waiting = sorted(written_with)
        counts["episodes"] = len(waiting)
        for start in range(0, len(waiting), batch_size):
            batch = {e: written_with[e] for e in waiting[start : start + batch_size]}
            self._resummarize_batch(tenant, batch, summarize, now, flow_run_id, counts)
        return counts

    def _resummarize_batch(
        self,
        tenant: str,
        written_with: Mapping[str, int],
        summarize: Any,
        now: datetime,
        flow_run_id: str | None,
        counts: dict[str, int],
    ) -> None:
        """One batch of ``resummarize_episodes``: read the turns of the episodes (id -> turns written with),
        summarize them, and write the summaries in one transaction unless a forget of the tenant committed
        meanwhile; adds to ``counts``."""
        ids = sorted(written_with)
        turns: dict[str, list[dict[str, Any]]] = {}
        with self.read() as conn:
            epoch = conn.execute(select(TENANTS.c.epoch).where(TENANTS.c.tenant == tenant)).scalar()
            for start in range(0, len(ids), INSERT_CHUNK):
                for r in _dicts(
                    conn.execute(
                        select(TURNS)
                        .where(TURNS.c.tenant == tenant, TURNS.c.episode_id.in_(ids[start : start + INSERT_CHUNK]))
                        .order_by(TURNS.c.episode_id, TURNS.c.position)
                    )
                ):
                    turns.setdefault(r["episode_id"], []).append(r)
        summaries: dict[str, str] = {}
        for episode_id in ids:
            if len(turns.get(episode_id, [])) != written_with[episode_id]:
                counts["skipped"] += 1  # a forget took some of its turns: a summary of the rest could name the subject
                continue
            try:
                summary = summarize(turns.pop(episode_id, []))
            except Exception:  # noqa: BLE001 - the episode's own failure, as when it was closed: it waits again
                counts["failed"] += 1
                continue
            if summary:
                summaries[episode_id] = summary
            else:
                counts["empty"] += 1
        if not summaries:
            return
        with self.write() as conn:
            seq = self.bump_seq(conn, [tenant], now)[tenant]  # holds the tenant's row: no forget commits until the end
            if conn.execute(select(TENANTS.c.epoch).where(TENANTS.c.tenant == tenant)).scalar() != epoch:
                counts["skipped"] += len(summaries)
                return
            audit = []
            for episode_id, summary in sorted(summaries.items()):
                written = conn.execute(
                    update(EPISODES)
                    .where(
                        EPISODES.c.tenant == tenant,
                        EPISODES.c.episode_id == episode_id,
                        EPISODES.c.summary == "",
                        EPISODES.c.archived_manifest_id.is_(None),
                    )
                    .values(summary=summary, seq=seq)
                ).rowcount
                if written:
                    audit.append(
                        transition_row(
                            tenant,
                            episode_id,
                            Layer.EPISODIC,
                            Layer.EPISODIC,
                            "resummarize",
                            now,
                            flow_run_id,
                            seq,
                            {"summary_chars": len(summary)},
                            key=str(seq),
                        )
                    )
            self.insert_ignore(conn, TRANSITIONS, audit)
        counts["resummarized"] += len(audit)
        counts["skipped"] += len(summaries) - len(audit)  # archived or summarized meanwhile

    def expire_working(
        self, as_of: datetime, flow_run_id: str | None, limit: int = 5_000, tenant: str | None = None
    ) -> int:
        """Discard working items past their TTL that belong to no open session; each discard is audited.

        Task-scoped items are scratch memory and never become episodes; a session-scoped item can only be left
        behind by a session that was already turned into an episode.
        """
        closed_session = (
            select(SESSIONS.c.session_id)
            .where(
                SESSIONS.c.tenant == WORKING.c.tenant,
                SESSIONS.c.session_id == WORKING.c.session_id,
                SESSIONS.c.episode_id.is_not(None),
            )
            .exists()
        )
        query = select(WORKING.c.tenant, WORKING.c.item_id, WORKING.c.scope, WORKING.c.expires_at).where(
            WORKING.c.expires_at <= as_of, or_(WORKING.c.scope == "task", closed_session)
        )
        if tenant is not None:
            query = query.where(WORKING.c.tenant == tenant)
        query = query.order_by(WORKING.c.expires_at).limit(limit)
        with self.write() as conn:
            rows = conn.execute(query).all()
            if not rows:
                return 0
            seqs = self.bump_seq(conn, {r.tenant for r in rows}, as_of)
            self.insert_ignore(
                conn,
                TRANSITIONS,
                [
                    transition_row(
                        r.tenant,
                        r.item_id,
                        Layer.WORKING,
                        None,
                        "expire",
                        as_of,
                        flow_run_id,
                        seqs[r.tenant],
                        {"scope": r.scope, "expired_at": r.expires_at.isoformat()},
                    )
                    for r in rows
                ],
            )
            keys = [(r.tenant, r.item_id) for r in rows]
            for chunk in pair_chunks(keys):
                conn.execute(WORKING.delete().where(self._pairs_in(WORKING.c.tenant, WORKING.c.item_id, chunk)))
        return len(rows)

    # -- episodic -> semantic ----------------------------------------------------------------------------------

    def claim_episodes(
        self,
        as_of: datetime,
        owner: str,
        lease_seconds: float = 300,
        limit: int = 200,
        tenant: str | Sequence[str] | None = None,
    ) -> list[tuple[str, str]]:
        """Lease episodes that ended by ``as_of`` and are not consolidated yet, of one tenant or several; not those
        that ``consolidate_attempts`` runs failed on (set aside, see ``retry_set_aside``)."""
        ready = and_(
            EPISODES.c.consolidated_at.is_(None),
            EPISODES.c.archived_manifest_id.is_(None),
            EPISODES.c.ended_at <= as_of,
            _not_set_aside(self.consolidate_attempts),
        )
        return self._claim(
            EPISODES,
            ("tenant", "episode_id"),
            ready,
            (EPISODES.c.ended_at, EPISODES.c.episode_id),
            owner,
            lease_seconds,
            limit,
            tenant,
        )

    def load_episodes(self, keys: Sequence[tuple[str, str]]) -> tuple[Any, Any]:
        """The episodes and their turns, as DataFrames in the consolidation contract's columns."""
        import pandas as pd

        episodes: list[dict[str, Any]] = []
        turns: list[dict[str, Any]] = []
        with self.read() as conn:
            for chunk in pair_chunks(keys):
                episodes += _dicts(
                    conn.execute(
                        select(EPISODES).where(self._pairs_in(EPISODES.c.tenant, EPISODES.c.episode_id, chunk))
                    )
                )
                turns += _dicts(
                    conn.execute(
                        select(TURNS)
                        .where(self._pairs_in(TURNS.c.tenant, TURNS.c.episode_id, chunk))
                        .order_by(TURNS.c.tenant, TURNS.c.episode_id, TURNS.c.position)
                    )
                )
        return pd.DataFrame(episodes), pd.DataFrame(turns)

    def commit_consolidation(
        self,
        episodes: Sequence[tuple[str, str]],
        candidates: Any,
        owner: str,
        as_of: datetime,
        flow_run_id: str | None,
        plan: Any,
        vectors: Mapping[str, bytes] | None = None,
        held: Mapping[tuple[str, str], str] | None = None,
        failed_whole: bool = False,
        rejected: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, int]:
        """Apply a batch's candidate facts to the semantic layer and mark its episodes consolidated, atomically;
        ``rejected`` (quarantine rows of the facts the quality gate turned away) are written in the same
        transaction, so that a fact the gate refused is kept with its reason when its episode is marked done.

        The plan is made inside the transaction, after the tenant's row lock is held, from the current items as
        they are then: two consolidations of different episodes that distil the same fact cannot both create it.
        The episodes' leases are checked under the same lock; a lost lease rolls everything back.

        Args:
            candidates: the consolidator's DataFrame (``engram.consolidate.FACT_COLUMNS``).
            plan: ``engram.consolidate.plan_changes``.
            vectors: embeddings computed before the transaction, by candidate text; stored with new items.
            held: episodes of the batch that the consolidator failed on, ``(tenant, episode_id) -> reason``: they
                are not in ``episodes`` and stay unconsolidated under their lease until it expires (claims skip
                them until then), and each gets a quarantine row (source ``consolidate``) with its reason, one per
                episode and kind of error. Their leases are checked with the others': a lost one rolls back the
                batch, quarantine rows included, as for any lost lease.
                With the store's ``consolidate_attempts``, each held-back episode's ``consolidation_failures``
                goes up by one, and at that count the episode is set aside (``claim_episodes``).
            failed_whole: the batch (of several) failed on every episode: the consolidator may be what failed (an
                outage), so only the episodes that a run already failed on alone, beside others it distilled,
                have the failure counted; a first failure is not.

        Returns:
            counts: ``episodes`` (marked consolidated), ``candidates``, ``new``, ``merged``, ``superseded``,
            ``held_back``, and ``set_aside`` (held-back episodes whose count reached ``consolidate_attempts``).
        """
        import pandas as pd

        held = dict(held or {})
        counts = {"episodes": 0, "candidates": int(len(candidates)), "new": 0, "merged": 0, "superseded": 0}
        counts["held_back"] = len(held)
        counts["set_aside"] = 0
        if not episodes and not held:
            return counts
        tenants = {t for t, _ in episodes} | {t for t, _ in held}
        with self.write() as conn:
            seqs = self.bump_seq(conn, tenants, as_of)
            self._check_leases(conn, EPISODES, ("tenant", "episode_id"), [*episodes, *held], owner)
            self.insert_ignore(conn, QUARANTINE, list(rejected))
            if held:
                rows = [
                    _episode_quarantine_row(t, e, "consolidate", "episode", why, as_of, flow_run_id, {})
                    for (t, e), why in sorted(held.items())
                ]
                self.insert_ignore(conn, QUARANTINE, rows)
                counts["set_aside"] = self._count_failures(conn, sorted(held), failed_whole)
            if len(candidates):
                candidates = self._with_living_sources(conn, candidates)
            existing_rows: list[dict[str, Any]] = []
            if len(candidates):
                keys = sorted({(r.tenant, r.fact_key) for r in candidates[["tenant", "fact_key"]].itertuples()})
                for chunk in pair_chunks(keys):
                    existing_rows += _dicts(
                        conn.execute(
                            select(SEMANTIC).where(
                                self._pairs_in(SEMANTIC.c.tenant, SEMANTIC.c.fact_key, chunk),
                                SEMANTIC.c.valid_to.is_(None),
                            )
                        )
                    )
            self._with_legacy_archived_hashes(conn, existing_rows)
            existing = pd.DataFrame(existing_rows)
            if len(existing):
                lineage = self._lineage_among(conn, existing_rows, _sources_by_tenant(candidates))
                existing["sources"] = [lineage.get((r["tenant"], r["item_id"]), []) for r in existing_rows]
            if len(candidates):
                closed = self._closed_versions(conn, set(keys) - {(r["tenant"], r["fact_key"]) for r in existing_rows})
                if closed:
                    existing = pd.concat([existing, pd.DataFrame(closed)], ignore_index=True)
            changes = plan(candidates, existing, as_of) if len(candidates) else None
            episode_of = self._episode_of_events(conn, episodes)
            if changes is not None:
                self._apply_plan(conn, changes, existing_rows, seqs, as_of, flow_run_id, episode_of, vectors or {})
                counts.update({k: v for k, v in changes.counts.items()})
            done = 0
            for chunk in pair_chunks(episodes):
                # Re-stamp the turns so the search index picks up that their episode is now consolidated.
                by_tenant: dict[str, list[str]] = {}
                for tenant, episode_id in chunk:
                    by_tenant.setdefault(tenant, []).append(episode_id)
                for tenant, episode_ids in by_tenant.items():
                    conn.execute(
                        update(TURNS)
                        .where(TURNS.c.tenant == tenant, TURNS.c.episode_id.in_(episode_ids))
                        .values(seq=seqs[tenant])
                    )
                done += (
                    conn.execute(
                        update(EPISODES)
                        .where(
                            self._pairs_in(EPISODES.c.tenant, EPISODES.c.episode_id, chunk),
                            EPISODES.c.lease_owner == owner,
                        )
                        .values(
                            consolidated_at=as_of,
                            consolidated_run_id=flow_run_id,
                            lease_owner=None,
                            lease_expires_at=None,
                        )
                    ).rowcount
                    or 0
                )
            counts["episodes"] = done
        return counts

    def _count_failures(self, conn: Connection, held: Sequence[tuple[str, str]], only_counted: bool) -> int:
        """Add one to each held-back episode's ``consolidation_failures`` (with ``only_counted``, to those that
        have a count already); returns how many reached ``consolidate_attempts``. Without the limit, counts nothing."""
        limit = self.consolidate_attempts
        if limit is None:
            return 0
        failures = EPISODES.c.consolidation_failures
        reached = 0
        for chunk in pair_chunks(held):
            counted = conn.execute(
                update(EPISODES)
                .where(
                    self._pairs_in(EPISODES.c.tenant, EPISODES.c.episode_id, chunk),
                    failures.is_not(None) if only_counted else true(),
                )
                .values(consolidation_failures=func.coalesce(failures, 0) + 1)
                .returning(failures)
            ).scalars()
            reached += sum(1 for n in counted if n >= limit)
        return reached

    def set_aside_episodes(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """The unconsolidated episodes that ``consolidate_attempts`` consolidation runs failed on (set aside; none
        without the setting), oldest first: tenant, episode and session ids, when it ended, and the count."""
        if self.consolidate_attempts is None:
            return []
        query = select(
            EPISODES.c.tenant,
            EPISODES.c.episode_id,
            EPISODES.c.session_id,
            EPISODES.c.ended_at,
            EPISODES.c.consolidation_failures,
        ).where(
            EPISODES.c.consolidated_at.is_(None),
            EPISODES.c.archived_manifest_id.is_(None),
            EPISODES.c.consolidation_failures >= self.consolidate_attempts,
        )
        if tenant is not None:
            query = query.where(EPISODES.c.tenant == tenant)
        with self.read() as conn:
            rows = _dicts(conn.execute(query.order_by(EPISODES.c.ended_at, EPISODES.c.tenant, EPISODES.c.episode_id)))
        for r in rows:
            r["ended_at"] = _aware(r["ended_at"])
        return rows

    def retry_set_aside(self, tenant: str, episode_ids: Sequence[str] | None = None) -> int:
        """Clear the failure count of the tenant's episodes set aside (unconsolidated, at least
        ``consolidate_attempts`` failed runs), or of ``episode_ids`` among them, so that the first consolidation run
        after their lease expires takes them up; returns how many (none without the setting). A lease is left
        alone: a worker that holds one is not undone."""
        if self.consolidate_attempts is None:
            return 0
        conditions = [
            EPISODES.c.tenant == tenant,
            EPISODES.c.consolidated_at.is_(None),
            EPISODES.c.archived_manifest_id.is_(None),
            EPISODES.c.consolidation_failures >= self.consolidate_attempts,
        ]
        retry = update(EPISODES).values(consolidation_failures=None)
        with self.write() as conn:
            if episode_ids is None:
                return conn.execute(retry.where(*conditions)).rowcount or 0
            ids = sorted(set(episode_ids))
            return sum(
                conn.execute(retry.where(*conditions, EPISODES.c.episode_id.in_(ids[i : i + INSERT_CHUNK]))).rowcount
                or 0
                for i in range(0, len(ids), INSERT_CHUNK)
            )

    def _with_legacy_archived_hashes(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """Give each archived current version (a tombstone, its text blanked) whose ``content_hash`` column is null
        the hash its archive move recorded, so the plan can tell a restatement (merged into the tombstone) from a
        change (which supersedes it).

        A fallback for stores that predate the column: the archive keeps a tombstone's hash in the column since
        migration 0004, and only a row archived before it has the hash in its ``archive`` audit row's detail alone.
        A tombstone archived before the hash was recorded at all keeps None: the plan then treats a candidate as a
        change.
        """
        wanted = sorted(
            {(r["tenant"], r["item_id"]) for r in rows if r.get("archived_manifest_id") and not r.get("content_hash")}
        )
        if not wanted:
            return
        found: dict[tuple[str, str], str] = {}
        for chunk in pair_chunks(wanted):
            for r in conn.execute(
                select(TRANSITIONS.c.tenant, TRANSITIONS.c.item_id, TRANSITIONS.c.detail).where(
                    self._pairs_in(TRANSITIONS.c.tenant, TRANSITIONS.c.item_id, chunk),
                    TRANSITIONS.c.action == "archive",
                    TRANSITIONS.c.from_layer == Layer.SEMANTIC.value,
                )
            ):
                # Every archive move of an item records the same hash: a version's text never changes.
                if (r.detail or {}).get("content_hash"):
                    found[(r.tenant, r.item_id)] = r.detail["content_hash"]
        for r in rows:
            if (r["tenant"], r["item_id"]) in found and not r.get("content_hash"):
                r["content_hash"] = found[(r["tenant"], r["item_id"])]

    def _lineage_among(
        self, conn: Connection, items: list[dict[str, Any]], events: Mapping[str, set[str]]
    ) -> dict[tuple[str, str], list[str]]:
        """The lineage of ``items`` that names one of ``events`` (by tenant): ``(tenant, item_id) -> event ids``.

        All the plan asks of an item's lineage is whether it already holds a candidate's source (a rerun of the
        batch), so only those rows are read, through the lineage's event index. An item's whole lineage grows with
        every episode that restates its fact: reading all of it made each batch cost more as the store grew.
        """
        wanted = {(r["tenant"], r["item_id"]) for r in items}
        out: dict[tuple[str, str], list[str]] = {}
        for tenant, ids in events.items():
            ordered = sorted(ids)
            for start in range(0, len(ordered), INSERT_CHUNK):
                for r in conn.execute(
                    select(LINEAGE.c.item_id, LINEAGE.c.event_id).where(
                        LINEAGE.c.tenant == tenant, LINEAGE.c.event_id.in_(ordered[start : start + INSERT_CHUNK])
                    )
                ):
                    if (tenant, r.item_id) in wanted:
                        out.setdefault((tenant, r.item_id), []).append(r.event_id)
        return out

    def _with_living_sources(self, conn: Connection, candidates: Any) -> Any:
        """The candidate facts whose source events all still exist.

        A forget that committed after the episodes were read (it takes the same tenant lock) removed the others'
        events; writing such a fact would bring the forgotten subject back, with lineage to nothing.
        """
        wanted = _sources_by_tenant(candidates)
        present: set[tuple[str, str]] = set()
        for tenant, ids in wanted.items():
            ordered = sorted(ids)
            for start in range(0, len(ordered), INSERT_CHUNK):
                present.update(
                    (tenant, r[0])
                    for r in conn.execute(
                        select(EVENTS.c.event_id).where(
                            EVENTS.c.tenant == tenant, EVENTS.c.event_id.in_(ordered[start : start + INSERT_CHUNK])
                        )
                    )
                )
        keep = [
            all((tenant, e) in present for e in (sources if sources is not None else []))
            for tenant, sources in zip(candidates["tenant"], candidates["sources"], strict=True)
        ]
        return candidates if all(keep) else candidates[keep]

    def _episode_of_events(self, conn: Connection, episodes: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """The episode of each (tenant, event id) of the episodes' turns: event ids are unique within a tenant only,
        and a batch spans tenants."""
        out: dict[tuple[str, str], str] = {}
        for chunk in pair_chunks(episodes):
            for r in conn.execute(
                select(TURNS.c.tenant, TURNS.c.event_id, TURNS.c.episode_id).where(
                    self._pairs_in(TURNS.c.tenant, TURNS.c.episode_id, chunk)
                )
            ):
                out[(r.tenant, r.event_id)] = r.episode_id
        return out

    def _closed_versions(self, conn: Connection, keys: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
        """For (tenant, fact key) pairs with no current item, the highest version stored (closed: its current
        version was forgotten) and when the last one closed, as a row ``plan_changes`` reads only for its version;
        none for a key never seen."""
        out: list[dict[str, Any]] = []
        for chunk in pair_chunks(sorted(keys)):
            out += [
                {"tenant": t, "fact_key": k, "version": int(v), "valid_to": closed}
                for t, k, v, closed in conn.execute(
                    select(
                        SEMANTIC.c.tenant,
                        SEMANTIC.c.fact_key,
                        func.max(SEMANTIC.c.version),
                        func.max(SEMANTIC.c.valid_to),
                    )
                    .where(self._pairs_in(SEMANTIC.c.tenant, SEMANTIC.c.fact_key, chunk))
                    .group_by(SEMANTIC.c.tenant, SEMANTIC.c.fact_key)
                )
            ]
        return out

    def _apply_plan(
        self,
        conn: Connection,
        changes: Any,
        existing_rows: list[dict[str, Any]],
        seqs: dict[str, int],
        as_of: datetime,
        flow_run_id: str | None,
        episode_of: dict[tuple[str, str], str],
        vectors: Mapping[str, bytes],
    ) -> None:
        semantic_cols = {c.name for c in SEMANTIC.columns}
        new_rows = []
        lineage_rows = []
        audit = []
        for item in changes.new_items:
            tenant = item["tenant"]
            row = {k: v for k, v in item.items() if k in semantic_cols}
            row.update(seq=seqs[tenant], created_run_id=flow_run_id, embedding=vectors.get(item["text"]))
            new_rows.append(row)
            sources = list(dict.fromkeys(item.get("sources") or []))
            lineage_rows += [{"tenant": tenant, "item_id": item["item_id"], "event_id": e} for e in sources]
            audit.append(
                transition_row(
                    tenant,
                    item["item_id"],
                    Layer.EPISODIC,
                    Layer.SEMANTIC,
                    "consolidate",
                    as_of,
                    flow_run_id,
                    seqs[tenant],
                    {
                        "version": item.get("version", 1),
                        "episodes": sorted({episode_of[(tenant, e)] for e in sources if (tenant, e) in episode_of}),
                    },
                )
            )
        self.insert_ignore(conn, SEMANTIC, new_rows)
        by_id = {r["item_id"]: r for r in existing_rows}
        merged: list[dict[str, Any]] = []
        for item_id, merge in changes.merges.items():
            old = by_id[item_id]
            tenant = old["tenant"]
            last_seen = max(old["last_seen"], merge.get("last_seen") or old["last_seen"])
            merged.append(
                {
                    "_t": tenant,
                    "_id": item_id,
                    "_delta": int(merge.get("support_delta", 1)),
                    "_last_seen": last_seen,
                    "_seq": seqs[tenant],
                }
            )
            sources = list(dict.fromkeys(merge.get("sources") or []))
            lineage_rows += [{"tenant": tenant, "item_id": item_id, "event_id": e} for e in sources]
            audit.append(
                transition_row(
                    tenant,
                    item_id,
                    Layer.SEMANTIC,
                    Layer.SEMANTIC,
                    "merge",
                    as_of,
                    flow_run_id,
                    seqs[tenant],
                    {
                        "support_delta": int(merge.get("support_delta", 1)),
                        "sources": sources[:50],
                        "episodes": sorted({episode_of[(tenant, e)] for e in sources if (tenant, e) in episode_of}),
                    },
                    key=",".join(sorted(sources)),
                )
            )
        if merged:
            # One statement executed over every merge of the batch, not a statement per fact.
            conn.execute(
                update(SEMANTIC)
                .where(SEMANTIC.c.tenant == bindparam("_t"), SEMANTIC.c.item_id == bindparam("_id"))
                .values(
                    support_count=SEMANTIC.c.support_count + bindparam("_delta"),
                    last_seen=bindparam("_last_seen"),
                    seq=bindparam("_seq"),
                ),
                merged,
            )
        new_by_id = {r["item_id"]: r for r in new_rows}
        superseded: list[dict[str, Any]] = []
        for old_id, new_id_ in changes.supersessions.items():
            old = by_id[old_id]
            tenant = old["tenant"]
            valid_to = new_by_id[new_id_]["valid_from"] if new_id_ in new_by_id else as_of
            superseded.append({"_t": tenant, "_id": old_id, "_valid_to": valid_to, "_by": new_id_})
            audit.append(
                transition_row(
                    tenant,
                    old_id,
                    Layer.SEMANTIC,
                    Layer.SEMANTIC,
                    "supersede",
                    as_of,
                    flow_run_id,
                    seqs[tenant],
                    {"superseded_by": new_id_},
                )
            )
        if superseded:
            conn.execute(
                update(SEMANTIC)
                .where(
                    SEMANTIC.c.tenant == bindparam("_t"),
                    SEMANTIC.c.item_id == bindparam("_id"),
                    SEMANTIC.c.valid_to.is_(None),
                )
                .values(valid_to=bindparam("_valid_to"), superseded_by=bindparam("_by")),
                superseded,
            )
        self.insert_ignore(conn, LINEAGE, lineage_rows)
        self.insert_ignore(conn, TRANSITIONS, audit)

    # -- service: metrics and shards ---------------------------------------------------------------------------

    def consolidation_backlog(
        self, as_of: datetime, tenant: str | None = None
    ) -> dict[str, tuple[int, datetime | None]]:
        """Per tenant: how many episodes that ended by ``as_of`` wait for consolidation, and when the oldest ended;
        not counting those set aside (``claim_episodes``), which no run takes.

        It reads the waiting episodes only. Grouped by ``tenant`` as it is, SQLite would read every episode of
        every tenant through the index on (tenant, seq), which hands it rows in tenant order, rather than sort the
        waiting ones: the monitor's and ``scale``'s cost would grow with the layer's whole history."""
        q = (
            select(EPISODES.c.tenant, func.count(), func.min(EPISODES.c.ended_at))
            .where(
                EPISODES.c.consolidated_at.is_(None),
                EPISODES.c.archived_manifest_id.is_(None),
                EPISODES.c.ended_at <= as_of,
                _not_set_aside(self.consolidate_attempts),
            )
            .group_by(self.not_a_key(EPISODES.c.tenant))
        )
        if tenant is not None:
            q = q.where(EPISODES.c.tenant == tenant)
        with self.read() as conn:
            return {t: (n, _aware(oldest)) for t, n, oldest in conn.execute(q)}

    def record_metrics(self, rows: Sequence[Mapping[str, Any]], keep_after: datetime | None = None) -> int:
        """Store measurements; a measurement already recorded for (tenant, name, at) is kept as it was. With
        ``keep_after``, the measurements of the same names taken before it are deleted in the same transaction (by
        name and time, on ``ix_metrics_name_at``: each run deletes what expired since the one before), so that the
        table holds a window, not every run since the service began."""
        with self.write() as conn:
            written = self.insert_ignore(conn, METRICS, rows)
            if keep_after is not None:
                for name in sorted({r["name"] for r in rows}):
                    conn.execute(METRICS.delete().where(METRICS.c.name == name, METRICS.c.at < keep_after))
            return written

    def latest_metric(self, tenant: str, name: str, before: datetime) -> float | None:
        """The newest value of a measurement recorded before ``before``, or None."""
        with self.read() as conn:
            return conn.execute(
                select(METRICS.c.value)
                .where(METRICS.c.tenant == tenant, METRICS.c.name == name, METRICS.c.at < before)
                .order_by(METRICS.c.at.desc())
                .limit(1)
            ).scalar()

    def metric_history(self, tenant: str, prefix: str, limit: int = 500) -> list[dict[str, Any]]:
        """The newest ``limit`` measurements whose name starts with ``prefix``, oldest first."""
        with self.read() as conn:
            rows = conn.execute(
                select(METRICS.c.at, METRICS.c.name, METRICS.c.value)
                .where(METRICS.c.tenant == tenant, METRICS.c.name.startswith(prefix, autoescape=True))
                .order_by(METRICS.c.at.desc(), METRICS.c.name)
                .limit(limit)
            ).all()
        return [{"at": _aware(r.at), "name": r.name, "value": r.value} for r in reversed(rows)]

    def ensure_shards(self, pool: str, shard_count: int) -> int:
        """Make the pool's shard table hold exactly shards 0..shard_count-1; returns how many rows were added.

        A changed shard count drops the old rows first (a shard number means a different set of tenants under
        another count); a worker holding an old shard finds its lease gone and stops.
        """
        with self.write() as conn:
            conn.execute(SHARDS.delete().where(SHARDS.c.pool == pool, SHARDS.c.shard_count != shard_count))
            rows = [
                {"pool": pool, "shard": s, "shard_count": shard_count, "owner": None, "lease_expires_at": None}
                for s in range(shard_count)
            ]
            return len(self._insert_many(conn, SHARDS, [{**r, "processed": 0} for r in rows], "shard"))

    def claim_shard(
        self, pool: str, owner: str, lease_seconds: float, candidates: Sequence[int] | None = None
    ) -> tuple[int, int] | None:
        """Lease one free shard of the pool (the lowest-numbered among ``candidates``, when given) to ``owner``.

        Returns (shard, shard_count), or None when every candidate is leased. Like batch claims, on PostgreSQL
        ``FOR UPDATE SKIP LOCKED`` lets claimers take different shards at the same moment.
        """
        from datetime import UTC, timedelta

        now = datetime.now(UTC)
        free = or_(SHARDS.c.lease_expires_at.is_(None), SHARDS.c.lease_expires_at < now)
        pick = select(SHARDS.c.shard).where(SHARDS.c.pool == pool, free)
        if candidates is not None:
            if not candidates:
                return None
            pick = pick.where(SHARDS.c.shard.in_(sorted(candidates)))
        pick = pick.order_by(SHARDS.c.shard).limit(1)
        if self.dialect == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        with self.write() as conn:
            # Pick, then update, in two statements: inside ``UPDATE ... WHERE shard IN (subquery)`` PostgreSQL may
            # evaluate a LIMIT 1 subquery again for each row and lease several shards at once.
            shard = conn.execute(pick).scalar()
            if shard is None:
                return None
            row = conn.execute(
                update(SHARDS)
                .where(SHARDS.c.pool == pool, SHARDS.c.shard == shard, free)
                .values(owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds))
                .returning(SHARDS.c.shard, SHARDS.c.shard_count)
            ).first()
        return (row.shard, row.shard_count) if row else None

    def renew_shard(self, pool: str, shard: int, owner: str, lease_seconds: float, processed: int = 0) -> bool:
        """Extend ``owner``'s lease on a shard and add to its tally; False when the lease was lost."""
        from datetime import UTC, timedelta

        now = datetime.now(UTC)
        with self.write() as conn:
            return (
                conn.execute(
                    update(SHARDS)
                    .where(SHARDS.c.pool == pool, SHARDS.c.shard == shard, SHARDS.c.owner == owner)
                    .values(
                        lease_expires_at=now + timedelta(seconds=lease_seconds),
                        processed=SHARDS.c.processed + processed,
                    )
                ).rowcount
                == 1
            )

    def release_shard(self, pool: str, shard: int, owner: str) -> None:
        """End ``owner``'s lease on a shard; the owner stays recorded as the shard's last worker."""
        with self.write() as conn:
            conn.execute(
                update(SHARDS)
                .where(SHARDS.c.pool == pool, SHARDS.c.shard == shard, SHARDS.c.owner == owner)
                .values(lease_expires_at=None)
            )

    def shard_leases(self, pool: str) -> list[dict[str, Any]]:
        with self.read() as conn:
            rows = conn.execute(select(SHARDS).where(SHARDS.c.pool == pool).order_by(SHARDS.c.shard)).all()
        return [dict(r._mapping) for r in rows]

    def request_close_open_sessions(self, tenant: str | None, at: datetime) -> int:
        """Ask every open session (of one tenant, or all) to close at ``at``; returns how many were asked."""
        q = update(SESSIONS).where(SESSIONS.c.episode_id.is_(None), SESSIONS.c.close_requested_at.is_(None))
        if tenant is not None:
            q = q.where(SESSIONS.c.tenant == tenant)
        with self.write() as conn:
            return conn.execute(q.values(close_requested_at=at)).rowcount

    # -- archival ----------------------------------------------------------------------------------------------
    # The hot half of the archive protocol (engram.archive holds the object-storage half): pick cold rows, read them
    # whole, keep the manifest rows, and swap rows for tombstones (or back) in one transaction each.

    def archive_candidates(
        self,
        layer: Layer,
        as_of: datetime,
        rules: Any,
        tenant: str | None,
        limit: int,
    ) -> list[tuple[str, str]]:
        """Up to ``limit`` (tenant, id) keys of hot rows the retention rules send to the archive (for episodes: as
        many as hold ``limit`` rows with their turns, and at least one).

        Semantic: item versions not accessed (or, never accessed, not seen) for ``rules.semantic_idle``, below
        ``rules.min_salience``, or superseded (when ``rules.archive_superseded``). Episodic: consolidated episodes
        that ended more than ``rules.episode_age`` ago (their turns go with them).

        Keys come by tenant, then oldest first (the tenant's change stamp for facts, the end for episodes), in the
        order of an index of the hot rows only (``ix_semantic_hot_seq``, ``ix_episodes_unarchived``): a batch reads
        the hot rows, never the tombstones the archive left, however many there are.
        """
        if layer == Layer.SEMANTIC:
            idle_since = as_of - rules.semantic_idle
            cold = [
                func.coalesce(SEMANTIC.c.last_accessed, SEMANTIC.c.last_seen) < idle_since,
                SEMANTIC.c.salience < rules.min_salience,
            ]
            if rules.archive_superseded:
                cold.append(SEMANTIC.c.valid_to.is_not(None))
            query = select(SEMANTIC.c.tenant, SEMANTIC.c.item_id).where(
                SEMANTIC.c.archived_manifest_id.is_(None), or_(*cold)
            )
            table, oldest = SEMANTIC, SEMANTIC.c.seq
        elif layer == Layer.EPISODIC:
            cold_episodes = and_(
                EPISODES.c.archived_manifest_id.is_(None),
                EPISODES.c.consolidated_at.is_not(None),
                EPISODES.c.ended_at < as_of - rules.episode_age,
            )
            if tenant is not None:
                cold_episodes = and_(cold_episodes, EPISODES.c.tenant == tenant)
            # An episode goes with its turns: ``limit`` bounds the rows (episodes and turns), so that a batch of
            # long sessions holds as many rows as a batch of facts. The first episode is taken whatever its length.
            query = (
                select(EPISODES.c.tenant, EPISODES.c.episode_id, EPISODES.c.turn_count)
                .where(cold_episodes)
                .order_by(EPISODES.c.tenant, EPISODES.c.ended_at, EPISODES.c.episode_id)
                .limit(limit)
            )
            keys: list[tuple[str, str]] = []
            rows = 0
            with self.read() as conn:
                for t, episode_id, turns in conn.execute(query):
                    rows += 1 + int(turns or 0)
                    if keys and rows > limit:
                        break
                    keys.append((t, episode_id))
            return keys
        else:
            raise ValueError(f"layer: only semantic and episodic rows are archived, not {layer!r}")
        if tenant is not None:
            query = query.where(table.c.tenant == tenant)
        with self.read() as conn:
            return [tuple(r) for r in conn.execute(query.order_by(table.c.tenant, oldest).limit(limit))]

    def archive_rows_by_tenant(
        self, layer: Layer, keys: Sequence[tuple[str, str]]
    ) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """Whole hot rows of a batch of (tenant, id) keys, by tenant and table name, read in one transaction."""
        by_tenant: dict[str, set[str]] = {}
        for tenant, item_id in keys:
            by_tenant.setdefault(tenant, set()).add(item_id)

        def dicts(conn: Connection, query: Any) -> list[dict[str, Any]]:
            result = conn.execute(query)
            names = list(result.keys())
            return [dict(zip(names, r, strict=True)) for r in result]

        out: dict[str, dict[str, list[dict[str, Any]]]] = {}
        with self.read() as conn:
            for tenant, id_set in sorted(by_tenant.items()):
                ids = sorted(id_set)
                rows = out.setdefault(tenant, {})
                for start in range(0, len(ids), INSERT_CHUNK):
                    chunk = ids[start : start + INSERT_CHUNK]
                    if layer == Layer.SEMANTIC:
                        query = select(SEMANTIC).where(
                            SEMANTIC.c.tenant == tenant,
                            SEMANTIC.c.item_id.in_(chunk),
                            SEMANTIC.c.archived_manifest_id.is_(None),
                        )
                        rows.setdefault("semantic_items", []).extend(dicts(conn, query))
                        continue
                    episodes = dicts(
                        conn,
                        select(EPISODES).where(
                            EPISODES.c.tenant == tenant,
                            EPISODES.c.episode_id.in_(chunk),
                            EPISODES.c.archived_manifest_id.is_(None),
                        ),
                    )
                    rows.setdefault("episodes", []).extend(episodes)
                    turns = (
                        select(TURNS)
                        .where(TURNS.c.tenant == tenant, TURNS.c.episode_id.in_([e["episode_id"] for e in episodes]))
                        .order_by(TURNS.c.episode_id, TURNS.c.position)
                    )
                    rows.setdefault("episode_turns", []).extend(dicts(conn, turns))
        return out

    def add_manifest(self, row: Mapping[str, Any]) -> None:
        """Record a manifest (status ``written``) before its files are uploaded, so a crash leaves a trace."""
        self.add_manifests([row])

    def add_manifests(
        self, rows: Sequence[Mapping[str, Any]], epochs: Mapping[str, int] | None = None
    ) -> list[Mapping[str, Any]]:
        """Record a batch's manifests (status ``written``) in one transaction, before any of their files is uploaded;
        returns the rows recorded.

        With ``epochs`` (each tenant's epoch read before the manifests' rows were: ``tenant_epochs``), a manifest of a
        tenant whose epoch moved since is not recorded: a forget (or a compaction) rewrote the tenant meanwhile, and
        the rows read may hold what a forget removed."""
        if not rows:
            return []
        with self.write() as conn:
            if epochs is not None:
                # Read under a shared lock on PostgreSQL: a forget holds its tenant's row from its first write to its
                # commit, so the epoch read here is the one after it (SQLite's writer holds the database).
                now = self._epochs(conn, sorted(epochs), lock=True)
                rows = [r for r in rows if now.get(r["tenant"], 0) == epochs.get(r["tenant"], 0)]
            self.insert_ignore(conn, MANIFESTS, rows)
        return list(rows)

    def tenant_epochs(self, tenants: Iterable[str]) -> dict[str, int]:
        """Each tenant's epoch (``tenant_epoch``), read in one statement per chunk."""
        with self.read() as conn:
            return self._epochs(conn, sorted(set(tenants)))

    def _epochs(self, conn: Connection, tenants: Sequence[str], lock: bool = False) -> dict[str, int]:
        out: dict[str, int] = {}
        for start in range(0, len(tenants), INSERT_CHUNK):
            query = select(TENANTS.c.tenant, TENANTS.c.epoch).where(
                TENANTS.c.tenant.in_(tenants[start : start + INSERT_CHUNK])
            )
            if lock and self.dialect == "postgresql":
                query = query.order_by(TENANTS.c.tenant).with_for_update(read=True)
            out.update(conn.execute(query).all())
        return out

    def mark_manifests_verified(self, keys: Sequence[tuple[str, str]]) -> None:
        """Move the (tenant, manifest id) manifests still ``written`` to ``verified``, in one statement per tenant."""
        by_tenant: dict[str, list[str]] = {}
        for tenant, manifest_id in keys:
            by_tenant.setdefault(tenant, []).append(manifest_id)
        if not by_tenant:
            return
        with self.write() as conn:
            for tenant, ids in sorted(by_tenant.items()):
                conn.execute(
                    update(MANIFESTS)
                    .where(
                        MANIFESTS.c.tenant == tenant,
                        MANIFESTS.c.manifest_id.in_(sorted(ids)),
                        MANIFESTS.c.status == "written",
                    )
                    .values(status="verified")
                )

    def set_manifest(self, tenant: str, manifest_id: str, **values: Any) -> None:
        """Change a manifest's status, files or row count."""
        with self.write() as conn:
            conn.execute(
                update(MANIFESTS)
                .where(MANIFESTS.c.tenant == tenant, MANIFESTS.c.manifest_id == manifest_id)
                .values(**values)
            )

    def swap_manifest_files(
        self,
        tenant: str,
        manifest_id: str,
        old_files: Sequence[Mapping[str, Any]],
        new_files: Sequence[Mapping[str, Any]],
    ) -> bool:
        """Point a manifest at ``new_files`` if it still lists ``old_files``; returns whether it did.

        The check and the change are one transaction under the row's lock: a forget's commit point. Two forgets that
        rewrote the same files from the same copy cannot both commit, so neither brings back what the other removed.
        """
        key = and_(MANIFESTS.c.tenant == tenant, MANIFESTS.c.manifest_id == manifest_id)
        with self.write() as conn:
            files = conn.execute(select(MANIFESTS.c.files).where(key).with_for_update()).scalar()
            if files != [dict(f) for f in old_files]:
                return False
            conn.execute(
                update(MANIFESTS)
                .where(key)
                .values(files=[dict(f) for f in new_files], row_count=sum(f["rows"] for f in new_files))
            )
        return True

    def drop_manifest(self, tenant: str, manifest_id: str) -> int:
        """Delete a manifest row that no tombstone points at (a discarded write); returns 1 when deleted.

        The row is locked first (on PostgreSQL; SQLite serialises writers): a commit of the same manifest either
        finished before, and its tombstones make this raise, or waits and then finds the manifest gone.
        """
        key = and_(MANIFESTS.c.tenant == tenant, MANIFESTS.c.manifest_id == manifest_id)
        pointed = or_(
            *(
                select(t.c.tenant).where(t.c.tenant == tenant, t.c.archived_manifest_id == manifest_id).exists()
                for t in (SEMANTIC, EPISODES, TURNS)
            )
        )
        with self.write() as conn:
            if conn.execute(select(MANIFESTS.c.manifest_id).where(key).with_for_update()).first() is None:
                return 0
            if conn.execute(select(pointed)).scalar():
                raise StoreError(f"manifest {manifest_id} still holds archived rows of tenant {tenant!r}")
            return conn.execute(MANIFESTS.delete().where(key)).rowcount or 0

    def commit_compaction(
        self,
        tenant: str,
        manifest_id: str,
        old: Sequence[tuple[str, Sequence[Mapping[str, Any]]]],
        now: datetime,
    ) -> bool:
        """A compaction's commit point (see ``engram.compaction``): if every (manifest id, files) of ``old`` is still
        committed with those files and the ``compacting`` manifest is still there, point the old manifests'
        tombstones at it, delete their rows, mark it ``committed`` and move the tenant's epoch, in one transaction;
        returns whether it did.

        The tenant's row is locked first (as an archive commit does; on SQLite the first write serialises), then the
        manifest rows; the epoch makes every search index of the tenant load its archive again.
        """
        old_ids = sorted(manifest_id_ for manifest_id_, _ in old)
        expected = {manifest_id_: [dict(f) for f in files] for manifest_id_, files in old}
        try:
            with self.write() as conn:
                self._commit_compaction(conn, tenant, manifest_id, old_ids, expected, now)
        except _Changed:
            return False
        return True

    def _commit_compaction(
        self,
        conn: Connection,
        tenant: str,
        manifest_id: str,
        old_ids: list[str],
        expected: dict[str, list[dict[str, Any]]],
        now: datetime,
    ) -> None:
        self.bump_seq(conn, [tenant], now)
        query = select(MANIFESTS.c.manifest_id, MANIFESTS.c.files, MANIFESTS.c.status).where(
            MANIFESTS.c.tenant == tenant, MANIFESTS.c.manifest_id.in_([*old_ids, manifest_id])
        )
        if self.dialect == "postgresql":
            query = query.with_for_update()
        found = {r.manifest_id: r for r in conn.execute(query)}
        new = found.pop(manifest_id, None)
        if new is None or new.status != "compacting":
            raise _Changed  # dropped by a forget or by another compaction's clean-up
        if set(found) != set(old_ids) or any(
            r.status != "committed" or r.files != expected[i] for i, r in found.items()
        ):
            raise _Changed  # a forget rewrote one of them, or another compaction merged it
        for table in (SEMANTIC, EPISODES, TURNS):
            conn.execute(
                update(table)
                .where(table.c.tenant == tenant, table.c.archived_manifest_id.in_(old_ids))
                .values(archived_manifest_id=manifest_id)
            )
        conn.execute(MANIFESTS.delete().where(MANIFESTS.c.tenant == tenant, MANIFESTS.c.manifest_id.in_(old_ids)))
        conn.execute(
            update(MANIFESTS)
            .where(MANIFESTS.c.tenant == tenant, MANIFESTS.c.manifest_id == manifest_id)
            .values(status="committed")
        )
        conn.execute(update(TENANTS).where(TENANTS.c.tenant == tenant).values(epoch=TENANTS.c.epoch + 1))

    def manifests_exist(self, tenant: str, manifest_ids: Sequence[str]) -> bool:
        """Whether every one of the tenant's ``manifest_ids`` has a row (in any status)."""
        ids = sorted(set(manifest_ids))
        with self.read() as conn:
            found = conn.execute(
                select(func.count()).where(MANIFESTS.c.tenant == tenant, MANIFESTS.c.manifest_id.in_(ids))
            ).scalar_one()
        return found == len(ids)

    def archived_ids(self, tenant: str, manifest_ids: Sequence[str]) -> dict[str, dict[str, set[str]]]:
        """The ids of the rows whose tombstones point at each of ``manifest_ids``, by archived table name (facts of
        every version, episodes, turns): which of a manifest's rows are the archive's, not stale copies."""
        out: dict[str, dict[str, set[str]]] = {"semantic_items": {}, "episodes": {}, "episode_turns": {}}
        ids = sorted(set(manifest_ids))
        with self.read() as conn:
            for name, table, key in (
                ("semantic_items", SEMANTIC, SEMANTIC.c.item_id),
                ("episodes", EPISODES, EPISODES.c.episode_id),
                ("episode_turns", TURNS, TURNS.c.item_id),
            ):
                for manifest_id, item_id in conn.execute(
                    select(table.c.archived_manifest_id, key).where(
                        table.c.tenant == tenant, table.c.archived_manifest_id.in_(ids)
                    )
                ):
                    out[name].setdefault(manifest_id, set()).add(item_id)
        return out

    def manifest_tenants(self, statuses: Sequence[str]) -> list[str]:
        """The tenants with a manifest in one of ``statuses``, sorted."""
        with self.read() as conn:
            return list(
                conn.execute(
                    select(MANIFESTS.c.tenant)
                    .where(MANIFESTS.c.status.in_(list(statuses)))
                    .distinct()
                    .order_by(MANIFESTS.c.tenant)
                ).scalars()
            )

    def manifests(self, tenant: str | None, statuses: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Manifest rows, oldest first; for one tenant or all, in the given statuses or any."""
        query = select(MANIFESTS)
        if tenant is not None:
            query = query.where(MANIFESTS.c.tenant == tenant)
        if statuses is not None:
            query = query.where(MANIFESTS.c.status.in_(list(statuses)))
        with self.read() as conn:
            return _dicts(conn.execute(query.order_by(MANIFESTS.c.created_at, MANIFESTS.c.manifest_id)))

    def commit_archives(
        self,
        verified: Sequence[tuple[str, str, Mapping[str, Sequence[Mapping[str, Any]]]]],
        now: datetime,
        flow_run_id: str | None,
        discarded: list[tuple[str, str]] | None = None,
    ) -> dict[str, int]:
        """Swap hot rows for tombstones that point at their verified manifests, audit the moves, mark the manifests
        committed: one transaction for them all, so each manifest is committed whole or not at all.

        A row is tombstoned only when it is still exactly as archived (same change stamp, same validity and access
        time); a row that moved on since keeps living hot, and its stale copy in the manifest's files is ignored
        because no tombstone points at it.

        A manifest whose row is gone was discarded meanwhile, by a forget of its tenant (its files may hold what
        was forgotten) or by a run that settled it: nothing of it is committed, its rows stay hot, and its
        (tenant, manifest id) is appended to ``discarded`` for the caller to delete its objects.

        Args:
            verified: (tenant, manifest id, the rows as read back from the manifest's files by table name), at most
                one manifest per tenant and table row.
        """
        counts = {"semantic_items": 0, "episodes": 0, "episode_turns": 0, "events_blanked": 0}
        if not verified:
            return counts
        with self.write() as conn:
            # Sorted, so that two writers lock tenants in the same order.
            seqs = self.bump_seq(conn, [tenant for tenant, _, _ in verified], now)
            by_tenant: dict[str, list[str]] = {}
            for tenant, manifest_id, _ in verified:
                by_tenant.setdefault(tenant, []).append(manifest_id)
            gone: set[tuple[str, str]] = set()
            for tenant, ids in by_tenant.items():
                query = select(MANIFESTS.c.manifest_id).where(
                    MANIFESTS.c.tenant == tenant, MANIFESTS.c.manifest_id.in_(ids)
                )
                if self.dialect == "postgresql":
                    query = query.with_for_update()
                gone |= {(tenant, m) for m in set(ids) - set(conn.execute(query).scalars())}
                by_tenant[tenant] = [m for m in ids if (tenant, m) not in gone]
            if discarded is not None:
                discarded += sorted(gone)
            audit: list[dict[str, Any]] = []
            for tenant, manifest_id, archived in verified:
                if (tenant, manifest_id) in gone:
                    continue
                moved = self._tombstone_archived(
                    conn, tenant, manifest_id, archived, seqs[tenant], now, flow_run_id, audit
                )
                for k, v in moved.items():
                    counts[k] += v
            self.insert_ignore(conn, TRANSITIONS, audit)
            for tenant, ids in by_tenant.items():
                if ids:
                    conn.execute(
                        update(MANIFESTS)
                        .where(MANIFESTS.c.tenant == tenant, MANIFESTS.c.manifest_id.in_(ids))
                        .values(status="committed")
                    )
        return counts

    def _tombstone_archived(
        self,
        conn: Connection,
        tenant: str,
        manifest_id: str,
        archived: Mapping[str, Sequence[Mapping[str, Any]]],
        seq: int,
        now: datetime,
        flow_run_id: str | None,
        audit: list[dict[str, Any]],
    ) -> dict[str, int]:
        """One manifest's part of ``commit_archives``: its tombstones, and its audit rows appended to ``audit``."""
        from engram.consolidate import content_hash

        counts = {"semantic_items": 0, "episodes": 0, "episode_turns": 0, "events_blanked": 0}
        detail = {"manifest_id": manifest_id}

        def unchanged(
            table: Table, key: str, rows: Sequence[Mapping[str, Any]], cols: Sequence[str], extra: Sequence[str] = ()
        ) -> dict[str, tuple[Any, ...]]:
            """The ids still hot and as archived, each with the hot row's ``extra`` columns."""
            want = {r[key]: tuple(r[c] for c in cols) for r in rows}
            keep: dict[str, tuple[Any, ...]] = {}
            ids = sorted(want)
            n = len(cols)
            for start in range(0, len(ids), INSERT_CHUNK):
                query = select(table.c[key], *(table.c[c] for c in (*cols, *extra))).where(
                    table.c.tenant == tenant,
                    table.c[key].in_(ids[start : start + INSERT_CHUNK]),
                    table.c.archived_manifest_id.is_(None),
                )
                if self.dialect == "postgresql":
                    query = query.with_for_update()
                for r in conn.execute(query):
                    if tuple(r[1 : n + 1]) == want[r[0]]:
                        keep[r[0]] = tuple(r[n + 1 :])
            return keep

        def tombstone(table: Table, key: str, ids: Sequence[str], **blank: Any) -> None:
            for start in range(0, len(ids), INSERT_CHUNK):
                conn.execute(
                    update(table)
                    .where(table.c.tenant == tenant, table.c[key].in_(ids[start : start + INSERT_CHUNK]))
                    .values(archived_manifest_id=manifest_id, **blank)
                )

        semantic = archived.get("semantic_items") or []
        if semantic:
            kept = unchanged(
                SEMANTIC,
                "item_id",
                semantic,
                ("seq", "valid_to", "last_accessed", "support_count"),
                ("text", "actor", "content_hash"),
            )
            ids = sorted(kept)
            # The tombstone goes on taking part in consolidation (a restated fact merges into it, a changed one
            # supersedes it) once its text is gone, by the content hash it keeps. A row written before the column
            # (migration 0004) has none: it gets its hot text's, read under lock, before the tombstone blanks it.
            missing = [{"_id": i, "_hash": content_hash(kept[i][0], kept[i][1] or "")} for i in ids if not kept[i][2]]
            if missing:
                conn.execute(
                    update(SEMANTIC)
                    .where(SEMANTIC.c.tenant == tenant, SEMANTIC.c.item_id == bindparam("_id"))
                    .values(content_hash=bindparam("_hash")),
                    missing,
                )
            tombstone(SEMANTIC, "item_id", ids, text="", rendered="", embedding=None, seq=seq)
            audit += [
                transition_row(
                    tenant, i, Layer.SEMANTIC, Layer.ARCHIVAL, "archive", now, flow_run_id, seq, detail, manifest_id
                )
                for i in ids
            ]
            counts["semantic_items"] = len(ids)
        episodes = archived.get("episodes") or []
        if episodes:
            turns_of: dict[str, list[Mapping[str, Any]]] = {}
            for t in archived.get("episode_turns") or []:
                turns_of.setdefault(t["episode_id"], []).append(t)
            ep_ids = sorted(unchanged(EPISODES, "episode_id", episodes, ("seq", "summary", "turn_count")))
            # An episode goes only with every one of its turns as archived, so it is never split.
            live_turns: dict[str, list[tuple[str, tuple[Any, ...]]]] = {}
            for start in range(0, len(ep_ids), INSERT_CHUNK):
                for r in conn.execute(
                    select(TURNS.c.episode_id, TURNS.c.item_id, TURNS.c.seq, TURNS.c.text).where(
                        TURNS.c.tenant == tenant,
                        TURNS.c.episode_id.in_(ep_ids[start : start + INSERT_CHUNK]),
                    )
                ):
                    live_turns.setdefault(r.episode_id, []).append((r.item_id, (r.episode_id, r.seq, r.text)))
            ep_ids = [
                e
                for e in ep_ids
                if sorted((t["item_id"], (e, t["seq"], t["text"])) for t in turns_of.get(e, []))
                == sorted(live_turns.get(e, []))
            ]
            turns = [t for e in ep_ids for t in turns_of.get(e, [])]
            tombstone(EPISODES, "episode_id", ep_ids, summary="", seq=seq)
            for start in range(0, len(ep_ids), INSERT_CHUNK):
                conn.execute(
                    update(TURNS)
                    .where(TURNS.c.tenant == tenant, TURNS.c.episode_id.in_(ep_ids[start : start + INSERT_CHUNK]))
                    .values(archived_manifest_id=manifest_id, text="", metadata={}, seq=seq)
                )
            # The sensory ledger keeps routed events for idempotency; their content now lives in the archive.
            event_ids = sorted({t["event_id"] for t in turns})
            for start in range(0, len(event_ids), INSERT_CHUNK):
                counts["events_blanked"] += (
                    conn.execute(
                        update(EVENTS)
                        .where(
                            EVENTS.c.tenant == tenant,
                            EVENTS.c.event_id.in_(event_ids[start : start + INSERT_CHUNK]),
                            self.not_a_key(EVENTS.c.routed_at).is_not(None),
                        )
                        .values(text="", metadata={})
                    ).rowcount
                    or 0
                )
            audit += [
                transition_row(
                    tenant, e, Layer.EPISODIC, Layer.ARCHIVAL, "archive", now, flow_run_id, seq, detail, manifest_id
                )
                for e in ep_ids
            ]
            audit += [
                transition_row(
                    tenant,
                    t["item_id"],
                    Layer.EPISODIC,
                    Layer.ARCHIVAL,
                    "archive",
                    now,
                    flow_run_id,
                    seq,
                    {**detail, "episode_id": t["episode_id"]},
                    manifest_id,
                )
                for t in turns
            ]
            counts["episodes"] = len(ep_ids)
            counts["episode_turns"] = len(turns)
        return counts

    def archived_semantic(
        self, tenant: str | None, item_ids: Sequence[str] | None, limit: int
    ) -> list[tuple[str, str, str, datetime | None]]:
        """Up to ``limit`` (tenant, item_id, manifest_id, last_seen) of semantic tombstones, by tenant, manifest and
        id: all of them, or those of the given ids (read ``INSERT_CHUNK`` ids at a time). ``last_seen`` names the date
        its archived file is likely filed under (the date it had when archived).

        A tenant's given ids are looked up by key: from three ids on, SQLite ranks the tombstone index by manifest
        above the primary key, and would read every tombstone of the tenant to find a few."""
        archived = SEMANTIC.c.archived_manifest_id
        query = select(SEMANTIC.c.tenant, SEMANTIC.c.item_id, archived, SEMANTIC.c.last_seen)
        order = (SEMANTIC.c.tenant, archived, SEMANTIC.c.item_id)
        if tenant is not None:
            query = query.where(SEMANTIC.c.tenant == tenant)
        if item_ids is None:
            with self.read() as conn:
                rows = conn.execute(query.where(archived.is_not(None)).order_by(*order).limit(limit)).all()
        else:
            ids = sorted(set(item_ids))
            query = query.where((self.not_a_key(archived) if tenant is not None else archived).is_not(None))
            with self.read() as conn:
                rows = [
                    row
                    for start in range(0, len(ids), INSERT_CHUNK)
                    for row in conn.execute(query.where(SEMANTIC.c.item_id.in_(ids[start : start + INSERT_CHUNK])))
                ]
            rows = sorted(rows, key=lambda r: (r[0], r[2], r[1]))[:limit]
        return [(t, i, m, _aware(seen)) for t, i, m, seen in rows]

    def commit_rehydrate(
        self,
        tenant: str,
        manifest_id: str,
        rows: Sequence[Mapping[str, Any]],
        now: datetime,
        flow_run_id: str | None,
    ) -> int:
        """Put archived semantic rows back in the hot layer (content from the archive), audited; returns how many.

        Only tombstones that still point at ``manifest_id`` are filled, so a rerun restores nothing twice. Only the
        content comes from the archive (text, rendering, embedding): validity, supersession, support and last-seen
        time stay the tombstone's, which consolidation kept current while the item was archived. The restored row
        counts as accessed now: it was asked for, and the retention rules should not send it straight back.
        """
        done: list[str] = []
        with self.write() as conn:
            seq = self.bump_seq(conn, [tenant], now)[tenant]
            for r in rows:
                hit = conn.execute(
                    update(SEMANTIC)
                    .where(
                        SEMANTIC.c.tenant == tenant,
                        SEMANTIC.c.item_id == r["item_id"],
                        SEMANTIC.c.archived_manifest_id == manifest_id,
                    )
                    .values(
                        text=r["text"],
                        rendered=r["rendered"],
                        embedding=r.get("embedding"),
                        archived_manifest_id=None,
                        last_accessed=now,
                        seq=seq,
                    )
                ).rowcount
                if hit:
                    done.append(r["item_id"])
            self.insert_ignore(
                conn,
                TRANSITIONS,
                [
                    transition_row(
                        tenant,
                        i,
                        Layer.ARCHIVAL,
                        Layer.SEMANTIC,
                        "rehydrate",
                        now,
                        flow_run_id,
                        seq,
                        {"manifest_id": manifest_id},
                        manifest_id,
                    )
                    for i in done
                ],
            )
        return len(done)

    def derived_items(self, tenant: str, event_ids: Iterable[str]) -> set[str]:
        """The items distilled from any of these events (by lineage)."""
        ids = sorted(set(event_ids))
        out: set[str] = set()
        with self.read() as conn:
            for start in range(0, len(ids), INSERT_CHUNK):
                out.update(
                    r[0]
                    for r in conn.execute(
                        select(LINEAGE.c.item_id).where(
                            LINEAGE.c.tenant == tenant, LINEAGE.c.event_id.in_(ids[start : start + INSERT_CHUNK])
                        )
                    )
                )
        return out

    def events_mentioning(self, tenant: str, subject: str) -> set[str]:
        """Ids of the tenant's events whose (hot) text names ``subject`` as whole words."""
        from engram.text import mentions

        with self.read() as conn:
            return {
                r.event_id
                for r in conn.execute(
                    select(EVENTS.c.event_id, EVENTS.c.text).where(
                        EVENTS.c.tenant == tenant, self.may_mention(EVENTS.c.text, subject)
                    )
                )
                if mentions(r.text, subject)
            }

    def forget_archived(
        self, tenant: str, event_ids: Iterable[str], item_ids: Iterable[str], now: datetime
    ) -> dict[str, int]:
        """Remove by id what a forget found in the archive: tombstones, their events, lineage and audit rows.

        The hot forget finds rows by their text; a tombstone has none, so the archive's copy decided.
        """
        events, items = sorted(set(event_ids)), sorted(set(item_ids))
        removed: dict[str, int] = {}
        with self.write() as conn:
            self.bump_seq(conn, [tenant], now)

            removed["events"] = _delete_in(conn, EVENTS, tenant, "event_id", events)
            # By event id, which the turns' index holds (see ``_delete_in``).
            removed["episode_turns"] = _delete_in(conn, TURNS, tenant, "event_id", {*items, *events})
            removed["semantic_items"] = _delete_in(conn, SEMANTIC, tenant, "item_id", items)
            removed["episodes"] = _delete_in(conn, EPISODES, tenant, "episode_id", items)
            removed["lineage"] = _delete_in(conn, LINEAGE, tenant, "item_id", items) + _delete_in(
                conn, LINEAGE, tenant, "event_id", events
            )
            removed["transitions"] = _delete_in(conn, TRANSITIONS, tenant, "item_id", {*items, *events})
            conn.execute(update(TENANTS).where(TENANTS.c.tenant == tenant).values(epoch=TENANTS.c.epoch + 1))
        return removed

    def save_forget_intent(
        self,
        tenant: str,
        subject_sha256: str,
        event_ids: Iterable[str],
        item_ids: Iterable[str],
        manifest_ids: Iterable[str],
        now: datetime,
    ) -> None:
        """Record (or replace) the ids a forget is about to remove, before it removes anything."""
        values = {
            "event_ids": sorted(set(event_ids)),
            "item_ids": sorted(set(item_ids)),
            "manifest_ids": sorted(set(manifest_ids)),
        }
        stmt = self._insert(FORGET_INTENTS).values(
            tenant=tenant, subject_sha256=subject_sha256, created_at=now, **values
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[FORGET_INTENTS.c.tenant, FORGET_INTENTS.c.subject_sha256], set_=values
        )
        with self.write() as conn:
            conn.execute(stmt)

    def forget_intents(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's forgets that started and have not finished (interrupted, or under way)."""
        with self.read() as conn:
            return [
                dict(r._mapping) for r in conn.execute(select(FORGET_INTENTS).where(FORGET_INTENTS.c.tenant == tenant))
            ]

    def unfinished_forgets(self, tenant: str | None = None) -> list[tuple[str, datetime]]:
        """(tenant, when it started) of every forget that started and has not finished, oldest first."""
        q = select(FORGET_INTENTS.c.tenant, FORGET_INTENTS.c.created_at).order_by(FORGET_INTENTS.c.created_at)
        if tenant is not None:
            q = q.where(FORGET_INTENTS.c.tenant == tenant)
        with self.read() as conn:
            return [(t, _aware(at)) for t, at in conn.execute(q)]

    def drop_forget_intent(self, tenant: str, subject_sha256: str) -> int:
        """Forget a finished forget's ids; returns 1 when there was a record."""
        with self.write() as conn:
            return (
                conn.execute(
                    FORGET_INTENTS.delete().where(
                        FORGET_INTENTS.c.tenant == tenant, FORGET_INTENTS.c.subject_sha256 == subject_sha256
                    )
                ).rowcount
                or 0
            )

    # -- search feed -------------------------------------------------------------------------------------------

    def index_changes(
        self, tenant: str, since_seq: int, archived: bool = True
    ) -> tuple[int, int, list[dict[str, Any]], list[tuple[str, str, int]], list[tuple[str, datetime, int]]]:
        """What changed in a tenant's hot layers after ``since_seq``.

        Returns:
            (seq, epoch, added, removed, restamped): the tenant's counter and epoch now; the searchable documents
            written after ``since_seq`` (each with ``layer``, ``item_id``, ``text``, ``actor``, ``at``, ``tags``,
            ``rendered``, ``seq``); (layer, item_id, seq) for each item that left a hot layer since then; and
            (item_id, last_seen, seq) for each archived fact a restatement merged into since then, whose archived
            copy keeps the time it was archived with (none of either when ``since_seq`` is 0: an index built from
            nothing holds only what ``added`` and the archive bring, which is current; no ``restamped`` when
            ``archived`` is false: the caller holds no archived document).
        """
        with self.read() as conn:
            state = conn.execute(select(TENANTS.c.seq, TENANTS.c.epoch).where(TENANTS.c.tenant == tenant)).first()
            seq, epoch = (state.seq, state.epoch) if state else (0, 0)
            if seq <= since_seq:
                return seq, epoch, [], [], []
            added: list[dict[str, Any]] = []

            def window(table: Table):  # noqa: ANN202
                return and_(table.c.tenant == tenant, table.c.seq > since_seq, table.c.seq <= seq)

            for r in conn.execute(
                select(
                    EVENTS.c.event_id,
                    EVENTS.c.actor,
                    EVENTS.c.text,
                    EVENTS.c.at,
                    EVENTS.c.metadata,
                    EVENTS.c.seq,
                ).where(window(EVENTS), EVENTS.c.routed_at.is_(None))
            ):
                tags = (r.metadata or {}).get("tags") or []
                added.append(_doc(Layer.SENSORY, r.event_id, r.text, r.actor, r.at, tags, r.seq))
            for r in conn.execute(
                select(
                    WORKING.c.item_id,
                    WORKING.c.actor,
                    WORKING.c.text,
                    WORKING.c.at,
                    WORKING.c.tags,
                    WORKING.c.seq,
                ).where(window(WORKING))
            ):
                added.append(_doc(Layer.WORKING, r.item_id, r.text, r.actor, r.at, r.tags, r.seq))
            for r in conn.execute(
                select(
                    TURNS.c.item_id,
                    TURNS.c.actor,
                    TURNS.c.text,
                    TURNS.c.at,
                    TURNS.c.tags,
                    TURNS.c.seq,
                    EPISODES.c.consolidated_at,
                )
                .join(EPISODES, and_(EPISODES.c.tenant == TURNS.c.tenant, EPISODES.c.episode_id == TURNS.c.episode_id))
                .where(window(TURNS), TURNS.c.archived_manifest_id.is_(None))
            ):
                doc = _doc(Layer.EPISODIC, r.item_id, r.text, r.actor, r.at, r.tags, r.seq)
                # A consolidated episode's turns are stood for by the facts distilled from them: a default search
                # returns those facts, and the turns only when the episodic layer is asked for by name.
                doc["shadowed"] = r.consolidated_at is not None
                added.append(doc)
            for r in conn.execute(
                select(
                    SEMANTIC.c.item_id,
                    SEMANTIC.c.actor,
                    SEMANTIC.c.text,
                    SEMANTIC.c.rendered,
                    SEMANTIC.c.last_seen,
                    SEMANTIC.c.tags,
                    SEMANTIC.c.seq,
                    SEMANTIC.c.embedding,
                ).where(window(SEMANTIC), SEMANTIC.c.valid_to.is_(None), SEMANTIC.c.archived_manifest_id.is_(None))
            ):
                doc = _doc(Layer.SEMANTIC, r.item_id, r.text, r.actor, r.last_seen, r.tags, r.seq, r.rendered)
                if r.embedding:
                    import numpy as np

                    doc["vector"] = np.frombuffer(r.embedding, dtype=np.float32)
                added.append(doc)
            # From nothing (a new index), what is added is already what is there now: a departure cannot remove
            # anything from it, and reading every departure the tenant ever had (one per archived item, say) would
            # be most of a first search's cost.
            if since_seq == 0:
                return seq, epoch, added, [], []
            removed: list[tuple[str, str, int]] = []
            merged: set[str] = set()
            for r in conn.execute(
                select(TRANSITIONS.c.from_layer, TRANSITIONS.c.item_id, TRANSITIONS.c.seq, TRANSITIONS.c.action).where(
                    window(TRANSITIONS),
                    TRANSITIONS.c.from_layer.is_not(None),
                    TRANSITIONS.c.action.in_(sorted(LEAVES_SOURCE_LAYER | {"merge"})),
                )
            ):
                if r.action == "merge":
                    merged.add(r.item_id)
                else:
                    removed.append((r.from_layer, r.item_id, r.seq))
            restamped: list[tuple[str, datetime, int]] = []
            ids = sorted(merged) if archived else []
            for start in range(0, len(ids), INSERT_CHUNK):
                restamped += [
                    (r.item_id, _aware(r.last_seen), r.seq)
                    for r in conn.execute(
                        select(SEMANTIC.c.item_id, SEMANTIC.c.last_seen, SEMANTIC.c.seq).where(
                            SEMANTIC.c.tenant == tenant,
                            SEMANTIC.c.item_id.in_(ids[start : start + INSERT_CHUNK]),
                            self.not_a_key(SEMANTIC.c.archived_manifest_id).is_not(None),
                            self.not_a_key(SEMANTIC.c.valid_to).is_(None),
                        )
                    )
                ]
        return seq, epoch, added, removed, restamped

    # -- reads -------------------------------------------------------------------------------------------------

    def count_by_layer(self, tenant: str | None = None, names: Iterable[str] | None = None) -> dict[str, int]:
        """How many items each layer holds, plus quarantined rows and helper counts (the hot versions of the facts,
        the hot turns, every event received); for one tenant or all; every count, or the ``names`` given (the
        monitor's: the layers it charts, not every event ever seen).

        The current facts that are hot are counted among the hot versions (a partial index), not among the current
        ones, tombstones included, which grow with the archive: on SQLite the validity is a condition on the rows
        read, not the index to read them through. Closed versions stay hot only until the next archive run (the
        retention rules archive them whatever their age, by default); where they are kept, they are read too."""

        def count(table: Table, *where: Any) -> int:
            q = select(func.count()).select_from(table).where(*where)
            if tenant is not None:
                q = q.where(table.c.tenant == tenant)
            return conn.execute(q).scalar_one()

        hot = SEMANTIC.c.archived_manifest_id.is_(None)
        counts: dict[str, Callable[[], int]] = {
            Layer.SENSORY.value: lambda: count(EVENTS, EVENTS.c.routed_at.is_(None)),
            Layer.WORKING.value: lambda: count(WORKING),
            Layer.EPISODIC.value: lambda: count(EPISODES, EPISODES.c.archived_manifest_id.is_(None)),
            "episodic_turns": lambda: count(TURNS, TURNS.c.archived_manifest_id.is_(None)),
            Layer.SEMANTIC.value: lambda: count(SEMANTIC, self.not_a_key(SEMANTIC.c.valid_to).is_(None), hot),
            "semantic_versions": lambda: count(SEMANTIC, hot),
            Layer.ARCHIVAL.value: lambda: (
                count(SEMANTIC, SEMANTIC.c.archived_manifest_id.is_not(None))
                + count(TURNS, TURNS.c.archived_manifest_id.is_not(None))
            ),
            "quarantine": lambda: count(QUARANTINE),
            "events": lambda: count(EVENTS),
        }
        if isinstance(names, str):
            raise ValueError(f"names: a list of count names, not the one string {names!r}")
        wanted = tuple(counts) if names is None else tuple(names)
        unknown = sorted(set(wanted) - set(counts))
        if unknown:
            raise ValueError(f"names: no count named {', '.join(unknown)}; the counts are {', '.join(counts)}")
        with self.read() as conn:
            return {name: counts[name]() for name in wanted}

    def quarantine_count(self) -> int:
        """Rows in the whole quarantine, those whose tenant id was itself invalid included (``count_by_layer`` counts
        a tenant's)."""
        with self.read() as conn:
            return int(conn.execute(select(func.count()).select_from(QUARANTINE)).scalar_one())

    def tenants(self) -> list[str]:
        with self.read() as conn:
            return [r[0] for r in conn.execute(select(TENANTS.c.tenant).order_by(TENANTS.c.tenant))]

    def find_item(self, tenant: str, item_id: str) -> dict[str, Any] | None:
        """The item with this id in the highest layer that holds it, as a dict with a ``layer`` key."""
        with self.read() as conn:
            row = conn.execute(
                select(SEMANTIC).where(SEMANTIC.c.tenant == tenant, SEMANTIC.c.item_id == item_id)
            ).first()
            if row is not None:
                out = dict(row._mapping)
                out["layer"] = Layer.ARCHIVAL if out["archived_manifest_id"] else Layer.SEMANTIC
                out["sources"] = self._sources(conn, tenant, item_id)
                out["table"] = "semantic_items"
                return out
            # Found through the turns' event index: a turn's item id is its event's id, and no index leads with it.
            by_event = (TURNS.c.tenant == tenant, TURNS.c.event_id == item_id, TURNS.c.item_id == item_id)
            row = conn.execute(select(TURNS).where(*by_event)).first()
            if row is not None:
                out = dict(row._mapping)
                out["layer"] = Layer.ARCHIVAL if out["archived_manifest_id"] else Layer.EPISODIC
                out["sources"] = [out["event_id"]]
                out["table"] = "episode_turns"
                if out["archived_manifest_id"]:  # its archived file is filed under its episode's end date
                    out["episode_ended_at"] = conn.execute(
                        select(EPISODES.c.ended_at).where(
                            EPISODES.c.tenant == tenant, EPISODES.c.episode_id == out["episode_id"]
                        )
                    ).scalar()
                return out
            row = conn.execute(
                select(EPISODES).where(EPISODES.c.tenant == tenant, EPISODES.c.episode_id == item_id)
            ).first()
            if row is not None:
                out = dict(row._mapping)
                out["layer"] = Layer.ARCHIVAL if out["archived_manifest_id"] else Layer.EPISODIC
                out["table"] = "episodes"
                out["item_id"] = item_id
                out["text"] = out["summary"]
                out["at"] = out["started_at"]
                out["sources"] = [
                    r[0]
                    for r in conn.execute(
                        select(TURNS.c.event_id)
                        .where(TURNS.c.tenant == tenant, TURNS.c.episode_id == item_id)
                        .order_by(TURNS.c.position)
                    )
                ]
                return out
            row = conn.execute(select(WORKING).where(WORKING.c.tenant == tenant, WORKING.c.item_id == item_id)).first()
            if row is not None:
                out = dict(row._mapping)
                out["layer"] = Layer.WORKING
                out["sources"] = [out["event_id"]]
                return out
            row = conn.execute(select(EVENTS).where(EVENTS.c.tenant == tenant, EVENTS.c.event_id == item_id)).first()
            if row is not None:
                out = dict(row._mapping)
                out["layer"] = Layer.SENSORY
                out["item_id"] = item_id
                out["tags"] = (out.get("metadata") or {}).get("tags") or []
                out["sources"] = [item_id]
                return out
        return None

    def _sources(self, conn: Connection, tenant: str, item_id: str) -> list[str]:
        return [
            r[0]
            for r in conn.execute(
                select(LINEAGE.c.event_id)
                .where(LINEAGE.c.tenant == tenant, LINEAGE.c.item_id == item_id)
                .order_by(LINEAGE.c.event_id)
            )
        ]

    def lineage_of(self, tenant: str, item_ids: Sequence[str]) -> dict[str, tuple[str, ...]]:
        """The source event ids of each item."""
        out: dict[str, list[str]] = {}
        ids = list(dict.fromkeys(item_ids))
        with self.read() as conn:
            for start in range(0, len(ids), INSERT_CHUNK):
                for item_id, event_id in conn.execute(
                    select(LINEAGE.c.item_id, LINEAGE.c.event_id)
                    .where(LINEAGE.c.tenant == tenant, LINEAGE.c.item_id.in_(ids[start : start + INSERT_CHUNK]))
                    .order_by(LINEAGE.c.item_id, LINEAGE.c.event_id)
                ):
                    out.setdefault(item_id, []).append(event_id)
        return {k: tuple(v) for k, v in out.items()}

    def events_by_id(self, tenant: str, event_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Sensory rows (routed or not) by id."""
        ids = list(dict.fromkeys(event_ids))
        out: list[dict[str, Any]] = []
        with self.read() as conn:
            for start in range(0, len(ids), INSERT_CHUNK):
                out += [
                    dict(r._mapping)
                    for r in conn.execute(
                        select(EVENTS).where(
                            EVENTS.c.tenant == tenant,
                            EVENTS.c.event_id.in_(ids[start : start + INSERT_CHUNK]),
                        )
                    )
                ]
        return out

    def record_receipt(self, row: Mapping[str, Any]) -> None:
        """Keep a deletion receipt (a transition row with no layers) in the audit trail."""
        with self.write() as conn:
            seq = self.bump_seq(conn, [row["tenant"]], row["at"])[row["tenant"]]
            self.insert_ignore(conn, TRANSITIONS, [dict(row, seq=seq)])

    def transitions_for(self, tenant: str, item_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Every audit row of the given items, oldest first."""
        if not item_ids:
            return []
        out: list[dict[str, Any]] = []
        with self.read() as conn:
            ids = list(dict.fromkeys(item_ids))
            for start in range(0, len(ids), INSERT_CHUNK):
                out += [
                    dict(r._mapping)
                    for r in conn.execute(
                        select(TRANSITIONS).where(
                            TRANSITIONS.c.tenant == tenant,
                            TRANSITIONS.c.item_id.in_(ids[start : start + INSERT_CHUNK]),
                        )
                    )
                ]
        out.sort(key=lambda r: (r["at"], r["seq"], r["transition_id"]))
        return out

    def fact_versions(self, tenant: str, fact_key: str) -> list[dict[str, Any]]:
        """Every version of a semantic fact, oldest first."""
        with self.read() as conn:
            return [
                dict(r._mapping)
                for r in conn.execute(
                    select(SEMANTIC)
                    .where(SEMANTIC.c.tenant == tenant, SEMANTIC.c.fact_key == fact_key)
                    .order_by(SEMANTIC.c.version)
                )
            ]

    def quarantined(self, tenant: str | None, limit: int) -> list[dict[str, Any]]:
        """The newest quarantined rows."""
        query = select(QUARANTINE).order_by(QUARANTINE.c.quarantined_at.desc()).limit(limit)
        if tenant is not None:
            query = query.where(QUARANTINE.c.tenant == tenant)
        with self.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def touch_accessed(self, tenant: str, item_ids: Sequence[str], now: datetime) -> None:
        """Record that semantic items were returned by a search (feeds the retention policy)."""
        if not item_ids:
            return
        with self.write() as conn:
            conn.execute(
                update(SEMANTIC)
                .where(SEMANTIC.c.tenant == tenant, SEMANTIC.c.item_id.in_(list(item_ids)))
                .values(last_accessed=now)
            )

    # -- forget ------------------------------------------------------------------------------------------------

    def forget(
        self,
        tenant: str,
        subject: str | None,
        now: datetime,
        flow_run_id: str | None,
        unchanged_since: int | None = None,
    ) -> dict[str, int]:
        """Remove a tenant's memories about ``subject`` (or all of them) from every hot table, in one transaction.

        A subject matches an item whose text contains it as a whole word, case-insensitively. Matching items are
        removed with their lineage and their audit rows (which would otherwise keep ids that point at the content);
        the caller writes the receipt. Returns the count removed per table.

        Raises:
            TenantChanged: ``unchanged_since`` (the tenant's change counter, ``tenant_seq``, when a copy of it was
                taken) is given and the tenant was written to since; nothing was removed. The check holds the
                tenant's counter row until the removal commits, so no write can come between.
        """
        from engram.text import mentions

        removed: dict[str, int] = {}
        with self.write() as conn:
            seq = self.bump_seq(conn, [tenant], now)[tenant]
            if unchanged_since is not None:
                self._check_unchanged(conn, tenant, unchanged_since, seq)
            if subject is None:
                for name, table in (
                    ("events", EVENTS),
                    ("working_items", WORKING),
                    ("episode_turns", TURNS),
                    ("episodes", EPISODES),
                    ("sessions", SESSIONS),
                    ("semantic_items", SEMANTIC),
                    ("lineage", LINEAGE),
                    ("transitions", TRANSITIONS),
                    ("quarantine", QUARANTINE),
                    ("archive_manifests", MANIFESTS),
                    ("forget_intents", FORGET_INTENTS),
                ):
                    removed[name] = conn.execute(table.delete().where(table.c.tenant == tenant)).rowcount or 0
            else:
                removed = self._forget_subject(conn, tenant, subject, mentions)
                # An archive run's manifest not yet committed may hold rows this forget removed: it is discarded
                # (the run's commit then finds it gone and commits nothing of it; the caller deletes its objects).
                removed["archive_manifests_unfinished"] = (
                    conn.execute(
                        MANIFESTS.delete().where(
                            MANIFESTS.c.tenant == tenant, MANIFESTS.c.status.in_(["written", "verified"])
                        )
                    ).rowcount
                    or 0
                )
            # The index follows the counter; a forget invalidates it wholesale by moving the tenant's epoch.
            conn.execute(update(TENANTS).where(TENANTS.c.tenant == tenant).values(epoch=TENANTS.c.epoch + 1))
        return removed

    def _check_unchanged(self, conn: Connection, tenant: str, unchanged_since: int, seq: int) -> None:
        """``forget``'s check that a copied tenant is as it was copied (``seq`` is its counter just bumped)."""
        if seq != unchanged_since + 1:
            raise TenantChanged(
                f"tenant {tenant!r} was written to after its copy was taken (change counter {unchanged_since} "
                f"then, {seq - 1} now); nothing of it was removed"
            )
        unfinished = select(func.count()).select_from(MANIFESTS)
        if conn.execute(unfinished.where(MANIFESTS.c.tenant == tenant, MANIFESTS.c.status != "committed")).scalar_one():
            # An archive run or compaction under way: its commit would follow rows the copy has hot, and its objects,
            # which it deletes if it finds its manifest gone, may be what the copy's manifests name.
            raise TenantChanged(
                f"tenant {tenant!r} has an archive run or compaction under way (a manifest not committed); "
                "nothing of it was removed"
            )

    def _forget_subject(self, conn: Connection, tenant: str, subject: str, mentions: Any) -> dict[str, int]:
        removed: dict[str, int] = {}

        def matching(table: Table, id_col: str, *extra: str) -> list[Any]:
            cols = [table.c[id_col], table.c.text, *(table.c[c] for c in extra)]
            rows = conn.execute(
                select(*cols).where(table.c.tenant == tenant, self.may_mention(table.c.text, subject))
            ).all()
            return [r for r in rows if mentions(r.text, subject)]

        events = matching(EVENTS, "event_id")
        event_ids = {r.event_id for r in events}
        working = matching(WORKING, "item_id")
        turns = matching(TURNS, "item_id", "event_id")
        semantic = matching(SEMANTIC, "item_id")
        # An item distilled from a forgotten event goes with it even when it no longer names the subject.
        if event_ids:
            derived = set()
            ids = sorted(event_ids)
            for start in range(0, len(ids), INSERT_CHUNK):
                derived.update(
                    r[0]
                    for r in conn.execute(
                        select(LINEAGE.c.item_id).where(
                            LINEAGE.c.tenant == tenant,
                            LINEAGE.c.event_id.in_(ids[start : start + INSERT_CHUNK]),
                        )
                    )
                )
        else:
            derived = set()
        sem_ids = {r.item_id for r in semantic} | derived
        all_ids = event_ids | {r.item_id for r in working} | {r.item_id for r in turns} | sem_ids

        def delete_in(table: Table, col: str, ids: Iterable[str]) -> int:
            return _delete_in(conn, table, tenant, col, ids)

        removed["events"] = delete_in(EVENTS, "event_id", event_ids)
        removed["working_items"] = delete_in(WORKING, "item_id", {r.item_id for r in working} | event_ids)
        # By event id, which the turns' index holds (see ``_delete_in``).
        removed["episode_turns"] = delete_in(TURNS, "event_id", {r.event_id for r in turns} | event_ids)
        removed["semantic_items"] = delete_in(SEMANTIC, "item_id", sem_ids)
        removed["lineage"] = delete_in(LINEAGE, "item_id", sem_ids) + delete_in(LINEAGE, "event_id", event_ids)
        removed["transitions"] = delete_in(TRANSITIONS, "item_id", all_ids)
        # A reason can quote what it rejected too (a consolidator's or a summary's error message).
        q = conn.execute(
            select(QUARANTINE.c.quarantine_id, QUARANTINE.c.raw_payload, QUARANTINE.c.reason).where(
                QUARANTINE.c.tenant == tenant
            )
        ).all()
        removed["quarantine"] = delete_in(
            QUARANTINE,
            "quarantine_id",
            [r.quarantine_id for r in q if mentions(r.raw_payload, subject) or mentions(r.reason, subject)],
        )
        # Episodes keep an extractive summary: rewrite the ones that quoted a forgotten turn.
        ep_rows = conn.execute(
            select(EPISODES.c.episode_id, EPISODES.c.summary).where(
                EPISODES.c.tenant == tenant, self.may_mention(EPISODES.c.summary, subject)
            )
        ).all()
        for r in ep_rows:
            if mentions(r.summary, subject):
                kept = [s for s in r.summary.split("\n") if not mentions(s, subject)]
                conn.execute(
                    update(EPISODES)
                    .where(EPISODES.c.tenant == tenant, EPISODES.c.episode_id == r.episode_id)
                    .values(summary="\n".join(kept))
                )
        removed["episode_summaries_rewritten"] = len([r for r in ep_rows if mentions(r.summary, subject)])
        return removed

    def tenant_seq(self, tenant: str) -> int:
        """The tenant's change counter: every write to the tenant's memory moves it."""
        with self.read() as conn:
            return self.current_seq(conn, tenant)

    def tenant_epoch(self, tenant: str) -> int:
        """Changes when a tenant's memory is rewritten wholesale (forget): the index then rebuilds."""
        with self.read() as conn:
            return conn.execute(select(TENANTS.c.epoch).where(TENANTS.c.tenant == tenant)).scalar() or 0

    # -- whole-tenant copies (export and import) ----------------------------------------------------------------

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read transaction that sees one consistent state of every table (REPEATABLE READ on PostgreSQL)."""
        try:
            with self.engine.connect() as conn:
                if self.dialect == "postgresql":
                    conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"read from {self.safe_url} failed: {exc.__class__.__name__}: {exc}") from exc

    def tenant_rows(
        self, conn: Connection, table: Table, tenant: str, batch_rows: int = 50_000
    ) -> Iterator[list[dict[str, Any]]]:
        """A tenant's rows of one table in primary-key order, in batches of at most ``batch_rows``."""
        query = select(table).where(table.c.tenant == tenant).order_by(*table.primary_key.columns)
        result = conn.execute(query.execution_options(yield_per=batch_rows))
        keys = list(result.keys())
        for part in result.partitions():
            yield [dict(zip(keys, row, strict=True)) for row in part]

    def count_tenant_rows(self, conn: Connection, table: Table, tenant: str) -> int:
        return conn.execute(select(func.count()).select_from(table).where(table.c.tenant == tenant)).scalar_one()

    def delete_tenant_rows(self, conn: Connection, table: Table, tenant: str) -> int:
        return conn.execute(table.delete().where(table.c.tenant == tenant)).rowcount or 0


def _doc(
    layer: Layer,
    item_id: str,
    text: str,
    actor: str,
    at: datetime,
    tags: Sequence[str] | None,
    seq: int,
    rendered: str | None = None,
) -> dict[str, Any]:
    from engram.text import render

    return {
        "seq": seq,
        "layer": layer.value,
        "item_id": item_id,
        "text": text,
        "actor": actor,
        "at": at,
        "tags": list(tags or []),
        "rendered": rendered or render(text, actor, at),
    }


def _aware(at: datetime | None) -> datetime | None:
    """A time read back from the store as aware UTC (aggregates on SQLite come back naive)."""
    from datetime import UTC

    if at is None or at.tzinfo is not None:
        return at
    return at.replace(tzinfo=UTC)
