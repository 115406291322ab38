"""Run summaries and validation results as Prefect artifacts."""

from __future__ import annotations

import json
import re
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")


@task(cache_policy=NO_CACHE)
def publish_run_summary(flow: str, counts: dict[str, Any], seconds: float) -> dict[str, Any]:
    """One markdown artifact per flow run: rows in, rows out, quarantined, merged, superseded, duration."""
    lines = [f"# {flow}", "", "| measure | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in counts.items()]
    lines.append(f"| duration_s | {seconds:.3f} |")
    create_markdown_artifact(
        markdown="\n".join(lines), key=_key(f"engram-{flow}-summary"), description=f"engram {flow} run summary"
    )
    return {**counts, "duration_s": round(seconds, 3)}


@task(cache_policy=NO_CACHE)
def publish_validation(suite: str, results: list[dict[str, Any]]) -> None:
    """The quality gate's results for every batch of the run, as a table artifact."""
    rows = []
    for i, result in enumerate(results):
        for exp in result.get("expectations", []):
            rows.append(
                {
                    "batch": i,
                    "expectation": exp.get("expectation"),
                    "column": exp.get("column") or "",
                    "success": exp.get("success"),
                    "unexpected": exp.get("unexpected_count", 0),
                }
            )
    if not rows:
        rows = [{"batch": "-", "expectation": "(no batches)", "column": "", "success": True, "unexpected": 0}]
    create_table_artifact(table=rows, key=_key(f"engram-{suite}-validation"), description=f"quality gate {suite}")


def publish_gate_failure(suite: str, result: dict[str, Any]) -> None:
    """The full validation result of a batch that failed the gate, so the failed run shows why."""
    create_markdown_artifact(
        markdown=f"# quality gate {suite} failed\n\n```json\n{json.dumps(result, indent=2, default=str)[:50_000]}\n```",
        key=_key(f"engram-{suite}-failure"),
        description=f"quality gate {suite} failure",
    )
