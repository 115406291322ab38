"""The automations that act on engram's alerts: declared here, applied by the ``provision`` flow.

The ``monitor`` flow emits ``engram.alert.*`` events; each declaration below names the event it reacts to and the
deployment it acts on. Deployment triggers that start flows from producer events (``engram.session.closed`` starts
``consolidate``, ``engram.backlog.high`` starts ``scale``) live with their deployments in ``prefect.yaml``.

An automation is found by name; the declaration's fingerprint, kept in its description, tells whether the applied
automation is the declared one, so applying twice changes nothing. A declaration whose deployment is not registered
yet is reported as ``pending`` (run ``provision`` again after ``prefect deploy --all``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from engram.service import fingerprint


@dataclass(frozen=True)
class AutomationSpec:
    """One automation: when ``expect`` is seen (on resources matching ``match``), act on ``deployment``.

    Attributes:
        name: the automation's unique name.
        description: what it is for, in a sentence.
        expect: the event name it reacts to.
        action: ``run`` starts a run of the deployment, ``pause`` pauses it.
        deployment: ``flow/deployment``.
        match: resource labels the event must carry (globs allowed).
        within_seconds: the window over which ``threshold`` events are counted.
        threshold: how many events within the window fire it.
        parameters: parameters of the started run (``run`` only).
    """

    name: str
    description: str
    expect: str
    action: Literal["run", "pause"]
    deployment: str
    match: dict[str, str] = field(default_factory=lambda: {"prefect.resource.id": "engram.*"})
    within_seconds: int = 0
    threshold: int = 1
    parameters: dict[str, Any] = field(default_factory=dict)


AUTOMATIONS: tuple[AutomationSpec, ...] = (
    AutomationSpec(
        name="engram-lag-scales-out",
        description="An episode has waited too long for consolidation: let scale add shard workers.",
        expect="engram.alert.lag",
        action="run",
        deployment="scale/scale",
    ),
    AutomationSpec(
        name="engram-database-down-pauses-ingest",
        description="The store does not answer: pause ingest until an operator resumes it.",
        expect="engram.alert.unhealthy",
        action="pause",
        deployment="ingest/ingest",
        match={"prefect.resource.id": "engram.check.database"},
    ),
    AutomationSpec(
        name="engram-quarantine-surge-pauses-ingest",
        description="Rejected input grows faster than the limit twice within an hour: stop routing until checked.",
        expect="engram.alert.quarantine",
        action="pause",
        deployment="ingest/ingest",
        within_seconds=3600,
        threshold=2,
    ),
)


def build_automation(spec: AutomationSpec, deployment_id: Any) -> Any:
    """The Prefect automation for a declaration, acting on the deployment with ``deployment_id``."""
    from datetime import timedelta

    from prefect.automations import AutomationCore
    from prefect.events.actions import PauseDeployment, RunDeployment
    from prefect.events.schemas.automations import EventTrigger, Posture

    action = (
        RunDeployment(source="selected", deployment_id=deployment_id, parameters=spec.parameters or None)
        if spec.action == "run"
        else PauseDeployment(source="selected", deployment_id=deployment_id)
    )
    return AutomationCore(
        name=spec.name,
        description=f"{spec.description} [declared {fingerprint(asdict(spec))}]",
        trigger=EventTrigger(
            expect={spec.expect},
            match=spec.match,
            posture=Posture.Reactive,
            threshold=spec.threshold,
            within=timedelta(seconds=spec.within_seconds),
        ),
        actions=[action],
        tags=["engram"],
    )


def apply_all(specs: tuple[AutomationSpec, ...] = AUTOMATIONS) -> dict[str, str]:
    """Create each declared automation that is missing, replace one that differs; returns each one's status."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    out: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        for spec in specs:
            key = f"automation.{spec.name}"
            try:
                deployment = client.read_deployment_by_name(spec.deployment)
            except ObjectNotFound:
                out[key] = f"pending: deployment {spec.deployment} not registered"
                continue
            wanted = build_automation(spec, deployment.id)
            existing = client.read_automations_by_name(spec.name)
            if len(existing) == 1 and existing[0].description == wanted.description:
                same_target = all(getattr(a, "deployment_id", None) == deployment.id for a in existing[0].actions)
                if same_target:
                    out[key] = "unchanged"
                    continue
            for old in existing:
                client.delete_automation(old.id)
            client.create_automation(wanted)
            out[key] = "updated" if existing else "created"
    return out
