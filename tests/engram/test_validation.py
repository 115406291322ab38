"""``validate_event`` as a table: every kind of bad input is rejected naming its field; good input is normalised."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from engram.errors import InvalidInput
from engram.validation import Limits, validate_event

DEFAULT = Limits()
SMALL = Limits(max_text_bytes=16)
META64 = Limits(max_metadata_bytes=64)
T = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
EPOCH_T = 1_709_283_600  # T in epoch seconds
GOOD: dict[str, Any] = {
    "tenant": "acme",
    "session": "s1",
    "actor": "Caroline",
    "text": "I moved to Lisbon",
    "at": "2024-03-01T09:00:00Z",
}
MISSING = object()


def row(**changes: Any) -> dict[str, Any]:
    """GOOD with some fields changed; a field set to MISSING is left out."""
    out = dict(GOOD)
    for key, value in changes.items():
        if value is MISSING:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def nested(depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cursor = out
    for _ in range(depth):
        cursor["a"] = {}
        cursor = cursor["a"]
    return out


def circular() -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["self"] = out
    return out


REJECTED = [
    # The row itself
    pytest.param(["acme", "s1"], "row", DEFAULT, id="row-list"),  # positional values cannot be matched to fields
    pytest.param(None, "row", DEFAULT, id="row-none"),  # nothing to validate
    pytest.param("acme s1 hello", "row", DEFAULT, id="row-str"),  # a str is not a mapping even though iterable
    # Required fields, each left out
    pytest.param(row(tenant=MISSING), "tenant", DEFAULT, id="missing-tenant"),  # memory must belong to someone
    pytest.param(row(session=MISSING), "session", DEFAULT, id="missing-session"),  # episodes are built per session
    pytest.param(row(actor=MISSING), "actor", DEFAULT, id="missing-actor"),  # rendering needs a speaker
    pytest.param(row(text=MISSING), "text", DEFAULT, id="missing-text"),  # an event must say something
    pytest.param(row(at=MISSING), "at", DEFAULT, id="missing-at"),  # no clock is guessed for the caller
    pytest.param(row(tenant=None), "tenant", DEFAULT, id="none-tenant"),  # None is the same as missing
    pytest.param(row(text=None), "text", DEFAULT, id="none-text"),  # idem
    # Wrong types
    pytest.param(row(text=42), "text", DEFAULT, id="int-text"),  # numbers are not coerced into text
    pytest.param(row(text=["hi"]), "text", DEFAULT, id="list-text"),  # nor lists
    pytest.param(row(tenant=["acme"]), "tenant", DEFAULT, id="list-tenant"),  # a list is not an id
    pytest.param(row(tenant=7), "tenant", DEFAULT, id="int-tenant"),  # tenants are strings, never coerced
    pytest.param(row(at=True), "at", DEFAULT, id="bool-at"),  # bool is an int subclass; True is not 1970-01-01
    pytest.param(row(at=[2024, 3, 1]), "at", DEFAULT, id="list-at"),  # not a time format
    pytest.param(row(actor=3), "actor", DEFAULT, id="int-actor"),  # speakers are names
    pytest.param(row(session=True), "session", DEFAULT, id="bool-session"),  # bool would become "True"
    pytest.param(row(session=1.5), "session", DEFAULT, id="float-session"),  # floats do not round-trip as ids
    # Text: size limit in UTF-8 bytes
    pytest.param(row(text="x" * 17), "text", SMALL, id="text-over-limit"),  # 17 bytes > 16
    pytest.param(row(text="é" * 9), "text", SMALL, id="text-over-limit-multibyte"),  # 9 chars but 18 bytes
    pytest.param(row(text="x" * 65_537), "text", DEFAULT, id="text-over-default-limit"),  # default is 64 KiB
    # Text: encoding
    pytest.param(row(text=b"\xff\xfe"), "text", DEFAULT, id="bytes-invalid-utf8"),  # not UTF-8 at all
    pytest.param(row(text=b"caf\xc3"), "text", DEFAULT, id="bytes-truncated-utf8"),  # a sequence cut in half
    pytest.param(row(text=b"\xed\xa0\x80"), "text", DEFAULT, id="bytes-encoded-surrogate"),  # CESU, not UTF-8
    pytest.param(row(text="\ud800"), "text", DEFAULT, id="lone-high-surrogate"),  # cannot be encoded as UTF-8
    pytest.param(row(text="a\udfffb"), "text", DEFAULT, id="lone-low-surrogate"),  # idem, mid-string
    # Text: blank and control characters
    pytest.param(row(text=""), "text", DEFAULT, id="empty-text"),  # says nothing
    pytest.param(row(text=" \t\n "), "text", DEFAULT, id="blank-text"),  # whitespace only says nothing either
    pytest.param(row(text="a\x00b"), "text", DEFAULT, id="nul"),  # PostgreSQL cannot store NUL in text
    pytest.param(row(text="\x07ding"), "text", DEFAULT, id="bell"),  # C0 control
    pytest.param(row(text="\x1b[31mred"), "text", DEFAULT, id="ansi-escape"),  # terminal injection
    pytest.param(row(text="a\x0bb"), "text", DEFAULT, id="vertical-tab"),  # only tab, LF and CR are allowed
    pytest.param(row(text="a\x0cb"), "text", DEFAULT, id="form-feed"),  # idem
    pytest.param(row(text="del\x7f"), "text", DEFAULT, id="del"),  # DEL is a control character too
    # Tenant ids that could escape a path, a quote or a key
    pytest.param(row(tenant="../x"), "tenant", DEFAULT, id="tenant-dotdot"),  # archive path traversal
    pytest.param(row(tenant="a/b"), "tenant", DEFAULT, id="tenant-slash"),  # would add a path level
    pytest.param(row(tenant="a\\b"), "tenant", DEFAULT, id="tenant-backslash"),  # a path separator on Windows
    pytest.param(row(tenant="x'; DROP TABLE events;--"), "tenant", DEFAULT, id="tenant-sql"),  # quote and ;
    pytest.param(row(tenant="a b"), "tenant", DEFAULT, id="tenant-space"),  # spaces break keys and paths
    pytest.param(row(tenant=""), "tenant", DEFAULT, id="tenant-empty"),  # no one
    pytest.param(row(tenant="a" * 65), "tenant", DEFAULT, id="tenant-65-chars"),  # the column holds 64
    pytest.param(row(tenant="_acme"), "tenant", DEFAULT, id="tenant-leading-underscore"),  # "_unknown" is reserved
    pytest.param(row(tenant="-acme"), "tenant", DEFAULT, id="tenant-leading-dash"),  # reads as an option
    pytest.param(row(tenant="acme\n"), "tenant", DEFAULT, id="tenant-trailing-newline"),  # a `$` regex would pass it
    pytest.param(row(tenant="acm\x00e"), "tenant", DEFAULT, id="tenant-nul"),  # truncates in C strings
    pytest.param(row(tenant="acmé"), "tenant", DEFAULT, id="tenant-non-ascii"),  # ids are plain ASCII
    # Session and event ids
    pytest.param(row(session="s/1"), "session", DEFAULT, id="session-slash"),  # path separator
    pytest.param(row(session=""), "session", DEFAULT, id="session-empty"),  # no session
    pytest.param(row(session="s 1"), "session", DEFAULT, id="session-space"),  # not printable-without-space
    pytest.param(row(event_id="a/b"), "event_id", DEFAULT, id="event-id-slash"),  # path separator
    pytest.param(row(event_id="../../etc/passwd"), "event_id", DEFAULT, id="event-id-traversal"),  # idem
    pytest.param(row(event_id="a\\b"), "event_id", DEFAULT, id="event-id-backslash"),  # idem on Windows
    pytest.param(row(event_id="e'1"), "event_id", DEFAULT, id="event-id-quote"),  # no quotes in keys
    pytest.param(row(event_id=""), "event_id", DEFAULT, id="event-id-empty"),  # empty is not "derive one"
    pytest.param(row(event_id="e" * 129), "event_id", DEFAULT, id="event-id-129-chars"),  # the column holds 128
    pytest.param(row(event_id=True), "event_id", DEFAULT, id="event-id-bool"),  # bool would become "True"
    pytest.param(row(event_id=1.5), "event_id", DEFAULT, id="event-id-float"),  # floats do not round-trip
    # Actor
    pytest.param(row(actor="   "), "actor", DEFAULT, id="actor-blank"),  # no speaker
    pytest.param(row(actor="a" * 257), "actor", DEFAULT, id="actor-257-chars"),  # the column holds 256
    pytest.param(row(actor="A\x00"), "actor", DEFAULT, id="actor-nul"),  # PostgreSQL cannot store NUL
    pytest.param(row(actor="\ud800"), "actor", DEFAULT, id="actor-lone-surrogate"),
    # Metadata
    pytest.param(row(metadata=["tags"]), "metadata", DEFAULT, id="metadata-list"),  # must be a JSON object
    pytest.param(row(metadata="{}"), "metadata", DEFAULT, id="metadata-json-text"),  # a string, not an object
    pytest.param(row(metadata={"x": object()}), "metadata", DEFAULT, id="metadata-object"),  # not serialisable
    pytest.param(row(metadata={"x": {1, 2}}), "metadata", DEFAULT, id="metadata-set"),  # not serialisable
    pytest.param(row(metadata={"x": float("nan")}), "metadata", DEFAULT, id="metadata-nan"),  # not valid JSON
    pytest.param(row(metadata={(1, 2): 1}), "metadata", DEFAULT, id="metadata-tuple-key"),  # keys must be str
    pytest.param(row(metadata=circular()), "metadata", DEFAULT, id="metadata-circular"),  # infinite
    pytest.param(row(metadata={"x": "a\x00"}), "metadata", DEFAULT, id="metadata-nul"),  # PostgreSQL rejects it
    pytest.param(row(metadata={"\ud800": 1}), "metadata", DEFAULT, id="metadata-surrogate-key"),  # not UTF-8
    pytest.param(row(metadata={"x": "y" * 64}), "metadata", META64, id="metadata-too-big"),  # > 64 bytes as JSON
    pytest.param(row(metadata={"x": "é" * 30}), "metadata", META64, id="metadata-too-big-utf8"),  # 39 chars, 69 bytes
    pytest.param(row(metadata=nested(1_000)), "metadata", DEFAULT, id="metadata-deep"),
    # Tags
    pytest.param(row(metadata={"tags": "travel"}), "metadata.tags", DEFAULT, id="tags-str"),  # not split into chars
    pytest.param(row(metadata={"tags": {"a": 1}}), "metadata.tags", DEFAULT, id="tags-dict"),  # not a list
    pytest.param(row(metadata={"tags": [1]}), "metadata.tags", DEFAULT, id="tags-int"),  # tags are strings
    pytest.param(row(metadata={"tags": ["a b"]}), "metadata.tags", DEFAULT, id="tags-space"),  # identifiers only
    pytest.param(row(metadata={"tags": ["../x"]}), "metadata.tags", DEFAULT, id="tags-traversal"),  # leading dot
    pytest.param(row(metadata={"tags": ["a/../b"]}), "metadata.tags", DEFAULT, id="tags-inner-dotdot"),  # ".."
    pytest.param(row(metadata={"tags": [""]}), "metadata.tags", DEFAULT, id="tags-empty"),  # no tag
    pytest.param(row(metadata={"tags": ["t" * 65]}), "metadata.tags", DEFAULT, id="tags-65-chars"),  # max 64
    pytest.param(row(metadata={"tags": ["ok", None]}), "metadata.tags", DEFAULT, id="tags-none"),  # one bad tag
    # Scope
    pytest.param(row(metadata={"scope": "forever"}), "metadata.scope", DEFAULT, id="scope-unknown"),  # not a scope
    pytest.param(row(metadata={"scope": "SESSION"}), "metadata.scope", DEFAULT, id="scope-case"),  # exact names
    pytest.param(row(metadata={"scope": ["task"]}), "metadata.scope", DEFAULT, id="scope-list"),  # one value
    pytest.param(row(metadata={"scope": None}), "metadata.scope", DEFAULT, id="scope-null"),  # explicit null
    # Times that cannot be read, or are outside 1970-9999
    pytest.param(row(at="yesterday"), "at", DEFAULT, id="at-words"),  # not ISO-8601
    pytest.param(row(at="2024-02-30T00:00:00Z"), "at", DEFAULT, id="at-impossible-date"),  # no 30 February
    pytest.param(row(at=""), "at", DEFAULT, id="at-empty"),  # not a time
    pytest.param(row(at=float("nan")), "at", DEFAULT, id="at-nan"),  # not a number of seconds
    pytest.param(row(at=float("inf")), "at", DEFAULT, id="at-inf"),  # idem
    pytest.param(row(at=-1), "at", DEFAULT, id="at-before-1970"),  # 1969 is out of range
    pytest.param(row(at=1e20), "at", DEFAULT, id="at-epoch-overflow"),  # past year 9999
    pytest.param(row(at="1969-12-31T23:59:59Z"), "at", DEFAULT, id="at-1969-string"),  # out of range
    pytest.param(row(at="0001-01-01T00:00:00+01:00"), "at", DEFAULT, id="at-year-1-offset"),
    pytest.param(row(at="9999-12-31T23:30:00-01:00"), "at", DEFAULT, id="at-year-9999-offset"),
]


@pytest.mark.parametrize(("event", "field", "limits"), REJECTED)
def test_rejects_naming_the_field(event: Any, field: str, limits: Limits) -> None:
    with pytest.raises(InvalidInput) as err:
        validate_event(event, limits)
    assert err.value.field == field
    assert err.value.reason
    assert str(err.value).startswith(f"{field}: ")


ACCEPTED = [
    pytest.param(row(text="x" * 16), SMALL, "text", "x" * 16, id="text-at-limit"),  # the limit is inclusive
    pytest.param(row(text="é" * 8), SMALL, "text", "é" * 8, id="multibyte-at-limit"),  # 16 bytes exactly
    pytest.param(row(text="a\tb\nc\r\n"), DEFAULT, "text", "a\tb\nc\r\n", id="tab-and-newlines"),  # ordinary text
    pytest.param(row(text="café".encode()), DEFAULT, "text", "café", id="utf8-bytes"),  # decoded
    pytest.param(row(text="x'; DROP TABLE events;--"), DEFAULT, "text", "x'; DROP TABLE events;--", id="sql-in-text"),
    pytest.param(row(text="🙂 \u202e"), DEFAULT, "text", "🙂 \u202e", id="emoji-and-bidi"),  # printable Unicode
    pytest.param(row(tenant="a" * 64), DEFAULT, "tenant", "a" * 64, id="tenant-64-chars"),  # the column holds 64
    pytest.param(row(tenant="Acme_1-x"), DEFAULT, "tenant", "Acme_1-x", id="tenant-mixed"),  # letters, _ and -
    pytest.param(row(session=MISSING, session_id="s9"), DEFAULT, "session_id", "s9", id="session-id-alias"),
    pytest.param(row(session=42), DEFAULT, "session_id", "42", id="int-session"),  # ints are stable ids
    pytest.param(row(event_id=5), DEFAULT, "event_id", "5", id="int-event-id"),  # idem
    pytest.param(row(event_id="u@x.io:1+2=3"), DEFAULT, "event_id", "u@x.io:1+2=3", id="event-id-punct"),
    pytest.param(row(actor="  Caroline "), DEFAULT, "actor", "Caroline", id="actor-stripped"),  # names are trimmed
    pytest.param(row(metadata=None), DEFAULT, "metadata", {}, id="metadata-none"),  # no metadata
    pytest.param(
        row(metadata={"path": "C:\\u0000"}),  # a backslash and five characters, not NUL: valid JSON text
        DEFAULT,
        "metadata",
        {"path": "C:\\u0000"},
        id="metadata-literal-backslash-u0000",
    ),
    pytest.param(row(metadata={1: "a"}), DEFAULT, "metadata", {"1": "a"}, id="metadata-int-key"),  # as JSON does
    pytest.param(row(metadata={"tags": ["b", "a", "b"]}), DEFAULT, "tags", ["b", "a"], id="tags-dedup"),  # in order
    pytest.param(row(metadata={"tags": ("x:1", "a/b")}), DEFAULT, "tags", ["x:1", "a/b"], id="tags-tuple"),
    pytest.param(row(metadata={"scope": "task"}), DEFAULT, "scope", "task", id="scope-task"),  # a known scope
    pytest.param(row(), DEFAULT, "scope", "session", id="scope-default"),  # events belong to their session
]


@pytest.mark.parametrize(("event", "limits", "attribute", "expected"), ACCEPTED)
def test_accepts_and_normalises(event: dict[str, Any], limits: Limits, attribute: str, expected: Any) -> None:
    assert getattr(validate_event(event, limits), attribute) == expected


def test_event_id_is_derived_from_content_when_absent() -> None:
    first = validate_event(row(), DEFAULT).event_id
    assert first == validate_event(row(event_id=None), DEFAULT).event_id  # None means "derive one"
    assert first == validate_event(row(event_id=float("nan")), DEFAULT).event_id  # a DataFrame's missing value
    assert first == validate_event(row(at=T), DEFAULT).event_id  # the same instant written differently
    assert first != validate_event(row(text="I moved to Porto"), DEFAULT).event_id
    assert first.startswith("ev-")


PLUS_ONE = timezone(timedelta(hours=1))
MINUS_FIVE = timezone(timedelta(hours=-5))
TIMES = [
    pytest.param("2024-03-01T09:00:00Z", T, id="iso-z"),  # Z is UTC
    pytest.param("2024-03-01T09:00:00+00:00", T, id="iso-utc-offset"),  # idem
    pytest.param("2024-03-01T10:00:00+01:00", T, id="iso-plus-one"),  # 10:00 at +01:00 is 09:00 UTC
    pytest.param("2024-03-01T04:00:00-05:00", T, id="iso-minus-five"),  # 04:00 at -05:00 is 09:00 UTC
    pytest.param("2024-03-01T14:30:00+05:30", T, id="iso-half-hour-offset"),  # India
    pytest.param("2024-03-01T09:00:00", T, id="iso-naive"),  # no offset is taken as UTC
    pytest.param(" 2024-03-01T09:00:00Z ", T, id="iso-padded"),  # surrounding spaces are ignored
    pytest.param("2024-03-01", datetime(2024, 3, 1, tzinfo=UTC), id="iso-date"),  # midnight UTC
    pytest.param(EPOCH_T, T, id="epoch-int"),  # seconds since 1970 in UTC
    pytest.param(EPOCH_T + 0.5, T + timedelta(milliseconds=500), id="epoch-float"),  # fractions kept
    pytest.param(0, datetime(1970, 1, 1, tzinfo=UTC), id="epoch-zero"),  # the first valid instant
    pytest.param(datetime(2024, 3, 1, 9, 0), T, id="naive-datetime"),  # taken as UTC
    pytest.param(datetime(2024, 3, 1, 10, 0, tzinfo=PLUS_ONE), T, id="aware-plus-one"),  # converted
    pytest.param(datetime(2024, 3, 1, 4, 0, tzinfo=MINUS_FIVE), T, id="aware-minus-five"),  # converted
    pytest.param(date(2024, 3, 1), datetime(2024, 3, 1, tzinfo=UTC), id="date"),  # midnight UTC
    pytest.param("2024-02-29T23:30:00-10:00", datetime(2024, 3, 1, 9, 30, tzinfo=UTC), id="crosses-day"),  # leap day
]


@pytest.mark.parametrize(("at", "expected"), TIMES)
def test_times_are_normalised_to_aware_utc(at: Any, expected: datetime) -> None:
    got = validate_event(row(at=at), DEFAULT).at
    assert got == expected
    assert got.tzinfo is UTC  # not merely some zero-offset zone: one representation for every backend
