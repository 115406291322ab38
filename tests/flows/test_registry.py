"""prefect.yaml, the flow registry and the code agree: every entrypoint loads and is the flow it claims to be."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.registry import FLOWS, load_flow

ROOT = Path(__file__).resolve().parents[2]
DECLARED = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def test_prefect_yaml_declares_every_registered_flow() -> None:
    assert {(d["name"], d["entrypoint"]) for d in DECLARED} == {(s.name, s.entrypoint) for s in FLOWS}


@pytest.mark.parametrize("deployment", DECLARED, ids=lambda d: d["name"])
def test_every_entrypoint_loads_the_named_flow(deployment: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    flow = load_flow(deployment["entrypoint"])
    assert flow.name == deployment["name"]
    spec = next(s for s in FLOWS if s.name == deployment["name"])
    assert deployment["work_pool"]["name"] == spec.work_pool
    declared = (deployment.get("schedules") or [{}])[0]
    assert (declared.get("interval"), declared.get("cron")) == (spec.interval_seconds, spec.cron)


def test_every_flow_takes_as_of_tenant_and_batch_size_or_passes_them_on() -> None:
    # provision and monitor act on the whole installation; they take the store and the time, not a batch.
    service_wide = {
        "provision": {"store_url", "as_of"},
        "monitor": {"store_url", "as_of", "tenant"},
        "forget": {"store_url", "as_of", "tenant"},  # one receipt-keeping delete, no batches
    }
    for spec in FLOWS:
        params = load_flow(spec.entrypoint).parameters.properties
        assert service_wide.get(spec.name, {"store_url", "as_of", "tenant", "batch_size"}) <= set(params), spec.name
