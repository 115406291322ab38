"""Tasks of the service lifecycle flows (``provision``, ``monitor``, ``scale``, ``decommission``).

Each is a thin call into ``engram.service`` or the store, or one conversation with the Prefect API; every
provisioning task returns ``{resource: status}`` with status ``created``, ``updated`` or ``unchanged`` (or why it
could not act), so a provision run says exactly what it changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from engram.service import (
    HealthCheck,
    Measurement,
    ScalingDecision,
    Signal,
    check_database,
    check_object_storage,
    health_measurements,
    hot_rows,
    layer_chart_markdown,
    measure_store,
    run_duration_measurements,
    tenants_by_shard,
    timed_check,
)
from tasks.common import current_run_id, open_store

DEFAULT_BLOCK = "default"  # the name of the block documents provision saves (EngramStore.load("default"), ...)
CONSOLIDATE_LIMIT = "engram-consolidate"  # global concurrency limit: shard workers consolidating at once
SHARD_WORKER_DEPLOYMENT = "consolidate_shards/consolidate_shards"
DECOMMISSION_RETENTION = "engram-decommission-everything"  # the RetentionPolicy a decommission archives under


# -- provision ------------------------------------------------------------------------------------------------


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def migrate_store(store_url: str | None) -> dict[str, str]:
    """Upgrade the store's schema to the newest revision."""
    from engram.migrations import head_revision
    from engram.settings import Settings
    from engram.store import Store

    # A handle of its own, not open_store's, which would have migrated the store before the first look.
    store = Store(store_url or Settings().resolved_store_url())
    try:
        before = store.schema_revision()
        store.migrate()
        after = store.schema_revision()
    finally:
        store.dispose()
    if before == after:
        status = "unchanged"
    else:
        status = f"{'created' if before is None else 'updated'}: revision {before or 'none'} -> {after}"
    assert after == head_revision(), f"store is at {after}, not at head {head_revision()}"
    return {"database.schema": status}


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def save_default_blocks(store_url: str | None, archive_url: str | None) -> dict[str, str]:
    """Register engram's block types and save a ``default`` document of each from settings, unless one exists."""
    from blocks import ALL_BLOCKS, ArchiveStorage, EngramStore, LifecyclePolicyBlock, RetentionPolicy
    from engram.settings import Settings

    settings = Settings()
    for block_type in ALL_BLOCKS:
        block_type.register_type_and_schema()
    defaults = {
        EngramStore: lambda: EngramStore(url=store_url or settings.resolved_store_url()),
        ArchiveStorage: lambda: ArchiveStorage(
            url=archive_url or settings.resolved_archive_url(),
            endpoint=settings.archive_endpoint,
            region=settings.archive_region,
            access_key=settings.archive_access_key,
            secret_key=settings.archive_secret_key,
        ),
        LifecyclePolicyBlock: lambda: LifecyclePolicyBlock(
            working_ttl_hours=settings.working_ttl_hours,
            session_idle_minutes=settings.session_idle_minutes,
            lease_seconds=settings.lease_seconds,
        ),
        RetentionPolicy: RetentionPolicy,
    }
    out: dict[str, str] = {}
    for block_type, make in defaults.items():
        key = f"block.{block_type.get_block_type_slug()}/{DEFAULT_BLOCK}"
        try:
            block_type.load(DEFAULT_BLOCK)
            out[key] = "unchanged"
        except ValueError:  # Prefect's "no such block document"
            make().save(DEFAULT_BLOCK)
            out[key] = "created"
    return out


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def provision_archive_storage() -> dict[str, str]:
    """The archive's folder, or its bucket with versioning on, as the ``default`` ArchiveStorage block says."""
    from blocks import ArchiveStorage
    from engram.archive import provision_archive

    result = provision_archive(ArchiveStorage.load(DEFAULT_BLOCK))
    if not result.get("changed"):
        return {"archive": "unchanged"}
    what = f"bucket {result['bucket']}" if result.get("bucket") else "folder"
    return {"archive": f"created: {what}" if result.get("created") else f"updated: {what} versioning on"}


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def ensure_work_pools(pools: Sequence[str]) -> dict[str, str]:
    """One process work pool per name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    out: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        for name in pools:
            try:
                client.read_work_pool(name)
                out[f"work_pool.{name}"] = "unchanged"
            except ObjectNotFound:
                template = ProcessWorker.get_default_base_job_template()
                client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template))
                out[f"work_pool.{name}"] = "created"
    return out


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def ensure_concurrency_limits(limits: Mapping[str, int]) -> dict[str, str]:
    """Global concurrency limits; an existing limit keeps its value (``scale`` moves it at run time)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    out: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        for name, limit in limits.items():
            try:
                client.read_global_concurrency_limit_by_name(name)
                out[f"concurrency_limit.{name}"] = "unchanged"
            except ObjectNotFound:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
                out[f"concurrency_limit.{name}"] = "created"
    return out


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def ensure_policy_variables(values: Mapping[str, Any]) -> dict[str, str]:
    """Prefect variables holding the policies operators tune; an existing variable keeps the operator's value."""
    from prefect.variables import Variable

    out: dict[str, str] = {}
    for name, value in values.items():
        if Variable.get(name) is not None:
            out[f"variable.{name}"] = "unchanged"
        else:
            Variable.set(name, value)
            out[f"variable.{name}"] = "created"
    return out


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def apply_automations() -> dict[str, str]:
    """The automations declared in ``deployments/automations.py``, created or brought up to date by name."""
    from deployments.automations import apply_all

    return apply_all()


# -- monitor --------------------------------------------------------------------------------------------------


@task(cache_policy=NO_CACHE, timeout_seconds=120)
def check_health(store_url: str | None, archive_url: str | None) -> list[HealthCheck]:
    """Database, object storage and the Prefect API, each timed; a failed check is reported, not raised."""
    from prefect.client.orchestration import get_client

    from engram.settings import Settings

    def prefect_api() -> str:
        with get_client(sync_client=True) as client:
            error = client.api_healthcheck()
            if error is not None:
                raise error
            return str(client.api_url)

    opened = timed_check("database", lambda: open_store(store_url) and "")
    checks = [check_database(open_store(store_url)) if opened.ok else opened]
    url, options = archive_url or Settings().resolved_archive_url(), {}
    if archive_url is None:
        try:
            from blocks import ArchiveStorage

            storage = ArchiveStorage.load(DEFAULT_BLOCK)
            url, options = storage.url, storage.storage_options()
        except ValueError:  # not provisioned: check the configured archive
            pass
    checks.append(check_object_storage(url, options))
    checks.append(timed_check("prefect_api", prefect_api))
    return checks


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def measure_layers(store_url: str | None, as_of: datetime, tenant: str | None) -> list[Measurement]:
    """Items per layer and tenant, consolidation backlog and lag, quarantine growth."""
    return measure_store(open_store(store_url), as_of, tenant)


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def measure_run_durations(since: datetime, flow_names: Sequence[str]) -> list[Measurement]:
    """Durations of the engram flow runs that finished since ``since``, read from Prefect's API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterEndTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=list(flow_names))),
            flow_run_filter=FlowRunFilter(
                end_time=FlowRunFilterEndTime(after_=since),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED])),
            ),
            limit=200,
        )
        names = {
            f.id: f.name for f in client.read_flows(flow_filter=FlowFilter(name=FlowFilterName(any_=list(flow_names))))
        }
    return run_duration_measurements(
        (names.get(r.flow_id, "?"), r.total_run_time.total_seconds()) for r in runs if r.flow_id in names
    )


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def record_measurements(
    store_url: str | None, measurements: Sequence[Measurement], checks: Sequence[HealthCheck], as_of: datetime
) -> int:
    """Write the run's measurements (and one per health check) to the ``metrics`` table, and delete those taken
    more than ``ENGRAM_METRICS_RETENTION_DAYS`` before ``as_of``."""
    from engram.settings import Settings

    rows = [m.row(as_of, current_run_id()) for m in [*measurements, *health_measurements(checks)]]
    keep_after = as_of - timedelta(days=Settings().metrics_retention_days)
    return open_store(store_url).record_metrics(rows, keep_after)


@task(cache_policy=NO_CACHE)
def publish_metrics(
    store_url: str | None,
    measurements: Sequence[Measurement],
    checks: Sequence[HealthCheck],
    tenant: str | None,
    with_history: bool = True,
) -> None:
    """A table artifact of this run's measurements and health, and a markdown chart of layer sizes over time."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from engram.service import SERVICE_WIDE

    create_table_artifact(
        table=[{"tenant": m.tenant, "metric": m.name, "value": m.value} for m in measurements]
        + [{"tenant": SERVICE_WIDE, "metric": f"health.{c.name}", "value": c.detail or c.ok} for c in checks],
        key="engram-metrics",
        description="engram metrics: items per layer and tenant, backlog, lag, quarantine growth, run durations",
    )
    history = (
        open_store(store_url).metric_history(tenant or SERVICE_WIDE, "layer.", limit=6 * 48) if with_history else []
    )
    create_markdown_artifact(
        markdown=layer_chart_markdown(history),
        key="engram-layer-sizes",
        description="engram layer sizes over time",
    )


@task(cache_policy=NO_CACHE)
def emit_signals(signals: Sequence[Signal]) -> list[str]:
    """One Prefect event per alert or scaling signal; automations and deployment triggers act on them."""
    from prefect.events import emit_event

    for s in signals:
        emit_event(
            event=s.event,
            resource={"prefect.resource.id": s.resource, "prefect.resource.name": s.resource.split(".", 2)[-1]},
            payload=s.payload,
        )
    return [s.event for s in signals]


# -- scale ----------------------------------------------------------------------------------------------------


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def measure_backlog(store_url: str | None, as_of: datetime, tenant: str | None) -> int:
    """Episodes waiting for consolidation (not those set aside, which no worker takes)."""
    backlog = open_store(store_url).consolidation_backlog(as_of, tenant)
    return sum(n for n, _ in backlog.values())


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def read_parallelism(pool: str, default: int) -> int:
    """The shard workers allowed at once: the global ``engram-consolidate`` limit, else ``default``."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(CONSOLIDATE_LIMIT).limit
        except ObjectNotFound:
            return default


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def apply_parallelism(pool: str, workers: int) -> dict[str, str]:
    """Set the consolidation concurrency limit and the work pool's concurrency to ``workers``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
        WorkPoolUpdate,
    )
    from prefect.exceptions import ObjectNotFound

    out: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(CONSOLIDATE_LIMIT)
            client.update_global_concurrency_limit(CONSOLIDATE_LIMIT, GlobalConcurrencyLimitUpdate(limit=workers))
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=CONSOLIDATE_LIMIT, limit=workers))
        out[f"concurrency_limit.{CONSOLIDATE_LIMIT}"] = str(workers)
        try:
            client.update_work_pool(pool, WorkPoolUpdate(concurrency_limit=workers))
            out[f"work_pool.{pool}"] = str(workers)
        except ObjectNotFound:
            out[f"work_pool.{pool}"] = "unavailable: not provisioned"
    return out


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def prepare_shards(store_url: str | None, pool: str, shard_count: int) -> int:
    """The pool's shard rows, 0..shard_count-1."""
    return open_store(store_url).ensure_shards(pool, shard_count)


@task(cache_policy=NO_CACHE)
def launch_shard_workers(count: int, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Start ``count`` runs of the shard-worker deployment (they queue on its work pool), or say why not."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    runs = []
    try:
        for _ in range(count):
            runs.append(str(run_deployment(SHARD_WORKER_DEPLOYMENT, parameters=dict(parameters), timeout=0).id))
    except ObjectNotFound:
        return {"launched": len(runs), "note": f"deployment {SHARD_WORKER_DEPLOYMENT} is not registered"}
    return {"launched": len(runs), "flow_runs": runs}


@task(cache_policy=NO_CACHE)
def announce_scaling(decision: ScalingDecision, pool: str) -> None:
    """``engram.scale.raised`` or ``engram.scale.lowered`` when parallelism changed."""
    from prefect.events import emit_event

    if decision.action != "hold":
        emit_event(
            event={"raise": "engram.scale.raised", "lower": "engram.scale.lowered"}[decision.action],
            resource={"prefect.resource.id": f"engram.pool.{pool}"},
            payload={"backlog": decision.backlog, "from": decision.current, "to": decision.desired},
        )


# -- shard workers --------------------------------------------------------------------------------------------


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def shards_with_backlog(store_url: str | None, as_of: datetime, shard_count: int) -> dict[int, list[str]]:
    """The shards that hold tenants with episodes to consolidate (not set aside), and those tenants."""
    backlog = open_store(store_url).consolidation_backlog(as_of)
    return tenants_by_shard(backlog, shard_count)


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def claim_shard(
    store_url: str | None, pool: str, owner: str, lease_seconds: float, candidates: Sequence[int]
) -> tuple[int, int] | None:
    """Lease one of the candidate shards."""
    return open_store(store_url).claim_shard(pool, owner, lease_seconds, candidates)


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def renew_shard(store_url: str | None, pool: str, shard: int, owner: str, lease_seconds: float, processed: int) -> bool:
    """Keep the shard's lease and count the episodes done under it."""
    return open_store(store_url).renew_shard(pool, shard, owner, lease_seconds, processed)


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def release_shard(store_url: str | None, pool: str, shard: int, owner: str) -> None:
    """Let another worker take the shard."""
    open_store(store_url).release_shard(pool, shard, owner)


# -- decommission ---------------------------------------------------------------------------------------------


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def pause_schedules(deployment_names: Sequence[str]) -> dict[str, str]:
    """Pause the named deployments (their schedules stop creating runs)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    out: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        for name in deployment_names:
            try:
                deployment = client.read_deployment_by_name(name)
            except ObjectNotFound:
                out[name] = "skipped: not deployed"
                continue
            if deployment.paused:
                out[name] = "unchanged: already paused"
            else:
                client.pause_deployment(deployment.id)
                out[name] = "paused"
    return out


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def count_layers(store_url: str | None, tenant: str | None) -> dict[str, int]:
    """Items per layer for the tenant (or the whole store)."""
    return open_store(store_url).count_by_layer(tenant)


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def count_set_aside(store_url: str | None, tenant: str | None) -> int:
    """Episodes set aside after ``ENGRAM_CONSOLIDATE_ATTEMPTS`` failed consolidation runs, of the tenant (or all)."""
    return len(open_store(store_url).set_aside_episodes(tenant))


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def close_open_sessions(store_url: str | None, tenant: str | None, at: datetime) -> int:
    """Ask every open session to close now, so the drain turns them into episodes."""
    return open_store(store_url).request_close_open_sessions(tenant, at)


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def move_tenant_to_store(
    store_url: str | None,
    target_store_url: str,
    tenant: str,
    archive_url: str | None,
    staging: str,
    replace_in_target: bool,
) -> dict[str, Any]:
    """Export one tenant and import it into the target store, migrated by ``migrate_target_store`` (``engram.portable``:
    every file read back and every table's rows counted again in the target before the import commits).

    Returns ``rows`` (imported) and ``source_seq``, the tenant's change counter read before the export: its removal
    from this store checks that nothing was written since. A tenant with nothing left here (moved by an earlier run)
    is not exported again: ``rows`` 0 and ``source_seq`` None. Each attempt exports to a folder of its own under
    ``staging``, so that a retry does not meet the export of the attempt before.
    """
    from engram.portable import export_tenant, import_tenant
    from engram.store import Store

    source = open_store(store_url)
    counts = source.count_by_layer(tenant)
    if hot_rows(counts) + counts.get("archival", 0) + counts.get("events", 0) == 0:
        return {"rows": 0, "source_seq": None}
    if any(m["status"] != "committed" for m in source.manifests(tenant)):
        # What an interrupted archive run or compaction left would keep the tenant from being removed after the copy
        # (its run may still be going on): settled first, as the next archive run or compaction would.
        from engram.archive import settle_unfinished
        from engram.compaction import drop_leftovers
        from tasks.archive import load_archive_storage

        storage = load_archive_storage(archive_url, None)
        settle_unfinished(source, storage, tenant, datetime.now(UTC), current_run_id())
        drop_leftovers(source, storage, tenant)
    seq = source.tenant_seq(tenant)
    dest = f"{staging.rstrip('/')}/{tenant}/{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}"
    target = Store(target_store_url)
    try:
        export_tenant(source, tenant, dest, archive_url)
        report = import_tenant(target, dest, archive_url=archive_url, replace=replace_in_target)
    finally:
        target.dispose()
    return {"rows": report.total, "source_seq": seq}


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def migrate_target_store(target_store_url: str) -> None:
    """Bring the store tenants move to up to the schema, once for the move (``move_tenant_to_store`` expects it)."""
    from engram.store import Store

    target = Store(target_store_url)
    try:
        target.migrate()
    finally:
        target.dispose()


@task(cache_policy=NO_CACHE)
def remove_moved_tenant(store_url: str | None, archive_url: str | None, tenant: str, source_seq: int) -> Any:
    """Remove from this store a tenant copied into another that shares this archive (``Memory.forget_moved``): its
    rows go, with a deletion receipt; its archived objects stay, named by the other store's manifests now. A tenant
    written to after its export is kept whole, and the answer says so."""
    from engram.errors import TenantChanged
    from engram.memory import Memory

    with Memory(store_url, archive_url) as memory:
        try:
            return memory.forget_moved(tenant, unchanged_since=source_seq, flow_run_id=current_run_id()).total
        except TenantChanged as exc:
            return (
                f"kept: {exc}. The target holds the export taken before; rerun the decommission with "
                "replace_in_target=True to copy it again"
            )


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def default_archive_block() -> str | None:
    """``default`` when provision saved an ArchiveStorage block of that name (endpoint and keys live there)."""
    from blocks import ArchiveStorage

    try:
        ArchiveStorage.load(DEFAULT_BLOCK)
    except ValueError:
        return None
    return DEFAULT_BLOCK


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def save_retention_taking_everything() -> str:
    """A RetentionPolicy block under which every consolidated episode and every fact is cold; returns its name."""
    from blocks import RetentionPolicy

    tiny = 1e-9  # days: anything older than a tenth of a millisecond
    RetentionPolicy(semantic_idle_days=tiny, min_salience=1.0, episode_age_days=tiny, archive_superseded=True).save(
        DECOMMISSION_RETENTION, overwrite=True
    )
    return DECOMMISSION_RETENTION


@task(retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def list_tenants(store_url: str | None) -> list[str]:
    """Every tenant the store knows."""
    return open_store(store_url).tenants()


@task(cache_policy=NO_CACHE)
def publish_audit_report(
    scope: str, steps: Mapping[str, Any], before: Mapping[str, int], after: Mapping[str, int]
) -> str:
    """The decommission's final audit report, as a markdown artifact; returns the artifact key."""
    import re

    from prefect.artifacts import create_markdown_artifact

    from engram.service import audit_report_markdown

    key = re.sub(r"[^a-z0-9-]+", "-", f"engram-decommission-{scope}".lower()).strip("-")
    create_markdown_artifact(
        markdown=audit_report_markdown(scope, steps, before, after), key=key, description="decommission audit"
    )
    return key
