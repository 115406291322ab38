"""The errors engram raises, all under one root.

    EngramError
    ├── InvalidInput          a value given to the API is wrong; names the field, the kind of value, what to do
    ├── NotFound              an item or session that does not exist for this tenant
    ├── QualityGateFailed     a Great Expectations suite failed for a whole batch; carries the validation result
    ├── EpisodesHeldBack      a consolidation run left the episodes its consolidator failed on unconsolidated
    ├── StoreError            the database failed (driver errors are translated into this at the store boundary)
    │   └── LeaseLost         a claimed batch's lease expired or was taken by another worker
    └── ArchiveError          the object storage failed or an archived file does not match its manifest
        └── ArchiveMismatch   an archived file is missing, or its rows or checksum differ from its manifest

Driver exceptions (SQLAlchemy, psycopg2, botocore, s3fs) never leave engram untranslated: the store and the archive
adapters catch them in one place and raise one of the above with the original as ``__cause__``.
"""

from __future__ import annotations

from typing import Any


class EngramError(Exception):
    """Root of every error engram raises."""


class InvalidInput(EngramError, ValueError):
    """A value given to engram is wrong.

    Attributes:
        field: the name of the offending field (``tenant``, ``text``, ...).
        reason: what is wrong with it and what to do, in one sentence.
    """

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class NotFound(EngramError, KeyError):
    """The item, session or manifest does not exist for this tenant."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "not found"


class QualityGateFailed(EngramError):
    """A quality suite failed at batch level; nothing of the batch was written.

    Attributes:
        suite: the suite's name (``sensory_to_working``, ...).
        failed: the names of the failed expectations.
        result: the full validation result as a JSON-serialisable dict.
    """

    def __init__(self, suite: str, failed: list[str], result: dict[str, Any] | None = None):
        self.suite = suite
        self.failed = failed
        self.result = result or {}
        super().__init__(f"quality gate {suite!r} failed: {', '.join(failed)}")


class EpisodesHeldBack(EngramError):
    """A consolidation run could not distil some of its episodes; it consolidated all the others.

    Raised at the end of the run, after its last batch, so that the run shows failed while the episodes that could
    be distilled are in the semantic layer. The held-back episodes stay unconsolidated, each with a quarantine row
    (source ``consolidate``) giving the consolidator's error, and are retried by the first run after their lease
    expires, until ``ENGRAM_CONSOLIDATE_ATTEMPTS`` runs have failed on one: it is then set aside, and no run takes it
    until an operator retries it (``Memory.retry_set_aside``, ``engram retry-held``).

    Attributes:
        episodes: ``(tenant, episode_id) -> reason`` of each held-back episode.
        summaries: what the failed run did all the same, by flow name: the consolidation run's own summary (under
            ``consolidate`` or ``consolidate_shards``) and, when a ``lifecycle`` run raises it, the summaries of the
            subflows that ran before (``ingest``, ``close_sessions``, ``expire_working``).
    """

    def __init__(self, episodes: dict[tuple[str, str], str], summaries: dict[str, dict[str, Any]] | None = None):
        self.episodes = dict(episodes)
        self.summaries = dict(summaries or {})
        shown = "; ".join(f"{t}/{e}: {_shortened(why)}" for (t, e), why in list(self.episodes.items())[:5])
        more = f" and {len(self.episodes) - 5} more" if len(self.episodes) > 5 else ""
        aside = sum(s.get("set_aside", 0) for s in self.summaries.values())
        aside_note = (
            f"; {aside} of them set aside after ENGRAM_CONSOLIDATE_ATTEMPTS failed runs, until `engram retry-held`"
            if aside
            else ""
        )
        super().__init__(
            f"{len(self.episodes)} episode(s) could not be distilled and stay unconsolidated until retried "
            f"(quarantine source 'consolidate'){aside_note}: {shown}{more}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.episodes, self.summaries))


def _shortened(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def failure_reason(exc: BaseException) -> str:
    """How a failure of one item is recorded with it (a quarantine row's reason): ``ErrorType: message``, at most
    2,000 characters."""
    return f"{type(exc).__name__}: {exc}"[:2000]


def failed_whole(items: int, failed: int) -> bool:
    """Whether a batch of several items failed on every one of them: then what failed is the step itself (a broken
    consolidator or summarizer), not an item, and setting its items apart one by one would only quarantine them all."""
    return items > 1 and failed == items


class StoreError(EngramError):
    """The database failed; the original driver error is the ``__cause__``."""


class LeaseLost(StoreError):
    """A batch claimed under a lease can no longer be committed: the lease expired or moved."""


class TenantChanged(StoreError):
    """A tenant was written to after the point a step was checked against (a copy of it taken for a move): the step
    was not done."""


class ArchiveError(EngramError):
    """Object storage failed, or an archived file does not match its manifest."""


class ArchiveMismatch(ArchiveError):
    """An archived file is missing, or its row count or sha256 differs from its manifest.

    Attributes:
        manifest_id: the manifest that names the file.
        path: the file's path relative to the archive's root.
    """

    def __init__(self, manifest_id: str, path: str, reason: str):
        self.manifest_id = manifest_id
        self.path = path
        super().__init__(f"archive manifest {manifest_id}: {path} {reason}")
