"""engram's performance benchmark: every figure measured in the same run as its reference, on the same storage.

    python bench/perf.py --quick        # about 3-4 minutes on two cores; writes bench/results/quick.json
    python bench/perf.py --full         # every size that fits; writes bench/results/full.json and full.png
    python bench/perf.py --sizes 100000 2000000   # chosen sizes, no time budget; bench/results/large.json

What is measured (each size runs in a child process of its own, so its peak RSS is its own):
- pipeline: the synthetic workload (``bench/workload.py``) streamed through ``Memory.observe_many`` in batches, then
  one lifecycle flow run (ingest, close_sessions, expire_working, consolidate) with ``as_of`` after the last event,
  so every event ends up in an episode and its facts in the semantic layer. Events/s counts the time spent inside
  ``observe_many`` and the lifecycle run (generating the workload is not counted).
- raw bulk insert, the reference: the same rows, shaped as ``events`` rows, inserted batch by batch with a
  SQLAlchemy Core executemany into a plain table with the columns and primary key of ``events``, in the same
  database file.
- per flow: rows and seconds of each subflow, from the run summaries the flows return.
- orchestration overhead: every task's function is timed from inside the task run; engram's own work is the sum of
  those times (the artifact-publishing tasks count as orchestration), and the rest of the lifecycle's wall time is
  Prefect's: starting flow and task runs, state changes, API calls, logging.
- archival: the archive flow's rows/s when ``flows/archive.py`` exists; its reference is pyarrow writing the same
  rows as Parquet to the same folder and reading them back.
- hot search: p50/p95/p99 latency of ``Memory.search`` over one tenant whose items were written with
  ``observe_many`` into the sensory layer (the index then holds every event); the first search, which builds the
  index, is timed on its own.
- archival search: ``bench/cold_search.py`` builds an archive of that many items over many tenants with engram's own
  archive step and times ``Memory.search`` over the archival layer, each tenant's first search in a fresh process
  (which loads the tenant's archive) apart from later ones.
- rows stored per event: every table's row count after the lifecycle, over the events. Storing them at the raw
  insert rate alone would take ``stored / raw rate`` seconds, which bounds the lifecycle's ratio to the raw insert
  (``write_bound_ratio``): the audit trail (a transition row per item per move), lineage and the layers' own rows
  are what the design writes for each event.
- peak RSS: the peak of each phase of a child (observe_many, lifecycle, archive, then the two references), sampled
  every 20 ms; ``peak_rss_mb`` is the largest peak of engram's own phases, ``ru_maxrss`` of the whole child is
  recorded beside it.
- a pyinstrument profile of one pipeline run (observe_many, the lifecycle flow and the archive flow), as text and
  HTML.

Prefect runs against a temporary Prefect server started once by the parent; its startup is not timed. With
``--prefect-database postgresql://...`` (what ``make bench-quick`` and the other make targets pass) it is a Prefect
server on a fresh database of that PostgreSQL server, as a fleet runs it (``infra/docker-compose.yml``); with
``--prefect-database sqlite`` (the default) it is Prefect's test harness, a server on a fresh SQLite file, as
``make up`` runs it on a laptop. A SQLite-backed Prefect server answers 503 when two of its writes collide (its
background services record task runs and events while the flows create runs), and Prefect's client waits about two
seconds before it retries; the pipeline counts those retries (``prefect_api_retries``).

Embeddings are off (``ENGRAM_EMBEDDINGS=false``) unless ``--embeddings`` is given: the CPU embedder alone
would bound consolidation at about 200 facts a second.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import logging
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.workload import Workload, event_rows  # noqa: E402

# The quick run measures its headline figures at 10^5 events, where the fixed cost of a run (imports, the first
# flow run's client and settings) no longer dominates; its profile is of the smaller size.
QUICK = {
    "pipeline_sizes": [10_000, 100_000],
    "search_items": 100_000,
    "queries": 300,
    "cold_items": 100_000,
    "cold_tenants": 20,
}
FULL = {
    "pipeline_sizes": [10_000, 30_000, 100_000, 300_000, 1_000_000, 10_000_000],
    "search_items": 1_000_000,
    "queries": 1_000,
    # Building 10^7 archived items takes longer than this run's budget: ``bench/cold_search.py --items 10000000``
    # measures that size on its own (``make bench-cold``).
    "cold_items": 1_000_000,
    "cold_tenants": 100,
}
# Time kept for the profile run and the search run after the sizes.
FULL_RESERVE_S = 20 * 60
FULL_BUDGET_S = 60 * 60
REPORTING_TASKS = {"publish_run_summary", "publish_validation"}


# -- measuring helpers -------------------------------------------------------------------------------------------


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2``."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in [
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        ]
    ]


@functools.cache
def _mallinfo2() -> Any:
    """glibc's ``mallinfo2``, loaded once; None off glibc (or before 2.33)."""
    from tasks.common import glibc

    fn = getattr(glibc(), "mallinfo2", None)
    if fn is not None:
        fn.restype = _MallInfo2
    return fn


def heap_mb() -> dict[str, float]:
    """What the memory is made of, to tell live data from freed memory that an allocator keeps: Python's objects
    (pymalloc blocks in use, a count), glibc malloc's bytes in use and free-but-held (native buffers: SQLite, pandas
    and numpy), and pyarrow's own pool."""
    out: dict[str, float] = {"python_blocks": float(sys.getallocatedblocks())}
    mallinfo2 = _mallinfo2()
    if mallinfo2 is not None:
        info = mallinfo2()
        out["malloc_in_use_mb"] = round((info.uordblks + info.hblkhd) / 2**20, 1)
        out["malloc_free_held_mb"] = round(info.fordblks / 2**20, 1)
    # The sampler thread can look while another thread is still importing pyarrow: the module is then in
    # sys.modules without its functions yet.
    arrow_total = getattr(sys.modules.get("pyarrow"), "total_allocated_bytes", None)
    if arrow_total is not None:
        out["arrow_pool_mb"] = round(arrow_total() / 2**20, 1)
    return out


class RssSampler:
    """The peak RSS of each phase of a run, sampled every 20 ms on a thread (``ru_maxrss`` only knows the process's
    peak so far, so the references that run after engram's phases would hide engram's own peak), and what the
    memory was made of at that peak (``heap_mb``). A sampler thread that died would leave only the samples taken at
    phase changes: ``stop`` raises then, rather than report them as peaks."""

    def __init__(self, first: str = "observe_many") -> None:
        import threading

        self.peaks: dict[str, float] = {first: rss_mb()}
        self.heap_at_peak: dict[str, dict[str, float]] = {first: heap_mb()}
        self._current = first
        self._failure: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.02):
                self._sample()
        except Exception as exc:  # reported by stop()
            self._failure = exc

    def _sample(self) -> None:
        now, name = rss_mb(), self._current
        if now > self.peaks.get(name, 0.0):
            self.peaks[name] = now
            self.heap_at_peak[name] = heap_mb()

    def phase(self, name: str) -> None:
        self._sample()
        self._current = name
        self._sample()

    def stop(self) -> dict[str, float]:
        self._sample()
        self._stop.set()
        self._thread.join()
        if self._failure is not None:
            raise RuntimeError(f"the RSS sampler stopped early, its peaks are not peaks: {self._failure!r}")
        return {k: round(v, 1) for k, v in self.peaks.items()}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class TaskClock:
    """Times every task's function from inside its task run: what engram itself does, without Prefect around it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._patched: list[tuple[Any, Any]] = []

    def install(self) -> None:
        from prefect import Task

        import tasks.consolidation
        import tasks.ingest
        import tasks.reporting
        import tasks.sessions

        for module in (tasks.ingest, tasks.sessions, tasks.consolidation, tasks.reporting):
            for name, obj in vars(module).items():
                if isinstance(obj, Task) and not any(obj is t for t, _ in self._patched):
                    self._patched.append((obj, obj.fn))
                    obj.fn = self._timed(name, obj.fn)

    def uninstall(self) -> None:
        for task, fn in self._patched:
            task.fn = fn
        self._patched = []

    def _timed(self, name: str, fn: Any) -> Any:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
                self.calls[name] = self.calls.get(name, 0) + 1

        return timed

    @property
    def engram_seconds(self) -> float:
        return sum(s for n, s in self.seconds.items() if n not in REPORTING_TASKS)


class ApiRetryCounter(logging.Filter):
    """Counts the API requests Prefect's client retries (its debug record "... retryable status code 503 ...") while
    installed, by status code; those debug records stay out of the log."""

    LOGGER = "prefect.client"

    def __init__(self) -> None:
        super().__init__()
        self.codes: dict[str, int] = {}
        self._level: int | None = None
        self._shown_from = logging.INFO

    def install(self) -> None:
        import prefect  # noqa: F401 - Prefect configures its loggers on import; the level set below must come after

        logger = logging.getLogger(self.LOGGER)
        self._level, self._shown_from = logger.level, logger.getEffectiveLevel()
        logger.setLevel(logging.DEBUG)
        logger.addFilter(self)

    def uninstall(self) -> None:
        logger = logging.getLogger(self.LOGGER)
        logger.removeFilter(self)
        if self._level is not None:
            logger.setLevel(self._level)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "retryable" in message:
            code = re.search(r"status code (\d{3})", message)
            key = code.group(1) if code else "exception"
            self.codes[key] = self.codes.get(key, 0) + 1
        return record.levelno >= self._shown_from

    @property
    def count(self) -> int:
        return sum(self.codes.values())


# -- child jobs: each runs in a process of its own --------------------------------------------------------------


def raw_bulk_insert(url: str, workload: Workload) -> float:
    """Seconds to executemany the workload's rows, batch by batch, into a plain events-shaped table."""
    from sqlalchemy import create_engine, func, insert, select

    from bench.bulk_ingest import plain_events_table

    engine = create_engine(url)
    table = plain_events_table(f"bench_plain_{uuid.uuid4().hex[:8]}")
    table.create(engine)
    now = datetime.now(UTC)
    elapsed = 0.0
    try:
        for batch in workload.batches():
            rows = event_rows(batch, now)
            started = time.perf_counter()
            with engine.begin() as conn:
                conn.execute(insert(table), rows)
            elapsed += time.perf_counter() - started
        with engine.connect() as conn:
            count = conn.execute(select(func.count()).select_from(table)).scalar_one()
        if count != workload.events:
            raise SystemExit(f"executemany stored {count} of {workload.events} rows")
        return elapsed
    finally:
        table.drop(engine)
        engine.dispose()


def raw_parquet(folder: Path, workload: Workload) -> dict[str, float]:
    """Seconds for pyarrow to write the workload's rows as Parquet into ``folder`` and to read them back."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / "bench-raw.parquet"
    now = datetime.now(UTC)
    write_s = 0.0
    writer = None
    try:
        for batch in workload.batches():
            rows = event_rows(batch, now)
            for r in rows:
                r["metadata"] = json.dumps(r["metadata"])
            started = time.perf_counter()
            table = pa.Table.from_pylist(rows)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="zstd")
            writer.write_table(table)
            write_s += time.perf_counter() - started
    finally:
        if writer is not None:
            started = time.perf_counter()
            writer.close()
            write_s += time.perf_counter() - started
    started = time.perf_counter()
    read = 0
    source = pq.ParquetFile(path)
    for rb in source.iter_batches(batch_size=workload.batch_size):
        read += rb.num_rows
    read_s = time.perf_counter() - started
    if read != workload.events:
        raise SystemExit(f"Parquet read back {read} of {workload.events} rows")
    path.unlink()
    return {"write_s": write_s, "read_s": read_s}


def run_archive_flow(memory: Any, as_of: datetime) -> dict[str, Any] | None:
    """The archive flow's summary and seconds, when ``flows/archive.py`` exists; else None."""
    if not (ROOT / "flows" / "archive.py").exists():
        return None
    import importlib
    import inspect

    module = importlib.import_module("flows.archive")
    flow_obj = getattr(module, "archive", None)
    if flow_obj is None:
        return {"error": "flows/archive.py has no flow named archive"}
    wanted = set(inspect.signature(flow_obj.fn).parameters)
    kwargs = {"store_url": memory.store_url, "archive_url": memory.archive_url, "as_of": as_of}
    started = time.perf_counter()
    try:
        summary = flow_obj(**{k: v for k, v in kwargs.items() if k in wanted})
    except Exception as exc:  # an archive still being written must not sink the other figures
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}
    return {"seconds": time.perf_counter() - started, "summary": summary}


def archived_rows(summary: Any) -> int:
    """Rows the archive flow moved, from its summary (whichever count it names)."""
    if not isinstance(summary, dict):
        return 0
    for key in ("rows_verified", "rows_archived", "archived", "rows_out", "rows"):
        if isinstance(summary.get(key), int):
            return summary[key]
    return sum(v for k, v in summary.items() if isinstance(v, int) and "archiv" in k)


def archive_rows_per_s(archive: dict[str, Any] | None) -> int | None:
    """Rows/s of a recorded archive run: rows it verified in the archive over the flow's wall time."""
    if not isinstance(archive, dict) or not archive.get("seconds"):
        return None
    rows = archived_rows(archive.get("summary"))
    return round(rows / archive["seconds"]) if rows else None


def job_pipeline(
    events: int, tenants: int, seed: int, batch_size: int, profile_dir: Path | None, progress: Path | None = None
) -> dict[str, Any]:
    """One size: observe_many + lifecycle, then the raw references on the same storage. With ``progress``, what is
    measured so far is written there after each phase, so that a long size stopped midway still leaves its figures."""
    from engram import Memory

    phases: dict[str, float] = {"start": rss_mb()}
    sampler = RssSampler()
    so_far: dict[str, Any] = {"events": events}

    def checkpoint(phase: str, **figures: Any) -> None:
        if progress is None:
            return
        so_far.update(figures, phase_done=phase, rss_mb_by_phase=dict(phases), peak_rss_mb_by_phase=dict(sampler.peaks))
        so_far["at"] = datetime.now(UTC).isoformat(timespec="seconds")
        progress.write_text(json.dumps(so_far, indent=2, default=str) + "\n")

    workload = Workload(events, tenants=tenants, seed=seed, batch_size=batch_size)
    with tempfile.TemporaryDirectory(prefix="engram-perf-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'engram.db'}"
        archive = Path(tmp) / "archive"
        archive.mkdir()
        memory = Memory(url, archive.as_uri())
        profiler = None
        if profile_dir is not None:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.01)
        last_at = None
        observe_s = 0.0
        accepted = 0
        if profiler:
            profiler.start()
        for batch in workload.batches():
            started = time.perf_counter()
            report = memory.observe_many(batch)
            observe_s += time.perf_counter() - started
            accepted += report.accepted
            last_at = batch[-1]["at"] if last_at is None else max(last_at, batch[-1]["at"])
        if profiler:
            profiler.stop()
            save_profile(profiler, profile_dir, f"observe_many_{events}")
        phases["after_observe_many"] = rss_mb()
        checkpoint("observe_many", observe_many_s=round(observe_s, 3))
        sampler.phase("lifecycle")
        if accepted != events:
            raise SystemExit(f"observe_many accepted {accepted} of {events}")
        as_of = last_at + timedelta(days=2)
        clock, retries = TaskClock(), ApiRetryCounter()
        clock.install()
        retries.install()
        if profiler:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.01)
            profiler.start()
        started = time.perf_counter()
        summary = memory.run_lifecycle(as_of)
        lifecycle_s = time.perf_counter() - started
        if profiler:
            profiler.stop()
            save_profile(profiler, profile_dir, f"lifecycle_{events}")
        clock.uninstall()
        retries.uninstall()
        phases["after_lifecycle"] = rss_mb()
        checkpoint("lifecycle", lifecycle_s=round(lifecycle_s, 3), flows=summary, task_seconds=dict(clock.seconds))
        live_frames = live_dataframes()
        stats = memory.stats()
        stored = stored_rows(url)
        sampler.phase("archive")
        if profiler:
            profiler = Profiler(interval=0.01)
            profiler.start()
        archive_run = run_archive_flow(memory, as_of + timedelta(days=3650))
        if profiler:
            profiler.stop()
            save_profile(profiler, profile_dir, f"archive_{events}")
        memory.close()
        phases["after_archive"] = rss_mb()
        checkpoint("archive", archive=archive_run)
        sampler.phase("raw_insert")
        raw_s = raw_bulk_insert(url, workload)
        phases["after_raw_insert"] = rss_mb()
        checkpoint("raw_insert", raw_bulk_insert_s=round(raw_s, 3))
        sampler.phase("raw_parquet")
        parquet = raw_parquet(archive, workload)
        phases["after_raw_parquet"] = rss_mb()
        peaks = sampler.stop()
    pipeline_s = observe_s + lifecycle_s
    flows = {}
    for name, s in summary.items():
        secs = s.get("duration_s") or 0.0
        flows[name] = {**s, "events_per_s": round(events / secs) if secs else None}
    engram_s = clock.engram_seconds
    out: dict[str, Any] = {
        "events": events,
        "tenants": tenants,
        "observe_many_s": round(observe_s, 3),
        "observe_many_rows_per_s": round(events / observe_s),
        "lifecycle_s": round(lifecycle_s, 3),
        "pipeline_s": round(pipeline_s, 3),
        "pipeline_events_per_s": round(events / pipeline_s),
        "raw_bulk_insert_s": round(raw_s, 3),
        "raw_bulk_insert_rows_per_s": round(events / raw_s),
        "pipeline_to_raw_ratio": round(raw_s / pipeline_s, 4),
        "flows": flows,
        "layers_after": stats,
        "stored_rows_after": stored,
        "stored_rows_per_event": round(sum(stored.values()) / events, 2),
        # If the lifecycle did nothing but insert the rows it stores, at the raw rate: the most its ratio can be.
        "write_bound_ratio": round(events / sum(stored.values()), 4),
        "task_seconds": {k: round(v, 3) for k, v in sorted(clock.seconds.items())},
        "task_calls": dict(sorted(clock.calls.items())),
        "engram_task_s": round(engram_s, 3),
        "orchestration_overhead_fraction": round(max(0.0, 1 - engram_s / lifecycle_s), 4),
        "prefect_api_retries": retries.count,
        "prefect_api_retries_by_status": dict(sorted(retries.codes.items())),
        "raw_parquet": {
            "write_s": round(parquet["write_s"], 3),
            "read_s": round(parquet["read_s"], 3),
            "rows_per_s": round(events / (parquet["write_s"] + parquet["read_s"])),
        },
        "archive": None,
        "rss_mb_by_phase": {k: round(v, 1) for k, v in phases.items()},
        "peak_rss_mb_by_phase": peaks,
        "heap_at_peak_by_phase": sampler.heap_at_peak,
        # engram's own phases; the references run after them in the same process and are reported apart.
        "peak_rss_mb_engram": max(peaks[k] for k in ("observe_many", "lifecycle", "archive")),
        "live_dataframes_after_lifecycle": live_frames,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if archive_run is not None:
        rows = archived_rows(archive_run.get("summary"))
        out["archive"] = {
            **{k: v for k, v in archive_run.items() if k != "seconds"},
            "seconds": round(archive_run.get("seconds", 0.0), 3),
            "rows": rows,
            "rows_per_s": round(rows / archive_run["seconds"]) if rows and archive_run.get("seconds") else None,
        }
    return out


def stored_rows(url: str) -> dict[str, int]:
    """Rows in each of the store's tables: what the lifecycle wrote and kept (updates and deletes not counted)."""
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            names = [t for t in inspect(conn).get_table_names() if t != "alembic_version"]
            counts = {t: conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one() for t in names}
    finally:
        engine.dispose()
    return {t: n for t, n in sorted(counts.items()) if n}


def live_dataframes() -> dict[str, int]:
    """How many pandas DataFrames (and their rows) are still alive after a collection: what a run keeps."""
    import gc

    import pandas as pd

    gc.collect()
    frames = [o for o in gc.get_objects() if isinstance(o, pd.DataFrame)]
    return {"count": len(frames), "rows": sum(len(f) for f in frames)}


def save_profile(profiler: Any, folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"profile_{name}.txt").write_text(profiler.output_text(unicode=False, color=False, show_all=False))
    (folder / f"profile_{name}.html").write_text(profiler.output_html())


def search_queries(workload: Workload, n: int, seed: int) -> list[str]:
    """Queries a user of the workload would ask: topic words (hot topics most often) and questions about facts."""
    import random

    from bench.workload import topic_words

    rng = random.Random(seed)
    vocab = topic_words(workload.topics, workload.words_per_topic, workload.seed)
    cdf = list(__import__("itertools").accumulate(1.0 / (r**workload.topic_skew) for r in range(1, len(vocab) + 1)))
    import bisect

    out = []
    for i in range(n):
        if i % 4 == 3:
            out.append(rng.choice(["where do I live", "what is my job", "what is my favourite colour", "my dog"]))
            continue
        words = vocab[bisect.bisect_left(cdf, rng.random() * cdf[-1])]
        out.append(" ".join(rng.sample(words, rng.randint(1, 3))))
    return out


def job_search(items: int, seed: int, queries: int, batch_size: int) -> dict[str, Any]:
    """Hot search over one tenant of ``items`` sensory items."""
    from engram import Memory

    workload = Workload(items, tenants=1, seed=seed, batch_size=batch_size)
    with tempfile.TemporaryDirectory(prefix="engram-perf-search-") as tmp:
        memory = Memory(f"sqlite:///{Path(tmp) / 'engram.db'}", (Path(tmp) / "archive").as_uri())
        started = time.perf_counter()
        for batch in workload.batches():
            memory.observe_many(batch)
        load_s = time.perf_counter() - started
        tenant = "tenant-0"
        started = time.perf_counter()
        memory.search(tenant, "warm up the index")
        build_s = time.perf_counter() - started
        latencies = []
        hits = 0
        for q in search_queries(workload, queries, seed + 1):
            started = time.perf_counter()
            found = memory.search(tenant, q, limit=20)
            latencies.append((time.perf_counter() - started) * 1000)
            hits += bool(found)
        memory.close()
    return {
        "items": items,
        "built_with": "Memory.observe_many into the sensory layer (one tenant)",
        "load_s": round(load_s, 3),
        "index_build_s": round(build_s, 3),
        "queries": queries,
        "queries_with_hits": hits,
        "p50_ms": round(percentile(latencies, 0.50), 3),
        "p95_ms": round(percentile(latencies, 0.95), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "mean_ms": round(statistics.fmean(latencies), 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


# -- the parent: starts a Prefect server, runs each job in a child, writes the JSON -------------------------------


@contextmanager
def prefect_server(database: str = "sqlite") -> Iterator[str]:
    """A temporary Prefect API for the children: with ``database`` a PostgreSQL URL, a Prefect server on a fresh
    database there (dropped afterwards); with ``sqlite``, Prefect's test harness (a server on a fresh SQLite file)."""
    # The server's telemetry heartbeat only adds noise (and lock errors on its SQLite database) to the log.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if database != "sqlite":
        from engram.testing import prefect_server as server_start

        with (
            tempfile.TemporaryDirectory(prefix="engram-perf-prefect-") as home,
            server_start(Path(home), database) as url,
        ):
            yield f"{url}/api"
        return
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value() or ""


def run_child(args: list[str], api_url: str, home: Path, embeddings: bool, timeout: float) -> dict[str, Any]:
    env = dict(os.environ)
    env.update(
        PREFECT_API_URL=api_url,
        PREFECT_HOME=str(home),
        ENGRAM_EMBEDDINGS="true" if embeddings else "false",
        PYTHONPATH=str(ROOT),
    )
    with tempfile.NamedTemporaryFile("w+", suffix=".json", delete=False) as out:
        out_path = Path(out.name)
    # A pipeline child writes what it has measured after each phase here (kept if the child fails or is stopped).
    progress = out_path.with_suffix(".progress.json")
    if args[0] == "pipeline":
        print(f"child {' '.join(args)}: figures so far in {progress}", flush=True)
    log = home / "child.log"
    with log.open("ab") as log_file:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", *args, "--out", str(out_path)]
            + (["--progress", str(progress)] if args[0] == "pipeline" else []),
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise SystemExit(f"child {' '.join(args)} failed ({proc.returncode}):\n{tail}")
    result = json.loads(out_path.read_text())
    out_path.unlink()
    progress.unlink(missing_ok=True)
    return result


def machine() -> dict[str, Any]:
    import psutil

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "store": "SQLite file (WAL) in a temporary folder",
    }


def sqlite_run_header() -> dict[str, Any]:
    """What the JSON of a benchmark of SQLite alone starts with: when it started, the machine, the SQLite version."""
    import sqlite3

    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "sqlite": sqlite3.sqlite_version,
    }


@contextmanager
def sqlite_store_at(path: Path, revision: str) -> Iterator[Any]:
    """A ``Store`` on a new SQLite file at ``path``, migrated by engram's own migrations to ``revision`` (``"head"``:
    the latest); the file and its WAL are removed afterwards."""
    from engram.migrations import migrate
    from engram.store import Store

    store = Store(f"sqlite:///{path}")
    try:
        if revision == "head":
            store.migrate()
        else:
            migrate(store.engine, revision)
        yield store
    finally:
        store.dispose()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def by_revision(sizes: list[int], revisions: tuple[str, str], measure: Any, prefix: str) -> Iterator[dict[str, Any]]:
    """For each size, ``{"rows": size, revision: measure(folder, revision, size), ...}`` for both revisions, in a
    temporary folder; each entry printed as it is measured."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        for rows in sizes:
            entry: dict[str, Any] = {"rows": rows}
            for revision in revisions:
                entry[revision] = measure(Path(tmp), revision, rows)
                print(f"{rows} rows, {revision}: {entry[revision]}", flush=True)
            yield entry


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("prefect", "sqlalchemy", "pyarrow", "pandas", "bm25s")}


def summarise(
    pipelines: list[dict[str, Any]], search: dict[str, Any] | None, cold: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The headline keys, from the largest pipeline size and the search run."""
    top = pipelines[-1]
    notes: list[str] = []
    archive = top.get("archive")
    archive_rate = archive_rows_per_s(archive)
    if archive is None:
        notes.append("archive_rows_per_s: null, flows/archive.py does not exist yet: there is no archive flow to run")
    elif archive_rate is None:
        notes.append(f"archive_rows_per_s: null, the archive flow ran but moved no rows or failed: {archive}")
    else:
        notes.append(
            "archive_rows_per_s: rows the archive flow verified in the archive (its summary's rows_verified) over its"
            " wall time, run with as_of ten years after the last event so that every item is cold"
        )
    if cold is None:
        notes.append("search_cold_p95_ms: null, archival search was not measured in this run")
    else:
        from engram.settings import get_settings

        kept = get_settings().search_max_tenants
        notes.append(
            "search_cold_p95_ms: p95 of each tenant's first archival search in a fresh process (which loads that"
            " tenant's archive), the slower of first and later searches; search_cold_warm_p95_ms: the later ones"
            + (
                f", among them searches of tenants dropped from memory meanwhile ({cold['tenants']} tenants searched,"
                f" the indexes of the {kept} most recent kept: ENGRAM_SEARCH_MAX_TENANTS), which load their archive"
                " again"
                if cold["tenants"] > kept
                else ""
            )
        )
    peaks = {str(p["events"]): p.get("peak_rss_mb_engram", p["peak_rss_mb"]) for p in pipelines}
    return {
        "pipeline_events_per_s": top["pipeline_events_per_s"],
        "raw_bulk_insert_rows_per_s": top["raw_bulk_insert_rows_per_s"],
        "pipeline_to_raw_ratio": top["pipeline_to_raw_ratio"],
        "archive_rows_per_s": archive_rate,
        "raw_parquet_rows_per_s": top["raw_parquet"]["rows_per_s"],
        "archive_to_raw_parquet_ratio": round(archive_rate / top["raw_parquet"]["rows_per_s"], 4)
        if archive_rate
        else None,
        "stored_rows_per_event": top.get("stored_rows_per_event"),
        "write_bound_ratio": top.get("write_bound_ratio"),
        "search_hot_p50_ms": search["p50_ms"] if search else None,
        "search_hot_p95_ms": search["p95_ms"] if search else None,
        "search_hot_p99_ms": search["p99_ms"] if search else None,
        "search_hot_items": search["items"] if search else None,
        "search_cold_p95_ms": cold["first_search"]["p95_ms"] if cold else None,
        "search_cold_warm_p95_ms": cold["warm_search"]["p95_ms"] if cold else None,
        "search_cold_items": cold["items"] if cold else None,
        "peak_rss_mb": max(peaks.values()),
        "peak_rss_mb_by_events": peaks,
        "orchestration_overhead_fraction": top["orchestration_overhead_fraction"],
        "prefect_api_retries": top.get("prefect_api_retries"),
        "measured_at_events": top["events"],
        "notes": notes,
    }


def parent(
    mode: str,
    embeddings: bool,
    tenants: int,
    seed: int,
    batch_size: int,
    out: Path,
    budget_s: float = FULL_BUDGET_S,
    sizes: list[int] | None = None,
    prefect_database: str = "sqlite",
) -> dict[str, Any]:
    """Run a mode's sizes, each in a child of its own. Mode ``sizes`` runs the pipeline at the given ``sizes`` only
    (no budget, no profile, no search): the sizes past the full run's hour, with a smaller size beside them so that
    their costs per event and peak memory compare within one run."""
    plan = QUICK if mode == "quick" else FULL
    if mode == "sizes":
        plan = {"pipeline_sizes": sorted(sizes or [])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "mode": mode,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "settings": {
            "tenants": tenants,
            "seed": seed,
            "batch_size": batch_size,
            "embeddings": embeddings,
            "budget_s": budget_s,
        },
        "prefect_server_database": "sqlite" if prefect_database == "sqlite" else "postgresql",
    }
    pipelines: list[dict[str, Any]] = []
    skipped: list[int] = []
    with tempfile.TemporaryDirectory(prefix="engram-perf-home-") as home, prefect_server(prefect_database) as api_url:
        home_path = Path(home)
        print(f"prefect server ready after {time.perf_counter() - started:.1f}s", flush=True)
        run_sizes = list(plan["pipeline_sizes"])
        for i, events in enumerate(run_sizes):
            if mode == "full" and pipelines:
                # Run the next size only when its projected time (by the last rate) fits in what is left.
                spent = time.perf_counter() - started
                projected = events / pipelines[-1]["pipeline_events_per_s"] * 1.2
                if spent + projected + FULL_RESERVE_S > budget_s:
                    skipped += run_sizes[i:]
                    break
            args = ["pipeline", "--events", str(events), "--tenants", str(tenants), "--seed", str(seed)]
            args += ["--batch-size", str(batch_size)]
            # A size may take most of a raised budget on its own; the sizes mode has none (a day per size at most).
            timeout = 24 * 3600 if mode == "sizes" else max(budget_s, FULL_BUDGET_S) * 2
            result = run_child(args, api_url, home_path, embeddings, timeout=timeout)
            pipelines.append(result)
            print(
                f"pipeline {events}: {result['pipeline_events_per_s']} ev/s, raw {result['raw_bulk_insert_rows_per_s']}"
                f" rows/s, overhead {result['orchestration_overhead_fraction']}, peak {result['peak_rss_mb']} MB",
                flush=True,
            )
        search: dict[str, Any] | None = None
        cold: dict[str, Any] | None = None
        if mode != "sizes":
            # The profile run is a separate child, so that the profiler's own cost stays out of the timed runs.
            profile_size = plan["pipeline_sizes"][0] if mode == "quick" else plan["pipeline_sizes"][2]
            args = ["pipeline", "--events", str(profile_size), "--tenants", str(tenants), "--seed", str(seed)]
            args += ["--batch-size", str(batch_size), "--profile-dir", str(RESULTS)]
            profiled = run_child(args, api_url, home_path, embeddings, timeout=FULL_BUDGET_S)
            results["profile"] = {
                "events": profile_size,
                "files": sorted(p.name for p in RESULTS.glob(f"profile_*_{profile_size}.*")),
                "pipeline_events_per_s_under_profiler": profiled["pipeline_events_per_s"],
            }
            args = ["search", "--events", str(plan["search_items"]), "--seed", str(seed)]
            args += ["--queries", str(plan["queries"]), "--batch-size", str(batch_size)]
            search = run_child(args, api_url, home_path, False, timeout=FULL_BUDGET_S)
            print(f"search {search['items']}: p50 {search['p50_ms']} p95 {search['p95_ms']} p99 {search['p99_ms']} ms")
            args = ["cold", "--events", str(plan["cold_items"]), "--tenants", str(plan["cold_tenants"])]
            args += ["--seed", str(seed), "--queries", str(plan["queries"])]
            cold = run_child(args, api_url, home_path, False, timeout=FULL_BUDGET_S * 2)
            print(
                f"archival search {cold['items']}: first p95 {cold['first_search']['p95_ms']} ms, warm p95"
                f" {cold['warm_search']['p95_ms']} ms"
            )
    results["pipelines"] = pipelines
    results["sizes_run"] = [p["events"] for p in pipelines]
    results["sizes_skipped"] = skipped
    results["search_hot"] = search
    results["search_cold"] = cold
    results.update(summarise(pipelines, search, cold))
    if skipped:
        results["notes"].append(
            f"sizes {skipped} not run: projected past the {budget_s / 60:.0f}-minute budget at the measured rate"
        )
    results["wall_s"] = round(time.perf_counter() - started, 1)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if mode == "full":
        from bench.report import plot

        plot(results, out.with_suffix(".png"))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="small sizes, a few minutes (the default)")
    group.add_argument("--full", action="store_true", help="every size that fits in about an hour")
    group.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        metavar="EVENTS",
        help="the pipeline at these sizes only, with no time budget (writes bench/results/large.json)",
    )
    group.add_argument("--child", choices=["pipeline", "search", "cold"], help=argparse.SUPPRESS)
    parser.add_argument("--events", type=int, default=10_000, help=argparse.SUPPRESS)
    parser.add_argument("--queries", type=int, default=300, help=argparse.SUPPRESS)
    parser.add_argument("--profile-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--progress", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tenants", type=int, default=100, help="tenants in the pipeline workload")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=5_000, help="events per observe_many call")
    parser.add_argument("--embeddings", action="store_true", help="consolidate with the CPU embedder on")
    parser.add_argument("--out", type=Path, help="where to write the JSON")
    parser.add_argument("--budget-minutes", type=float, default=FULL_BUDGET_S / 60, help="time budget of --full")
    parser.add_argument(
        "--prefect-database",
        default=os.environ.get("ENGRAM_BENCH_PREFECT_DATABASE", "sqlite"),
        help="the Prefect server's database: sqlite (Prefect's test harness, the default) or a postgresql:// URL,"
        " on whose server a fresh database is made for the run",
    )
    args = parser.parse_args(argv)
    if args.child:
        if args.child == "pipeline":
            result = job_pipeline(
                args.events, args.tenants, args.seed, args.batch_size, args.profile_dir, args.progress
            )
        elif args.child == "search":
            result = job_search(args.events, args.seed, args.queries, args.batch_size)
        else:
            from bench.cold_search import job_cold_search

            result = job_cold_search(args.events, args.tenants, args.seed, args.queries)
        args.out.write_text(json.dumps(result, default=str))
        return 0
    mode = "sizes" if args.sizes else "full" if args.full else "quick"
    out = args.out or RESULTS / ("large.json" if mode == "sizes" else f"{mode}.json")
    budget = args.budget_minutes * 60
    if args.prefect_database != "sqlite" and not args.prefect_database.startswith("postgresql"):
        parser.error(f"--prefect-database: sqlite or a postgresql:// URL, not {args.prefect_database!r}")
    results = parent(
        mode, args.embeddings, args.tenants, args.seed, args.batch_size, out, budget, args.sizes, args.prefect_database
    )
    print(
        json.dumps(
            {
                k: results[k]
                for k in (
                    "pipeline_events_per_s",
                    "raw_bulk_insert_rows_per_s",
                    "archive_rows_per_s",
                    "raw_parquet_rows_per_s",
                    "search_hot_p95_ms",
                    "search_cold_p95_ms",
                    "peak_rss_mb",
                    "orchestration_overhead_fraction",
                )
            },
            indent=2,
        )
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
