"""Readers that turn files into event rows for ``Memory.observe_many``: JSON Lines and LoCoMo conversations.

Both stream: they yield one row at a time and never hold the whole file's rows in memory (a LoCoMo file is one JSON
document and is parsed whole, but its rows are still produced lazily).
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
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput("file", f"{path} is not a LoCoMo JSON file: {exc}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(c, dict) for c in data):
        raise InvalidInput("file", f"{path} must hold a list of LoCoMo conversations (objects)")
    for conv in data:
        sample_id = conv.get("sample_id")
        c = conv.get("conversation")
        if not isinstance(c, dict):
            raise InvalidInput("file", f"conversation {str(sample_id)[:40]!r} has no 'conversation' object")
        sessions = sorted(
            (int(m.group(1)), key) for key in c if (m := _SESSION_KEY.match(key)) and isinstance(c[key], list)
        )
        for number, key in sessions:
            start = parse_locomo_time(c.get(f"{key}_date_time", ""))
            for position, turn in enumerate(c[key]):
                text = turn.get("text") or ""
                caption = turn.get("blip_caption")
                if caption:
                    text = f"{text} [shares {caption}]".strip()
                yield {
                    "tenant": sample_id,
                    "session": f"{sample_id}-s{number}",
                    "actor": turn.get("speaker"),
                    "text": text,
                    "at": start + timedelta(seconds=position),
                    "event_id": f"{sample_id}:{turn.get('dia_id')}",
                    "metadata": {"dia_id": turn.get("dia_id"), **({"image": caption} if caption else {})},
                }


def jsonl_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """One row per line of a JSON Lines file; a line that is not a JSON object is yielded as ``{"$raw": line}``
    so that validation quarantines it with its payload instead of the reader failing the whole file."""
    with Path(path).open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError):
                yield {"$raw": raw, "$line": number}
                continue
            yield row if isinstance(row, dict) else {"$raw": raw, "$line": number}
