"""Shard workers: consolidation throughput of one worker next to N workers on the same backlog, on PostgreSQL.

Each round gets its own copy of the same backlog (a PostgreSQL schema per round: the same tenants, sessions and
turns, ingested and closed), then runs the ``consolidate_shards`` flow in 1 and then N processes at once against one
Prefect server. Throughput is episodes over the window from the first shard claimed to the last released, by the
runs' own clocks (process start-up and imports, which N workers also do at once, are not consolidation work).
The one-worker round is the reference, measured in the same run on the same machine and database.

    python bench/scale.py                      # 2 workers, 192 tenants x 16 sessions of 16 turns
    python bench/scale.py --workers 2 --tenants 48 --sessions 16

Writes ``bench/results/scale.json``; ``bench/report.py`` puts it in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"
PG_URL = os.environ.get("ENGRAM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
SHARDS = 16
POOL = "engram-semantic"


def backlog_rows(tenants: int, sessions: int, turns: int, seed: int) -> list[dict[str, Any]]:
    """Conversations with a few facts each, the same for every round (seeded)."""
    import random

    rng = random.Random(seed)
    cities = ["Lisbon", "Paris", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Oslo", "Dublin", "Warsaw"]
    pets = ["Rex", "Milo", "Luna", "Bella", "Max", "Nala"]
    jobs = ["nurse", "teacher", "pilot", "baker", "engineer", "lawyer"]
    rows = []
    for t in range(tenants):
        tenant = f"tenant-{t:03d}"
        for s in range(sessions):
            start = T0 + timedelta(days=s, minutes=t)
            for k in range(turns):
                user = k % 2 == 0
                if user:
                    text = rng.choice(
                        [
                            f"I live in {rng.choice(cities)} since last spring and I love the old town there.",
                            f"My dog is called {rng.choice(pets)} and she is three years old.",
                            f"I work as a {rng.choice(jobs)} at the hospital near the river on weekdays.",
                            f"Next week I fly to {rng.choice(cities)} to see my sister and her two kids.",
                            "Can you remind me what we said about the budget for the kitchen renovation?",
                        ]
                    )
                else:
                    text = rng.choice(
                        [
                            "Noted. I will keep that in mind for the next time we plan something together.",
                            "That sounds lovely. Do you want me to add it to your calendar for the week?",
                            "We said the kitchen budget is twelve thousand euros, with the floor done first.",
                        ]
                    )
                rows.append(
                    {
                        "tenant": tenant,
                        "session": f"s{s:03d}",
                        "actor": "user" if user else "assistant",
                        "text": text,
                        "at": start + timedelta(minutes=2 * k),
                        "event_id": f"{tenant}-s{s:03d}-{k:03d}",
                    }
                )
    return rows


def prepare(url: str, rows: list[dict[str, Any]], as_of: datetime) -> int:
    """Ingest and close every session; returns the episodes waiting for consolidation."""
    from engram import Memory
    from flows.ingest import ingest
    from flows.sessions import close_sessions

    with Memory(url) as memory:
        memory.observe_many(rows)
    ingest(store_url=url, as_of=as_of, batch_size=20_000)
    close_sessions(store_url=url, as_of=as_of)
    with Memory(url) as memory:
        return sum(n for n, _ in memory.store.consolidation_backlog(as_of).values())


def set_limit(workers: int) -> None:
    """The consolidation concurrency limit, as ``scale`` would set it for this many workers."""
    from tasks.service import apply_parallelism

    apply_parallelism.fn(POOL, workers)


def run_workers(
    url: str, workers: int, as_of: datetime, batch_size: int, home: Path, api_url: str
) -> tuple[list[dict], dict[str, float]]:
    """``workers`` processes, each one run of the ``consolidate_shards`` flow; their run summaries, and the CPU
    seconds the machine, the Prefect server and PostgreSQL used from the go to the last worker's exit.

    Each process imports Prefect and builds its quality gates, says it is ready, and waits for the others: the runs
    start together, as long-lived workers would, and start-up skew does not count against parallelism.
    """
    env = dict(os.environ, PREFECT_API_URL=api_url, PREFECT_HOME=str(home), PYTHONPATH=str(ROOT))
    env["ENGRAM_EMBEDDINGS"] = "false"
    go = home / f"go-{uuid.uuid4().hex[:6]}"
    outs = [home / f"worker-{uuid.uuid4().hex[:6]}.json" for _ in range(workers)]
    procs = []
    for out in outs:
        args = [sys.executable, __file__, "--child", "--store-url", url, "--as-of", as_of.isoformat()]
        args += ["--batch-size", str(batch_size), "--out", str(out), "--go", str(go)]
        log = (home / f"{out.stem}.log").open("w")
        procs.append((subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT), log, out))
    deadline = time.monotonic() + 300
    while not all(out.with_suffix(".ready").exists() for out in outs):
        if time.monotonic() > deadline or any(p.poll() is not None for p, _, _ in procs):
            break
        time.sleep(0.05)
    pids = [p.pid for p, _, _ in procs]
    start = cpu_seconds(pids)
    go.touch()
    results = []
    for proc, log, out in procs:
        code = proc.wait(timeout=1800)
        log.close()
        if code != 0:
            raise SystemExit(f"shard worker failed ({code}):\n{Path(log.name).read_text()[-4000:]}")
        results.append(json.loads(out.read_text()))
    end = cpu_seconds(pids)
    return results, {k: round(end[k] - start[k], 2) for k in start}


def child(url: str, as_of: str, batch_size: int, out: Path, go: Path) -> None:
    from engram.quality import prepare_gates
    from flows.scale import consolidate_shards

    prepare_gates()
    out.with_suffix(".ready").touch()
    while not go.exists():
        time.sleep(0.01)
    before = resource.getrusage(resource.RUSAGE_SELF)
    profile = os.environ.get("ENGRAM_BENCH_PROFILE")  # a path: where a pyinstrument text profile of the run goes
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.005)
        profiler.start()
    summary = consolidate_shards(
        store_url=url, as_of=datetime.fromisoformat(as_of), batch_size=batch_size, pool=POOL, shard_count=SHARDS
    )
    if profile:
        profiler.stop()
        Path(profile).write_text(profiler.output_text(unicode=False, show_all=False))
    after = resource.getrusage(resource.RUSAGE_SELF)
    summary["run_cpu_s"] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2)
    out.write_text(json.dumps(summary, default=str))


def cpu_seconds(workers: list[int]) -> dict[str, float]:
    """CPU seconds used so far by the whole machine (every core, anything but idle) and by this process's children
    other than the workers (the Prefect server the harness started)."""
    import psutil

    t = psutil.cpu_times()
    out = {"machine": sum(t) - t.idle - getattr(t, "iowait", 0.0), "prefect_server": 0.0}
    for proc in psutil.Process().children(recursive=True):
        if proc.pid not in workers:
            try:
                c = proc.cpu_times()
                out["prefect_server"] += c.user + c.system
            except psutil.Error:
                pass
    return out


def min_start(results: list[dict]) -> float:
    return min(float(r["work_started"]) for r in results)


def window(results: list[dict]) -> float:
    return max(float(r["work_ended"]) for r in results) - min_start(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tenants", type=int, default=192)
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--turns", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=200, help="episodes a worker claims at once")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    parser.add_argument("--logs", type=Path, help="keep the workers' logs in this folder")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--store-url", help=argparse.SUPPRESS)
    parser.add_argument("--as-of", help=argparse.SUPPRESS)
    parser.add_argument("--go", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.store_url, args.as_of, args.batch_size, args.out, args.go)
        return 0

    from bench.perf import machine, prefect_server
    from engram.testing import create_pg_schema, drop_pg_schema

    rows = backlog_rows(args.tenants, args.sessions, args.turns, args.seed)
    as_of = T0 + timedelta(days=args.sessions + 2)
    rounds: list[dict[str, Any]] = []
    schemas: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="engram-scale-") as home, prefect_server() as api_url:
            for workers in (1, args.workers):
                schema, url = create_pg_schema(PG_URL, "engram_scale")
                schemas.append(schema)
                episodes = prepare(url, rows, as_of)
                set_limit(workers)
                logs = args.logs or Path(home)
                logs.mkdir(parents=True, exist_ok=True)
                results, cpu = run_workers(url, workers, as_of, args.batch_size, logs, api_url)
                seconds = window(results)
                done = sum(int(r.get("episodes", 0)) for r in results)
                if done != episodes:
                    raise SystemExit(f"{workers} workers consolidated {done} of {episodes} episodes")
                shards = [sorted(r["shards"]) for r in results]
                if len({s for ss in shards for s in ss}) != sum(len(ss) for ss in shards):
                    raise SystemExit(f"a shard was taken twice: {shards}")
                rounds.append(
                    {
                        "workers": workers,
                        "episodes": episodes,
                        "window_s": round(seconds, 2),
                        "episodes_per_s": round(episodes / seconds, 2),
                        "shards_per_worker": [len(s) for s in shards],
                        "worker_run_cpu_s": [r["run_cpu_s"] for r in results],
                        "cpu_s": cpu,
                        "worker_windows_s": [
                            [round(float(r[k]) - min_start(results), 2) for k in ("work_started", "work_ended")]
                            for r in results
                        ],
                    }
                )
                print(json.dumps(rounds[-1]), flush=True)
    finally:
        for schema in schemas:
            drop_pg_schema(PG_URL, schema)
    one, many = rounds
    result = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**machine(), "store": "PostgreSQL on the same machine (a schema per round)"},
        "settings": {k: getattr(args, k) for k in ("workers", "tenants", "sessions", "turns", "batch_size", "seed")},
        "rounds": rounds,
        "speedup": round(many["episodes_per_s"] / one["episodes_per_s"], 2),
        "load_average_after": os.getloadavg()[0],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"speedup with {args.workers} workers: {result['speedup']}x; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
