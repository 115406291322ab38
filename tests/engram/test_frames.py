"""Bulk row conversions on the hot paths give what the slower standard calls give."""

from __future__ import annotations

import math

import pandas as pd

from engram.frames import records
from engram.store import _json_loads


def test_records_equal_to_dict_records() -> None:
    frame = pd.DataFrame(
        {
            "tenant": ["a", "b", "c"],
            "at": pd.to_datetime(["2024-01-01T00:00:00Z", "2024-02-01T12:30:00Z", "2024-03-01T00:00:00Z"]),
            "position": [0, 1, 2],
            "salience": [0.5, float("nan"), 1.0],
            "tags": [["x"], [], None],
            "actor": ["u", None, "v"],
        }
    )
    got, want = records(frame), frame.to_dict("records")
    assert len(got) == len(want) == 3
    for g, w in zip(got, want, strict=True):
        assert list(g) == list(w)
        for key in w:
            if isinstance(w[key], float) and math.isnan(w[key]):
                assert math.isnan(g[key])
            else:
                assert g[key] == w[key] and type(g[key]) is type(w[key]), key


def test_records_of_empty_frames() -> None:
    assert records(pd.DataFrame(columns=["tenant", "text"])) == []
    assert records(pd.DataFrame()) == []


def test_json_columns_read_what_json_dumps_wrote() -> None:
    import json

    values = (
        {"n": 2**70 + 1},
        {"n": -(2**64) - 3, "m": [10**30]},
        {"x": float("nan")},
        {"tags": ["a", "é"], "nested": {"k": [1, 2.5, None]}},
        [],
    )
    for value in values:
        text = json.dumps(value)
        got = _json_loads(text)
        if isinstance(value, dict) and "x" in value:
            assert list(got) == ["x"] and math.isnan(got["x"])
        else:
            assert got == value
