"""Conversations the flow tests write themselves, and an invariant checker over the store."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from engram.store import EPISODES, EVENTS, QUARANTINE, SEMANTIC, TRANSITIONS, TURNS, WORKING, Store

FACTS = [
    ("Caroline", "I started volunteering at the animal shelter on Saturdays."),
    ("Melanie", "That's great! What made you pick the shelter?"),
    ("Caroline", "I adopted my dog Rex from there last year, so I wanted to give back."),
    ("Melanie", "I just finished my first pottery class, I made a blue bowl."),
    ("Caroline", "Wow, cool!"),
    ("Melanie", "My daughter's birthday party is next Sunday, we're going camping."),
    ("Caroline", "I'm moving to Lisbon in June for a new job as a nurse."),
    ("Melanie", "Thanks!"),
]


def conversation_rows(
    tenant: str, sessions: int, start: datetime, turns_per_session: int = 8, prefix: str = "e", days_apart: int = 1
) -> list[dict[str, Any]]:
    """``sessions`` sessions ``days_apart`` days apart, each cycling through ``FACTS`` with a session-specific
    twist."""
    rows = []
    for s in range(sessions):
        day = start + timedelta(days=s * days_apart)
        for t in range(turns_per_session):
            actor, text = FACTS[t % len(FACTS)]
            rows.append(
                {
                    "tenant": tenant,
                    "session": f"{tenant}-s{s}",
                    "actor": actor,
                    "text": text if s == 0 else f"{text} (week {s}: topic {s * 7 + t})",
                    "at": day + timedelta(minutes=t),
                    "event_id": f"{prefix}{s}-{t}",
                }
            )
    return rows


def event_locations(store: Store, tenant: str) -> dict[str, list[str]]:
    """Every event id of a tenant and the places it is found: sensory, working, episodic, quarantine, discarded."""
    where: dict[str, list[str]] = {}
    with store.read() as conn:
        for (event_id,) in conn.execute(
            select(EVENTS.c.event_id).where(EVENTS.c.tenant == tenant, EVENTS.c.routed_at.is_(None))
        ):
            where.setdefault(event_id, []).append("sensory")
        for (event_id,) in conn.execute(select(WORKING.c.event_id).where(WORKING.c.tenant == tenant)):
            where.setdefault(event_id, []).append("working")
        for (event_id,) in conn.execute(select(TURNS.c.event_id).where(TURNS.c.tenant == tenant)):
            where.setdefault(event_id, []).append("episodic")
        for (item_id,) in conn.execute(
            select(TRANSITIONS.c.item_id).where(
                TRANSITIONS.c.tenant == tenant, TRANSITIONS.c.action.in_(["quarantine", "expire"])
            )
        ):
            where.setdefault(item_id, []).append("discarded")
        all_ids = [r[0] for r in conn.execute(select(EVENTS.c.event_id).where(EVENTS.c.tenant == tenant))]
    for event_id in all_ids:
        where.setdefault(event_id, [])
    return where


def assert_every_event_in_exactly_one_place(store: Store, tenant: str) -> None:
    where = event_locations(store, tenant)
    wrong = {e: places for e, places in where.items() if len(places) != 1}
    assert not wrong, f"events lost or duplicated: {dict(list(wrong.items())[:10])}"


def semantic_state(store: Store, tenant: str) -> list[tuple]:
    """The semantic layer as comparable tuples (no run ids, no times of the run)."""
    from engram.store import LINEAGE

    with store.read() as conn:
        lineage: dict[str, list[str]] = {}
        for item_id, event_id in conn.execute(
            select(LINEAGE.c.item_id, LINEAGE.c.event_id).where(LINEAGE.c.tenant == tenant)
        ):
            lineage.setdefault(item_id, []).append(event_id)
        rows = conn.execute(
            select(
                SEMANTIC.c.item_id,
                SEMANTIC.c.fact_key,
                SEMANTIC.c.version,
                SEMANTIC.c.text,
                SEMANTIC.c.support_count,
                SEMANTIC.c.superseded_by,
            ).where(SEMANTIC.c.tenant == tenant)
        ).all()
    return sorted((*r, tuple(sorted(lineage.get(r.item_id, [])))) for r in rows)


def count(store: Store, table: Any, **where: Any) -> int:
    with store.read() as conn:
        q = select(func.count()).select_from(table)
        for k, v in where.items():
            q = q.where(table.c[k] == v)
        return conn.execute(q).scalar_one()


__all__ = ["EPISODES", "QUARANTINE", "count"]


def artifacts_with_keys(*keys: str) -> list:
    """The Prefect artifacts with these keys, newest first: filtered by the server, so the answer does not depend on
    how many other artifacts the session's runs made."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(keys))), sort=ArtifactSort.CREATED_DESC
        )


def answer_json(handler: Any, body: Any) -> None:
    """Send ``body`` as a 200 JSON response from an ``http.server`` request handler (a model server on loopback)."""
    payload = json.dumps(body).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)
