"""Tasks of the ``ingest`` flow: read a sensory batch, gate it, route it to working memory."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from engram.collector import cyclic_gc_paused
from engram.errors import QualityGateFailed
from engram.frames import records
from tasks.common import current_run_id, open_store
from tasks.reporting import publish_gate_failure


@task(retries=3, retry_delay_seconds=[2, 5, 15], cache_policy=NO_CACHE)
@cyclic_gc_paused()
def read_sensory_batch(store_url: str | None, tenant: str | None, batch_size: int) -> pd.DataFrame:
    """The oldest events still in the sensory layer."""
    return pd.DataFrame(open_store(store_url).pending_events(batch_size, tenant))


@task(cache_policy=NO_CACHE)
@cyclic_gc_paused()
def gate_sensory_batch(events: pd.DataFrame, max_reject_fraction: float):  # noqa: ANN201 - GateResult
    """The sensory -> working quality gate; a batch-level failure fails the run before anything is written."""
    from engram.quality import validate_sensory_batch
    from engram.settings import Settings
    from engram.validation import Limits

    # The limits ``observe`` checked the events against when they were written (ENGRAM_MAX_TEXT_BYTES): with the
    # defaults instead, events accepted under a raised limit would be rejected here, and a batch of them would fail
    # the gate as a whole on every run.
    limits = Limits.from_settings(Settings())
    try:
        return validate_sensory_batch(events, limits, max_reject_fraction=max_reject_fraction)
    except QualityGateFailed as exc:
        publish_gate_failure(exc.suite, exc.result)
        raise


@task(retries=3, retry_delay_seconds=[2, 5, 15], cache_policy=NO_CACHE)
@cyclic_gc_paused()
def route_to_working(store_url: str | None, gate, as_of: datetime, working_ttl: timedelta) -> dict[str, int]:  # noqa: ANN001
    """Write the gate's valid rows to working memory and its rejects to quarantine, in one transaction."""
    run_id = current_run_id()
    working = []
    for r in records(gate.valid):
        at = r["at"].to_pydatetime() if hasattr(r["at"], "to_pydatetime") else r["at"]
        metadata = r["metadata"] or {}
        working.append(
            {
                "tenant": r["tenant"],
                "item_id": r["event_id"],
                "event_id": r["event_id"],
                "session_id": r["session_id"],
                "actor": r["actor"],
                "text": r["text"],
                "at": at,
                "scope": metadata.get("scope", "session"),
                "tags": list(metadata.get("tags") or []),
                "metadata": metadata,
                "expires_at": _later(at, working_ttl),
                "created_run_id": run_id,
            }
        )
    rejected = [
        {"tenant": r["tenant"], "event_id": r["key"], "field": r["field"], "reason": r["reason"]} for r in gate.rejected
    ]
    return open_store(store_url).route_events(working, rejected, as_of, current_run_id())


def _later(at: datetime, span: timedelta) -> datetime:
    """``at + span``, or the calendar's last instant for an event dated so near it (a valid 9999-12-31) that the
    sum is past it: the sum would raise and fail the whole batch, and every run after it."""
    try:
        return at + span
    except OverflowError:
        return datetime.max.replace(tzinfo=at.tzinfo)
