"""The memory layers, the moves allowed between them, and the policies that time them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum


class Layer(StrEnum):
    """Where a memory lives. Ordered from the rawest to the coldest."""

    SENSORY = "sensory"
    WORKING = "working"
    EPISODIC = "episodic"
    SEMANTIC = "semantic"
    ARCHIVAL = "archival"


HOT_LAYERS: tuple[Layer, ...] = (Layer.SENSORY, Layer.WORKING, Layer.EPISODIC, Layer.SEMANTIC)

# (from, to) -> the actions that may record that move in the transition table. ``None`` stands for
# "outside engram": an item created from nothing (observe) or removed for good (discard, forget).
ALLOWED_TRANSITIONS: dict[tuple[Layer | None, Layer | None], frozenset[str]] = {
    (None, Layer.SENSORY): frozenset({"observe"}),
    (Layer.SENSORY, Layer.WORKING): frozenset({"ingest"}),
    (Layer.WORKING, Layer.EPISODIC): frozenset({"close_session"}),
    (Layer.WORKING, None): frozenset({"expire", "forget"}),
    (Layer.EPISODIC, Layer.SEMANTIC): frozenset({"consolidate"}),
    (Layer.EPISODIC, Layer.EPISODIC): frozenset({"resummarize"}),
    (Layer.SEMANTIC, Layer.SEMANTIC): frozenset({"merge", "supersede"}),
    (Layer.EPISODIC, Layer.ARCHIVAL): frozenset({"archive"}),
    (Layer.SEMANTIC, Layer.ARCHIVAL): frozenset({"archive"}),
    (Layer.ARCHIVAL, Layer.SEMANTIC): frozenset({"rehydrate"}),
    (Layer.SENSORY, None): frozenset({"forget", "quarantine"}),
    (Layer.EPISODIC, None): frozenset({"forget"}),
    (Layer.SEMANTIC, None): frozenset({"forget"}),
    (Layer.ARCHIVAL, None): frozenset({"forget"}),
    # A deletion receipt: the record that a forget happened, with no layer and no content.
    (None, None): frozenset({"forget"}),
}


# Actions after which the item is no longer in its from-layer (a merge or a consolidation leaves the source where it
# is). The search index follows these to drop documents without a rebuild.
LEAVES_SOURCE_LAYER: frozenset[str] = frozenset(
    {"ingest", "quarantine", "close_session", "expire", "supersede", "archive", "rehydrate", "forget"}
)


def is_allowed(from_layer: Layer | None, to_layer: Layer | None, action: str) -> bool:
    """Whether ``action`` may move an item from ``from_layer`` to ``to_layer``."""
    return action in ALLOWED_TRANSITIONS.get((from_layer, to_layer), frozenset())


@dataclass(frozen=True)
class WorkingMemoryPolicy:
    """How long working memory lives and when a quiet session counts as over.

    Attributes:
        ttl: a working item older than this (by event time) and in no open session is discarded.
        session_idle_timeout: a session with no event for this long is closed into an episode.
    """

    ttl: timedelta = timedelta(hours=24)
    session_idle_timeout: timedelta = timedelta(minutes=30)
