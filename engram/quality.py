"""The quality gates between layers: one Great Expectations suite per layer boundary.

A gate validates a whole batch (a DataFrame) at once and sorts what it finds into two kinds:

- batch-level failures (a required column is missing, keys are duplicated, too many rows are bad, an expectation
  could not be evaluated): the batch as a whole is wrong, so ``QualityGateFailed`` is raised with the full result
  and the caller writes nothing;
- row-level failures (a bad tenant id, an empty text, ...): the row goes to ``GateResult.rejected`` (the caller
  quarantines it) and the rest of the batch moves on in ``GateResult.valid``.

Suites:

``sensory_to_working`` (rows of the ``events`` table, before the ingest flow routes them into working memory)
    batch: the columns ``SENSORY_COLUMNS`` are present; ``(tenant, event_id)`` is unique; at most
    ``max_reject_fraction`` of the rows are rejected.
    row: tenant present and matching ``engram.validation.TENANT_PATTERN``; event_id, session_id, actor, text and at
    present; text a string of 1 to ``Limits.max_text_bytes`` bytes of UTF-8.
``episodic_to_semantic`` (candidate facts, ``engram.consolidate.FACT_COLUMNS``, before they enter the knowledge base)
    batch: the columns ``FACT_COLUMNS`` are present; fact_key present; at most ``max_reject_fraction`` rejected.
    row: tenant valid; fact_key a string of 1-64 characters; text present and a non-empty string; salience a number
    in [0, 1]; sources a non-empty list; rendered present and starting with its date, ``(8 May 2023) ``; at present.

Some rules are checked on helper columns computed before validation (their names start with ``_``: ``_text_bytes``,
``_sources_count``, ...), where GE cannot state the rule on the raw column: a size in bytes, the length of a list,
a value of the wrong type. A value of the wrong type measures as -1 (or, for salience, as no number at all), so it
fails the same rule a bad value of the right type fails.

Great Expectations is imported on first use (the import takes seconds) and its context and suites are built once
per process, since a flow validates many batches.

Example:
    >>> gate = validate_sensory_batch(events)  # doctest: +SKIP
    >>> gate.valid  # doctest: +SKIP  (route these on)
    >>> gate.rejected[0]  # doctest: +SKIP  (quarantine these)
    {'tenant': 'acme', 'key': 'e2', 'field': 'text', 'reason': "expect_column_values_to_be_between(...)", 'index': 1}
"""

from __future__ import annotations

import json
import math
import numbers
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from engram.consolidate import FACT_COLUMNS
from engram.errors import QualityGateFailed
from engram.validation import TENANT_PATTERN, Limits

__all__ = [
    "FACT_SUITE",
    "SENSORY_COLUMNS",
    "SENSORY_SUITE",
    "GateResult",
    "validate_fact_batch",
    "validate_sensory_batch",
]

SENSORY_SUITE = "sensory_to_working"
FACT_SUITE = "episodic_to_semantic"

# What routing an event into working memory reads; the store's bookkeeping columns (received_at, routed_at, seq)
# may come along but the gate does not need them.
SENSORY_COLUMNS = ("tenant", "event_id", "session_id", "actor", "text", "at", "metadata")

FACT_KEY_MAX = 64
# "(8 May 2023) Caroline: ..." -- an application puts ``rendered`` in a prompt, where the date is what lets a model
# answer questions about time.
RENDERED_DATE_PREFIX = r"^\(\d{1,2} [A-Z][a-z]+ \d{4}\) "

# GE matches with ``re.search``, where ``$`` also matches before a trailing newline; ``\Z`` does not, so the gate
# agrees with ``TENANT_PATTERN.fullmatch`` used at write time.
_TENANT_REGEX = "^(?:" + TENANT_PATTERN.pattern.removeprefix("^").removesuffix("$") + r")\Z"

# COMPLETE is what lists every unexpected row; the index query and the sample of values are not used.
_RESULT_FORMAT = {"result_format": "COMPLETE", "return_unexpected_index_query": False, "partial_unexpected_count": 0}


@dataclass(frozen=True)
class _Check:
    """One expectation of a suite: the GE class, its arguments, the input field it speaks for, and its level."""

    expectation: str
    kwargs: dict[str, Any]
    field: str
    row_level: bool

    @property
    def columns(self) -> list[str]:
        if "column" in self.kwargs:
            return [self.kwargs["column"]]
        return list(self.kwargs.get("column_list", ())) + list(self.kwargs.get("column_set", ()))


def _row(expectation: str, field_name: str, **kwargs: Any) -> _Check:
    return _Check(expectation, kwargs, field_name, row_level=True)


def _batch(expectation: str, field_name: str, **kwargs: Any) -> _Check:
    return _Check(expectation, kwargs, field_name, row_level=False)


@dataclass(frozen=True)
class _Suite:
    """A suite's checks (row-level ones in the order a rejected row reports them), its row key and helper columns."""

    name: str
    required: tuple[str, ...]
    key_column: str
    checks: tuple[_Check, ...]
    helpers: dict[str, Callable[[pd.DataFrame], pd.Series]]

    @property
    def read_columns(self) -> set[str]:
        """Every column some check reads: what GE is given of a batch."""
        return {column for check in self.checks for column in check.columns}


# --- measurements of raw values, for the helper columns -----------------------------------------------------------


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NaT or value is pd.NA:
        return True
    return isinstance(value, float) and math.isnan(value)


def _column(frame: pd.DataFrame, column: str) -> pd.Series:
    """The column, or all nulls when it is missing (the required-columns check reports that)."""
    if column in frame.columns:
        return frame[column]
    return pd.Series([None] * len(frame), index=frame.index, dtype=object)


def _str_length(value: Any) -> float:
    """Characters of a string; NaN when missing (a not-null check reports it), -1 when not a string."""
    if _is_missing(value):
        return math.nan
    return len(value) if isinstance(value, str) else -1


def _utf8_size(value: Any) -> float:
    """Bytes of UTF-8 of a string; NaN when missing, -1 when not a string."""
    if _is_missing(value):
        return math.nan
    return len(value.encode("utf-8", "surrogatepass")) if isinstance(value, str) else -1


def _utf8_sizes(texts: pd.Series) -> pd.Series:
    """``_utf8_size`` of every text."""
    if isinstance(texts.dtype, pd.StringDtype):
        # Arrow counts the bytes without a Python call per row (100,000 texts in milliseconds, not half a second).
        try:
            sizes = pc.binary_length(pa.array(texts, type=pa.string(), from_pandas=True))
        except (pa.ArrowException, UnicodeError):
            pass  # e.g. a lone surrogate: the per-row path measures it
        else:
            return pd.Series(sizes.to_numpy(zero_copy_only=False), index=texts.index, dtype="float64")
    return texts.map(_utf8_size).astype("float64")


def _str_lengths(values: pd.Series) -> pd.Series:
    return values.map(_str_length).astype("float64")


def _list_length(value: Any) -> int:
    """Entries of a list of sources; 0 for anything that is not a list, so it fails the non-empty check."""
    return len(value) if isinstance(value, (list, tuple, np.ndarray)) else 0


def _number(value: Any) -> float:
    """A salience as a float; NaN when missing or not a real number (a bool or a string is no salience)."""
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return float(value)
    return math.nan


# --- the suites ---------------------------------------------------------------------------------------------------

_SENSORY = _Suite(
    name=SENSORY_SUITE,
    required=SENSORY_COLUMNS,
    key_column="event_id",
    checks=(
        _batch("ExpectTableColumnsToMatchSet", "*", column_set=list(SENSORY_COLUMNS), exact_match=False),
        _batch("ExpectCompoundColumnsToBeUnique", "event_id", column_list=["tenant", "event_id"]),
        _row("ExpectColumnValuesToNotBeNull", "tenant", column="tenant"),
        _row("ExpectColumnValuesToMatchRegex", "tenant", column="tenant", regex=_TENANT_REGEX),
        _row("ExpectColumnValuesToNotBeNull", "event_id", column="event_id"),
        _row("ExpectColumnValuesToNotBeNull", "session_id", column="session_id"),
        _row("ExpectColumnValuesToNotBeNull", "actor", column="actor"),
        _row("ExpectColumnValuesToNotBeNull", "text", column="text"),
        # The limit is in bytes, as at write time; GE's value lengths would count characters.
        _row(
            "ExpectColumnValuesToBeBetween",
            "text",
            column="_text_bytes",
            min_value=1,
            max_value={"$PARAMETER": "max_text_bytes"},
        ),
        _row("ExpectColumnValuesToNotBeNull", "at", column="at"),
    ),
    helpers={"_text_bytes": lambda frame: _utf8_sizes(_column(frame, "text"))},
)

_FACTS = _Suite(
    name=FACT_SUITE,
    required=tuple(FACT_COLUMNS),
    key_column="fact_key",
    checks=(
        _batch("ExpectTableColumnsToMatchSet", "*", column_set=list(FACT_COLUMNS), exact_match=False),
        # A fact without a key has no identity across versions: a defect of the consolidator, not of one row.
        _batch("ExpectColumnValuesToNotBeNull", "fact_key", column="fact_key"),
        _row("ExpectColumnValuesToNotBeNull", "tenant", column="tenant"),
        _row("ExpectColumnValuesToMatchRegex", "tenant", column="tenant", regex=_TENANT_REGEX),
        _row(
            "ExpectColumnValuesToBeBetween", "fact_key", column="_fact_key_length", min_value=1, max_value=FACT_KEY_MAX
        ),
        _row("ExpectColumnValuesToNotBeNull", "text", column="text"),
        _row("ExpectColumnValuesToBeBetween", "text", column="_text_length", min_value=1),
        _row("ExpectColumnValuesToNotBeNull", "salience", column="_salience_number"),
        _row("ExpectColumnValuesToBeBetween", "salience", column="_salience_number", min_value=0, max_value=1),
        _row("ExpectColumnValuesToBeBetween", "sources", column="_sources_count", min_value=1),
        _row("ExpectColumnValuesToNotBeNull", "rendered", column="rendered"),
        _row("ExpectColumnValuesToMatchRegex", "rendered", column="rendered", regex=RENDERED_DATE_PREFIX),
        _row("ExpectColumnValuesToNotBeNull", "at", column="at"),
    ),
    helpers={
        "_fact_key_length": lambda frame: _str_lengths(_column(frame, "fact_key")),
        "_text_length": lambda frame: _str_lengths(_column(frame, "text")),
        "_salience_number": lambda frame: _column(frame, "salience").map(_number).astype("float64"),
        "_sources_count": lambda frame: _column(frame, "sources").map(_list_length).astype("int64"),
    },
)

_SUITES: dict[str, _Suite] = {suite.name: suite for suite in (_SENSORY, _FACTS)}


# --- the public surface -------------------------------------------------------------------------------------------


@dataclass
class GateResult:
    """What a quality gate let through and what it turned away, for one batch.

    Attributes:
        suite: the suite's name, ``sensory_to_working`` or ``episodic_to_semantic``.
        valid: the rows that passed every row-level expectation: the input's columns, its original index.
        rejected: one dict per failing row: ``tenant`` (as the row has it), ``key`` (its event_id or fact_key),
            ``field`` (the column of its first failed expectation), ``reason`` (every expectation it failed, with
            their arguments, separated by ``; ``) and ``index`` (its label in the input).
        result: a JSON-serialisable summary of the validation for a Prefect artifact: ``suite``, ``success``,
            ``statistics`` (GE's, plus ``rows``, ``rejected_rows``, ``rejected_fraction``, ``max_reject_fraction``)
            and ``expectations`` (each with ``expectation``, ``column``, ``field``, ``level``, ``label``,
            ``kwargs``, ``success``, ``unexpected_count`` and ``error``).
    """

    suite: str
    valid: pd.DataFrame
    rejected: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """True when every row of the batch passed: nothing was rejected."""
        return not self.rejected


def validate_sensory_batch(
    events: pd.DataFrame, limits: Limits | None = None, max_reject_fraction: float = 0.5
) -> GateResult:
    """Check a batch of sensory events before they move into working memory.

    Args:
        events: rows of the ``events`` table (tenant, event_id, session_id, actor, text, at, metadata, ...).
        limits: the size limits; ``Limits()`` when not given.
        max_reject_fraction: the largest share of rejected rows a batch may have and still move on; above it the
            batch as a whole is suspect (a broken producer, a wrong column mapping).

    Returns:
        The valid rows and the rejected ones, with the validation summary.

    Raises:
        QualityGateFailed: a batch-level expectation failed (a required column missing, a duplicate
            ``(tenant, event_id)``, too many rejects, an expectation that could not be evaluated).
        ValueError: ``max_reject_fraction`` is not between 0 and 1.

    Example:
        >>> gate = validate_sensory_batch(events, Limits(max_text_bytes=4096))  # doctest: +SKIP
        >>> gate.passed, len(gate.valid), gate.rejected[:1]  # doctest: +SKIP
    """
    limits = limits or Limits()
    return _run_gate(_SENSORY, events, {"max_text_bytes": limits.max_text_bytes}, max_reject_fraction)


def validate_fact_batch(facts: pd.DataFrame, max_reject_fraction: float = 0.5) -> GateResult:
    """Check a batch of candidate facts before they enter the semantic layer.

    Args:
        facts: candidate facts, the columns ``engram.consolidate.FACT_COLUMNS``.
        max_reject_fraction: the largest share of rejected rows a batch may have and still move on.

    Returns:
        The valid facts and the rejected ones, with the validation summary.

    Raises:
        QualityGateFailed: a batch-level expectation failed (a required column missing, a null ``fact_key``, too
            many rejects, an expectation that could not be evaluated).
        ValueError: ``max_reject_fraction`` is not between 0 and 1.

    Example:
        >>> gate = validate_fact_batch(consolidator.distill(episodes, turns))  # doctest: +SKIP
        >>> plan = plan_changes(gate.valid, existing, now)  # doctest: +SKIP
    """
    return _run_gate(_FACTS, facts, {}, max_reject_fraction)


# --- Great Expectations, built once per process -------------------------------------------------------------------

_gx_lock = threading.Lock()
_gx_batches: dict[str, Any] = {}  # suite name -> its whole-dataframe BatchDefinition
_gx_suites: dict[str, Any] = {}  # suite name -> its ExpectationSuite


def prepare_gates() -> None:
    """Build the Great Expectations context and every suite now: the first use costs seconds of imports, which a
    worker should pay before it leases work, not while it holds a lease."""
    with _gx_lock:
        for name in _SUITES:
            _gx_suite(name)


def _gx_suite(name: str) -> tuple[Any, Any]:
    """The batch definition and the expectation suite for ``name``, built on first use; call under ``_gx_lock``."""
    if name not in _gx_suites:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        if not _gx_batches:
            context = gx.get_context(mode="ephemeral")
            # Progress bars would write to the worker's stderr on every batch.
            context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
            source = context.data_sources.add_pandas(name="engram")
            for suite_name in _SUITES:
                asset = source.add_dataframe_asset(name=suite_name)
                _gx_batches[suite_name] = asset.add_batch_definition_whole_dataframe(f"{suite_name}_batch")
        suite = gx.ExpectationSuite(name=name)
        for position, check in enumerate(_SUITES[name].checks):
            expectation_class = getattr(gx.expectations, check.expectation)
            # GE returns results in its own order; the position in ``meta`` ties each back to its check.
            suite.add_expectation(expectation_class(**check.kwargs, meta={"check": position}))
        _gx_suites[name] = suite
    return _gx_batches[name], _gx_suites[name]


def _validate(name: str, frame: pd.DataFrame, parameters: dict[str, Any]) -> Any:
    """GE's validation result of ``frame`` against the suite ``name``."""
    # One lock for building and validating: the context and its batch definitions are shared, and GE does not
    # promise that they are safe to use from several threads (Prefect runs tasks in a thread pool).
    with _gx_lock:
        batch_definition, suite = _gx_suite(name)
        batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
        return batch.validate(suite, result_format=_RESULT_FORMAT, expectation_parameters=parameters)


# --- the gate -----------------------------------------------------------------------------------------------------


def _run_gate(suite: _Suite, frame: pd.DataFrame, parameters: dict[str, Any], max_reject_fraction: float) -> GateResult:
    """Validate ``frame`` against ``suite``: raise on a batch-level failure, split the rows otherwise."""
    if not 0 <= max_reject_fraction <= 1:
        raise ValueError(f"max_reject_fraction must be between 0 and 1, got {max_reject_fraction!r}")
    # ``frame.empty`` would also be true of rows without columns, which must fail the columns check instead.
    if len(frame) == 0:
        return GateResult(suite.name, frame, [], _empty_summary(suite.name, max_reject_fraction))

    # GE reports unexpected rows by index label; positions stay unambiguous even when the caller's index has
    # duplicates, and map back to the caller's labels at the end.
    checked = frame.set_axis(pd.RangeIndex(len(frame)), axis=0)
    checked = checked.assign(**{column: measure(checked) for column, measure in suite.helpers.items()})
    # GE fingerprints every column of a batch; columns no check reads would only add to that cost.
    checked = checked[[c for c in checked.columns if c in suite.read_columns]]
    outcome = _validate(suite.name, checked, parameters)

    missing_columns = {c for c in suite.required if c not in frame.columns}
    entries: list[dict[str, Any]] = []
    batch_failures: list[str] = []
    row_failures: dict[int, list[tuple[_Check, str]]] = {}
    for item in sorted(outcome.results, key=lambda r: r.expectation_config.meta["check"]):
        check = suite.checks[item.expectation_config.meta["check"]]
        entry = _summarise(item, check)
        entries.append(entry)
        if entry["success"]:
            continue
        if entry["error"] is not None or not check.row_level:
            # An expectation on a missing column errors as a consequence; the columns check names the cause.
            if not (entry["error"] is not None and missing_columns & set(_sources_of(check, suite))):
                batch_failures.append(entry["label"])
            continue
        reason = _reason(item)
        for position in item.result.get("unexpected_index_list") or []:
            row_failures.setdefault(int(position), []).append((check, reason))

    rejected_fraction = len(row_failures) / len(frame)
    summary: dict[str, Any] = {
        "suite": suite.name,
        "success": bool(outcome.success),
        "statistics": {
            **_json_safe(outcome.statistics),
            "rows": len(frame),
            "rejected_rows": len(row_failures),
            "rejected_fraction": rejected_fraction,
            "max_reject_fraction": max_reject_fraction,
        },
        "expectations": entries,
    }
    if not batch_failures and rejected_fraction > max_reject_fraction:
        # A batch this bad points at its producer, not at a few rows: stop it whole and say which rules rejected it.
        batch_failures.append(f"rejected_fraction_at_most({max_reject_fraction:g})")
        batch_failures += [e["label"] for e in entries if e["level"] == "row" and not e["success"]]
    if batch_failures:
        summary["success"] = False
        summary["failed"] = batch_failures
        raise QualityGateFailed(suite.name, batch_failures, summary)

    positions = sorted(row_failures)
    tenants = _column(frame, "tenant").iloc[positions].tolist()
    keys = _column(frame, suite.key_column).iloc[positions].tolist()
    labels = frame.index[positions].tolist()
    rejected = [
        {
            "tenant": _text_or_none(tenant),
            "key": _text_or_none(key),
            "field": row_failures[position][0][0].field,
            "reason": "; ".join(reason for _, reason in row_failures[position]),
            "index": label,
        }
        for position, tenant, key, label in zip(positions, tenants, keys, labels, strict=True)
    ]
    keep = np.ones(len(frame), dtype=bool)
    keep[positions] = False
    return GateResult(suite.name, frame[keep], rejected, summary)


def _sources_of(check: _Check, suite: _Suite) -> list[str]:
    """The input columns a check depends on: a helper column stands for the field it is computed from."""
    return [check.field if column in suite.helpers else column for column in check.columns]


def _summarise(item: Any, check: _Check) -> dict[str, Any]:
    """One expectation's outcome as plain JSON: what ran, on which column, whether it passed and how many rows not."""
    config = item.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
    column = kwargs.get("column") or ", ".join(kwargs.get("column_list") or [])
    details = item.result.get("details") if not item.success else None
    missing = ((details or {}).get("mismatched") or {}).get("missing")
    if missing:
        label = f"{config.type}(missing: {', '.join(missing)})"
    else:
        label = f"{config.type}({column})" if column else config.type
    entry: dict[str, Any] = {
        "expectation": config.type,
        "column": column,
        "field": check.field,
        "level": "row" if check.row_level else "batch",
        "label": label,
        "kwargs": _json_safe(kwargs),
        "success": bool(item.success),
        "unexpected_count": int(item.result.get("unexpected_count") or 0),
        "error": _error_message(item),
    }
    if details:
        entry["details"] = _json_safe(details)
    return entry


def _error_message(item: Any) -> str | None:
    """The message of the exception GE met evaluating an expectation, or None when it ran."""
    info = item.exception_info or {}
    if "raised_exception" in info:
        return info.get("exception_message") if info["raised_exception"] else None
    # Errors in computing a metric come keyed by the metric, one dict each.
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def _reason(item: Any) -> str:
    """``expect_column_values_to_be_between(column='_salience_number', min_value=0, max_value=1)``."""
    config = item.expectation_config
    args = ", ".join(f"{k}={_short(v)}" for k, v in config.kwargs.items() if k != "batch_id")
    return f"{config.type}({args})"


def _short(value: Any) -> str:
    # GE turns bounds into floats; 65536 reads better than 65536.0.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)


def _empty_summary(name: str, max_reject_fraction: float) -> dict[str, Any]:
    return {
        "suite": name,
        "success": True,
        "statistics": {
            "evaluated_expectations": 0,
            "successful_expectations": 0,
            "unsuccessful_expectations": 0,
            "success_percent": None,
            "rows": 0,
            "rejected_rows": 0,
            "rejected_fraction": 0.0,
            "max_reject_fraction": max_reject_fraction,
        },
        "expectations": [],
    }


def _text_or_none(value: Any) -> str | None:
    return None if _is_missing(value) else str(value)


def _json_safe(value: Any) -> Any:
    # GE's results may hold numpy scalars and sets; a round trip through JSON leaves only what an artifact can take.
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)
