"""An LLM consolidator: the same contract as ``LocalConsolidator``, facts written by a chat model.

It speaks the OpenAI chat-completions protocol, so any compatible server works (OpenAI, vLLM, Ollama, llama.cpp).
The endpoint is configured in the ``LLMConsolidatorEndpoint`` block. One request per episode, inside the flow's
batch task. An episode whose answer cannot be used (an HTTP error after retries, a reply that is not the asked-for
JSON) falls back to the local consolidator, so a flaky model never loses an episode's facts; the fallbacks are
counted in ``fallbacks``.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import httpx
import pandas as pd

from engram.consolidate import FACT_COLUMNS, LocalConsolidator, content_hash, fact_key, signature
from engram.errors import failure_reason
from engram.text import render_date
from engram.validation import Limits, check_actor, check_text

# What a reply that is not the asked-for JSON raises on its way through ``_facts`` (an empty "choices" list, a turn
# number of 1e999, a fact that is a string): the episode falls back to the local consolidator.
_NOT_AN_ANSWER = (httpx.HTTPError, ValueError, KeyError, TypeError, IndexError, OverflowError, AttributeError)

SYSTEM_PROMPT = (
    "You distil durable facts from one conversation. Answer with JSON only: "
    '{"facts": [{"speaker": str, "statement": str, "turns": [int, ...], "slot": str | null}]}. '
    "Each statement stands alone: name people instead of pronouns, write absolute dates instead of relative ones "
    "(the conversation's date is given), keep the question a statement answers inside it. 'turns' are the "
    "positions of the turns the fact comes from. 'slot' names a single-valued attribute the fact sets for its "
    "speaker (home, work, age, favorite color, ...) or is null. Skip greetings and small talk."
)


class LLMConsolidator:
    """Facts from an OpenAI-compatible chat endpoint, one request per episode."""

    name = "llm"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 2,
        transport: httpx.BaseTransport | None = None,
    ):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )
        self.model = model
        self.retries = retries
        self.fallbacks = 0
        self._local = LocalConsolidator()

    def distill(self, episodes: pd.DataFrame, turns: pd.DataFrame) -> pd.DataFrame:
        facts, _ = self._each(episodes, turns, first_failure_raises=True)
        return facts

    def distill_each(
        self, episodes: pd.DataFrame, turns: pd.DataFrame
    ) -> tuple[pd.DataFrame, dict[tuple[str, str], str]]:
        """``distill``, with the episodes that failed even their local fallback set apart (``(tenant, episode_id)
        -> "ErrorType: message"``) instead of failing the batch: one request per episode, none asked twice."""
        facts, failed = self._each(episodes, turns)
        return facts, {key: failure_reason(exc) for key, exc in failed.items()}

    def _each(
        self, episodes: pd.DataFrame, turns: pd.DataFrame, first_failure_raises: bool = False
    ) -> tuple[pd.DataFrame, dict[tuple[str, str], Exception]]:
        if turns.empty:
            return pd.DataFrame(columns=FACT_COLUMNS), {}
        frames = []
        failed: dict[tuple[str, str], Exception] = {}
        for (tenant, episode_id), episode_turns in turns.groupby(["tenant", "episode_id"], sort=False):
            episode_turns = episode_turns.sort_values("position")
            try:
                try:
                    facts = self._facts(tenant, episode_turns)
                except _NOT_AN_ANSWER:
                    self.fallbacks += 1
                    episode = episodes[(episodes.tenant == tenant) & (episodes.episode_id == episode_id)]
                    facts = self._local.distill(episode, episode_turns)
            except Exception as exc:  # noqa: BLE001 - the episode's own failure, handed back with it
                if first_failure_raises:
                    raise
                failed[(tenant, episode_id)] = exc
                continue
            frames.append(facts)
        facts = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=FACT_COLUMNS)
        return facts.sort_values("at", kind="stable").reset_index(drop=True), failed

    def _ask(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                response = self._client.post(
                    "/chat/completions",
                    json={
                        "model": self.model,
                        "messages": messages,
                        "temperature": 0,
                        "response_format": {"type": "json_object"},
                    },
                )
                response.raise_for_status()
                return json.loads(response.json()["choices"][0]["message"]["content"])
            except httpx.HTTPError as exc:
                last = exc
                time.sleep(min(2**attempt, 8) * 0.1)
        assert last is not None
        raise last

    def _facts(self, tenant: str, turns: pd.DataFrame) -> pd.DataFrame:
        by_position = {int(t.position): t for t in turns.itertuples(index=False)}
        day = render_date(turns["at"].iloc[0])
        transcript = "\n".join(f"[{p}] {t.actor}: {t.text}" for p, t in sorted(by_position.items()))
        answer = self._ask(
            [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": f"Conversation of {day}:\n{transcript}"},
            ]
        )
        rows = []
        for fact in answer["facts"]:
            positions = [int(p) for p in fact["turns"] if int(p) in by_position]
            statement = str(fact["statement"]).strip()
            if not positions or not statement:
                raise ValueError("a fact without its source turns or text")
            # What the model wrote is checked as an event's text and actor are (a control character, a lone
            # surrogate, a speaker past 256 characters would be stored on SQLite and refused by PostgreSQL, failing
            # the whole batch on every run): InvalidInput is a ValueError, and the episode falls back.
            statement = check_text(statement, Limits(), "statement")
            speaker = check_actor(str(fact.get("speaker") or by_position[positions[0]].actor), "speaker")
            at: datetime = by_position[positions[-1]].at
            text = f"{speaker}: {statement}"
            slot = fact.get("slot")
            identity = f"slot:{slot}" if slot else "statement:" + signature(text, [speaker])
            rows.append(
                {
                    "tenant": tenant,
                    "fact_key": fact_key(tenant, speaker, identity),
                    "text": text,
                    "actor": speaker,
                    "at": at,
                    "rendered": f"({render_date(at)}) {text}",
                    "tags": sorted({tag for p in positions for tag in (by_position[p].tags or [])}),
                    "sources": [by_position[p].item_id for p in positions],
                    "salience": 0.5,
                    "content_hash": content_hash(text, speaker),
                }
            )
        return pd.DataFrame(rows, columns=FACT_COLUMNS)
