"""Text helpers shared by search, consolidation and forget: rendering, tokens, subject matching."""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from functools import cache


@cache
def _word() -> re.Pattern[str]:
    """A word: a run of letters, digits and combining marks of any script (``\\w`` without the underscore, and every
    mark: Devanagari's vowel signs, Arabic's and Hebrew's vowel points, an accent typed as a separate character), so
    that ``राम`` and ``रोम`` stay two words. Python's ``re`` has no class for marks: it is built from the Unicode
    database the first time (about 50 ms), over the planes that have marks."""
    ranges, start = [], None
    for cp in [*range(0x30000), *range(0xE0000, 0xE1000), 0x10FFFF]:
        mark = unicodedata.category(chr(cp)).startswith("M")
        if mark and start is None:
            start = cp
        elif not mark and start is not None:
            ranges.append(f"{re.escape(chr(start))}-{re.escape(chr(cp - 1))}")
            start = None
    marks = f"[{''.join(ranges)}]"
    # Letters and digits first, marks after them: the same words as ``(?:[^\W_]|{marks})+``, in a third of the time.
    return re.compile(rf"[^\W_]+(?:{marks}+[^\W_]*)*|{marks}+(?:[^\W_]+{marks}*)*")


def render_date(at: datetime) -> str:
    """A date as people write it in prose: ``8 May 2023``."""
    return f"{at.day} {at.strftime('%B')} {at.year}"


def render(text: str, actor: str, at: datetime) -> str:
    """How an item is handed to an application: ``(8 May 2023) Caroline: text``."""
    speaker = f"{actor}: " if actor else ""
    return f"({render_date(at)}) {speaker}{text}"


def words(text: str) -> list[str]:
    """The words of ``text``, case-folded: runs of letters and digits of any script (``"Émile"`` is ``"émile"``,
    ``"Straße"`` is ``"strasse"``); punctuation and spaces separate them."""
    return _word().findall(unicodedata.normalize("NFKC", text).casefold())


STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "and",
        "or",
        "is",
        "was",
        "be",
        "by",
        "with",
        "from",
        "as",
        "it",
        "its",
        "that",
        "this",
        "i",
        "you",
        "he",
        "she",
        "they",
        "we",
        "my",
        "your",
        "his",
        "her",
        "their",
        "our",
        "me",
        "him",
        "them",
        "are",
        "were",
        "been",
        "am",
        "do",
        "did",
        "does",
        "so",
        "but",
        "if",
        "then",
        "than",
        "too",
        "very",
        "just",
        "not",
        "no",
        "yes",
        "oh",
        "ok",
        "have",
        "has",
        "had",
        "will",
        "would",
        "can",
        "could",
        "should",
        "there",
        "here",
        "what",
        "when",
        "where",
        "who",
        "how",
        "which",
    ]
)


def content_words(text: str) -> set[str]:
    """The distinct words of ``text`` that carry content (stop words dropped)."""
    return {w for w in words(text) if w not in STOP_WORDS}


def mentions(text: str, subject: str) -> bool:
    """Whether ``text`` names ``subject`` as whole words (case-insensitive, any script); ``"Mel"`` does not match
    ``"Melanie"``, nor ``"José"`` ``"Joséphine"``."""
    needle = words(subject)
    if not needle:
        return False
    hay = words(text)
    n = len(needle)
    return any(hay[i : i + n] == needle for i in range(len(hay) - n + 1))
