"""Lifecycle policy: the timing rules the flows apply, as one value object.

Loaded from settings by default; the ``LifecyclePolicy`` block (``blocks/``) stores the same fields in Prefect so
operators can change them without a deploy.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from engram.settings import Settings


@dataclass(frozen=True)
class LifecyclePolicy:
    """When working memory expires, when a session is over, and how long a claimed batch stays leased.

    Attributes:
        working_ttl: a working item lives this long after its event (task-scoped items are then discarded).
        session_idle_timeout: a session without an event for this long is closed into an episode.
        lease: how long a claimed batch is reserved for its worker; a crashed worker's batch is retaken after it.
    """

    working_ttl: timedelta = timedelta(hours=24)
    session_idle_timeout: timedelta = timedelta(minutes=30)
    lease: timedelta = timedelta(minutes=5)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> LifecyclePolicy:
        s = settings or Settings()
        return cls(
            working_ttl=timedelta(hours=s.working_ttl_hours),
            session_idle_timeout=timedelta(minutes=s.session_idle_minutes),
            lease=timedelta(seconds=s.lease_seconds),
        )
