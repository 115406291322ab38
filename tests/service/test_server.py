"""engram's deployments on a real Prefect server: ``prefect deploy --all``, a manual run of every deployment picked
up by process workers, an event that starts ``consolidate``, a second ``provision`` that changes nothing, a tenant
decommissioned into the archive, two workers sharing one pool by shards, and the UI in a headless browser.

The tests of this module build on each other in file order (deploy, then run, then decommission).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolUpdate
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter, FlowRunFilterId
from sqlalchemy import func, select

from engram import Memory
from engram.service import hot_rows
from engram.store import EPISODES, SEMANTIC, TRANSITIONS
from engram.testing import stop_process_group as stop
from flows.registry import FLOWS
from tests.conftest import PG_OK, PG_URL, REQUIRE_PG, T0, _drop_pg_schema, _fresh_pg_schema
from tests.flows.helpers import artifacts_with_keys, conversation_rows
from tests.service.conftest import BIN, REPO, PrefectServer

pytestmark = pytest.mark.integration
AS_OF = T0 + timedelta(days=30)
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class Stack:
    server: PrefectServer
    store_url: str
    archive_url: str
    runs: dict[str, str]  # deployment -> flow run id of its manual run


@pytest.fixture(scope="module")
def stack(prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """A store with three tenants' conversations, provisioned, and every deployment registered."""
    from flows.provision import provision

    work = tmp_path_factory.mktemp("engram")
    store_url, archive_url = f"sqlite:///{work / 'engram.db'}", (work / "archive").as_uri()
    prefect_server.env |= {"ENGRAM_STORE_URL": store_url, "ENGRAM_ARCHIVE_URL": archive_url}
    with Memory(store_url, archive_url) as memory:
        for tenant in ("acme", "globex", "initech"):
            memory.observe_many(conversation_rows(tenant, sessions=2, start=T0))
    provision(store_url=store_url, archive_url=archive_url)  # the work pools must exist before a deploy
    prefect_server.cli("deploy", "--all")
    return Stack(prefect_server, store_url, archive_url, {})


def _deployments() -> dict[str, Any]:
    with get_client(sync_client=True) as client:
        return {d.name: d for d in client.read_deployments()}


def _runs(ids: list[str]) -> dict[str, Any]:
    import uuid

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(i) for i in ids]))
        )
    return {str(r.id): r for r in runs}


def _wait_terminal(ids: list[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        runs = _runs(ids)
        if all(r.state_type.value in TERMINAL for r in runs.values()) or time.monotonic() > deadline:
            return runs
        time.sleep(1)


def _wait_idle(pools: list[str], timeout: float = 120) -> None:
    """Until no flow run of these work pools (the ones with workers up) is pending or running, so stopping the
    workers leaves no run stuck in RUNNING. Runs queued on pools without a worker never start and are not waited on.
    """
    from prefect.client.schemas.filters import (
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType

    busy = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING]))
    )
    on_pools = WorkPoolFilter(name=WorkPoolFilterName(any_=pools))
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while (
            client.read_flow_runs(flow_run_filter=busy, work_pool_filter=on_pools, limit=1)
            and time.monotonic() < deadline
        ):
            time.sleep(1)


def _hold_schedules(keep: frozenset[str] = frozenset()) -> None:
    """Turn the deployments' schedules off and drop the runs queued, but for the ids in ``keep``: the tests start
    every run themselves. Call it with no worker up: it also drops the runs a stopped worker left mid-submission
    (an earlier test's event started one as that test stopped its workers), which no worker would ever finish."""
    from prefect.client.schemas.filters import FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    scheduled = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED, StateType.PENDING]))
    )
    with get_client(sync_client=True) as client:
        for deployment in client.read_deployments():
            for schedule in deployment.schedules:
                client.update_deployment_schedule(deployment.id, schedule.id, active=False)
        for run in client.read_flow_runs(flow_run_filter=scheduled, limit=200):
            if str(run.id) not in keep:
                client.delete_flow_run(run.id)


def _run_deployment_cli(server: PrefectServer, name: str, params: dict[str, Any]) -> subprocess.Popen:
    """``prefect deployment run NAME/NAME --params JSON``, as an operator types it."""
    return subprocess.Popen(
        [str(BIN / "prefect"), "deployment", "run", f"{name}/{name}", "--params", json.dumps(params)],
        cwd=REPO,
        env=server.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _params(stack: Stack, name: str) -> dict[str, Any]:
    """Parameters of the manual run of each deployment: this test's store and archive, a fixed time."""
    common = {"store_url": stack.store_url, "as_of": AS_OF.isoformat()}
    with_archive = common | {"archive_url": stack.archive_url}
    return {
        "lifecycle": with_archive,
        "archive": with_archive | {"tenant": "acme"},
        "rehydrate": with_archive | {"tenant": "acme"},
        "forget": with_archive | {"tenant": "initech"},
        "provision": {"store_url": stack.store_url, "archive_url": stack.archive_url},
        "monitor": with_archive,
        "scale": common | {"launch": False},
        "decommission": with_archive | {"tenant": "globex", "confirm": "globex"},
    }.get(name, common)


def test_deploy_all_registers_every_flow_on_its_work_pool_with_its_triggers(stack: Stack) -> None:
    deployments = _deployments()
    assert set(deployments) == {s.name for s in FLOWS}
    assert all(deployments[s.name].work_pool_name == s.work_pool for s in FLOWS)
    scheduled = {s.name for s in FLOWS if s.interval_seconds or s.cron}
    assert {name for name, d in deployments.items() if d.schedules} == scheduled
    with get_client(sync_client=True) as client:
        for name, event in (("consolidate", "engram.session.closed"), ("scale", "engram.backlog.high")):
            owned = client.read_resource_related_automations(f"prefect.deployment.{deployments[name].id}")
            assert any(event in a.trigger.expect for a in owned), (name, owned)


def test_second_provision_changes_nothing(stack: Stack) -> None:
    from flows.provision import provision

    first = provision(store_url=stack.store_url, archive_url=stack.archive_url)
    assert all(first[k] in ("created", "unchanged") for k in first if k.startswith("automation."))  # deployed now
    second = provision(store_url=stack.store_url, archive_url=stack.archive_url)
    assert second["changed"] == [], second
    assert all(v == "unchanged" for k, v in second.items() if k != "changed")


def test_a_manual_run_of_every_deployment_completes_on_process_workers(stack: Stack) -> None:
    _hold_schedules()
    manual = [s.name for s in FLOWS if s.name != "decommission"]  # decommission has a test of its own below
    # lifecycle as an operator starts it from a shell; the others as the UI's "Quick run" does, through the API
    # (the same flow run from the deployment, without a CLI process each).
    proc = _run_deployment_cli(stack.server, "lifecycle", _params(stack, "lifecycle"))
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, f"prefect deployment run lifecycle:\n{out[-3000:]}"
    stack.runs["lifecycle"] = next(line.split()[-1] for line in out.splitlines() if "UUID:" in line)
    deployments = _deployments()
    with get_client(sync_client=True) as client:
        for name in manual:
            if name != "lifecycle":
                run = client.create_flow_run_from_deployment(deployments[name].id, parameters=_params(stack, name))
                stack.runs[name] = str(run.id)
    pools = sorted({s.work_pool for s in FLOWS})
    # Long-running workers, stopped once every run is done: scale's run may lower a pool's concurrency meanwhile,
    # and a --run-once worker would then leave the rest of that pool's runs behind.
    workers = [stack.server.worker(pool) for pool in pools]
    try:
        runs = _wait_terminal(list(stack.runs.values()), timeout=240)
        _wait_idle(pools)  # runs the close_sessions events started finish too
    finally:
        for w in workers:
            stop(w)
    states = {name: runs[run_id].state_type.value for name, run_id in stack.runs.items()}
    assert all(s == "COMPLETED" for s in states.values()), states
    with Memory(stack.store_url, stack.archive_url) as memory:
        assert memory.stats("acme")["semantic"] > 0  # the runs did their work on this test's store
        assert memory.stats("initech")["semantic"] == 0  # forgotten


def test_a_session_closed_event_starts_consolidate(stack: Stack) -> None:
    consolidate_id = _deployments()["consolidate"].id

    def automation_runs() -> list[Any]:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["consolidate"]))
            )
        return [
            r for r in runs if r.deployment_id == consolidate_id and r.created_by and r.created_by.type == "AUTOMATION"
        ]

    _hold_schedules()  # drops the runs that earlier tests' events queued, so the worker below runs only this one
    before = {r.id for r in automation_runs()}
    stack.server.cli(
        "event",
        "emit",
        "engram.session.closed",
        "--resource",
        json.dumps({"prefect.resource.id": "engram.tenant.acme", "engram.tenant": "acme"}),
        "--payload",
        json.dumps({"sessions": 1}),
    )
    deadline = time.monotonic() + 90
    while not (new := [r for r in automation_runs() if r.id not in before]) and time.monotonic() < deadline:
        time.sleep(1)
    assert new, "no consolidate run was started by the engram.session.closed trigger"
    # Events of earlier tests' runs may have queued consolidate runs since: only this event's run is waited for.
    _hold_schedules(keep=frozenset(str(r.id) for r in new))
    # Not --run-once: scale may have set the pool's concurrency to one, and earlier event-started runs queue first.
    with get_client(sync_client=True) as client:  # scale's earlier run may have left the pool at one at a time
        client.update_work_pool("engram-semantic", WorkPoolUpdate(concurrency_limit=4))
    worker = stack.server.worker("engram-semantic")
    try:
        done = _wait_terminal([str(r.id) for r in new], timeout=120)
        _wait_idle(["engram-semantic"])
    finally:
        stop(worker)
    assert {r.state_type.value for r in done.values()} == {"COMPLETED"}


def test_decommission_of_a_tenant_leaves_its_memory_only_in_the_archive_with_an_audit_report(stack: Stack) -> None:
    proc = _run_deployment_cli(stack.server, "decommission", _params(stack, "decommission"))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    run_id = next(line.split()[-1] for line in out.splitlines() if "UUID:" in line)
    worker = stack.server.worker("engram-service", "--run-once")
    try:
        run = _wait_terminal([run_id], timeout=180)[run_id]
        _wait_idle(["engram-service"])
    finally:
        stop(worker)
    assert run.state_type.value == "COMPLETED", run.state
    stack.runs["decommission"] = run_id
    with Memory(stack.store_url, stack.archive_url) as memory:
        globex = memory.stats("globex")
        assert hot_rows(globex) == 0 and globex["archival"] > 0, globex
        assert memory.stats("acme")["episodic"] > 0  # other tenants keep their memory
    report = artifacts_with_keys("engram-decommission-tenant-globex")
    assert report and "Rows left in the hot layers: 0." in report[0].data


@pytest.mark.postgres
def test_two_workers_on_one_pool_split_the_shards_with_no_double_work(stack: Stack) -> None:
    """``scale`` raises the pool to two workers for a backlog of 128 episodes of 16 tenants; two ``prefect worker``
    processes on the one pool run the two shard-worker runs, which take disjoint shards and consolidate every episode
    exactly once. Their throughput next to one worker's is a benchmark (bench/scale.py, BENCHMARKS.md)."""
    if not PG_OK:
        if REQUIRE_PG:
            pytest.fail(f"PostgreSQL is required here but does not answer at {PG_URL}")
        pytest.skip(f"no PostgreSQL server at {PG_URL}")
    from flows.ingest import ingest
    from flows.scale import scale
    from flows.sessions import close_sessions

    quiet_the_pool()
    tenants = [f"tenant-{i:02d}" for i in range(16)]
    schema, url = _fresh_pg_schema()
    try:
        with Memory(url) as memory:
            for tenant in tenants:
                memory.observe_many(conversation_rows(tenant, sessions=8, start=T0))
        ingest(store_url=url, as_of=AS_OF)
        close_sessions(store_url=url, as_of=AS_OF)
        # The auto-scaling step: the backlog (128 episodes, 64 a worker) asks for two workers. scale sets the pool's
        # concurrency and the consolidation limit to two and starts two shard-worker runs on the pool.
        decision = scale(store_url=url, as_of=AS_OF, batch_size=8, backlog_per_worker=64, max_workers=2, shard_count=16)
        assert decision["launched"] == 2, decision
        ids = decision["flow_runs"]
        procs = [stack.server.worker("engram-semantic", "--limit", "1") for _ in range(2)]
        try:
            runs = _wait_terminal(ids, timeout=300)
            _wait_idle(["engram-semantic"])
        finally:
            for p in procs:
                stop(p)
        assert {r.state_type.value for r in runs.values()} == {"COMPLETED"}, [r.state for r in runs.values()]
        with Memory(url) as memory, memory.store.read() as conn:
            rows = conn.execute(select(EPISODES.c.tenant, EPISODES.c.consolidated_run_id)).all()
            audit = conn.execute(
                select(TRANSITIONS.c.flow_run_id, TRANSITIONS.c.detail).where(
                    TRANSITIONS.c.action.in_(["consolidate", "merge"])
                )
            ).all()
            support_by_tenant = {
                t: (n, int(support))
                for t, n, support in conn.execute(
                    select(SEMANTIC.c.tenant, func.count(), func.sum(SEMANTIC.c.support_count)).group_by(
                        SEMANTIC.c.tenant
                    )
                )
            }
        assert len(rows) == 16 * 8 and all(run for _, run in rows)
        by_tenant: dict[str, set[str]] = {}
        for tenant, run in rows:
            by_tenant.setdefault(tenant, set()).add(run)
        assert all(len(runs) == 1 for runs in by_tenant.values()), "a tenant's episodes were split between workers"
        assert {r for runs in by_tenant.values() for r in runs} == set(ids), "both workers should have taken shards"
        # No double work: the audit trail names no episode under two flow runs, and every tenant (all sixteen had
        # the same conversations) ends with the same facts and support: an episode done twice would count twice.
        runs_of_episode: dict[str, set[str]] = {}
        for run, detail in audit:
            for episode in detail.get("episodes", []):
                runs_of_episode.setdefault(episode, set()).add(run)
        assert runs_of_episode and all(len(r) == 1 for r in runs_of_episode.values())
        assert len({(n, support) for n, support in support_by_tenant.values()}) == 1, support_by_tenant
        shards = [set(_shards_done(i)) for i in ids]
        assert shards[0] and shards[1] and not shards[0] & shards[1], shards
    finally:
        _drop_pg_schema(schema)


def _shards_done(flow_run_id: str) -> list[int]:
    """The ``shards`` a consolidate_shards run released, from its summary artifact."""
    import ast

    return ast.literal_eval(_summary_cells(flow_run_id)["shards"])


def _summary_cells(flow_run_id: str) -> dict[str, str]:
    """The measure -> value cells of a consolidate_shards run's summary artifact."""
    import uuid

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(flow_run_id)]))
        )
    table = next(a.data for a in artifacts if a.key == "engram-consolidate-shards-summary")
    return dict(line.strip("| ").split(" | ", 1) for line in table.splitlines() if line.startswith("| "))


def quiet_the_pool() -> None:
    """Pause the scheduled and event-started consolidation, so the measured workers run only the shard runs."""
    deployments = _deployments()
    with get_client(sync_client=True) as client:
        for name in ("consolidate", "lifecycle", "scale"):
            client.pause_deployment(deployments[name].id)
            for automation in client.read_resource_related_automations(f"prefect.deployment.{deployments[name].id}"):
                client.pause_automation(automation.id)
        for automation in client.read_automations():
            if "engram" in automation.tags:
                client.pause_automation(automation.id)
        pending = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["consolidate", "lifecycle"]))
        )
        for run in pending:
            if run.state_type.value in ("SCHEDULED", "PENDING"):
                client.delete_flow_run(run.id)


def test_the_ui_shows_the_deployments_and_a_completed_lifecycle_run(stack: Stack) -> None:
    """Debian's Chromium, driven headless by Playwright, waits for the UI to fill each page from the API."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed and could not be (make test installs it with apt-get as root)")
    from playwright.sync_api import sync_playwright

    lifecycle_run = _runs([stack.runs["lifecycle"]])[stack.runs["lifecycle"]]
    shows_all = "names => names.every(n => document.body && document.body.innerText.includes(n))"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page()
            page.goto(f"{stack.server.url}/deployments", wait_until="domcontentloaded", timeout=120_000)
            # The list shows ten deployments a page, A to Z; the others are found with the page's search box.
            page.wait_for_function(shows_all, arg=["consolidate", "decommission", "lifecycle"], timeout=120_000)
            search = page.get_by_placeholder("Search deployments")
            for name in ("provision", "scale"):
                search.fill(name)
                page.wait_for_function(shows_all, arg=[name], timeout=60_000)
            page.goto(f"{stack.server.url}/runs/flow-run/{lifecycle_run.id}", timeout=120_000)
            page.wait_for_function(shows_all, arg=[lifecycle_run.name, "Completed"], timeout=120_000)
            text = page.inner_text("body")
        finally:
            browser.close()
    assert lifecycle_run.name in text and "Completed" in text
