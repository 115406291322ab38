"""Validation of input events: one function per field, each raising ``InvalidInput`` that names the field.

Plain Python on purpose: it runs on every row of a bulk write (100,000 rows in well under a second), where a pydantic
model per row would cost several times more. The batch-level quality gate of the ingest flow (Great Expectations)
checks the same rules again on whole batches before rows leave the sensory layer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from engram.errors import InvalidInput

TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# Session and event ids are opaque to engram but end up in keys, logs and archive paths: printable, no separators
# that could escape a path, no quotes.
OPAQUE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@+=-]{0,127}$")
TAG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$")
# C0 controls but tab, newline and carriage return; DEL. NUL in particular cannot be stored by PostgreSQL.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
ACTOR_MAX = 256
# Every C0 control (line breaks included), DEL, and the Unicode line and paragraph separators.
_ACTOR_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
METADATA_MAX_DEPTH = 32
SCOPES = ("session", "task")
REQUIRED_FIELDS = ("tenant", "session", "actor", "text", "at")


@dataclass(frozen=True)
class Limits:
    """Size limits applied to every event."""

    max_text_bytes: int = 65_536
    max_metadata_bytes: int = 16_384

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        """The limits of ``engram.settings.Settings`` (``ENGRAM_MAX_TEXT_BYTES``, ``ENGRAM_MAX_METADATA_BYTES``)."""
        return cls(settings.max_text_bytes, settings.max_metadata_bytes)


@dataclass
class CleanEvent:
    """An event that passed validation, normalised for storage."""

    tenant: str
    session_id: str
    actor: str
    text: str
    at: datetime  # aware, UTC
    event_id: str
    metadata: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    scope: str = "session"


def _describe(value: Any) -> str:
    return type(value).__name__


def check_tenant(value: Any, name: str = "tenant") -> str:
    """A tenant id: 1-64 letters, digits, ``_`` or ``-``, starting with a letter or digit."""
    if value is None:
        raise InvalidInput(name, "is required; give the id of the application or user the memory belongs to")
    if not isinstance(value, str):
        raise InvalidInput(name, f"must be a string, got {_describe(value)}")
    if not TENANT_PATTERN.fullmatch(value):
        raise InvalidInput(
            name,
            "must be 1-64 characters of letters, digits, '_' or '-', starting with a letter or digit "
            f"(no path, quote, space or SQL characters); got {value[:80]!r}",
        )
    return value


def check_opaque_id(value: Any, name: str) -> str:
    """A session or event id: 1-128 printable characters without path separators, quotes or spaces."""
    if value is None:
        raise InvalidInput(name, "is required")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidInput(name, f"must be a string, got {_describe(value)}")
    value = str(value)
    if not OPAQUE_ID_PATTERN.fullmatch(value):
        raise InvalidInput(
            name,
            "must be 1-128 characters of letters, digits and _ . : @ + = -, starting with a letter or digit; "
            f"got {value[:80]!r}",
        )
    return value


def check_text(value: Any, limits: Limits, name: str = "text") -> str:
    """Event text: valid UTF-8, not blank, within the size limit, no control characters but tab and newlines."""
    if value is None:
        raise InvalidInput(name, "is required")
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(name, f"is not valid UTF-8 (byte {exc.start}); send text encoded as UTF-8") from None
    if not isinstance(value, str):
        raise InvalidInput(name, f"must be a string, got {_describe(value)}")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput(name, f"is not valid UTF-8 (lone surrogate at character {exc.start})") from None
    if len(encoded) > limits.max_text_bytes:
        raise InvalidInput(
            name,
            f"is {len(encoded)} bytes, over the limit of {limits.max_text_bytes}; split it into several events",
        )
    if not value.strip():
        raise InvalidInput(name, "is empty; an event must say something")
    match = _CONTROL.search(value)
    if match:
        raise InvalidInput(name, f"contains control character {match.group()!r} at {match.start()}")
    return value


def check_actor(value: Any, name: str = "actor") -> str:
    """Who spoke or acted: 1-256 printable characters on one line (it starts a line of the rendered prompt)."""
    if value is None:
        raise InvalidInput(name, "is required; give the speaker's or agent's name")
    if not isinstance(value, str):
        raise InvalidInput(name, f"must be a string, got {_describe(value)}")
    if not _is_utf8(value):
        raise InvalidInput(name, "is not valid UTF-8 (it holds a lone surrogate)")
    if _ACTOR_FORBIDDEN.search(value):
        raise InvalidInput(name, "must be printable and on one line (no control characters or line breaks)")
    value = value.strip()
    if not value or len(value) > ACTOR_MAX:
        raise InvalidInput(name, f"must be 1-{ACTOR_MAX} printable characters; got {value[:80]!r}")
    return value


def to_utc(value: Any, name: str = "at") -> datetime:
    """A point in time from a datetime, a date, an ISO-8601 string or epoch seconds, as aware UTC.

    A time without an offset is taken to be UTC.
    """
    if value is None:
        raise InvalidInput(name, "is required; give when the event happened")
    if isinstance(value, bool):
        raise InvalidInput(name, "must be a datetime, an ISO-8601 string or epoch seconds, got bool")
    if hasattr(value, "to_pydatetime"):  # pandas Timestamp
        value = value.to_pydatetime()
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        dt = datetime(value.year, value.month, value.day, tzinfo=UTC)
    elif isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise InvalidInput(name, f"must be a finite number of epoch seconds, got {value!r}")
        try:
            dt = datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidInput(name, f"epoch seconds {value!r} are out of range") from None
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput(name, f"is not an ISO-8601 time: {value[:40]!r}") from None
    else:
        raise InvalidInput(name, f"must be a datetime, an ISO-8601 string or epoch seconds, got {_describe(value)}")
    try:
        dt = dt.replace(tzinfo=UTC) if dt.utcoffset() is None else dt.astimezone(UTC)
    except (OverflowError, ValueError):
        raise InvalidInput(name, f"{value!s:.40} is out of range once converted to UTC") from None
    if not (1970 <= dt.year <= 9999):
        raise InvalidInput(name, f"year {dt.year} is out of range")
    return dt


def check_metadata(value: Any, limits: Limits, name: str = "metadata") -> dict[str, Any]:
    """Free-form JSON object attached to an event; a few keys (``tags``, ``scope``) mean something to engram."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput(name, f"must be a JSON object (dict), got {_describe(value)}")
    problem = _json_problem(value, METADATA_MAX_DEPTH)
    if problem:
        raise InvalidInput(name, problem)
    try:
        encoded = json.dumps(dict(value), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidInput(name, f"must be JSON-serialisable: {exc}") from None
    if len(encoded.encode("utf-8")) > limits.max_metadata_bytes:
        raise InvalidInput(name, f"is over the limit of {limits.max_metadata_bytes} bytes as JSON")
    return json.loads(encoded)


def _json_problem(value: Any, depth: int) -> str | None:
    """What makes a metadata value unstorable (too deep, a NUL, a lone surrogate, a non-string key), or None."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if level > depth:
            return f"is nested more than {depth} levels deep"
        if isinstance(item, str):
            if "\x00" in item:
                return "contains a NUL character"
            if not _is_utf8(item):
                return "contains text that is not valid UTF-8"
        elif isinstance(item, Mapping):
            for k, v in item.items():
                if not isinstance(k, (str, int, float, bool)) and k is not None:
                    return f"keys must be strings (or numbers, which JSON turns into strings), got {_describe(k)}"
                stack.append((k, level + 1))
                stack.append((v, level + 1))
        elif isinstance(item, (list, tuple)):
            stack.extend((v, level + 1) for v in item)
    return None


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_tags(value: Any, name: str = "metadata.tags") -> list[str]:
    """Tags: a list of short identifiers (letters, digits, ``_ . : / -``)."""
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise InvalidInput(name, f"must be a list of strings, got {_describe(value)}")
    out: list[str] = []
    for tag in value:
        if not isinstance(tag, str) or not TAG_PATTERN.fullmatch(tag) or ".." in tag:
            raise InvalidInput(name, f"tag {str(tag)[:40]!r} must be 1-64 letters, digits or _ . : / -")
        if tag not in out:
            out.append(tag)
    return out


def derive_event_id(tenant: str, session_id: str, actor: str, at: datetime, text: str) -> str:
    """A stable id for an event given without one, so that resending the same event is still idempotent."""
    digest = hashlib.sha256("\x1f".join((tenant, session_id, actor, at.isoformat(), text)).encode()).hexdigest()
    return f"ev-{digest[:32]}"


def validate_event(row: Mapping[str, Any], limits: Limits) -> CleanEvent:
    """Validate one event row (keys: tenant, session, actor, text, at, event_id, metadata).

    Raises:
        InvalidInput: naming the first field that is wrong.
    """
    if not isinstance(row, Mapping):
        raise InvalidInput("row", f"must be a mapping of field names to values, got {_describe(row)}")
    if "$raw" in row and "$field" in row:  # a part of a file a reader could not make an event of (loaders.unreadable)
        raise InvalidInput(str(row["$field"]), str(row.get("$reason", "")))
    tenant = check_tenant(row.get("tenant"))
    session_id = check_opaque_id(row.get("session", row.get("session_id")), "session")
    actor = check_actor(row.get("actor"))
    text = check_text(row.get("text"), limits)
    at = to_utc(row.get("at"))
    metadata = check_metadata(row.get("metadata"), limits)
    tags = check_tags(metadata.get("tags"))
    scope = metadata.get("scope", "session")
    if scope not in SCOPES:
        raise InvalidInput("metadata.scope", f"must be one of {SCOPES}, got {str(scope)[:40]!r}")
    raw_event_id = row.get("event_id")
    if raw_event_id is None or (isinstance(raw_event_id, float) and math.isnan(raw_event_id)):
        event_id = derive_event_id(tenant, session_id, actor, at, text)
    else:
        event_id = check_opaque_id(raw_event_id, "event_id")
    return CleanEvent(tenant, session_id, actor, text, at, event_id, metadata, tags, scope)


def safe_tenant_label(value: Any) -> str:
    """The tenant a rejected row claimed, if it is a valid id; ``_unknown`` otherwise."""
    if isinstance(value, str) and TENANT_PATTERN.fullmatch(value):
        return value
    return "_unknown"


def raw_payload(row: Any) -> str:
    """The rejected row, losslessly, as JSON text that any database can store.

    Bytes become ``{"$bytes_b64": ...}``; NUL characters and lone surrogates are escaped by ``ensure_ascii``.
    """

    def default(value: Any) -> Any:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return {"$bytes_b64": base64.b64encode(bytes(value)).decode("ascii")}
        if isinstance(value, (datetime, date)):
            return value.isoformat()
        if hasattr(value, "isoformat"):
            return value.isoformat()
        return {"$repr": repr(value)}

    if isinstance(row, Mapping):
        row = {str(k): v for k, v in row.items()}
    try:
        return json.dumps(row, ensure_ascii=True, default=default, allow_nan=True)
    except (TypeError, ValueError, RecursionError):
        # Too deep or self-referencing for JSON: keep a bounded repr rather than nothing.
        shortener = reprlib.Repr()
        shortener.maxlevel, shortener.maxdict, shortener.maxlist = 64, 1_000, 1_000
        shortener.maxstring, shortener.maxother = 100_000, 1_000
        return json.dumps({"$repr": shortener.repr(row)}, ensure_ascii=True)
