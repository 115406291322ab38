"""Policies operators tune without a deploy: lifecycle timing and archive retention."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect.blocks.core import Block
from pydantic import Field

from engram.policy import LifecyclePolicy


class LifecyclePolicyBlock(Block):
    """When working memory expires, when an idle session closes, how long a claimed batch stays leased.

    Example:
        ```python
        from blocks.policy import LifecyclePolicyBlock
        policy = LifecyclePolicyBlock.load("BLOCK_NAME").to_policy()
        ```
    """

    _block_type_name = "engram Lifecycle Policy"
    _block_type_slug = "engram-lifecycle-policy"
    _documentation_url = "https://docs.prefect.io/v3/develop/blocks"  # type: ignore[assignment]

    working_ttl_hours: float = Field(
        default=24.0, gt=0, title="Working TTL (hours)", description="Lifetime of task-scoped working memory."
    )
    session_idle_minutes: float = Field(
        default=30.0,
        gt=0,
        title="Session idle timeout (minutes)",
        description="Idle time after which a session closes.",
    )
    lease_seconds: float = Field(
        default=300.0,
        gt=0,
        title="Lease (seconds)",
        description="How long a claimed batch stays reserved for a worker.",
    )

    def to_policy(self) -> LifecyclePolicy:
        return LifecyclePolicy(
            working_ttl=timedelta(hours=self.working_ttl_hours),
            session_idle_timeout=timedelta(minutes=self.session_idle_minutes),
            lease=timedelta(seconds=self.lease_seconds),
        )


class RetentionPolicy(Block):
    """Which hot memories the archive flow moves to object storage.

    Example:
        ```python
        from blocks.policy import RetentionPolicy
        retention = RetentionPolicy.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "engram Retention Policy"
    _block_type_slug = "engram-retention-policy"
    _documentation_url = "https://docs.prefect.io/v3/develop/blocks"  # type: ignore[assignment]

    semantic_idle_days: float = Field(
        default=90.0,
        gt=0,
        title="Semantic idle days",
        description="Archive a semantic item not accessed for this long.",
    )
    min_salience: float = Field(
        default=0.0, ge=0, le=1, title="Minimum salience", description="Archive a semantic item below this salience."
    )
    episode_age_days: float = Field(
        default=30.0, gt=0, title="Episode age (days)", description="Archive an episode that ended this long ago."
    )
    archive_superseded: bool = Field(
        default=True, title="Archive superseded versions", description="Move superseded fact versions to the archive."
    )

    def to_rules(self) -> Any:
        """The plain ``engram.archive.RetentionRules`` the archive flow applies."""
        from engram.archive import RetentionRules

        return RetentionRules(
            semantic_idle=timedelta(days=self.semantic_idle_days),
            min_salience=self.min_salience,
            episode_age=timedelta(days=self.episode_age_days),
            archive_superseded=self.archive_superseded,
        )
