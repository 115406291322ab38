"""Every flow engram runs and how it is deployed: the one list ``prefect.yaml`` and ``deployments/serve.py`` follow.

``tests/flows/test_registry.py`` loads every entrypoint named in ``prefect.yaml`` and checks it against this list, so
a renamed function breaks a test, not a schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FlowSpec:
    """A flow and its deployment.

    Attributes:
        name: the flow's (and deployment's) name.
        entrypoint: ``path/to/file.py:function``, relative to the repository root.
        work_pool: the process work pool its layer runs on in the microservices profile.
        interval_seconds: how often it runs on its own; None for flows started by hand or by an event.
        parameters: the deployment's default parameters.
    """

    name: str
    entrypoint: str
    work_pool: str
    interval_seconds: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    cron: str | None = None  # a cron schedule, for flows that run at fixed times rather than every N seconds


FLOWS: tuple[FlowSpec, ...] = (
    FlowSpec("ingest", "flows/ingest.py:ingest", "engram-sensory", 60, description="sensory -> working"),
    FlowSpec(
        "close_sessions", "flows/sessions.py:close_sessions", "engram-working", 300, description="working -> episodic"
    ),
    FlowSpec(
        "expire_working",
        "flows/sessions.py:expire_working",
        "engram-working",
        900,
        description="working -> discarded after TTL",
    ),
    FlowSpec(
        "consolidate", "flows/consolidate.py:consolidate", "engram-semantic", 900, description="episodic -> semantic"
    ),
    FlowSpec("lifecycle", "flows/lifecycle.py:lifecycle", "engram-lifecycle", 3600, description="every move, in order"),
    FlowSpec(
        "archive", "flows/archive.py:archive", "engram-archival", 86400, description="semantic, episodic -> archival"
    ),
    FlowSpec("rehydrate", "flows/archive.py:rehydrate", "engram-archival", description="archival -> semantic"),
    FlowSpec(
        "compact_archive",
        "flows/archive.py:compact_archive",
        "engram-archival",
        604800,
        description="merge each tenant's small archive manifests",
    ),
    FlowSpec("forget", "flows/forget.py:forget", "engram-service", description="remove a subject everywhere"),
    # The service lifecycle: provisioning, monitoring, scaling, decommissioning.
    FlowSpec("provision", "flows/provision.py:provision", "engram-service", description="create what engram needs"),
    FlowSpec(
        "monitor",
        "flows/monitor.py:monitor",
        "engram-service",
        cron="*/5 * * * *",
        description="health, metrics, alerts",
    ),
    FlowSpec("scale", "flows/scale.py:scale", "engram-service", 600, description="size the consolidation workers"),
    FlowSpec(
        "consolidate_shards",
        "flows/scale.py:consolidate_shards",
        "engram-semantic",
        description="one shard worker of a scaled-out consolidation",
    ),
    FlowSpec(
        "decommission",
        "flows/decommission.py:decommission",
        "engram-service",
        description="drain and retire a tenant or the service",
    ),
)


def load_flow(entrypoint: str) -> Any:
    """The flow object an entrypoint names, loaded the way Prefect loads it."""
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(entrypoint)


def by_name(name: str) -> FlowSpec:
    for spec in FLOWS:
        if spec.name == name:
            return spec
    raise KeyError(name)
