"""Text helpers shared by search, consolidation and forget: rendering, tokens, subject matching."""

from __future__ import annotations

import re
from datetime import datetime

_WORD = re.compile(r"[a-z0-9]+")


def render_date(at: datetime) -> str:
    """A date as people write it in prose: ``8 May 2023``."""
    return f"{at.day} {at.strftime('%B')} {at.year}"


def render(text: str, actor: str, at: datetime) -> str:
    """How an item is handed to an application: ``(8 May 2023) Caroline: text``."""
    speaker = f"{actor}: " if actor else ""
    return f"({render_date(at)}) {speaker}{text}"


def words(text: str) -> list[str]:
    """Lower-case alphanumeric words."""
    return _WORD.findall(text.lower())


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
    """Whether ``text`` names ``subject`` as whole words (case-insensitive); ``"Mel"`` does not match ``"Melanie"``."""
    needle = words(subject)
    if not needle:
        return False
    hay = words(text)
    n = len(needle)
    return any(hay[i : i + n] == needle for i in range(len(hay) - n + 1))
