"""``decommission``: retire one tenant or the whole service, leaving its memory in the archive (or another store)
and a final audit report."""

from __future__ import annotations

import importlib.util
from datetime import datetime
from typing import Any

from prefect import flow
from pydantic import SecretStr

from engram.policy import LifecyclePolicy
from engram.service import hot_rows
from engram.settings import reveal
from flows.consolidate import consolidate
from flows.ingest import ingest
from flows.registry import FLOWS
from flows.sessions import close_sessions, expire_working
from flows.subflows import heartbeat_of_parent
from tasks.common import Stopwatch, resolve_as_of
from tasks.reporting import publish_run_summary
from tasks.service import (
    close_open_sessions,
    count_layers,
    count_set_aside,
    default_archive_block,
    list_tenants,
    migrate_target_store,
    move_tenant_to_store,
    pause_schedules,
    publish_audit_report,
    remove_moved_tenant,
    save_retention_taking_everything,
)


@flow(name="decommission")
def decommission(
    store_url: str | SecretStr | None = None,
    archive_url: str | None = None,
    as_of: datetime | None = None,
    tenant: str | None = None,
    batch_size: int = 500,
    target_store_url: str | SecretStr | None = None,
    staging_url: str | None = None,
    replace_in_target: bool = False,
    confirm: str | None = None,
) -> dict:
    """Pause the schedules (whole service only), drain (route pending events, close every session, discard scratch
    memory, consolidate), migrate the data (to the archive, or with ``target_store_url`` to another store through
    an export), then verify and publish the audit report.

    ``confirm`` must name what is retired: the tenant's id, or ``service`` for the whole service. A run without it
    (a "Quick run" with the deployment's defaults, say) is refused before anything is touched.

    A move to another store copies each tenant through an export in ``staging_url`` (the target shares this store's
    archive: its objects stay where they are), then removes the tenant's rows here, unless it was written to after
    its export: then it stays whole here and the step says so. ``replace_in_target`` lets the import replace a
    tenant the target holds already (an earlier run's copy of it).

    A step that cannot run here is reported as ``unavailable`` with the reason, never skipped silently.
    """
    if confirm != (tenant or "service"):
        raise ValueError(
            f"confirm: a decommission retires {f'tenant {tenant!r}' if tenant else 'the whole service'}; pass "
            f"confirm={tenant or 'service'!r} to run it (got {confirm!r}); nothing was touched"
        )
    url = reveal(store_url)  # the subflows get store_url as given, so that a SecretStr stays hidden in their runs
    clock, as_of, policy = Stopwatch(), resolve_as_of(as_of), LifecyclePolicy.from_settings()
    scope = f"tenant {tenant}" if tenant else "service"
    common: dict[str, Any] = {"store_url": store_url, "tenant": tenant, "batch_size": batch_size}
    before = count_layers(url, tenant)
    steps: dict[str, Any] = {}
    scheduled = [f"{s.name}/{s.name}" for s in FLOWS if (s.interval_seconds or s.cron) and s.name != "decommission"]
    steps["pause_schedules"] = pause_schedules(scheduled) if tenant is None else "skipped: other tenants keep running"
    with heartbeat_of_parent():
        steps["ingest"] = ingest(**common, as_of=as_of)
        steps["close_requested"] = close_open_sessions(url, tenant, as_of)
        steps["close_sessions"] = close_sessions(**common, as_of=as_of)
        steps["expire_working"] = expire_working(**common, as_of=as_of + policy.working_ttl)
        steps["consolidate"] = consolidate(**common, as_of=as_of)
        # An episode set aside after failed consolidation runs is not drained: the report names how many stay.
        steps["set_aside"] = count_set_aside(url, tenant)
        steps["migrate"] = migrate_memory(
            store_url, archive_url, as_of, tenant, batch_size, target_store_url, staging_url, replace_in_target
        )
    after = count_layers(url, tenant)
    steps["verify"] = (
        "ok: no rows left in the hot layers" if hot_rows(after) == 0 else f"{hot_rows(after)} hot rows left"
    )
    report = publish_audit_report(scope, steps, before, after)
    counts = {"scope": scope, "hot_rows_before": hot_rows(before), "hot_rows_after": hot_rows(after)}
    summary = publish_run_summary("decommission", {**counts, "report": report}, clock.seconds)
    return {**summary, "steps": steps, "before": before, "after": after}


def migrate_memory(
    store_url: str | SecretStr | None,
    archive_url: str | None,
    as_of: datetime,
    tenant: str | None,
    batch_size: int,
    target_store_url: str | SecretStr | None,
    staging_url: str | None,
    replace_in_target: bool = False,
) -> Any:
    """Move the drained memory out of the hot layers: to another store when one is named, else to the archive."""
    url, target = reveal(store_url), reveal(target_store_url)
    if target:
        if importlib.util.find_spec("engram.portable") is None:
            return "unavailable: store-to-store export is not installed (engram.portable)"
        if not staging_url:
            return "unavailable: a store-to-store move needs staging_url (a folder or s3:// prefix for the export)"
        migrate_target_store(target)
        moved: dict[str, int] = {}
        removed: dict[str, Any] = {}
        for name in [tenant] if tenant else list_tenants(url):
            copy = move_tenant_to_store(url, target, name, archive_url, staging_url, replace_in_target)
            moved[name] = copy["rows"]
            if copy["source_seq"] is not None:
                removed[name] = remove_moved_tenant(url, archive_url, name, copy["source_seq"])
        return {"moved_rows": moved, "removed_from_source": removed}
    if importlib.util.find_spec("flows.archive") is None:
        return "unavailable: the archive flow is not installed (flows/archive.py)"
    from flows.archive import archive

    return archive(
        store_url=store_url,
        archive_url=archive_url,
        as_of=as_of,
        tenant=tenant,
        batch_size=batch_size,
        archive_block=None if archive_url else default_archive_block(),
        retention_block=save_retention_taking_everything(),
    )
