"""The monolith: every engram deployment served by this one process, each on its schedule (``make serve``)."""

from __future__ import annotations

from prefect import serve

from flows.registry import FLOWS, load_flow


def declared_triggers() -> dict[str, list]:
    """The event triggers ``prefect.yaml`` declares, by deployment name, so the monolith reacts to events too."""
    from pathlib import Path

    import yaml
    from prefect.events import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    adapter: TypeAdapter = TypeAdapter(DeploymentTriggerTypes)
    declared = yaml.safe_load((Path(__file__).resolve().parents[1] / "prefect.yaml").read_text())["deployments"]
    return {d["name"]: [adapter.validate_python(t) for t in d.get("triggers") or []] for d in declared}


def build_deployments() -> list:
    """One runner deployment per registered flow, with its interval or cron schedule and its event triggers."""
    triggers = declared_triggers()
    return [
        load_flow(spec.entrypoint).to_deployment(
            name=spec.name,
            interval=spec.interval_seconds,
            cron=spec.cron,
            parameters=spec.parameters,
            description=spec.description,
            tags=["engram", spec.work_pool],
            triggers=triggers.get(spec.name) or None,
        )
        for spec in FLOWS
    ]


if __name__ == "__main__":
    serve(*build_deployments())
