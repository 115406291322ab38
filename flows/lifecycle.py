"""``lifecycle``: the parent flow that moves memory through every layer, in order."""

from __future__ import annotations

from datetime import datetime

from prefect import flow
from pydantic import SecretStr

from engram.errors import EpisodesHeldBack
from flows.consolidate import consolidate
from flows.ingest import ingest
from flows.sessions import close_sessions, expire_working
from flows.subflows import heartbeat_of_parent
from tasks.common import resolve_as_of


@flow(name="lifecycle")
def lifecycle(
    store_url: str | SecretStr | None = None,
    archive_url: str | None = None,
    as_of: datetime | None = None,
    tenant: str | None = None,
    batch_size: int | None = None,
) -> dict[str, dict]:
    """Ingest, close finished sessions, expire stale working memory, consolidate episodes.

    ``batch_size``, when given, overrides each subflow's own default. ``store_url`` goes to the subflows as given:
    a ``SecretStr`` (``engram.settings.url_parameter``) stays hidden in every run's recorded parameters.
    """
    common = {"store_url": store_url, "as_of": resolve_as_of(as_of), "tenant": tenant}
    if batch_size is not None:
        common["batch_size"] = batch_size
    with heartbeat_of_parent():
        return lifecycle_steps(common)


def lifecycle_steps(common: dict) -> dict[str, dict]:
    """The lifecycle's four subflows in order, each called with ``common`` (their shared parameters).

    When consolidation holds episodes back, the ``EpisodesHeldBack`` it raises carries every subflow's summary
    (``summaries``), so that a caller of a failed run still has what the run did.
    """
    summaries = {
        "ingest": ingest(**common),
        "close_sessions": close_sessions(**common),
        "expire_working": expire_working(**common),
    }
    try:
        summaries["consolidate"] = consolidate(**common)
    except EpisodesHeldBack as held:
        held.summaries = summaries | held.summaries
        raise
    return summaries
