"""Episodic -> semantic: distil facts from episodes, and decide how they change the knowledge base.

Pure functions over batches (pandas DataFrames); no I/O, no Prefect. The ``consolidate`` flow reads a batch of
episodes and their turns from the store, calls ``Consolidator.distill``, reads the current semantic items that share
a fact key with the result, calls ``plan_changes``, and hands the plan to the store, which applies it in one
transaction.

Contract (the store and the flow rely on these columns):

``turns`` (input): tenant, episode_id, position (int, order within the episode), item_id (= the event id),
    actor, text, at (tz-aware UTC datetime), tags (list[str]), metadata (dict).
``episodes`` (input): tenant, episode_id, session_id, started_at, ended_at, participants (list[str]).

``distill`` returns one row per candidate fact, columns ``FACT_COLUMNS``:
    tenant; fact_key (str, at most 64 chars: the identity of the fact across versions; two candidates with the
    same key are the same fact); text (the statement, speaker resolved, stand-alone); actor (who said it, "" if
    none); at (tz-aware UTC: when it was said); rendered (what an application puts in a prompt: carries the date
    and the speaker, e.g. "(8 May 2023) Caroline: ..."); tags (list[str]); sources (list[str] of event ids);
    salience (float in [0, 1]); content_hash (str: equal for near-duplicates, differs when the content changed).

``plan_changes(candidates, existing, now)`` compares candidates with the current (``valid_to`` is null) semantic
items that share their fact keys (``existing`` has the ``SemanticItem`` columns plus ``sources``) and returns a
``ConsolidationPlan``:
    - ``new_items``: rows for ``semantic_items`` (all columns but ``seq``) plus ``sources``, for facts not seen before
      (version 1) and for new versions of changed facts (version n+1);
    - ``merges``: existing item_id -> {support_delta, last_seen, new sources}, for near-duplicates of a current item;
    - ``supersessions``: existing item_id -> new item_id, for facts whose content changed (the old row gets
      valid_to = the new version's valid_from and superseded_by; it is never overwritten otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import pandas as pd

FACT_COLUMNS = [
    "tenant",
    "fact_key",
    "text",
    "actor",
    "at",
    "rendered",
    "tags",
    "sources",
    "salience",
    "content_hash",
]


@runtime_checkable
class Consolidator(Protocol):
    """Turns episodes into candidate facts. The local one is the default; an LLM one can be swapped in."""

    name: str

    def distill(self, episodes: pd.DataFrame, turns: pd.DataFrame) -> pd.DataFrame:
        """Candidate facts (columns ``FACT_COLUMNS``) from a batch of episodes and their turns."""
        ...


@dataclass
class ConsolidationPlan:
    """What one consolidation batch changes in the semantic layer."""

    new_items: list[dict[str, Any]] = field(default_factory=list)
    merges: dict[str, dict[str, Any]] = field(default_factory=dict)
    supersessions: dict[str, str] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return {
            "new": len(self.new_items) - len(self.supersessions),
            "merged": len(self.merges),
            "superseded": len(self.supersessions),
        }


def plan_changes(candidates: pd.DataFrame, existing: pd.DataFrame, now: datetime) -> ConsolidationPlan:
    """Decide, for each candidate fact, whether it is new, a near-duplicate to merge, or a change to version."""
    raise NotImplementedError


def summarize_episode(turns: pd.DataFrame, max_sentences: int = 3) -> str:
    """An extractive summary of one episode's turns: its most informative sentences, one per line."""
    raise NotImplementedError


class LocalConsolidator:
    """The default consolidator: extractive, offline, no model."""

    name = "local"

    def distill(self, episodes: pd.DataFrame, turns: pd.DataFrame) -> pd.DataFrame:
        raise NotImplementedError
