"""``provision``: everything engram needs before its first run, created once; a second run changes nothing."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime

from prefect import flow
from pydantic import SecretStr

from engram.policy import LifecyclePolicy
from engram.service import MonitorThresholds, ScalingPolicy, changed
from engram.settings import reveal
from flows.registry import FLOWS
from tasks.common import Stopwatch, resolve_as_of
from tasks.reporting import publish_run_summary
from tasks.service import (
    CONSOLIDATE_LIMIT,
    apply_automations,
    ensure_concurrency_limits,
    ensure_policy_variables,
    ensure_work_pools,
    migrate_store,
    provision_archive_storage,
    save_default_blocks,
)


@flow(name="provision")
def provision(
    store_url: str | SecretStr | None = None, archive_url: str | None = None, as_of: datetime | None = None
) -> dict:
    """Migrate the store to head, save the default blocks, create the archive's folder or bucket, the work pools,
    the consolidation concurrency limit, the policy variables and the alert automations, each only when missing.

    Returns every resource with ``created``, ``updated``, ``unchanged`` or ``pending`` (an automation whose
    deployment is not registered yet), and ``changed``: the list of what this run created or updated.
    """
    store_url = reveal(store_url)
    clock, as_of = Stopwatch(), resolve_as_of(as_of)
    lifecycle, scaling = LifecyclePolicy.from_settings(), ScalingPolicy()
    summary: dict[str, str] = {}
    summary |= migrate_store(store_url)
    summary |= save_default_blocks(store_url, archive_url)
    summary |= provision_archive_storage()
    summary |= ensure_work_pools(sorted({spec.work_pool for spec in FLOWS}))
    summary |= ensure_concurrency_limits({CONSOLIDATE_LIMIT: scaling.max_workers})
    summary |= ensure_policy_variables(
        {
            "engram_lifecycle_policy": {k: v.total_seconds() for k, v in asdict(lifecycle).items()},
            "engram_scaling_policy": asdict(scaling),
            "engram_monitor_thresholds": asdict(MonitorThresholds()),
        }
    )
    summary |= apply_automations()
    publish_run_summary("provision", {**summary, "as_of": as_of.isoformat()}, clock.seconds)
    return {**summary, "changed": changed(summary)}
