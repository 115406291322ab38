"""``forget``: remove a subject (or a whole tenant) from every layer, keeping a deletion receipt."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from engram.settings import reveal
from tasks.common import Stopwatch, current_run_id, resolve_as_of
from tasks.reporting import publish_run_summary


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def forget_subject(
    store_url: str | None, archive_url: str | None, tenant: str, subject: str | None, as_of: datetime
) -> dict:
    """``Memory.forget`` under this flow run's id, at ``as_of`` (the receipt's time and id: a retry of the task
    records the same receipt); the receipt holds counts and the subject's hash, not the subject."""
    from engram.memory import Memory

    with Memory(store_url, archive_url, clock=lambda: as_of) as memory:
        receipt = memory.forget(tenant, subject, flow_run_id=current_run_id())
    return {k: v for k, v in asdict(receipt).items() if k != "at"} | {"total": receipt.total}


@flow(name="forget")
def forget(
    tenant: str,
    subject: str | None = None,
    store_url: str | SecretStr | None = None,
    archive_url: str | None = None,
    as_of: datetime | None = None,
) -> dict:
    """Remove every memory of ``subject`` in ``tenant`` (the whole tenant when ``subject`` is None)."""
    store_url = reveal(store_url)
    clock, as_of = Stopwatch(), resolve_as_of(as_of)
    receipt = forget_subject(store_url, archive_url, tenant, subject, as_of)
    publish_run_summary("forget", {"receipt": receipt["receipt_id"], "removed": receipt["total"]}, clock.seconds)
    return receipt
