"""What a lifecycle run costs in Prefect alone: wall seconds of the ``lifecycle`` flow over a store with nothing to
move, so that every second of it is orchestration (creating the flow and task runs, state changes, heartbeats),
next to the same four subflows under a parent flow that lets each keep its own heartbeat (Prefect's default).

Both run against one temporary Prefect server (Prefect's test harness), or with ``--on-current-server`` against the
one ``PREFECT_API_URL`` names, in one process, alternating, each ``--repeats`` times after one warm-up run of each;
the figures are medians. Heartbeats are on (Prefect's default frequency) for both parents.

    python bench/flow_overhead.py [--repeats N] [--on-current-server] [--out bench/results/flow_overhead.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def subflows_with_own_heartbeats() -> Any:
    """A parent flow running the lifecycle's steps outside ``flows.subflows.heartbeat_of_parent``: each subflow run
    sends its own heartbeat."""
    from prefect import flow

    from flows.lifecycle import lifecycle_steps

    @flow(name="lifecycle_subflow_heartbeats")
    def parent(store_url: str, as_of: datetime) -> dict[str, dict]:
        return lifecycle_steps({"store_url": store_url, "as_of": as_of})

    return parent


def measure(repeats: int, on_current_server: bool = False) -> dict[str, Any]:
    """Medians of ``repeats`` runs of each parent, on a temporary Prefect server or on the current one."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("ENGRAM_EMBEDDINGS", "false")
    import great_expectations  # noqa: F401 - imported once before timing, as in a worker that has run a flow
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from engram import Memory
    from flows.lifecycle import lifecycle

    runs = {"lifecycle": lifecycle, "subflows_with_own_heartbeats": subflows_with_own_heartbeats()}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    if on_current_server and not PREFECT_API_URL.value():
        raise SystemExit("--on-current-server: PREFECT_API_URL names no Prefect server")
    with (
        tempfile.TemporaryDirectory(prefix="engram-flow-overhead-") as tmp,
        contextlib.nullcontext() if on_current_server else prefect_test_harness(server_startup_timeout=180),
        temporary_settings(restore_defaults={PREFECT_FLOWS_HEARTBEAT_FREQUENCY}),  # Prefect's default, whatever is set
    ):
        heartbeat_s = PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value()
        memory = Memory(f"sqlite:///{Path(tmp) / 'engram.db'}", Path(tmp).as_uri())
        as_of = datetime(2026, 1, 1, tzinfo=UTC)
        for fn in runs.values():  # warm-up: the first flow run of a process opens its clients
            fn(store_url=memory.store_url, as_of=as_of)
        for i in range(repeats):
            order = list(runs) if i % 2 == 0 else list(reversed(runs))
            for name in order:
                started = time.perf_counter()
                runs[name](store_url=memory.store_url, as_of=as_of)
                seconds[name].append(time.perf_counter() - started)
        memory.close()
    medians = {name: round(statistics.median(v), 3) for name, v in seconds.items()}
    return {
        "prefect_server": "current" if on_current_server else "test harness",
        "heartbeat_frequency_s": heartbeat_s,
        "repeats": repeats,
        "median_s": medians,
        "runs_s": {name: [round(x, 3) for x in v] for name, v in seconds.items()},
        "saved_per_run_s": round(medians["subflows_with_own_heartbeats"] - medians["lifecycle"], 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the lifecycle's orchestration alone, with and without heartbeats")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "flow_overhead.json")
    parser.add_argument(
        "--on-current-server", action="store_true", help="use the Prefect server PREFECT_API_URL names, not a new one"
    )
    parser.add_argument("--note", action="append", default=[], help="a note on the run's conditions, kept with it")
    args = parser.parse_args(argv)
    from bench.perf import machine, versions

    result = {
        "machine": machine(),
        "versions": versions(),
        **measure(args.repeats, args.on_current_server),
        "notes": args.note,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["median_s"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
