"""Readers that turn files into event rows for ``Memory.observe_many``: JSON Lines and LoCoMo conversations.

Both stream: they yield one row at a time and never hold the whole file's rows in memory (a LoCoMo file is one JSON
document and is parsed whole, but its rows are still produced lazily).

A part of a file that cannot become an event (a line that is not JSON, a session whose date does not parse) is yielded
as an ``unreadable`` row, which validation rejects with the field and reason it carries: it is quarantined with its
payload like any bad row, and the rest of the file, the rows around it included, is still read and written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from engram.errors import InvalidInput

_LOCOMO_TIME = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*([ap]m)\s+on\s+(\d{1,2})\s+([A-Za-z]+),?\s+(\d{4})\s*$", re.I)
_SESSION_KEY = re.compile(r"^session_(\d+)$")


def unreadable(raw: Any, field: str, reason: str, **extra: Any) -> dict[str, Any]:
    """A row standing for a part of a file that is not an event: ``validate_event`` rejects it naming ``field``."""
    return {"$raw": raw, "$field": field, "$reason": reason, **extra}


def parse_locomo_time(value: str) -> datetime:
    """``"1:56 pm on 8 May, 2023"`` as a UTC datetime."""
    m = _LOCOMO_TIME.match(value or "")
    if not m:
        raise InvalidInput("session_date_time", f"is not like '1:56 pm on 8 May, 2023': {str(value)[:60]!r}")
    hour, minute, ampm, day, month, year = m.groups()
    try:
        hour = int(hour) % 12 + (12 if ampm.lower() == "pm" else 0)
        month_no = datetime.strptime(month[:3].title(), "%b").month
        return datetime(int(year), month_no, int(day), hour, int(minute), tzinfo=UTC)
    except ValueError as exc:  # a month that is none, a 31 June, a minute past 59
        raise InvalidInput("session_date_time", f"is not a date and time: {str(value)[:60]!r} ({exc})") from None


def locomo_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """One event row per LoCoMo turn: tenant = the conversation's ``sample_id``, one session per LoCoMo session.

    A turn's time is its session's start plus one second per position, so turns keep their order; its id is
    ``<sample_id>:<dia_id>`` so that loading the file again is a no-op; a shared photo's caption is kept in the text
    as ``[shares a photo of ...]`` because the conversation refers to it.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise InvalidInput("file", f"{path} is not a LoCoMo JSON file: {exc}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise InvalidInput("file", f"{path} must hold a list of LoCoMo conversations (objects)")
    for index, conv in enumerate(data):
        if not isinstance(conv, dict):
            yield unreadable(conv, "conversation", f"entry {index} of the file is not a conversation object")
            continue
        sample_id = conv.get("sample_id")
        c = conv.get("conversation")
        if not isinstance(c, dict):
            reason = f"conversation {str(sample_id)[:40]!r} has no 'conversation' object"
            yield unreadable(conv, "conversation", reason, tenant=sample_id)
            continue
        sessions = sorted(
            (int(m.group(1)), key) for key in c if (m := _SESSION_KEY.match(key)) and isinstance(c[key], list)
        )
        for number, key in sessions:
            try:
                start = parse_locomo_time(c.get(f"{key}_date_time", ""))
            except InvalidInput as exc:
                # The session's turns have no time: each is quarantined with the reason, the other sessions load.
                for turn in c[key]:
                    yield unreadable(
                        turn, exc.field, f"{key} of {str(sample_id)[:40]!r}: {exc.reason}", tenant=sample_id
                    )
                continue
            for position, turn in enumerate(c[key]):
                if not isinstance(turn, dict):
                    reason = f"turn {position} of {key} of {str(sample_id)[:40]!r} is not an object"
                    yield unreadable(turn, "turn", reason, tenant=sample_id)
                    continue
                yield _locomo_event(sample_id, number, turn, start + timedelta(seconds=position))


def _locomo_event(sample_id: Any, number: int, turn: dict[str, Any], at: datetime) -> dict[str, Any]:
    text = turn.get("text") or ""
    caption = turn.get("blip_caption")
    if caption:
        text = f"{text} [shares {caption}]".strip()
    dia_id = turn.get("dia_id")
    return {
        "tenant": sample_id,
        "session": f"{sample_id}-s{number}",
        "actor": turn.get("speaker"),
        "text": text,
        "at": at,
        # Without a dia_id, the id is derived from the turn's content: "<sample_id>:None" for every such turn would
        # make all but the first of them look like resends.
        "event_id": f"{sample_id}:{dia_id}" if dia_id is not None else None,
        "metadata": {"dia_id": dia_id, **({"image": caption} if caption else {})},
    }


def jsonl_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """One row per line of a JSON Lines file; a line that is not a JSON object (broken JSON, another value, a number
    past Python's 4,300 digits, nesting past its recursion limit) is yielded as ``unreadable`` (``$raw`` the line,
    ``$line`` its number) so that validation quarantines it with its payload instead of the reader failing the whole
    file."""
    with Path(path).open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (UnicodeDecodeError, ValueError, RecursionError):  # JSONDecodeError is a ValueError
                row = None
            if not isinstance(row, dict):
                row = unreadable(raw, "row", f"line {number} is not a JSON object", **{"$line": number})
            yield row
