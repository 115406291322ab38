"""The service lifecycle flows under Prefect's test harness: provision, monitor, scale, decommission."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from sqlalchemy import func, select

from engram import Memory
from engram.store import EPISODES, METRICS
from flows.decommission import decommission
from flows.monitor import monitor
from flows.provision import provision
from flows.scale import consolidate_shards, scale
from tasks.service import apply_parallelism
from tests.conftest import T0, fresh_store
from tests.flows.helpers import artifacts_with_keys, conversation_rows

AS_OF = T0 + timedelta(days=30)


@pytest.fixture
def postgres_store(tmp_path: Path) -> Iterator[str]:
    """An empty store on the PostgreSQL server (a private schema, dropped after)."""
    with fresh_store(tmp_path, "postgresql") as url:
        yield url


@pytest.fixture(autouse=True)
def _no_embeddings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGRAM_EMBEDDINGS", "false")  # these tests are about orchestration, not retrieval


def _with_episodes(memory: Memory, tenants: list[str], sessions: int = 3) -> None:
    from flows.ingest import ingest
    from flows.sessions import close_sessions

    for tenant in tenants:
        memory.observe_many(conversation_rows(tenant, sessions=sessions, start=T0))
    ingest(store_url=memory.store_url, as_of=AS_OF)
    close_sessions(store_url=memory.store_url, as_of=AS_OF)


def test_provision_twice_creates_once_then_changes_nothing(tmp_path: Path) -> None:
    from engram.migrations import head_revision

    store_url, archive_url = f"sqlite:///{tmp_path / 'new' / 'engram.db'}", (tmp_path / "archive").as_uri()
    first = provision(store_url=store_url, archive_url=archive_url)
    second = provision(store_url=store_url, archive_url=archive_url)
    assert first["database.schema"] == f"created: revision none -> {head_revision()}", first
    assert second["database.schema"] == "unchanged" and second["changed"] == [], second
    assert set(first) == set(second)
    for pool in ("engram-sensory", "engram-working", "engram-semantic", "engram-lifecycle", "engram-service"):
        assert f"work_pool.{pool}" in second
    assert second["concurrency_limit.engram-consolidate"] == "unchanged"
    assert second["variable.engram_scaling_policy"] == "unchanged"
    # Nothing is deployed in the harness: the automations wait for their deployments instead of failing.
    assert all(v.startswith("pending") for k, v in second.items() if k.startswith("automation."))
    with get_client(sync_client=True) as client:
        assert client.read_work_pool("engram-semantic").type == "process"


def test_monitor_records_metrics_publishes_a_chart_and_signals_the_backlog(sqlite_memory: Memory) -> None:
    _with_episodes(sqlite_memory, ["acme", "globex"])
    Path(sqlite_memory.archive_url.removeprefix("file://")).mkdir(parents=True)  # what provision would create
    for hours in (0, 1):
        result = monitor(
            store_url=sqlite_memory.store_url,
            archive_url=sqlite_memory.archive_url,
            as_of=AS_OF + timedelta(hours=hours),
            backlog_high=1,
        )
    assert result["healthy"] is True, result
    assert "engram.backlog.high" in result["events"]  # 6 episodes wait, the threshold is 1
    assert "engram.alert.lag" in result["events"]  # they ended weeks before as_of
    with sqlite_memory.store.read() as conn:
        rows = conn.execute(select(METRICS.c.tenant, METRICS.c.name, METRICS.c.value)).all()
    by_key = {(t, n): v for t, n, v in rows}
    assert by_key[("acme", "layer.episodic")] == 3 and by_key[("*", "layer.episodic")] == 6
    assert by_key[("*", "backlog.episodes")] == 6
    assert by_key[("*", "health.database")] == 1
    chart = artifacts_with_keys("engram-metrics", "engram-layer-sizes")
    keys = {a.key for a in chart}
    assert {"engram-metrics", "engram-layer-sizes"} <= keys
    markdown = next(a.data for a in chart if a.key == "engram-layer-sizes")
    assert "xychart-beta" in markdown and "| episodic |" in markdown
    # A month later (ENGRAM_METRICS_RETENTION_DAYS, 30 by default), a run deletes what the first two recorded.
    later = AS_OF + timedelta(days=31)
    monitor(store_url=sqlite_memory.store_url, archive_url=sqlite_memory.archive_url, as_of=later)
    with sqlite_memory.store.read() as conn:
        times = conn.execute(select(METRICS.c.at).where(METRICS.c.name == "layer.episodic")).scalars().all()
    assert times and all(at >= later for at in times)


def test_scale_raises_parallelism_and_a_shard_worker_drains_every_shard(sqlite_memory: Memory) -> None:
    tenants = [f"t{i}" for i in range(6)]
    _with_episodes(sqlite_memory, tenants, sessions=2)
    url = sqlite_memory.store_url
    apply_parallelism.fn("engram-semantic", 1)  # start from one worker, whatever earlier tests left (no task run)
    decision = scale(store_url=url, as_of=AS_OF, backlog_per_worker=4, max_workers=3, shard_count=8, launch=False)
    assert decision["backlog"] == 12 and decision["action"] == "raise" and decision["workers"].endswith("-> 3")
    done = consolidate_shards(store_url=url, as_of=AS_OF, shard_count=8)
    assert done["episodes"] == 12
    leases = sqlite_memory.store.shard_leases("engram-semantic")
    assert sum(r["processed"] for r in leases) == 12 and all(r["lease_expires_at"] is None for r in leases)
    drained = scale(store_url=url, as_of=AS_OF, backlog_per_worker=4, max_workers=3, shard_count=8, launch=False)
    assert (drained["backlog"], drained["action"], drained["workers"]) == (0, "lower", "3 -> 1")


@pytest.mark.postgres
def test_decommission_moves_a_tenant_to_another_store_sharing_the_archive_and_loses_nothing(
    sqlite_memory: Memory, postgres_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A laptop's SQLite store moves a tenant (with an interrupted archive run's manifest) to a PostgreSQL store
    that keeps the same archive:
    every fact and turn, archived ones included, reads back from the target; the source keeps no row of it and the
    archive keeps every object (the source's forget used to purge the objects the target's manifests name). A tenant
    written to while it moved stays whole in the source, and the step says so."""
    from engram import portable
    from engram.archive import archive_batch, archive_cold_items
    from engram.layers import Layer
    from tests.engram.archive_helpers import COLD, LATER, consolidate_pending, contents

    memory, archive = sqlite_memory, sqlite_memory.archive
    for tenant in ("acme", "globex"):
        memory.observe_many(conversation_rows(tenant, sessions=3, start=T0))
        consolidate_pending(memory.store, tenant, AS_OF)
    archive_cold_items(memory.store, archive, COLD, LATER, "acme")
    # Then an archive run of acme's newer facts, interrupted after its upload: its manifest stays written.
    memory.observe_many(conversation_rows("acme", sessions=1, start=T0 + timedelta(days=10), prefix="acme-late"))
    consolidate_pending(memory.store, "acme", AS_OF)
    late = memory.store.archive_candidates(Layer.SEMANTIC, LATER, COLD, "acme", 5000)
    assert archive_batch(memory.store, archive, Layer.SEMANTIC, late, LATER, None)
    before = {t: contents(memory.store, archive, t) for t in ("acme", "globex")}
    assert any(memory.store.manifests("acme"))
    objects = sorted(str(p) for p in Path(archive.prefix).rglob("*") if p.is_file())

    import_tenant = portable.import_tenant

    def import_while_globex_is_written_to(store, src, **kwargs):  # noqa: ANN001, ANN003, ANN202
        report = import_tenant(store, src, **kwargs)
        if report.tenant == "globex":  # the application writes to globex while it moves
            memory.observe("globex", "late", "Ada", "One more thing", AS_OF, event_id="late-1")
        return report

    monkeypatch.setattr(portable, "import_tenant", import_while_globex_is_written_to)
    target = postgres_store
    steps = {}
    for tenant in ("acme", "globex"):
        result = decommission(
            store_url=memory.store_url,
            archive_url=memory.archive_url,
            as_of=AS_OF,
            tenant=tenant,
            confirm=tenant,
            target_store_url=target,
            staging_url=(tmp_path / "staging").as_uri(),
        )
        steps[tenant] = result["steps"]["migrate"]

    assert steps["acme"]["moved_rows"]["acme"] > 0 and isinstance(steps["acme"]["removed_from_source"]["acme"], int)
    kept = steps["globex"]["removed_from_source"]["globex"]
    assert kept.startswith("kept: tenant 'globex' was written to after its copy was taken"), kept
    with Memory(target, memory.archive_url, migrate=False) as moved:
        assert contents(moved.store, archive, "acme") == before["acme"]
        assert moved.search("acme", "Lisbon", layers=["archival"])
    assert contents(memory.store, archive, "acme") == {}
    assert memory.store.manifests("acme") == []
    assert sorted(str(p) for p in Path(archive.prefix).rglob("*") if p.is_file() and "staging" not in str(p)) == [
        o for o in objects
    ]
    assert memory.get("globex", "late-1").text == "One more thing"  # kept whole in the source
    assert contents(memory.store, archive, "globex") == before["globex"]


def test_scale_starts_its_shard_workers_with_its_own_shard_count_and_tenant(
    sqlite_memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers got the default 16 shards whatever the scale run used: each rebuilt the shard table (another count
    drops the rows) and revoked the leases of the workers already running. What the run asks the deployment for is
    recorded here in place of Prefect's run_deployment (the shard-worker deployment is not registered in this test's
    server)."""
    import prefect.deployments

    _with_episodes(sqlite_memory, ["acme"], sessions=2)
    asked: list[dict] = []

    def record(name: str, parameters: dict, timeout: int) -> object:
        asked.append({"name": name, **parameters})
        return type("Run", (), {"id": len(asked)})()

    monkeypatch.setattr(prefect.deployments, "run_deployment", record)
    apply_parallelism.fn("engram-semantic", 1)
    result = scale(store_url=sqlite_memory.store_url, as_of=AS_OF, tenant="acme", shard_count=32, max_workers=2)
    assert result["launched"] == len(asked) > 0
    assert all((a["shard_count"], a["tenant"]) == (32, "acme") for a in asked)


def test_decommission_of_a_tenant_drains_it_and_reports_every_step(sqlite_memory: Memory) -> None:
    _with_episodes(sqlite_memory, ["acme", "globex"], sessions=2)
    sqlite_memory.observe("acme", "open-session", "Caroline", "I still have a question", AS_OF - timedelta(minutes=1))
    with pytest.raises(ValueError, match="confirm: a decommission retires tenant 'acme'"):
        decommission(store_url=sqlite_memory.store_url, archive_url=sqlite_memory.archive_url, tenant="acme")
    assert sqlite_memory.stats("acme")["sensory"] > 0  # refused before anything was touched
    result = decommission(
        store_url=sqlite_memory.store_url,
        archive_url=sqlite_memory.archive_url,
        as_of=AS_OF,
        tenant="acme",
        confirm="acme",
    )
    steps = result["steps"]
    assert steps["pause_schedules"].startswith("skipped")  # one tenant: the service keeps its schedules
    assert steps["close_requested"] == 1  # the open session was closed, not left behind
    with sqlite_memory.store.read() as conn:
        waiting = conn.execute(
            select(func.count())
            .select_from(EPISODES)
            .where(EPISODES.c.consolidated_at.is_(None), EPISODES.c.tenant == "acme")
        ).scalar_one()
    assert waiting == 0 or result["after"]["episodic"] == 0
    assert steps["migrate"]["episodes"] == 3 and steps["migrate"]["rows_verified"] > 0  # to the archive, checked
    assert result["hot_rows_after"] == 0, result["after"]
    assert steps["verify"].startswith("ok") and steps["set_aside"] == 0
    report = artifacts_with_keys("engram-decommission-tenant-acme")
    audit = next(a for a in report if a.key == "engram-decommission-tenant-acme")
    assert "| migrate |" in audit.data and "Rows left in the hot layers: 0." in audit.data
    assert sqlite_memory.stats("globex")["episodic"] == 2  # the other tenant is untouched
