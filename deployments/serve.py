"""The monolith: every engram deployment served by this one process, each on its schedule (``make serve``)."""

from __future__ import annotations

from prefect import serve

from flows.registry import FLOWS, load_flow


def build_deployments() -> list:
    """One runner deployment per registered flow, with its interval schedule."""
    return [
        load_flow(spec.entrypoint).to_deployment(
            name=spec.name,
            interval=spec.interval_seconds,
            parameters=spec.parameters,
            description=spec.description,
            tags=["engram", spec.work_pool],
        )
        for spec in FLOWS
    ]


if __name__ == "__main__":
    serve(*build_deployments())
