"""The quality gates: which rows each suite rejects, which batches it stops whole, and what it reports.

Row-level cases share one validation per suite (every case is a row of one batch, keyed by its id), since a GE
validation costs a few hundred milliseconds whatever the batch size.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest

from engram import quality
from engram.errors import QualityGateFailed
from engram.quality import GateResult, validate_fact_batch, validate_sensory_batch
from engram.validation import Limits

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
LIMITS = Limits(max_text_bytes=64)


def event(event_id: str, **changes: Any) -> dict[str, Any]:
    """A row of the ``events`` table that passes the gate, with ``changes`` applied."""
    row = {
        "tenant": "acme",
        "event_id": event_id,
        "session_id": "s1",
        "actor": "Caroline",
        "text": "I adopted a dog named Rex",
        "at": T0,
        "metadata": {"tags": ["pets"]},
        "received_at": T0,
        "routed_at": None,
        "seq": 1,
    }
    return {**row, **changes}


def fact(fact_key: str, **changes: Any) -> dict[str, Any]:
    """A candidate fact that passes the gate, with ``changes`` applied."""
    row = {
        "tenant": "acme",
        "fact_key": fact_key,
        "text": "Caroline adopted a dog named Rex",
        "actor": "Caroline",
        "at": T0,
        "rendered": "(1 March 2024) Caroline: I adopted a dog named Rex",
        "tags": ["pets"],
        "sources": ["e1"],
        "salience": 0.5,
        "content_hash": "h1",
    }
    return {**row, **changes}


def events(*rows: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def facts(*rows: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


# --- row level: sensory_to_working -------------------------------------------------------------------------------

# (event_id, changes, field, expectation the reason names)
SENSORY_REJECTS = [
    # a space is not allowed in a tenant id (it ends up in keys and archive paths)
    ("bad-tenant-space", {"tenant": "acme corp"}, "tenant", "expect_column_values_to_match_regex"),
    # a trailing newline: re.search with "$" would accept it, the gate anchors with \Z like fullmatch does
    ("bad-tenant-newline", {"tenant": "acme\n"}, "tenant", "expect_column_values_to_match_regex"),
    # 65 characters: one over TENANT_PATTERN's 64
    ("bad-tenant-long", {"tenant": "a" * 65}, "tenant", "expect_column_values_to_match_regex"),
    # a row without a tenant belongs to nobody
    ("bad-tenant-null", {"tenant": None}, "tenant", "expect_column_values_to_not_be_null"),
    ("bad-session-null", {"session_id": None}, "session_id", "expect_column_values_to_not_be_null"),
    ("bad-actor-null", {"actor": None}, "actor", "expect_column_values_to_not_be_null"),
    ("bad-text-null", {"text": None}, "text", "expect_column_values_to_not_be_null"),
    # an empty text is 0 bytes, under the minimum of 1
    ("bad-text-empty", {"text": ""}, "text", "expect_column_values_to_be_between"),
    # 40 characters but 80 bytes of UTF-8: over a 64-byte limit although a character count would pass it
    ("bad-text-bytes", {"text": "é" * 40}, "text", "expect_column_values_to_be_between"),
    # bytes are not text: measured as -1, so they fail the size rule
    ("bad-text-type", {"text": b"raw bytes"}, "text", "expect_column_values_to_be_between"),
    ("bad-at-null", {"at": None}, "at", "expect_column_values_to_not_be_null"),
]

SENSORY_KEPT = [
    # the plain valid row
    ("ok-plain", {}),
    # exactly 64 bytes of UTF-8 (32 two-byte characters): the limit itself is allowed
    ("ok-text-at-limit", {"text": "é" * 32}),
    # one byte is the minimum
    ("ok-text-one-byte", {"text": "x"}),
    # 64 characters is TENANT_PATTERN's maximum
    ("ok-tenant-64", {"tenant": "a" * 64}),
    # the same event id under another tenant is another event: (tenant, event_id) is the key
    ("ok-plain", {"tenant": "other"}),
]


@pytest.fixture(scope="module")
def sensory_gate() -> GateResult:
    rows = [event(event_id, **changes) for event_id, changes, _, _ in SENSORY_REJECTS]
    rows += [event(event_id, **changes) for event_id, changes in SENSORY_KEPT]
    batch = events(*rows)
    batch.index = [f"row-{i}" for i in range(len(batch))]  # a caller's own labels, kept in valid and rejected
    return validate_sensory_batch(batch, LIMITS, max_reject_fraction=1.0)


def _rejects_by_key(gate: GateResult) -> dict[tuple[str | None, str | None], dict[str, Any]]:
    return {(r["tenant"], r["key"]): r for r in gate.rejected}


@pytest.mark.parametrize(("event_id", "changes", "field", "expectation"), SENSORY_REJECTS)
def test_sensory_row_rejects_name_field_and_expectation(
    sensory_gate: GateResult, event_id: str, changes: dict[str, Any], field: str, expectation: str
) -> None:
    tenant = changes.get("tenant", "acme")
    reject = _rejects_by_key(sensory_gate)[(tenant, event_id)]
    assert reject["field"] == field
    assert expectation in reject["reason"]
    assert reject["index"] not in sensory_gate.valid.index


@pytest.mark.parametrize(("event_id", "changes"), SENSORY_KEPT)
def test_sensory_valid_rows_are_kept_next_to_bad_ones(
    sensory_gate: GateResult, event_id: str, changes: dict[str, Any]
) -> None:
    kept = sensory_gate.valid
    tenant = changes.get("tenant", "acme")
    match = kept[(kept["event_id"] == event_id) & (kept["tenant"] == tenant)]
    assert len(match) == 1


def test_sensory_gate_keeps_columns_and_index_and_counts(sensory_gate: GateResult) -> None:
    # every row is either valid or rejected, once, under the caller's index label
    assert len(sensory_gate.valid) == len(SENSORY_KEPT)
    assert len(sensory_gate.rejected) == len(SENSORY_REJECTS)
    labels = set(sensory_gate.valid.index) | {r["index"] for r in sensory_gate.rejected}
    assert labels == {f"row-{i}" for i in range(len(SENSORY_KEPT) + len(SENSORY_REJECTS))}
    assert list(sensory_gate.valid.columns) == list(event("x"))  # no helper columns leak out
    assert not sensory_gate.passed
    assert sensory_gate.result["statistics"]["rejected_rows"] == len(SENSORY_REJECTS)


def test_a_row_failing_two_rules_is_rejected_once_with_both() -> None:
    gate = validate_sensory_batch(events(event("e1", actor=None, text=None), event("e2")), max_reject_fraction=1.0)
    (reject,) = gate.rejected
    # the first failed check in suite order names the field; the reason lists every rule the row broke
    assert reject["field"] == "actor"
    assert "column='actor'" in reject["reason"] and "column='text'" in reject["reason"]


def test_rejected_rows_keep_duplicate_index_labels_apart() -> None:
    # a concatenation can repeat labels; the gate works by position, so only the bad row goes
    batch = events(event("e1"), event("e2", text=""))
    batch.index = [7, 7]
    gate = validate_sensory_batch(batch, max_reject_fraction=1.0)
    assert gate.valid["event_id"].tolist() == ["e1"]
    assert [r["key"] for r in gate.rejected] == ["e2"]


# --- row level: episodic_to_semantic -----------------------------------------------------------------------------

# (fact_key, changes, field, expectation the reason names)
FACT_REJECTS = [
    # 65 characters: over the semantic_items.fact_key column's 64
    ("k" * 65, {}, "fact_key", "expect_column_values_to_be_between"),
    # an empty key identifies nothing
    ("", {}, "fact_key", "expect_column_values_to_be_between"),
    ("bad-text-empty", {"text": ""}, "text", "expect_column_values_to_be_between"),
    ("bad-text-null", {"text": None}, "text", "expect_column_values_to_not_be_null"),
    # a number is not a statement: measured as length -1
    ("bad-text-type", {"text": 7}, "text", "expect_column_values_to_be_between"),
    ("bad-salience-high", {"salience": 1.5}, "salience", "expect_column_values_to_be_between"),
    ("bad-salience-low", {"salience": -0.1}, "salience", "expect_column_values_to_be_between"),
    # NaN is no salience at all
    ("bad-salience-nan", {"salience": math.nan}, "salience", "expect_column_values_to_not_be_null"),
    # a word is not a number; without the numeric helper GE's range check would let it through
    ("bad-salience-text", {"salience": "high"}, "salience", "expect_column_values_to_not_be_null"),
    # a fact must come from somewhere: lineage needs at least one event id
    ("bad-sources-empty", {"sources": []}, "sources", "expect_column_values_to_be_between"),
    ("bad-sources-null", {"sources": None}, "sources", "expect_column_values_to_be_between"),
    # one id as a bare string is not a list of ids
    ("bad-sources-str", {"sources": "e1"}, "sources", "expect_column_values_to_be_between"),
    # without its date the rendered fact cannot answer "when"
    (
        "bad-rendered-nodate",
        {"rendered": "Caroline: I adopted a dog"},
        "rendered",
        "expect_column_values_to_match_regex",
    ),
    # the date must lead, not appear later in the text
    ("bad-rendered-late", {"rendered": "Caroline (1 March 2024) adopted"}, "rendered", "to_match_regex"),
    ("bad-rendered-null", {"rendered": None}, "rendered", "expect_column_values_to_not_be_null"),
    ("bad-at-null", {"at": None}, "at", "expect_column_values_to_not_be_null"),
    ("bad-tenant", {"tenant": "acme/other"}, "tenant", "expect_column_values_to_match_regex"),
]

FACT_KEPT = [
    ("ok-plain", {}),
    # 64 characters is the column's size, allowed
    ("k" * 64, {}),
    # the range is closed: 0 and 1 are saliences
    ("ok-salience-0", {"salience": 0}),
    ("ok-salience-1", {"salience": 1.0}),
    # a tuple is a list of sources too (and the empty actor of an unattributed fact is fine)
    ("ok-sources-tuple", {"sources": ("e1", "e2"), "actor": ""}),
    # a one-digit day and a long month name
    ("ok-rendered-day", {"rendered": "(8 September 2023) Mel: went camping"}),
    # two candidates with one key are the same fact seen twice: consolidation merges them, the gate keeps both
    ("ok-plain", {"content_hash": "h2"}),
]


@pytest.fixture(scope="module")
def fact_gate() -> GateResult:
    rows = [fact(key, **changes) for key, changes, _, _ in FACT_REJECTS]
    rows += [fact(key, **changes) for key, changes in FACT_KEPT]
    return validate_fact_batch(facts(*rows), max_reject_fraction=1.0)


@pytest.mark.parametrize(
    ("fact_key", "changes", "field", "expectation"), FACT_REJECTS, ids=[c[0][:20] or "empty-key" for c in FACT_REJECTS]
)
def test_fact_row_rejects_name_field_and_expectation(
    fact_gate: GateResult, fact_key: str, changes: dict[str, Any], field: str, expectation: str
) -> None:
    reject = _rejects_by_key(fact_gate)[(changes.get("tenant", "acme"), fact_key)]
    assert reject["field"] == field
    assert expectation in reject["reason"]


@pytest.mark.parametrize(("fact_key", "changes"), FACT_KEPT, ids=[c[0][:20] for c in FACT_KEPT])
def test_fact_valid_rows_are_kept_next_to_bad_ones(
    fact_gate: GateResult, fact_key: str, changes: dict[str, Any]
) -> None:
    kept = fact_gate.valid
    hash_ = changes.get("content_hash", "h1")
    assert len(kept[(kept["fact_key"] == fact_key) & (kept["content_hash"] == hash_)]) == 1


def test_fact_gate_counts(fact_gate: GateResult) -> None:
    assert len(fact_gate.valid) == len(FACT_KEPT)
    assert len(fact_gate.rejected) == len(FACT_REJECTS)


# --- batch level -------------------------------------------------------------------------------------------------


def _sensory(batch: pd.DataFrame) -> GateResult:
    return validate_sensory_batch(batch)


def _facts(batch: pd.DataFrame) -> GateResult:
    return validate_fact_batch(batch)


BATCH_FAILURES = [
    # without text there is nothing to route; the missing column is named, not the errors it causes downstream
    (
        _sensory,
        events(event("e1"), event("e2")).drop(columns=["text"]),
        "expect_table_columns_to_match_set(missing: text)",
    ),
    # the same (tenant, event_id) twice would route one event twice
    (_sensory, events(event("e1"), event("e1")), "expect_compound_columns_to_be_unique(tenant, event_id)"),
    # 3 of 4 rows rejected is 75%, over the default 50%: the producer is broken, not three rows
    (
        _sensory,
        events(event("e1", text=""), event("e2", actor=None), event("e3", tenant="a b"), event("e4")),
        "rejected_fraction_at_most(0.5)",
    ),
    # without sources no lineage can be written
    (
        _facts,
        facts(fact("k1"), fact("k2")).drop(columns=["sources"]),
        "expect_table_columns_to_match_set(missing: sources)",
    ),
    # a fact without a key cannot be versioned: the consolidator is at fault
    (_facts, facts(fact("k1"), fact(None)), "expect_column_values_to_not_be_null(fact_key)"),
    # 2 of 3 facts rejected, over 50%
    (_facts, facts(fact("k1", salience=2.0), fact("k2", sources=[]), fact("k3")), "rejected_fraction_at_most(0.5)"),
]


@pytest.mark.parametrize(("gate", "batch", "expectation"), BATCH_FAILURES)
def test_batch_level_failures_raise_with_the_expectation_named(gate, batch: pd.DataFrame, expectation: str) -> None:
    with pytest.raises(QualityGateFailed) as caught:
        gate(batch)
    failure = caught.value
    assert expectation in failure.failed
    assert expectation in str(failure)
    assert failure.result["success"] is False
    assert failure.result["failed"] == failure.failed
    json.dumps(failure.result)


def test_too_many_rejects_names_the_rules_that_rejected_them() -> None:
    with pytest.raises(QualityGateFailed) as caught:
        validate_sensory_batch(events(event("e1", text=""), event("e2", at=None), event("e3")), max_reject_fraction=0.5)
    assert caught.value.failed == [
        "rejected_fraction_at_most(0.5)",
        "expect_column_values_to_be_between(_text_bytes)",
        "expect_column_values_to_not_be_null(at)",
    ]


@pytest.mark.parametrize(
    ("bad", "total", "max_fraction"),
    [
        # exactly half rejected at a limit of one half: "at most" includes the limit
        (1, 2, 0.5),
        # a limit of 0 accepts only a clean batch
        (0, 3, 0.0),
        # a limit of 1 lets a batch of only bad rows through, all of them rejected
        (2, 2, 1.0),
    ],
)
def test_reject_fraction_up_to_the_limit_passes(bad: int, total: int, max_fraction: float) -> None:
    rows = [event(f"bad{i}", text="") for i in range(bad)] + [event(f"ok{i}") for i in range(total - bad)]
    gate = validate_sensory_batch(events(*rows), max_reject_fraction=max_fraction)
    assert len(gate.rejected) == bad
    assert len(gate.valid) == total - bad


def test_reject_fraction_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="max_reject_fraction"):
        validate_sensory_batch(events(event("e1")), max_reject_fraction=1.5)


# --- results -----------------------------------------------------------------------------------------------------


def test_empty_batch_passes_without_great_expectations(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_ge(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an empty batch must not reach Great Expectations")

    monkeypatch.setattr(quality, "_validate", no_ge)
    for gate in (validate_sensory_batch(pd.DataFrame()), validate_fact_batch(pd.DataFrame(columns=["fact_key"]))):
        assert gate.passed and gate.rejected == [] and gate.valid.empty
        json.dumps(gate.result)


def test_clean_batch_passes_and_its_result_is_json() -> None:
    gate = validate_sensory_batch(events(event("e1"), event("e2")))
    assert gate.passed and gate.result["success"] is True
    assert gate.valid["event_id"].tolist() == ["e1", "e2"]
    json.dumps(gate.result)


@pytest.mark.parametrize("gate_name", ["sensory_gate", "fact_gate"])
def test_result_summarises_every_expectation(request: pytest.FixtureRequest, gate_name: str) -> None:
    gate: GateResult = request.getfixturevalue(gate_name)
    result = json.loads(json.dumps(gate.result))  # serialisable, and unchanged by the round trip
    assert result == gate.result
    assert result["suite"] == gate.suite
    assert result["success"] is False  # rows were rejected
    assert result["statistics"]["evaluated_expectations"] == len(result["expectations"])
    for entry in result["expectations"]:
        assert {"expectation", "column", "field", "level", "success", "unexpected_count"} <= set(entry)
    # every field a row was rejected for has a failed expectation, with at least that many unexpected rows
    failed = {e["field"] for e in result["expectations"] if not e["success"]}
    assert {r["field"] for r in gate.rejected} <= failed
    assert sum(e["unexpected_count"] for e in result["expectations"]) >= len(gate.rejected)
    json.dumps(gate.rejected)


def test_context_and_suites_are_built_once(sensory_gate: GateResult, fact_gate: GateResult) -> None:
    # a flow validates many batches: the second batch reuses the suite the first one built
    suites = dict(quality._gx_suites)
    validate_sensory_batch(events(event("e1")))
    validate_fact_batch(facts(fact("k1")))
    assert quality._gx_suites == suites
    assert all(quality._gx_suites[name] is suite for name, suite in suites.items())


def test_concurrent_batches_get_their_own_results() -> None:
    # Prefect runs tasks in threads; each batch must get back its own rows, whatever else runs
    batches = [events(event(f"t{n}-ok"), event(f"t{n}-bad", text="")) for n in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        gates = list(pool.map(lambda b: validate_sensory_batch(b, max_reject_fraction=0.5), batches))
    for n, gate in enumerate(gates):
        assert gate.valid["event_id"].tolist() == [f"t{n}-ok"]
        assert [r["key"] for r in gate.rejected] == [f"t{n}-bad"]
