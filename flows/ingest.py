"""``ingest``: sensory -> working."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from prefect import flow
from prefect.utilities.annotations import opaque
from pydantic import SecretStr

from engram.policy import LifecyclePolicy
from engram.settings import reveal
from tasks.common import BatchMemory, Stopwatch, resolve_as_of
from tasks.ingest import gate_sensory_batch, read_sensory_batch, route_to_working
from tasks.reporting import publish_run_summary, publish_validation


@flow(name="ingest")
def ingest(
    store_url: str | SecretStr | None = None,
    as_of: datetime | None = None,
    tenant: str | None = None,
    batch_size: int = 20_000,
    max_reject_fraction: float = 0.5,
    max_batches: int = 10_000,
) -> dict:
    """Validate sensory events batch by batch, quarantine the bad rows, move the rest into working memory."""
    store_url = reveal(store_url)
    clock, as_of, policy = Stopwatch(), resolve_as_of(as_of), LifecyclePolicy.from_settings()
    totals: Counter[str] = Counter()
    results = []
    batches = BatchMemory()
    for _ in range(max_batches):
        events = read_sensory_batch(store_url, tenant, batch_size)
        if events.empty:
            break
        gate = gate_sensory_batch(events, max_reject_fraction)
        results.append(gate.result)
        totals["rows_in"] += len(events)
        # opaque: the gate's result is linked to the task run, but Prefect does not walk its rejected rows
        totals.update(route_to_working(store_url, opaque(gate), as_of, policy.working_ttl))
        batches.release()
    publish_validation("sensory_to_working", results)
    return publish_run_summary("ingest", dict(totals), clock.seconds)
