"""Bad input at the public API on both store backends: rejected or quarantined, never stored, never fatal to a batch."""

from __future__ import annotations

import base64
import json
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from itertools import zip_longest
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from engram import InvalidInput, Memory
from engram.store import QUARANTINE
from engram.validation import validate_event
from tests.conftest import T0

UNKNOWN = "_unknown"  # the tenant label of a rejected row whose tenant could not be trusted
CONTROL_CHARS = [chr(c) for c in range(0x20) if c not in (0x09, 0x0A, 0x0D)] + ["\x7f"]


def event(tenant: Any = "acme", **fields: Any) -> dict[str, Any]:
    out = {"tenant": tenant, "session": "s1", "actor": "Caroline", "text": "a perfectly fine event", "at": T0}
    out.update(fields)
    return out


def without(name: str, **fields: Any) -> dict[str, Any]:
    out = event(**fields)
    del out[name]
    return out


def nested(depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cursor = out
    for _ in range(depth):
        cursor["a"] = {}
        cursor = cursor["a"]
    return out


# Valid rows that look dangerous: quotes, SQL, COPY's escape sequences, control-free Unicode, bytes, the size limit.
VALID = [
    event(event_id="v-sql", text="x'; DROP TABLE events;--"),
    event(event_id="v-copy", text="tab\there\nnewline\r\n back\\slash \\N \\. end"),
    event(event_id="v-quotes", text="she said \"hi\" and 'bye'"),
    event(event_id="v-unicode", text="🙂 café \u202e ü 中文"),
    event(event_id="v-bytes", text="café as UTF-8 bytes".encode()),
    event(event_id="v-big", text="x" * 65_536),  # exactly the default limit
    event(event_id="v-meta", metadata={"tags": ["travel", "a/b"], "scope": "task", "note": "bell\x07 ok"}),
    event(event_id="v-epoch", at=1_709_283_600),
    event(event_id="v-offset", at="2024-03-01T10:00:00+01:00"),
    event("globex", event_id="v-sql", text="another tenant may reuse an event id"),
    without("session", tenant="globex", session_id="s-alias", text="session given as session_id"),
    event("globex", text="no event id: one is derived from the content"),
]

# (row, field, tenant label in quarantine): every kind of bad row.
BAD = [
    (without("tenant"), "tenant", UNKNOWN),
    (without("session"), "session", "acme"),
    (without("actor"), "actor", "acme"),
    (without("text"), "text", "acme"),
    (without("at"), "at", "acme"),
    (event(text=42), "text", "acme"),
    (event(["acme"]), "tenant", UNKNOWN),
    (event(at=True), "at", "acme"),
    (event(text="x" * 65_537), "text", "acme"),
    (event(text=b"\xff\xfe invalid"), "text", "acme"),
    (event(text="lone \ud800 surrogate"), "text", "acme"),
    (event(text="nul \x00 inside"), "text", "acme"),
    (event(text="escape \x1b[2J"), "text", "acme"),
    (event(text="   "), "text", "acme"),
    (event("../x"), "tenant", UNKNOWN),
    (event("a/b"), "tenant", UNKNOWN),
    (event("x'; DROP TABLE events;--"), "tenant", UNKNOWN),
    (event("a b"), "tenant", UNKNOWN),
    (event(""), "tenant", UNKNOWN),
    (event("a" * 65), "tenant", UNKNOWN),
    (event(event_id="a/b"), "event_id", "acme"),
    (event(event_id="../../etc/passwd"), "event_id", "acme"),
    (event(session="s/1"), "session", "acme"),
    (event(metadata=["not", "a", "dict"]), "metadata", "acme"),
    (event(metadata={"x": {1, 2}}), "metadata", "acme"),
    (event(metadata={"x": "y" * 16_385}), "metadata", "acme"),
    (event(metadata={"tags": "travel"}), "metadata.tags", "acme"),
    (event(metadata={"tags": ["../x"]}), "metadata.tags", "acme"),
    (event(metadata={"scope": "forever"}), "metadata.scope", "acme"),
    (event(at="yesterday"), "at", "acme"),
    (event(at=-1), "at", "acme"),
    ("a bare string", "row", UNKNOWN),
    (None, "row", UNKNOWN),
    (42, "row", UNKNOWN),
    (["acme", "s1", "Caroline"], "row", UNKNOWN),
]


def as_stored(value: Any) -> Any:
    """What ``raw_payload`` promises for a value, after a JSON round trip (bytes as bytes, the rest by repr)."""
    if isinstance(value, dict):
        return {str(k): as_stored(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_stored(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if value is None or isinstance(value, (str, int, float, bool, bytes)):
        return value
    return {"$repr": repr(value)}


def decode_payload(value: Any) -> Any:
    """A stored raw payload back to Python, with ``{"$bytes_b64": ...}`` turned back into bytes."""
    if isinstance(value, dict):
        if set(value) == {"$bytes_b64"}:
            return base64.b64decode(value["$bytes_b64"])
        return {k: decode_payload(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_payload(v) for v in value]
    return value


def quarantined(memory: Memory) -> list[dict[str, Any]]:
    with memory.store.read() as conn:
        return [dict(r) for r in conn.execute(select(QUARANTINE)).mappings()]


def event_id_of(memory: Memory, row: dict[str, Any]) -> str:
    return validate_event(row, memory.limits).event_id


def expected_text(row: dict[str, Any]) -> str:
    text = row["text"]
    return text.decode() if isinstance(text, bytes) else text


OBSERVE_REJECTS = [
    ({"tenant": "../x"}, "tenant"),  # a path
    ({"tenant": "x'; DROP TABLE events;--"}, "tenant"),  # SQL
    ({"session": "s/1"}, "session"),  # a path separator in an id
    ({"actor": ""}, "actor"),  # no speaker
    ({"text": "nul\x00"}, "text"),  # PostgreSQL cannot store it
    ({"text": b"\xff"}, "text"),  # not UTF-8
    ({"text": "\udc00"}, "text"),  # lone surrogate
    ({"at": "yesterday"}, "at"),  # not ISO-8601
    ({"event_id": "a/b"}, "event_id"),  # a path separator in an id
    ({"metadata": {"scope": "forever"}}, "metadata.scope"),  # unknown scope
    ({"metadata": {"tags": ["a b"]}}, "metadata.tags"),  # a space in a tag
    ({"metadata": [1]}, "metadata"),  # not an object
]


def test_observe_rejects_naming_the_field_and_stores_nothing(memory: Memory) -> None:
    # One test walks the table: a fresh PostgreSQL schema per case would cost more than the cases themselves.
    for change, field in OBSERVE_REJECTS:
        kwargs = {"tenant": "acme", "session": "s1", "actor": "Caroline", "text": "hello", "at": T0, **change}
        with pytest.raises(InvalidInput) as err:
            memory.observe(**kwargs)
        assert err.value.field == field, change
    stats = memory.stats()
    assert (stats["events"], stats["quarantine"]) == (0, 0)  # observe raises instead of quarantining


def test_observe_many_keeps_valid_rows_and_quarantines_every_bad_one(memory: Memory) -> None:
    gap = object()
    mixed = zip_longest(VALID, [row for row, _, _ in BAD], fillvalue=gap)
    rows = [row for pair in mixed for row in pair if row is not gap]
    rows.append(VALID[0])  # the same event twice in one batch is one event and one duplicate
    assert len(rows) == len(VALID) + len(BAD) + 1

    report = memory.observe_many(rows)

    assert (report.received, report.accepted, report.duplicates, report.quarantined) == (
        len(rows),
        len(VALID),
        1,
        len(BAD),
    )
    assert report.reasons == dict(Counter(field for _, field, _ in BAD))
    assert memory.stats("acme")["events"] == sum(r["tenant"] == "acme" for r in VALID)
    assert memory.stats("globex")["events"] == sum(r["tenant"] == "globex" for r in VALID)
    assert memory.stats()["events"] == len(VALID)
    for row in VALID:
        item = memory.get(row["tenant"], event_id_of(memory, row))
        assert (item.tenant, item.text, item.actor) == (row["tenant"], expected_text(row), "Caroline")
    assert [h.item_id for h in memory.search("acme", "DROP TABLE")] == ["v-sql"]
    assert memory.get("acme", "v-meta").tags == ("travel", "a/b")

    stored = quarantined(memory)
    assert all(q["source"] == "observe_many" and q["reason"] for q in stored)
    got = sorted(((q["tenant"], q["field"], decode_payload(json.loads(q["raw_payload"]))) for q in stored), key=repr)
    want = sorted(((label, field, as_stored(row)) for row, field, label in BAD), key=repr)
    assert got == want  # every bad row, its field, its tenant label and its payload, byte for byte

    again = memory.observe_many(rows)
    assert (again.accepted, again.duplicates, again.quarantined) == (0, len(VALID) + 1, len(BAD))
    assert memory.stats()["events"] == len(VALID)


@pytest.mark.parametrize(
    ("rows", "kwargs", "field"),
    [
        (None, {}, "rows"),
        (5, {}, "rows"),
        ([], {"batch_size": "10"}, "batch_size"),
        ([], {"batch_size": 0}, "batch_size"),
        ([], {"batch_size": True}, "batch_size"),
    ],
)
def test_observe_many_refuses_what_is_not_rows_or_a_batch_size_naming_it(
    memory: Memory, rows: Any, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput) as err:
        memory.observe_many(rows, **kwargs)
    assert err.value.field == field


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(event(actor="\ud800", event_id="bad"), id="surrogate-actor"),
        pytest.param(event(actor="\ud800"), id="surrogate-actor-derived-id"),
        pytest.param(event(at="0001-01-01T00:00:00+01:00"), id="year-1-with-offset"),
        pytest.param(event(at="9999-12-31T23:30:00-01:00"), id="year-9999-with-offset"),
        pytest.param(event(metadata=nested(1_000)), id="metadata-nested-1000"),
    ],
)
def test_one_bad_row_does_not_sink_its_batch(memory: Memory, bad: dict[str, Any]) -> None:
    good = event(event_id="good", text="the valid neighbour")
    report = memory.observe_many([good, bad])
    assert (report.accepted, report.quarantined) == (1, 1)
    assert memory.get("acme", "good").text == "the valid neighbour"


# -- property: random mixtures of valid and garbage rows ----------------------------------------------------------

OPAQUE_ID = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:@+=-]{0,20}", fullmatch=True)
TAG = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_:-]{0,10}", fullmatch=True)
PRINTABLE = st.characters(blacklist_categories=("Cs",), blacklist_characters=CONTROL_CHARS)
ONE_LINE = st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters=["\x85"])
VALID_TEXT = st.text(PRINTABLE, min_size=1, max_size=120).filter(lambda s: s.strip())
ZONE = st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m)))
# Years 1971-9998 keep an offset from pushing the instant outside 1970-9999 (tested on their own above).
AWARE = st.datetimes(datetime(1971, 1, 1), datetime(9998, 12, 31), timezones=st.one_of(st.none(), ZONE))
VALID_AT = st.one_of(AWARE, AWARE.map(lambda d: d.isoformat()), st.integers(0, 4_000_000_000))
JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.text(PRINTABLE, max_size=20))
VALID_METADATA = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {},
        optional={
            "tags": st.lists(TAG, max_size=3),
            "scope": st.sampled_from(["session", "task"]),
            "source": JSON_SCALAR,
        },
    ),
)
VALID_ROW = st.fixed_dictionaries(
    {
        "tenant": st.integers(0, 1),  # replaced by one of the example's own tenants
        "session": OPAQUE_ID,
        # Lone surrogates in actor are kept out: they are tested on their own above.
        # An actor starts a line of the rendered prompt: printable, and no line breaks of any kind.
        "actor": st.text(ONE_LINE, min_size=1, max_size=30).filter(lambda s: s.strip()),
        "text": VALID_TEXT,
        "at": VALID_AT,
        "event_id": st.one_of(st.none(), OPAQUE_ID),
        "metadata": VALID_METADATA,
    }
)


def _spliced(chars: list[str] | st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Random text with at least one of ``chars`` inside it, between letters so that no strip() can remove it."""
    inner = chars if isinstance(chars, st.SearchStrategy) else st.sampled_from(chars)
    return st.builds(lambda a, c, b: f"x{a}{c}{b}x", st.text(max_size=10), inner, st.text(max_size=10))


WRONG_TYPE = st.one_of(st.integers(), st.floats(), st.lists(st.integers(), max_size=2), st.binary(max_size=4))
GARBAGE_TENANT = st.one_of(
    _spliced(list("/\\' ;\"%*\n\x00.é")),  # none of these may appear in a tenant id
    st.sampled_from(["", "../x", "a/b", "x'; DROP TABLE events;--", "a b", "a" * 65, "_x", "-x"]),
    WRONG_TYPE,
)
GARBAGE_TEXT = st.one_of(
    _spliced(CONTROL_CHARS),
    _spliced(["\ud800", "\udbff", "\udc00", "\udfff"]),
    st.text(" \t\n", max_size=4),  # blank
    st.binary(max_size=10).map(lambda b: b + b"\xff"),  # never valid UTF-8
    st.integers(),
    st.lists(st.text(max_size=3), max_size=2),
)
GARBAGE = st.one_of(
    st.tuples(st.just("tenant"), GARBAGE_TENANT),
    st.tuples(st.just("text"), GARBAGE_TEXT),
    st.tuples(st.just("session"), st.one_of(_spliced(list("/\\' ")), st.booleans(), st.floats())),
    st.tuples(st.just("actor"), st.one_of(st.integers(), st.text(" ", max_size=3), _spliced(CONTROL_CHARS))),
    st.tuples(st.just("at"), st.one_of(st.booleans(), st.just("not a time"), st.integers(max_value=-1))),
    st.tuples(st.just("event_id"), st.one_of(_spliced(list("/\\' \"")), st.just(""), st.booleans())),
    st.tuples(st.just("metadata"), st.one_of(st.lists(st.integers(), max_size=2), st.text(max_size=5))),
    st.tuples(st.just("metadata"), st.just({"tags": ["../x"]})),
    st.tuples(st.just("metadata"), st.just({"scope": "forever"})),
    st.tuples(st.just("missing"), st.sampled_from(["tenant", "session", "actor", "text", "at"])),
    st.tuples(st.just("row"), st.one_of(st.none(), st.integers(), st.text(max_size=10), st.lists(st.none()))),
)


@pytest.mark.reliability
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    valid=st.lists(VALID_ROW, max_size=15),
    garbage=st.lists(st.tuples(VALID_ROW, GARBAGE), max_size=15),
    repeats=st.lists(st.integers(0, 1_000), max_size=4),
    order=st.randoms(use_true_random=False),
)
def test_observe_many_never_raises_and_accounts_for_every_row(
    sqlite_memory: Memory, valid: list[dict], garbage: list[tuple[dict, tuple[str, Any]]], repeats: list[int], order
) -> None:
    memory = sqlite_memory  # reused across examples: each example writes to tenants of its own
    tenants = [f"p{uuid.uuid4().hex[:12]}", f"q{uuid.uuid4().hex[:12]}"]
    good = [{**r, "tenant": tenants[r["tenant"]]} for r in valid]
    if good:
        good += [good[i % len(good)] for i in repeats]  # resends within the batch
    bad: list[Any] = []
    for base, (field, value) in garbage:
        row = {**base, "tenant": tenants[base["tenant"]]}
        if field == "row":
            bad.append(value)
        elif field == "missing":
            del row[value]
            bad.append(row)
        else:
            bad.append({**row, field: value})
    rows = good + bad
    order.shuffle(rows)
    good_ids = {id(row) for row in good}
    expected: dict[tuple[str, str], str] = {}
    for row in rows:  # in batch order: the first of several rows with one event id is the one stored
        if id(row) in good_ids:
            expected.setdefault((row["tenant"], event_id_of(memory, row)), row["text"])
    before = memory.stats()["quarantine"]

    report = memory.observe_many(rows)

    assert report.received == len(rows)
    assert report.accepted + report.duplicates + report.quarantined == report.received
    assert report.quarantined == len(bad)
    assert report.accepted == len(expected)
    assert memory.stats()["quarantine"] - before == len(bad)
    for (tenant, event_id), text in expected.items():
        assert memory.get(tenant, event_id).text == text


# -- search with hostile arguments ---------------------------------------------------------------------------------

HOSTILE_QUERIES = [
    "x'; DROP TABLE events;--",  # SQL injection
    "' OR '1'='1",  # idem
    "tenant = 'globex'",  # names the other tenant
    "globex secret",  # the other tenant's words
    "%",  # LIKE wildcard
    "_",  # idem
    "\\",  # escape character
    "*",  # glob
    "\x00",  # NUL
    "\x07\x1b[2J\x7f",  # control characters
    "\ud800 lone surrogate",  # not encodable
    "a" * 4_000,  # long, below the 4096 limit
    "é" * 4_000,  # long and multibyte
    "🙂 secret 中文 \u202e",  # Unicode
    "secret",  # plain
    "   ",  # blank
]


BAD_SEARCH_ARGUMENTS = [
    ("acme", "a" * 4_097, {}, "query"),  # over the 4096-character limit
    ("acme", b"secret", {}, "query"),  # bytes are not text
    ("acme", None, {}, "query"),  # no query
    ("acme", ["secret"], {}, "query"),  # not a string
    ("globex' OR '1'='1", "secret", {}, "tenant"),  # SQL in the tenant
    ("../globex", "secret", {}, "tenant"),  # a path in the tenant
    (None, "secret", {}, "tenant"),  # no tenant
    ("acme", "secret", {"limit": 1_001}, "limit"),  # over the maximum
    ("acme", "secret", {"limit": True}, "limit"),  # bool is not a count
    ("acme", "secret", {"layers": ["events; DROP"]}, "layers"),  # not a layer
    ("acme", "secret", {"tags": ["x'--"]}, "tags"),  # quote in a tag
    ("acme", "secret", {"until": "\x00"}, "until"),  # not a time
]


def test_search_with_hostile_input_stays_in_its_tenant(memory: Memory) -> None:
    memory.observe("acme", "s1", "Caroline", "the acme secret plan about dogs", T0, event_id="acme-1")
    memory.observe("acme", "s1", "Caroline", "x'; DROP TABLE events;-- was a joke", T0, event_id="acme-2")
    memory.observe("globex", "s1", "Mallory", "the globex secret plan about dogs", T0, event_id="globex-1")
    memory.observe("globex", "s1", "Mallory", "tenant = 'globex' secret 🙂", T0, event_id="globex-2")
    for query in HOSTILE_QUERIES:
        hits = memory.search("acme", query, limit=1_000)
        assert all(h.item_id.startswith("acme-") and "Mallory" not in h.text for h in hits), query
    assert {h.item_id for h in memory.search("acme", "secret plan DROP TABLE")} == {"acme-1", "acme-2"}
    for tenant, query, kwargs, field in BAD_SEARCH_ARGUMENTS:
        with pytest.raises(InvalidInput) as err:
            memory.search(tenant, query, **kwargs)
        assert err.value.field == field, (tenant, query, kwargs)
    assert memory.stats("globex")["events"] == 2  # nothing was dropped


@pytest.mark.reliability
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    query=st.one_of(
        st.text(max_size=300),
        _spliced(["\ud800", "\x00", "'", "%", "\\", "--", ";", "globex"]),
        st.text(st.sampled_from("secret plan dogs globex acme 'OR 1=1"), max_size=60),
    )
)
def test_search_never_raises_and_never_leaves_its_tenant(sqlite_memory: Memory, query: str) -> None:
    memory = sqlite_memory
    if not memory.stats("acme")["events"]:  # the fixture is shared by every example: seed it once
        memory.observe("acme", "s1", "Caroline", "the acme secret plan about dogs", T0, event_id="acme-1")
        memory.observe("globex", "s1", "Mallory", "the globex secret plan about dogs", T0, event_id="globex-1")
    hits = memory.search("acme", query)
    assert all(h.item_id == "acme-1" for h in hits)


def test_quarantine_is_per_tenant_label_and_counted(memory: Memory) -> None:
    memory.observe_many([event(text="\x00"), event("globex", text="\x00"), event("../evil", text="ok")])
    assert memory.stats("acme")["quarantine"] == 1
    assert memory.stats("globex")["quarantine"] == 1
    with memory.store.read() as conn:
        labels = dict(conn.execute(select(QUARANTINE.c.tenant, func.count()).group_by(QUARANTINE.c.tenant)).all())
    assert labels == {"acme": 1, "globex": 1, UNKNOWN: 1}  # the hostile tenant is never written as a label


def test_naive_and_offset_times_land_as_the_same_utc_instant(memory: Memory) -> None:
    memory.observe_many(
        [
            event(event_id="naive", at=datetime(2024, 3, 1, 9, 0)),
            event(event_id="offset", at="2024-03-01T10:00:00+01:00"),
            event(event_id="epoch", at=1_709_283_600),
        ]
    )
    ats = {memory.get("acme", i).at for i in ("naive", "offset", "epoch")}
    assert ats == {datetime(2024, 3, 1, 9, 0, tzinfo=UTC)}
