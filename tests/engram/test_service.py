"""The service rules without Prefect: shards, scaling decisions, alerts, charts, summaries."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

from engram import InvalidInput, Memory
from engram.service import (
    HealthCheck,
    Measurement,
    MonitorThresholds,
    ScalingPolicy,
    changed,
    check_database,
    decide_parallelism,
    decide_signals,
    layer_chart_markdown,
    measure_store,
    shard_of,
    sparkline,
    tenants_by_shard,
)
from engram.store import Store
from tests.conftest import T0

POLICY = ScalingPolicy(backlog_per_worker=100, min_workers=1, max_workers=4, shard_count=16)


@pytest.mark.parametrize(
    ("backlog", "current", "desired", "action"),
    [
        (0, 1, 1, "hold"),  # nothing waiting, already at the minimum
        (100, 1, 1, "hold"),  # exactly one worker's worth
        (101, 1, 2, "raise"),  # one episode more than one worker takes: a second worker
        (350, 2, 4, "raise"),  # needs four
        (10_000, 2, 4, "raise"),  # never above max_workers
        (50, 4, 4, "hold"),  # not drained yet: keep the workers until the burst is done (no bouncing)
        (0, 4, 1, "lower"),  # drained: back to the minimum
        (150, 6, 2, "lower"),  # more workers than the policy allows now: down to what the backlog needs
    ],
)
def test_parallelism_rises_with_the_backlog_and_falls_only_when_drained(
    backlog: int, current: int, desired: int, action: str
) -> None:
    decision = decide_parallelism(backlog, current, POLICY)
    assert (decision.desired, decision.action) == (desired, action)


def test_a_tenant_always_hashes_to_the_same_shard_and_shards_spread_tenants() -> None:
    tenants = [f"tenant-{i}" for i in range(1_000)]
    assert [shard_of(t, 16) for t in tenants] == [shard_of(t, 16) for t in tenants]
    spread = Counter(shard_of(t, 16) for t in tenants)
    assert set(spread) == set(range(16)) and max(spread.values()) < 2 * 1_000 / 16
    grouped = tenants_by_shard(tenants, 16)
    assert sorted(t for ts in grouped.values() for t in ts) == sorted(tenants)  # each tenant in exactly one shard
    with pytest.raises(ValueError):
        shard_of("acme", 0)


def test_signals_follow_the_thresholds() -> None:
    thresholds = MonitorThresholds(backlog_high=10, max_lag_hours=1, max_quarantine_growth=5)
    checks = [HealthCheck("database", True, 0.01), HealthCheck("object_storage", False, 0.2, "FileNotFoundError")]
    measurements = [
        Measurement("*", "backlog.episodes", 11),  # above 10: scale out
        Measurement("*", "lag.seconds", 3_601),  # above an hour
        Measurement("*", "quarantine.growth", 5),  # at the limit: no alert
        Measurement("acme", "forget.oldest_age_seconds", 3_600),  # at the default hour: no alert
        Measurement("globex", "forget.oldest_age_seconds", 3_601),  # a forget interrupted over an hour ago
    ]
    events = [(s.event, s.resource) for s in decide_signals(checks, measurements, thresholds)]
    assert events == [
        ("engram.alert.unhealthy", "engram.check.object_storage"),
        ("engram.backlog.high", "engram.service"),
        ("engram.alert.lag", "engram.service"),
        ("engram.alert.forget_unfinished", "engram.tenant.globex"),
    ]


def test_sparkline_and_chart() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([3, 3]) == "▁▁" and sparkline([]) == ""
    history = [
        {"at": T0 + timedelta(hours=h), "name": f"layer.{layer}", "value": v * (h + 1)}
        for h in range(3)
        for layer, v in (("semantic", 10), ("episodic", 2))
    ]
    chart = layer_chart_markdown(history)
    assert "| semantic | ▁▅█ | 10 | 30 |" in chart
    assert "xychart-beta" in chart and "line [" in chart


def test_changed_lists_only_what_a_run_created_or_updated() -> None:
    summary = {"a": "created", "b": "unchanged", "c": "updated: versioning on", "d": "pending: not deployed"}
    assert changed(summary) == ["a", "c"]


def test_measure_store_counts_backlog_lag_and_quarantine_growth(memory: Memory) -> None:
    from tests.flows.helpers import conversation_rows

    bad = [{"tenant": "acme", "text": " "}, {"tenant": "no such/tenant", "text": "hello"}]  # both quarantined
    memory.observe_many(conversation_rows("acme", sessions=1, start=T0) + bad)
    got = {(m.tenant, m.name): m.value for m in measure_store(memory.store, T0 + timedelta(days=1))}
    assert got[("acme", "layer.sensory")] == 8 and got[("*", "layer.sensory")] == 8
    assert got[("*", "backlog.episodes")] == 0 and got[("*", "lag.seconds")] == 0
    assert got[("*", "quarantine.growth")] == 0  # no earlier measurement to grow from
    zero = {"name": "layer.quarantine", "value": 0.0, "at": T0}
    memory.store.record_metrics([{"tenant": "*", **zero}, {"tenant": "acme", **zero}])
    day = T0 + timedelta(days=1)
    measured = measure_store(memory.store, day)
    got = {(m.tenant, m.name): m.value for m in measured}
    assert got[("*", "quarantine.growth")] == 2  # the row whose tenant id was invalid too
    assert got[("*", "layer.quarantine")] == 2 and got[("acme", "layer.quarantine")] == 1
    assert got[("*", "forget.unfinished")] == 0 and not [k for k in got if k[1] == "forget.oldest_age_seconds"]
    got = {(m.tenant, m.name): m.value for m in measure_store(memory.store, day, "acme")}
    assert got[("acme", "quarantine.growth")] == 1

    # Recorded as the monitor records them, the next run grows from them: by nothing, then by one more bad row.
    memory.store.record_metrics([m.row(day, None) for m in measured])
    got = {(m.tenant, m.name): m.value for m in measure_store(memory.store, day + timedelta(hours=1))}
    assert got[("*", "quarantine.growth")] == 0
    memory.observe_many([{"tenant": "no such/tenant", "text": "hello again"}])
    got = {(m.tenant, m.name): m.value for m in measure_store(memory.store, day + timedelta(hours=2))}
    assert got[("*", "quarantine.growth")] == 1


def test_measure_store_reports_a_forget_that_started_and_did_not_finish(memory: Memory) -> None:
    memory.store.save_forget_intent("acme", "a" * 64, ["e1"], [], [], T0)
    memory.store.save_forget_intent("acme", "b" * 64, ["e2"], [], [], T0 + timedelta(hours=1))
    memory.store.save_forget_intent("acme", "a" * 64, ["e1", "e3"], [], [], T0 + timedelta(hours=2))  # its rerun
    memory.store.save_forget_intent("globex", "c" * 64, ["e4"], [], [], T0 + timedelta(hours=2, minutes=30))
    as_of = T0 + timedelta(hours=3)
    got = {(m.tenant, m.name): m.value for m in measure_store(memory.store, as_of)}
    assert got[("*", "forget.unfinished")] == 3
    # The age of each tenant's oldest, from its first start (not the rerun): the alert names the tenant.
    assert got[("acme", "forget.oldest_age_seconds")] == 3 * 3600
    assert got[("globex", "forget.oldest_age_seconds")] == 1800
    signals = decide_signals([], measure_store(memory.store, as_of), MonitorThresholds())
    assert [(s.event, s.resource, s.payload) for s in signals] == [
        ("engram.alert.forget_unfinished", "engram.tenant.acme", {"age_hours": 3.0, "threshold": 1.0})
    ]
    got = {(m.tenant, m.name): m.value for m in measure_store(memory.store, as_of, "acme")}
    assert got[("acme", "forget.unfinished")] == 2 and ("globex", "forget.oldest_age_seconds") not in got
    for tenant, subject in (("acme", "a"), ("acme", "b"), ("globex", "c")):
        memory.store.drop_forget_intent(tenant, subject * 64)
    got = {(m.tenant, m.name): m.value for m in measure_store(memory.store, as_of)}
    assert got[("*", "forget.unfinished")] == 0 and not [k for k in got if k[1] == "forget.oldest_age_seconds"]


def test_the_database_check_reads_the_schema_revision_and_fails_when_the_store_does_not_answer(
    store_url: str, tmp_path: Path
) -> None:
    from engram.migrations import head_revision

    store = Store(store_url)
    try:
        assert check_database(store).ok and check_database(store).detail == f"{store.dialect}: schema at revision none"
        store.migrate()
        checked = check_database(store)
        assert checked.ok and checked.detail == f"{store.dialect}: schema at revision {head_revision()}", checked
    finally:
        store.dispose()
    (tmp_path / "a folder").mkdir()
    gone = Store(f"sqlite:///{tmp_path / 'a folder'}")  # a path SQLite cannot open as a database
    failed = check_database(gone)
    assert not failed.ok and failed.name == "database" and failed.detail.startswith("StoreError"), failed


def test_shard_leases_go_to_one_owner_at_a_time(store_url: str) -> None:

    store = Store(store_url)
    store.migrate()
    try:
        assert store.ensure_shards("pool", 4) == 4 and store.ensure_shards("pool", 4) == 0
        # One claim leases exactly one shard, even with several candidates (on PostgreSQL an IN (subquery) update
        # could lease more than the LIMIT of its subquery).
        assert store.claim_shard("pool", "a", 60, [0, 2]) == (0, 4)
        assert [r["shard"] for r in store.shard_leases("pool") if r["lease_expires_at"]] == [0]
        assert store.claim_shard("pool", "b", 60, [0]) is None  # leased to a
        assert store.claim_shard("pool", "b", 60) == (1, 4)
        assert store.renew_shard("pool", 0, "a", 60, processed=5) and not store.renew_shard("pool", 0, "b", 60)
        store.release_shard("pool", 0, "a")
        assert store.claim_shard("pool", "b", 60, [0]) == (0, 4)
        assert store.claim_shard("pool", "c", 0.0, [3]) == (3, 4)  # a zero lease expires at once ...
        assert store.claim_shard("pool", "d", 60, [3]) == (3, 4)  # ... and another worker takes the shard over
        assert store.ensure_shards("pool", 8) == 8  # a new shard count starts over: old numbers mean other tenants
        assert {r["shard_count"] for r in store.shard_leases("pool")} == {8}
    finally:
        store.dispose()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"backlog_per_worker": 0}, "backlog_per_worker"),  # divided by: a ZeroDivisionError in the flow
        ({"min_workers": 0}, "min_workers"),  # a pool limit of 0 would stop consolidation
        ({"max_workers": -1}, "max_workers"),
        ({"shard_count": 2.5}, "shard_count"),
        ({"min_workers": 5, "max_workers": 2}, "min_workers"),
    ],
)
def test_a_scaling_policy_that_cannot_work_is_refused_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        ScalingPolicy(**kwargs)
    assert err.value.field == field
