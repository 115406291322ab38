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
    assert deployment["schedules"][0]["interval"] == spec.interval_seconds


def test_every_flow_takes_as_of_tenant_and_batch_size_or_passes_them_on() -> None:
    for spec in FLOWS:
        params = load_flow(spec.entrypoint).parameters.properties
        assert {"store_url", "as_of", "tenant", "batch_size"} <= set(params), spec.name
