"""Writes BENCHMARKS.md from the JSON under bench/results/ (and the plot from full.json): no number is typed by hand.

python bench/report.py [--results bench/results] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.archive_throughput import STORAGES as ARCHIVE_STORAGES  # noqa: E402 - the storages, in order
from bench.index_growth import VARIANTS as INDEX_GROWTH_VARIANTS  # noqa: E402 - what each variant's ids are

RESULTS = ROOT / "bench" / "results"
HEADLINE = (
    ("pipeline_events_per_s", "lifecycle throughput, events/s (observe_many + lifecycle flow)"),
    ("raw_bulk_insert_rows_per_s", "raw bulk insert, rows/s (Core executemany, same database)"),
    ("pipeline_to_raw_ratio", "lifecycle / raw bulk insert"),
    ("stored_rows_per_event", "rows the lifecycle stores per event (every table, after the run)"),
    ("write_bound_ratio", "lifecycle / raw bulk insert if storing those rows were all it did"),
    ("archive_rows_per_s", "archive flow, rows/s"),
    ("raw_parquet_rows_per_s", "pyarrow Parquet write + read back, rows/s (same folder)"),
    ("archive_to_raw_parquet_ratio", "archive flow / pyarrow"),
    ("search_hot_items", "hot search: items in the tenant"),
    ("search_hot_p50_ms", "hot search p50, ms"),
    ("search_hot_p95_ms", "hot search p95, ms"),
    ("search_hot_p99_ms", "hot search p99, ms"),
    ("search_cold_items", "archival search: archived items"),
    ("search_cold_p95_ms", "archival search p95, ms (each tenant's first search: loads its archive)"),
    ("search_cold_warm_p95_ms", "archival search p95, ms (later searches)"),
    ("peak_rss_mb", "peak RSS of engram's phases (observe_many, lifecycle, archive), MB, largest over the sizes"),
    ("orchestration_overhead_fraction", "orchestration overhead (share of lifecycle wall time)"),
    ("prefect_server_database", "the Prefect server's database"),
    ("prefect_api_retries", "Prefect API requests retried in the lifecycle (the server answered 503)"),
    ("measured_at_events", "pipeline figures measured at, events"),
)
GOALS = (
    ("lifecycle throughput >= 1/4 of raw bulk insert", "pipeline_to_raw_ratio", lambda v: v >= 0.25),
    ("archival at least 1/2 of raw Parquet", "archive_to_raw_parquet_ratio", lambda v: v >= 0.5),
    ("hot search p95 < 20 ms at 10^6 items", "search_hot_p95_ms", lambda v: v < 20),
    ("archival search p95 < 1 s at 10^7 items", "search_cold_p95_ms", lambda v: v < 1000),
    ("orchestration overhead < 10%", "orchestration_overhead_fraction", lambda v: v < 0.10),
)


def fmt(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 10 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def headline_table(runs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    lines = ["| figure | " + " | ".join(name for name, _ in runs) + " |", "| --- |" + " ---: |" * len(runs)]
    for key, label in HEADLINE:
        lines.append(f"| {label} (`{key}`) | " + " | ".join(fmt(r.get(key)) for _, r in runs) + " |")
    lines.append(
        "| machine load average at start | "
        + " | ".join(" / ".join(fmt(x) for x in r["machine"].get("load_avg_at_start", [])) for _, r in runs)
        + " |"
    )
    lines.append("| wall time of the whole run, s | " + " | ".join(fmt(r.get("wall_s")) for _, r in runs) + " |")
    return lines


def size_table(result: dict[str, Any]) -> list[str]:
    lines = [
        "| events | observe_many rows/s | lifecycle s | lifecycle events/s | raw insert rows/s | ratio | "
        "ingest ev/s | close_sessions ev/s | consolidate ev/s | overhead | peak RSS MB | semantic items | "
        "rows stored per event |",
        "| ---: |" + " ---: |" * 12,
    ]
    for p in result["pipelines"]:
        f = p["flows"]
        lines.append(
            "| "
            + " | ".join(
                fmt(x)
                for x in (
                    p["events"],
                    p["observe_many_rows_per_s"],
                    p["lifecycle_s"],
                    p["pipeline_events_per_s"],
                    p["raw_bulk_insert_rows_per_s"],
                    p["pipeline_to_raw_ratio"],
                    f.get("ingest", {}).get("events_per_s"),
                    f.get("close_sessions", {}).get("events_per_s"),
                    f.get("consolidate", {}).get("events_per_s"),
                    p["orchestration_overhead_fraction"],
                    p.get("peak_rss_mb_engram", p["peak_rss_mb"]),
                    p["layers_after"].get("semantic"),
                    p.get("stored_rows_per_event"),
                )
            )
            + " |"
        )
    return lines


def task_table(pipeline: dict[str, Any]) -> list[str]:
    total = pipeline["lifecycle_s"]
    lines = ["| task | calls | seconds | share of lifecycle wall time |", "| --- | ---: | ---: | ---: |"]
    for name, secs in sorted(pipeline["task_seconds"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {pipeline['task_calls'].get(name, 0)} | {secs:.3f} | {secs / total:.1%} |")
    rest = total - sum(pipeline["task_seconds"].values())
    lines.append(f"| (outside task functions: Prefect) | | {rest:.3f} | {rest / total:.1%} |")
    return lines


def rss_table(result: dict[str, Any]) -> list[str]:
    phases = list(result["pipelines"][0].get("peak_rss_mb_by_phase") or {})
    lines = [
        "| events | "
        + " | ".join(f"peak in {k}" for k in phases)
        + " | whole child (ru_maxrss) | DataFrames alive after lifecycle |"
    ]
    lines.append("| ---: |" + " ---: |" * (len(phases) + 2))
    for p in result["pipelines"]:
        live = p.get("live_dataframes_after_lifecycle") or {}
        lines.append(
            f"| {fmt(p['events'])} | "
            + " | ".join(fmt((p.get("peak_rss_mb_by_phase") or {}).get(k)) for k in phases)
            + f" | {fmt(p['peak_rss_mb'])} | {fmt(live.get('count'))} ({fmt(live.get('rows'))} rows) |"
        )
    return lines


def heap_table(result: dict[str, Any]) -> list[str]:
    """What the memory was made of at each phase's peak (``heap_at_peak_by_phase``, recorded since the pipeline's
    sampler took it): none when no size of the run has it."""
    pipelines = [p for p in result.get("pipelines", []) if p.get("heap_at_peak_by_phase")]
    if not pipelines:
        return []
    lines = [
        "What the memory was made of at each phase's peak: glibc malloc's bytes in use (native buffers: SQLite, "
        "pandas, numpy) and freed but held, pyarrow's pool, and Python's small objects (pymalloc blocks in use, "
        "a count).",
        "",
        "| events | phase | peak RSS, MB | malloc in use, MB | malloc free but held, MB | pyarrow pool, MB "
        "| Python blocks, millions |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in pipelines:
        for phase, heap in p["heap_at_peak_by_phase"].items():
            blocks = heap.get("python_blocks")
            lines.append(
                f"| {fmt(p['events'])} | {phase} | {fmt((p.get('peak_rss_mb_by_phase') or {}).get(phase))} "
                f"| {fmt(heap.get('malloc_in_use_mb'))} | {fmt(heap.get('malloc_free_held_mb'))} "
                f"| {fmt(heap.get('arrow_pool_mb'))} | {fmt(None if blocks is None else round(blocks / 1e6, 2))} |"
            )
    return lines + [""]


def goals(result: dict[str, Any]) -> list[str]:
    lines = ["| goal | measured | met |", "| --- | ---: | --- |"]
    for label, key, ok in GOALS:
        value = result.get(key)
        met = "not measured" if value is None else ("yes" if ok(value) else "no")
        # A workload of N events gives a little under N items (a session's last turns may fall past the end).
        if key == "search_hot_p95_ms" and value is not None and (result.get("search_hot_items") or 0) < 950_000:
            met += f" (at {fmt(result.get('search_hot_items'))} items, not 10^6)"
        if key == "search_cold_p95_ms" and value is not None and (result.get("search_cold_items") or 0) < 9_500_000:
            met += f" (at {fmt(result.get('search_cold_items'))} items, not 10^7)"
        if key == "search_cold_p95_ms" and result.get("search_cold_compacted"):
            met += f" (compacted archive; {fmt(result.get('search_cold_uncompacted_p95_ms'))} ms before compaction)"
        lines.append(f"| {label} | {fmt(value)} | {met} |")
    return lines + size_goals(result)


def size_goals(result: dict[str, Any]) -> list[str]:
    """The rows of the goals that depend on size: peak RSS flat, costs linear."""
    return rss_flat_goal(result.get("peak_rss_mb_by_events") or {}) + linearity_goal(result.get("pipelines") or [])


def rss_flat_goal(peaks: dict[str, float]) -> list[str]:
    """The row of the goal "peak RSS flat": the peak at the largest size against the smallest from 10^5 events
    up, within 20%."""
    label = "peak RSS flat (within 20%) from 10^5 events up"
    big = {int(k): v for k, v in peaks.items() if int(k) >= 100_000}
    if len(big) < 2:
        measured = ", ".join(f"{fmt(int(k))}: {fmt(v)} MB" for k, v in peaks.items())
        return [f"| {label} | {measured} | not measured at two sizes >= 10^5 |"]
    lo, hi = big[min(big)], big[max(big)]
    flat = "yes" if hi <= lo * 1.2 else "no"
    if max(big) < 9_500_000:
        flat += f" (up to {fmt(max(big))} events; 10^7 not run)"
    span = f"{fmt(min(big))} -> {fmt(max(big))} events: {fmt(lo)} -> {fmt(hi)} MB"
    return [f"| {label} | {span} | {flat} |"]


# From this many events up, a size's cost per event is compared with the smallest such size's: below it, start-up
# costs (imports, the first flow run) are a large share of a run.
LINEAR_FROM_EVENTS = 100_000


def linearity_goal(pipelines: list[dict[str, Any]]) -> list[str]:
    """Rows of the goal "costs grow linearly with events": the seconds per 1,000 events (lifecycle) and per 1,000 rows
    (archive) of the largest size against the smallest from ``LINEAR_FROM_EVENTS`` up, within 20%."""
    big = [p for p in pipelines if p["events"] >= LINEAR_FROM_EVENTS]
    label = "costs linear in events (seconds per 1,000 within 20%) from 10^5 events up"
    if len(big) < 2:
        return [f"| {label} | measured at {len(big)} size(s) >= 10^5 | not measured at two sizes >= 10^5 |"]
    lo, hi = big[0], big[-1]
    lines = []
    for what, rate in (
        ("lifecycle", lambda p: p.get("pipeline_events_per_s")),
        ("archive", lambda p: (p.get("archive") or {}).get("rows_per_s")),
    ):
        if not rate(lo) or not rate(hi):
            lines.append(f"| {label}: {what} | null | not measured |")
            continue
        cost_lo, cost_hi = 1000 / rate(lo), 1000 / rate(hi)
        growth = cost_hi / cost_lo
        met = "yes" if growth <= 1.2 else "no"
        lines.append(
            f"| {label}: {what} | {fmt(lo['events'])} -> {fmt(hi['events'])} events: {cost_lo:.3f} -> {cost_hi:.3f}"
            f" s ({growth:.2f}x) | {met} |"
        )
    lines += reference_growth(lo, hi)
    return lines


def reference_growth(lo: dict[str, Any], hi: dict[str, Any]) -> list[str]:
    """The lifecycle's growth in cost per event beside that of its physical reference, the raw bulk insert of the
    same rows measured at each size in the same run: the part of the growth that storing rows in B-trees of that size
    costs anyway, and the part that is engram's own. Information beside the goal, not the goal."""
    raw_lo, raw_hi = lo.get("raw_bulk_insert_rows_per_s"), hi.get("raw_bulk_insert_rows_per_s")
    if not (raw_lo and raw_hi and lo.get("pipeline_events_per_s") and hi.get("pipeline_events_per_s")):
        return []
    own = (lo["pipeline_events_per_s"] / hi["pipeline_events_per_s"]) / (raw_lo / raw_hi)
    return [
        f"| the raw bulk insert's cost per row at the same sizes, measured in the same run (the reference) |"
        f" {fmt(lo['events'])} -> {fmt(hi['events'])} rows: {1e6 / raw_lo:.1f} -> {1e6 / raw_hi:.1f} us"
        f" ({raw_lo / raw_hi:.2f}x); the lifecycle's growth over it: {own:.2f}x | information |"
    ]


def task_growth_table(result: dict[str, Any], min_share: float = 0.01) -> list[str]:
    """Microseconds per event of each task at each size (tasks with at least ``min_share`` of the largest size's
    lifecycle): a task whose figure rises with size costs more than linearly."""
    pipelines = result["pipelines"]
    top = pipelines[-1]
    names = [
        n
        for n, secs in sorted(top["task_seconds"].items(), key=lambda kv: -kv[1])
        if secs >= min_share * top["lifecycle_s"]
    ]
    lines = [
        "| task | " + " | ".join(fmt(p["events"]) for p in pipelines) + " |",
        "| --- |" + " ---: |" * len(pipelines),
    ]
    for name in names:
        cells = [
            f"{p['task_seconds'][name] / p['events'] * 1e6:.1f}" if name in p.get("task_seconds", {}) else "null"
            for p in pipelines
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    cells = [f"{p['lifecycle_s'] / p['events'] * 1e6:.1f}" for p in pipelines]
    lines.append("| (whole lifecycle) | " + " | ".join(cells) + " |")
    return lines


def write_bound_section(pipeline: dict[str, Any]) -> list[str]:
    """What the lifecycle stores per event, and the ratio to the raw insert that storing it alone allows."""
    stored = pipeline.get("stored_rows_after")
    if not stored:
        return []
    events = pipeline["events"]
    lines = [
        f"### What the lifecycle writes per event ({fmt(events)} events)",
        "",
        "The raw reference inserts one narrow row per event into a table with a primary key only. The lifecycle "
        "stores the rows below (row counts after the run), each into a table with its secondary indexes, and on top "
        "of them updates each event once (routed), inserts and deletes each working item, and upserts sessions. Were "
        "storing these rows at the raw rate all it did, its ratio to the raw insert would be the write bound; the "
        "rest of the gap is validation, distilling, planning and orchestration.",
        "",
        "| table | rows | per event |",
        "| --- | ---: | ---: |",
    ]
    for table, n in sorted(stored.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {table} | {fmt(n)} | {n / events:.2f} |")
    lines += [
        f"| all | {fmt(sum(stored.values()))} | {pipeline.get('stored_rows_per_event')} |",
        "",
        f"Write bound: {fmt(pipeline.get('write_bound_ratio'))} of the raw insert rate; measured: "
        f"{fmt(pipeline.get('pipeline_to_raw_ratio'))}. The audit trail (a `transitions` row per item per move, as "
        "the architecture asks), lineage and each layer's own copy are what a quarter of the raw rate has no room "
        "for: even at the raw rate per row, the design's writes alone keep the lifecycle under that goal.",
        "",
    ]
    return lines


# The runs of chosen sizes (``bench/perf.py --sizes``): the file each writes, and the make target that runs it.
SIZED_RUNS = {
    "large_1e6.json": "make bench-1e6",
    "large.json": "make bench-large",
    "large_1e7.json": "make bench-1e7",
}


def sized_runs(results: Path) -> list[tuple[str, dict[str, Any]]]:
    """The recorded runs of chosen sizes, as (make target, results), smallest largest size first."""
    runs = [(target, refresh(load(results / name))) for name, target in SIZED_RUNS.items()]
    runs = [(t, r) for t, r in runs if r and r.get("pipelines")]
    return sorted(runs, key=lambda tr: max(tr[1]["sizes_run"]))


def larger_sizes_goals(large: dict[str, Any], target: str) -> list[str]:
    """The goal rows that depend on size, judged again on a run of chosen sizes, for the goals table: the full
    run's verdict holds only up to its own largest size."""
    return [row.replace(" | ", f" (`{target}` run) | ", 1) for row in size_goals(large)]


def large_section(large: dict[str, Any], target: str) -> list[str]:
    """The sizes past the full run's hour (``bench/perf.py --sizes``, run by ``target``): per size, memory by phase,
    cost per event by task, and the two goals that depend on size judged on this run alone."""
    m = large["machine"]
    load_avg = " / ".join(fmt(x) for x in m.get("load_avg_at_start", []))
    lines = [
        f"## Past the full run (`{target}`)",
        "",
        "Sizes run: "
        + ", ".join(fmt(s) for s in large["sizes_run"])
        + f", one after the other in one run of {fmt(large.get('wall_s'))} s started {large.get('started_at')} on "
        f"{m.get('cpu_model')}, {m.get('nproc')} cores (load average at start {load_avg}), so that the larger "
        "size's memory and cost per event compare with the smaller one's measured beside it.",
        "",
        "| goal | measured | met |",
        "| --- | ---: | --- |",
    ]
    lines += size_goals(large) + [""]
    lines += ["### Per size", ""] + size_table(large) + [""]
    lines += ["### Peak memory by phase (RSS, MB)", ""] + rss_table(large) + [""] + heap_table(large)
    lines += ["### Cost per event by task and size (microseconds per event)", ""] + task_growth_table(large) + [""]
    lines += write_bound_section(large["pipelines"][-1])
    # The sizes mode runs no search: the notes on search say only that.
    lines += [f"- {n}" for n in large.get("notes", []) if not n.startswith("search_")] + [""]
    return lines


def locomo_section(results: Path) -> list[str]:
    lines = ["## LoCoMo answer recall", ""]
    files = sorted(results.glob("locomo*.json"))
    if not files:
        return lines + [
            "Not run yet: `make locomo` (`bench/locomo.py --json bench/results/locomo.json`) writes the figures that "
            "this section shows.",
            "",
        ]
    lines += [
        "Answer recall within a word budget on the development half (`bench/locomo.py`, the metric of "
        "`../shared/data/locomo/README.md`); the raw-turn BM25 baseline there is 0.615 / 0.703 / 0.792.",
        "",
    ]
    for path in files:
        data = load(path) or {}
        recall = data.get("recall") or {}
        if not recall:
            continue
        categories = [c for c in next(iter(recall.values())) if c != "overall"]
        lines += [
            f"### `{path.name}`: {data.get('retrieval', 'bm25')}, layers searched: {data.get('layers_searched')}",
            "",
            f"{data.get('questions')} questions over {data.get('conversations')} conversations; "
            f"{data.get('hot_semantic_items')} semantic items from {data.get('raw_turns')} raw turns; "
            f"search p50 {data.get('search_ms', {}).get('p50')} ms, p95 {data.get('search_ms', {}).get('p95')} ms; "
            f"lifecycle {data.get('lifecycle_seconds')} s.",
            "",
            "| words | overall | " + " | ".join(categories) + " |",
            "| --- | --- | " + " | ".join("---" for _ in categories) + " |",
        ]
        for budget, row in recall.items():
            lines.append(
                f"| {budget} | {row['overall']:.3f} | " + " | ".join(f"{row[c]:.3f}" for c in categories) + " |"
            )
        lines.append("")
        before = data.get("recall_before_archive")
        if before:
            lines += [
                f"Archive after {data.get('archive_after_days')} days: "
                f"{(data.get('archive') or {}).get('archival_items')} items archived. Recall before / after archival:",
                "",
                "| words | before | after |",
                "| --- | --- | --- |",
            ]
            lines += [f"| {b} | {before[b]['overall']:.3f} | {recall[b]['overall']:.3f} |" for b in recall]
            lines.append("")
    return lines


def bulk_ingest_section(results: Path) -> list[str]:
    files = sorted(results.glob("bulk_ingest_*.json"))
    if not files:
        return []
    lines = [
        "## Bulk ingest",
        "",
        "`bench/bulk_ingest.py`: `Memory.observe_many` (validation, quarantine, idempotent multi-row insert) against "
        "a plain insert of the same rows into a table of the same columns, in the same run and database.",
        "",
        "| store | events | observe_many s | rows/s | reference | reference rows/s | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for path in files:
        d = load(path) or {}
        refs = [
            (k, v) for k, v in d.items() if isinstance(v, dict) and k not in ("observe_many",) and "rows_per_s" in v
        ]
        for name, ref in refs:
            lines.append(
                f"| {d.get('store')} | {d.get('events')} | {d['observe_many']['seconds']} | "
                f"{d['observe_many']['rows_per_s']} | {name} | {ref['rows_per_s']} | "
                f"{d['observe_many']['rows_per_s'] / ref['rows_per_s']:.2f} |"
            )
    return [*lines, ""]


def archive_section(results: Path) -> list[str]:
    data = load(results / "archive_throughput.json")
    if not data:
        return []
    lines = [
        "## Archival throughput (`bench/archive_throughput.py`)",
        "",
        f"{data['rows']} hot rows of {data['tenants']} tenants (facts, and episodes with their turns, dated over "
        f"{data['days']} days) moved by the archive step in batches of {data['batch_size']}: Parquet written per "
        "tenant, layer and month, read back and checked, rows tombstoned. The references are pyarrow writing the "
        "same rows (zstd) and reading every file back with its sha256, to the same storage in the same run: once as "
        "large files, once as the same files engram's layout makes, one at a time.",
        "",
        "| storage | engram rows/s | files | pyarrow rows/s (large files) | ratio | pyarrow rows/s (same files) | "
        "ratio | engram's work in the store, s of the whole | bound by it alone (ratio to large files) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for kind in ARCHIVE_STORAGES:
        d = data.get(kind)
        if not d:
            continue
        store_s = d["engram"].get("store_seconds")
        in_store = "null" if store_s is None else f"{store_s} of {d['engram']['seconds']}"
        lines.append(
            f"| {kind} | {d['engram']['rows_per_s']} | {d['pyarrow_same_files']['files']} | "
            f"{d['pyarrow']['rows_per_s']} | {d['ratio']} | {d['pyarrow_same_files']['rows_per_s']} | "
            f"{d['ratio_same_files']} | "
            f"{in_store} | "
            f"{d.get('store_bound_ratio', 'null')} |"
        )
    lines += [
        "",
        "The partition layout sets the floor: with many tenants each file holds few rows, and writing, reading back "
        "and hashing many small files is what costs, for pyarrow as for engram. Partitions are months, not days, "
        "for that reason.",
        "",
        "The pyarrow references only write and read files. The archive also works in the store: it picks the cold "
        "rows, reads them, records each manifest, and after verification tombstones the rows and writes a "
        "`transitions` row for each (the audit trail). The last two columns time the store's methods during the "
        "archive run (the database and the Python that builds and compares those rows) and give the rate the "
        "archive would have were that work all it did: whatever the files cost, the archive cannot pass that ratio "
        "to the large-file reference.",
        "",
    ]
    if "s3_delayed" in data:
        lines += [
            f"`s3_delayed` is the loopback server reached through a proxy that holds each chunk it forwards "
            f"{data['delay_s'] * 1000:g} ms, as a network does; the pyarrow references write and read one file at a "
            "time, engram sends a batch's files (every tenant's) in one concurrent upload and reads them back in "
            "concurrent groups. On loopback a request costs the server's CPU (moto runs in the benchmark's process), "
            "so overlapping requests saves little there.",
            "",
        ]
    return lines


def archive_reads_section(results: Path) -> list[str]:
    """Reading a manifest back (``bench/archive_reads.py``): grouped reads, one file at a time, a plain fetch."""
    data = load(results / "archive_reads.json")
    if not data:
        return []
    lines = [
        "## Reading archived files back (`bench/archive_reads.py`)",
        "",
        f"One manifest of {data['files']} files ({data['manifest_rows']} rows, a file per table and month) read back "
        "by `read_manifest_rows` (fetch, sha256 check, decode), as `get` and `rehydrate` of archived items do, next "
        "to a plain concurrent fetch of the same files, on an S3 server on loopback reached directly and through a "
        f"proxy that holds each chunk it forwards {data['delay_s'] * 1000:.0f} ms. Medians of {data['repeats']} "
        "reads, in one run.",
        "",
        "| S3 server | plain fetch s | engram s | engram / fetch | one file at a time s | one at a time / engram |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, label in (("direct", "loopback"), ("delayed", "loopback, delayed")):
        d = data.get(kind)
        if d:
            lines.append(
                f"| {label} | {d['fetch_s']} | {d['engram_s']} | {d['engram_over_fetch']} | {d['one_at_a_time_s']} | "
                f"{d['one_at_a_time_over_engram']} |"
            )
    lines += [
        "",
        "engram fetches a manifest's files `READ_GROUP` (16) at a time, so the wait for each request overlaps the "
        "others' while what it holds at once stays bounded.",
        "",
    ]
    return lines


def flow_overhead_section(results: Path) -> list[str]:
    """A lifecycle run with nothing to move (``bench/flow_overhead.py``): Prefect's own cost, heartbeats included."""
    data = load(results / "flow_overhead.json")
    if not data:
        return []
    med = data["median_s"]
    machine = data.get("machine", {})
    notes = [f"- {n}" for n in data.get("notes", [])]
    return (
        [
            "## Orchestration alone (`bench/flow_overhead.py`)",
            "",
            "Wall seconds of a `lifecycle` run over a store with nothing to move, so that all of it is Prefect's: flow "
            "and task runs, state changes, heartbeats. Beside it, the same four subflows under a parent that lets each "
            f"keep its own heartbeat, Prefect's default. Heartbeats every {data['heartbeat_frequency_s']} s for both "
            f"parents; medians of {data['repeats']} runs of each, alternating, against one Prefect server "
            f"(load average {machine.get('load_avg_at_start')} at the start).",
            "",
            "| parent flow | median s | runs s |",
            "| --- | ---: | --- |",
            f"| `lifecycle` (subflows without heartbeats of their own) | {med['lifecycle']} | "
            f"{', '.join(str(x) for x in data['runs_s']['lifecycle'])} |",
            f"| the same subflows, each with its heartbeat | {med['subflows_with_own_heartbeats']} | "
            f"{', '.join(str(x) for x in data['runs_s']['subflows_with_own_heartbeats'])} |",
            "",
            "Prefect joins a flow run's heartbeat thread when the run ends, and the thread sleeps in whole seconds, so "
            "each flow run's end waits for the rest of its current second. Subflows run in their parent's process, "
            "whose heartbeat already says it is alive; `flows.subflows.heartbeat_of_parent` runs them without their "
            "own "
            f"({data['saved_per_run_s']} s less for this run; a subflow of more than a second waited for the rest of "
            "its last second, half a second on average).",
            "",
        ]
        + notes
        + ([""] if notes else [])
    )


def prefect_server_section(runs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Orchestration overhead by the Prefect server's database, from the quick runs that counted client retries."""
    rows = [
        f"| {name} | {run.get('prefect_server_database')} | {fmt(p['events'])} | {fmt(p['lifecycle_s'])} | "
        f"{fmt(p['engram_task_s'])} | {fmt(round(p['lifecycle_s'] - p['engram_task_s'], 2))} | "
        f"{fmt(p['orchestration_overhead_fraction'])} | {fmt(p['prefect_api_retries'])} |"
        for name, run in runs
        for p in run.get("pipelines", [])
        if "prefect_api_retries" in p
    ]
    if not rows:
        return []
    return [
        "## Orchestration overhead and the Prefect server's database",
        "",
        "The lifecycle's wall time less its tasks' own time, with the Prefect server on PostgreSQL (a fresh database, "
        "as `infra/docker-compose.yml` runs it; what the make targets use) and on SQLite (Prefect's test harness, as "
        "`make up` runs it on a laptop). A SQLite-backed Prefect server answers 503 when two writes collide: a "
        "subflow's run being created while the server records task runs and events. Prefect's client retries after "
        "about 2 s, and the flow waits.",
        "",
        "| run | Prefect server's database | events | lifecycle s | engram's tasks s | Prefect s | overhead | API "
        "requests retried |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
    ]


def index_growth_section(results: Path) -> list[str]:
    """The audit trail's insert cost by size, random keys against time-ordered ones (``bench/index_growth.py``): a
    table per results file (``index_growth.json``, the long run; ``index_growth_*.json``, shorter runs of more
    variants)."""
    lines: list[str] = []
    for path in sorted(results.glob("index_growth*.json")):
        data = load(path)
        if data and any(v.get("steps") for v in (data.get("variants") or {}).values()):
            lines += index_growth_table(path.name, data, first=not lines)
    return lines


def index_growth_table(name: str, data: dict[str, Any], first: bool) -> list[str]:
    """One run of ``bench/index_growth.py``: microseconds per row and WAL size by size, a column pair per variant."""
    variants = data["variants"]
    # the known variants in their order, then any other under its own name; a variant with no step yet is left out
    names = [n for n in [*INDEX_GROWTH_VARIANTS, *sorted(variants)] if variants.get(n, {}).get("steps")]
    names = list(dict.fromkeys(names))
    by_rows: dict[int, dict[str, dict[str, Any]]] = {}
    for variant in names:
        for step in variants[variant]["steps"]:
            by_rows.setdefault(step["rows"], {})[variant] = step
    head = " | ".join(f"{n}: us/row | {n}: WAL MB" for n in names)
    told = {
        n: INDEX_GROWTH_VARIANTS[n].about if n in INDEX_GROWTH_VARIANTS else "see bench/index_growth.py" for n in names
    }
    what = "; ".join(f"`{n}`: {told[n].format(cache_mb=fmt(data.get('cache_mb')))}" for n in names)
    lines = (
        [
            "## The audit trail's inserts as it grows (`bench/index_growth.py`)",
            "",
            "A table shaped like `transitions` (engram's primary key and three indexes, unless a variant says "
            "otherwise) in a SQLite file set up as the store's, filled with plain `sqlite3` in transactions of a "
            "task's batch of rows, timed per transaction. Microseconds per row over each step, and the WAL file's "
            "size after it: every page a transaction changes is written there first and copied back into the "
            "database file at the next checkpoint, and the file keeps the size of the largest transaction so far, so "
            "WAL MB over the rows of a transaction is what each row rewrote.",
            "",
        ]
        if first
        else []
    )
    lines += [
        f"### `{name}`: {fmt(data['rows'])} rows in transactions of {fmt(data['batch'])}",
        "",
        f"Variants, one after the other in one run: {what}. Load average {data['machine'].get('load_avg_at_start')}"
        " at the start.",
        "",
        f"| rows | {head} |",
        "| ---: |" + " ---: | ---: |" * len(names),
    ]
    for rows in sorted(by_rows):
        cells = []
        for variant in names:
            step = by_rows[rows].get(variant)
            cells += [fmt(step["us_per_row"]), fmt(step["wal_mb"])] if step else ["", ""]
        lines.append(f"| {fmt(rows)} | " + " | ".join(cells) + " |")
    ratios = [
        f"{n}: {fmt(round(variants[n]['steps'][-1]['us_per_row'] / variants[n]['steps'][0]['us_per_row'], 2))}"
        + ("" if variants[n].get("finished") else f" (stopped at {fmt(variants[n]['steps'][-1]['rows'])} rows)")
        for n in names
    ]
    lines += ["", "Last step against the first: " + ", ".join(ratios) + ".", ""]
    return lines + [f"- {n}" for n in data.get("notes", [])] + ([""] if data.get("notes") else [])


def lineage_lookup_section(results: Path) -> list[str]:
    """The lineage's lookup by event as a tenant's lineage grows, at revision 0008 and at the head
    (``bench/lineage_lookup.py``)."""
    data = load(results / "lineage_lookup.json")
    if not data:
        return []
    machine = data.get("machine", {})
    lines = [
        "## The lineage's lookup by event (`bench/lineage_lookup.py`)",
        "",
        f"Milliseconds for `Store.derived_items` to find the items distilled from {data['ids']} random events of one "
        "tenant (the statement a consolidation batch runs to check its sources, and a forget to find what was "
        "distilled from the events it removes), median of "
        f"{data['repeats']} calls, in a SQLite store migrated to revision 0008 and in one migrated to the head, each "
        f"holding a lineage of the given rows for that tenant. SQLite {data['sqlite']}; load average "
        f"{machine.get('load_avg_at_start')} at the start.",
        "",
        "| lineage rows of the tenant | 0008: ms | 0008: plan | head: ms | head: plan | 0008 / head |",
        "| ---: | ---: | --- | ---: | --- | ---: |",
    ]
    for entry in data["sizes"]:
        old, new = entry["0008"], entry["head"]
        lines.append(
            f"| {fmt(entry['rows'])} | {old['ms']} | `{'; '.join(old['plan'])}` | {new['ms']} | "
            f"`{'; '.join(new['plan'])}` | {entry['ratio']} |"
        )
    return lines + [""] + [f"- {n}" for n in data.get("notes", [])] + [""]


def tombstone_lookup_section(results: Path) -> list[str]:
    """A compaction's read and move of a group's tombstones as a tenant's facts grow, at revision 0010 and at the
    head (``bench/tombstone_lookup.py``)."""
    data = load(results / "tombstone_lookup.json")
    if not data:
        return []
    machine = data.get("machine", {})
    lines = [
        "## A compaction's tombstones by manifest (`bench/tombstone_lookup.py`)",
        "",
        f"Milliseconds for `Store.archived_ids` to read which facts a group of {data['group']} manifests holds, and "
        "for `Store.commit_compaction` to point their tombstones at the merged manifest (the two calls compaction "
        f"makes per group), median of {data['repeats']} groups, in a SQLite store migrated to revision 0010 and in "
        "one migrated to the head; the plans are those of the statements the two calls ran on the facts by manifest, "
        "the read's and the commit's (shown once when they are the same). The tenant holds the given facts, "
        f"{data['archived']:.0%} of them tombstones of manifests of {fmt(data['manifest_rows'])} rows, so each "
        f"group moves {fmt(data['group'] * data['manifest_rows'])} tombstones. SQLite {data['sqlite']}; load average "
        f"{machine.get('load_avg_at_start')} at the start.",
        "",
        "| facts of the tenant | 0010: read ms | 0010: commit ms | 0010: plan | head: read ms | head: commit ms "
        "| head: plan | 0010 / head (read, commit) |",
        "| ---: | ---: | ---: | --- | ---: | ---: | --- | ---: |",
    ]
    for entry in data["sizes"]:
        old, new = entry["0010"], entry["head"]
        plans = ["; ".join(dict.fromkeys(at["plan"])) for at in (old, new)]  # the read's and the commit's, once
        lines.append(
            f"| {fmt(entry['rows'])} | {old['read_ms']} | {old['commit_ms']} | `{plans[0]}` "
            f"| {new['read_ms']} | {new['commit_ms']} | `{plans[1]}` | {entry['read_ratio']}, {entry['commit_ratio']} |"
        )
    return lines + [""] + [f"- {n}" for n in data.get("notes", [])] + [""]


def monitor_counts_section(results: Path) -> list[str]:
    """The monitor's measurement of one tenant as its history grows, per code run (``bench/monitor_counts.py``)."""
    data = load(results / "monitor_counts.json")
    if not data or not data.get("runs"):
        return []
    runs = data["runs"]
    labels = list(runs)
    first = runs[labels[0]]
    lines = [
        "## The monitor's counts (`bench/monitor_counts.py`)",
        "",
        "Milliseconds for the monitor's measurement of one tenant (`measure_store`: the layers it charts, the backlog, "
        "the set-aside episodes, the unfinished forgets) and for every count of the tenant (`count_by_layer`, what "
        f"`stats` shows), median of {first['repeats']} calls, in a SQLite store whose one tenant holds the given "
        f"events, an episode per 20 of them with its turns and 0.8 facts per event, {first['archived']:.0%} of them "
        "archived. Each run is the same history measured with the code named.",
        "",
        "| events of the tenant | "
        + " | ".join(f"{label}: monitor ms | {label}: every count ms" for label in labels)
        + " |",
        "| ---: | " + " | ".join("---: | ---:" for _ in labels) + " |",
    ]
    sizes = sorted({entry["events"] for run in runs.values() for entry in run["sizes"]})
    for events in sizes:
        cells = []
        for label in labels:
            entry = next((e for e in runs[label]["sizes"] if e["events"] == events), None)
            cells += [str(entry["monitor_ms"]), str(entry["every_count_ms"])] if entry else ["", ""]
        lines.append(f"| {fmt(events)} | " + " | ".join(cells) + " |")
    same = all(
        len({json.dumps([e["layers"], e["counts"]], sort_keys=True) for e in entries}) == 1
        for events in sizes
        for entries in [[e for run in runs.values() for e in run["sizes"] if e["events"] == events]]
    )
    lines += [
        "",
        "The runs measured "
        + (
            "the same layer sizes and counts at every size."
            if same
            else "different layer sizes or counts: see the JSON."
        ),
        "",
    ]
    for label in labels:
        run = runs[label]
        largest = max(run["sizes"], key=lambda e: e["events"])
        lines.append(
            f"- {label}: SQLite {run['sqlite']}, load average {run['machine'].get('load_avg_at_start')} at the start; "
            f"the monitor's count statements at {fmt(largest['events'])} events: "
            + "; ".join(f"`{plan}`" for plan in largest["plans"])
        )
    return lines + [f"- {n}" for n in data.get("notes", [])] + [""]


def cold_section(results: Path) -> list[str]:
    """Archival search at each size ``bench/cold_search.py`` was run at (``make bench-cold`` for 10^7)."""
    data = load(results / "cold_search.json")
    if not data:
        return []
    lines = [
        "## Archival search (`bench/cold_search.py`)",
        "",
        "An archive built by engram's own archive step (episodes, turns and facts of the workload, archived batch by "
        "batch), then `Memory.search(..., layers=['archival'])` in a fresh process: each tenant's first search (which "
        "loads that tenant's archive) timed apart from the later ones.",
        "",
        "| archived items | tenants | largest tenant | manifests | files | Parquet MB | build (compaction) s "
        "| first search p50 / p95 / p99 ms | later searches p50 / p95 / p99 ms | peak RSS MB |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    runs = sorted((int(k), "", r) for k, r in data.items() if k.isdigit())
    runs += [(int(k.rsplit("_", 1)[1]), " (before)", r) for k, r in data.items() if k.startswith("before_change_")]
    runs += [(int(k.rsplit("_", 1)[1]), " (previous code)", r) for k, r in data.items() if k.startswith("previous_")]
    for _, label, r in sorted(runs, key=lambda run: (run[0], run[1] == "")):
        compacted = r.get("compacted")
        rows = [(label, r, fmt(r.get("build_s")))]
        if compacted:
            rows.append((f"{label} compacted", {**r, **compacted}, f"({fmt(compacted['compaction']['compact_s'])})"))
            for k, rerun in enumerate(compacted.get("reruns", []), start=1):
                rows.append((f"{label} compacted, pass {k + 1}", {**r, **compacted, **rerun}, ""))
        for name, run, seconds in rows:
            first, warm = run["first_search"], run["warm_search"]
            lines.append(
                f"| {fmt(run['items'])}{name} | {fmt(run['tenants'])} | {fmt(run.get('largest_tenant_items'))} "
                f"| {fmt(run.get('manifests'))} | {fmt(run['files'])} | {fmt(run.get('parquet_mb'))} | {seconds} "
                f"| {fmt(first['p50_ms'])} / {fmt(first['p95_ms'])} / {fmt(first['p99_ms'])} "
                f"| {fmt(warm['p50_ms'])} / {fmt(warm['p95_ms'])} / {fmt(warm['p99_ms'])} "
                f"| {fmt(run.get('peak_rss_mb'))} |"
            )
    return lines + [""] + [f"- {n}" for n in data.get("notes", [])] + [""]


def scale_section(results: Path) -> list[str]:
    data = load(results / "scale.json")
    if not data:
        return []
    settings = data["settings"]
    lines = [
        "## Shard workers (`bench/scale.py`)",
        "",
        f"The same backlog ({settings['tenants']} tenants x {settings['sessions']} sessions of {settings['turns']} "
        f"turns) consolidated by one `consolidate_shards` run, then by {settings['workers']} at once, on PostgreSQL "
        f"with one Prefect server, {data['machine']['nproc']} cores. Throughput is episodes over the window from the "
        "first shard claimed to the last released; CPU seconds are counted over the same rounds (machine: every core, "
        "anything but idle).",
        "",
        "| workers | episodes | window s | episodes/s | shards each | worker CPU s | Prefect server CPU s | "
        "machine CPU s | machine CPU s per window s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in data["rounds"]:
        cpu = r["cpu_s"]
        lines.append(
            f"| {r['workers']} | {r['episodes']} | {r['window_s']} | {r['episodes_per_s']} | "
            f"{', '.join(map(str, r['shards_per_worker']))} | {', '.join(map(str, r['worker_run_cpu_s']))} | "
            f"{cpu['prefect_server']} | {cpu['machine']} | {cpu['machine'] / r['window_s']:.2f} |"
        )
    lines += [
        "",
        f"Speedup with {settings['workers']} workers: **{data['speedup']}x**. The shards are disjoint and every "
        "episode is consolidated once (the benchmark checks both, as does "
        "`tests/service/test_server.py::test_two_workers_on_one_pool_split_the_shards_with_no_double_work`). "
        "Throughput scales only with idle cores: the workers share these cores with the Prefect server and "
        "PostgreSQL, and the last column (CPU counted from the start signal to the last exit, over the window) "
        "says how close the machine was to saturation.",
        "",
    ]
    return lines


def embedding_section(results: Path) -> list[str]:
    data = load(results / "embedding.json")
    if not data:
        return []
    return [
        "## Dense embedding throughput",
        "",
        f"{data['model']} on {data['cpus']} CPU cores (`bench/embed_throughput.py`): {data['texts_per_s']} texts/s "
        f"over {data['texts']} short statements, model load {data['model_load_s']} s. At this rate embedding belongs "
        "in the batch flows (consolidate embeds new facts once); a search embeds only its query.",
        "",
    ]


def plot(result: dict[str, Any], out: Path) -> None:
    """Throughput and peak RSS against the number of events, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [p["events"] for p in result["pipelines"]]
    fig, (ax1, ax3, ax2) = plt.subplots(1, 3, figsize=(15, 4.2))
    ax1.plot(sizes, [p["pipeline_events_per_s"] for p in result["pipelines"]], "o-", label="lifecycle (end to end)")
    ax1.plot(sizes, [p["raw_bulk_insert_rows_per_s"] for p in result["pipelines"]], "s--", label="raw bulk insert")
    ax1.plot(sizes, [p["observe_many_rows_per_s"] for p in result["pipelines"]], "^:", label="observe_many alone")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("events")
    ax1.set_ylabel("rows per second")
    ax1.set_title("throughput")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend()
    # Linear cost is a flat line here: seconds per 1,000 events that do not change with the number of events.
    for key, label, style in (
        ("pipeline_s", "lifecycle (end to end)", "o-"),
        ("raw_bulk_insert_s", "raw bulk insert", "s--"),
    ):
        ax3.plot(sizes, [p[key] / p["events"] * 1000 for p in result["pipelines"]], style, label=label)
    ax3.set_xscale("log")
    ax3.set_yscale("log")
    ax3.set_xlabel("events")
    ax3.set_ylabel("seconds per 1,000 events")
    ax3.set_title("cost per event (flat = linear in events)")
    ax3.grid(True, which="both", alpha=0.3)
    ax3.legend()
    ax2.plot(
        sizes,
        [p.get("peak_rss_mb_engram", p["peak_rss_mb"]) for p in result["pipelines"]],
        "o-",
        color="tab:red",
        label="engram's phases",
    )
    ax2.plot(sizes, [p["peak_rss_mb"] for p in result["pipelines"]], "s--", color="tab:gray", label="whole child")
    ax2.legend()
    ax2.set_xscale("log")
    ax2.set_ylim(bottom=0)
    ax2.set_xlabel("events")
    ax2.set_ylabel("peak RSS, MB")
    ax2.set_title("peak memory of the pipeline process")
    ax2.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


# Notes of a run that its figures do not give, kept when the headline keys are recomputed: the sizes the run
# skipped, and the conditions it ran in (``conditions: ...``, added to the JSON by whoever ran it).
RECORDED_NOTES = ("sizes ", "conditions: ")


def refresh(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """Headline keys recomputed from the recorded per-size data (the same functions perf.py uses)."""
    if not result or not result.get("pipelines"):
        return result
    from bench.perf import summarise

    summary = summarise(result["pipelines"], result.get("search_hot"), result.get("search_cold"))
    # Runs recorded before the option existed reported to Prefect's test harness, a SQLite-backed server.
    summary["prefect_server_database"] = result.get("prefect_server_database", "sqlite")
    return {**result, **summary} | (
        {"notes": summary["notes"] + [n for n in result.get("notes", []) if n.startswith(RECORDED_NOTES)]}
    )


def with_largest_cold_search(result: dict[str, Any], results: Path) -> dict[str, Any]:
    """The run's figures, its archival search replaced by ``cold_search.json``'s largest size when that is larger
    (the 10^7-item archive is built by ``make bench-cold``, not within ``make bench``)."""
    sizes = [r for k, r in (load(results / "cold_search.json") or {}).items() if k.isdigit()]
    if not sizes:
        return result
    largest = max(sizes, key=lambda r: r["items"])
    if largest["items"] <= (result.get("search_cold_items") or 0):
        return result

    # An archive as the weekly ``compact_archive`` flow keeps it, when that was measured; of repeated passes, the
    # highest p95.
    def p95(run: dict[str, Any]) -> float:
        return max(
            [run["first_search"]["p95_ms"], run.get("first_search_p95_max_ms") or 0.0]
            + [r["first_search"]["p95_ms"] for r in run.get("reruns", [])]
        )

    searched = largest.get("compacted") or largest
    return {
        **result,
        "search_cold_p95_ms": p95(searched),
        "search_cold_items": largest["items"],
        "search_cold_compacted": "compacted" in largest,
        "search_cold_uncompacted_p95_ms": p95(largest),
    }


def render(results: Path) -> str:
    quick_runs = [(p.stem, refresh(load(p))) for p in sorted(results.glob("quick*.json"))]
    quick_runs = [(n, r) for n, r in quick_runs if r]
    full = refresh(load(results / "full.json"))
    sized = sized_runs(results)
    any_run = full or (quick_runs[-1][1] if quick_runs else None)
    out = [
        "# Benchmarks",
        "",
        "Every number below is read from the JSON files under `bench/results/` by `bench/report.py`; each figure and "
        "its reference were measured in the same run, on the same machine and the same storage (a SQLite file in a "
        "temporary folder). What is measured and how: the docstring of `bench/perf.py`.",
        "",
    ]
    if any_run:
        m = any_run["machine"]
        out += [
            "## Machine",
            "",
            f"- CPU: {m.get('cpu_model')}, {m.get('nproc')} cores (nproc)",
            f"- memory: {m.get('memory_gb')} GiB",
            f"- {m.get('platform')}, Python {m.get('python')}",
            "- " + ", ".join(f"{k} {v}" for k, v in any_run.get("versions", {}).items()),
            "- the machine was shared with other work during the runs: the load average at the start of each run is "
            "in the tables; figures from a loaded machine are lower bounds of what it does idle.",
            "",
        ]
    out += [
        "## How to reproduce",
        "",
        "```",
        "make bench-quick   # bench/results/quick.json, a few minutes (Prefect server on PostgreSQL at PG_URL)",
        "python bench/perf.py --quick --prefect-database sqlite --out bench/results/quick_prefect_sqlite.json",
        "make bench         # bench/results/full.json and full.png, about an hour",
        "make bench-large   # bench/results/large.json: 10^5 and 2 x 10^6 events, 40 to 75 minutes",
        "make bench-1e6     # bench/results/large_1e6.json: 10^5 and 10^6 events, about twenty minutes",
        "make bench-1e7     # bench/results/large_1e7.json: 10^5 and 10^7 events, about four hours",
        "make bench-scale   # bench/results/scale.json: one shard worker against two, on PostgreSQL",
        "make bench-cold    # bench/results/cold_search.json: archival search over 10^7 archived items",
        "python bench/archive_throughput.py   # bench/results/archive_throughput.json, three minutes",
        "python bench/archive_reads.py        # bench/results/archive_reads.json, under a minute",
        "python bench/flow_overhead.py        # bench/results/flow_overhead.json, under a minute",
        "python bench/index_growth.py         # bench/results/index_growth.json, random against ordered keys",
        "python bench/index_growth.py --rows 4000000 --step 500000 --variants random ordered ordered_transition_id"
        " random_cache --out bench/results/index_growth_variants.json   # ten minutes",
        "python bench/index_growth.py --rows 4000000 --step 500000 --variants mixed mixed_item_keyed"
        " --out bench/results/index_growth_item_keyed.json   # five minutes",
        "python bench/index_growth.py --rows 4000000 --step 500000 --variants mixed_item_keyed"
        " item_keyed_ordered_facts --out bench/results/index_growth_ordered_facts.json   # four minutes",
        "python bench/lineage_lookup.py       # bench/results/lineage_lookup.json, the lineage's lookup by event,"
        " revision 0008 against the head, two minutes",
        "python bench/tombstone_lookup.py     # bench/results/tombstone_lookup.json, a compaction's tombstones by"
        " manifest, revision 0010 against the head, two minutes",
        "python bench/monitor_counts.py --label NAME   # bench/results/monitor_counts.json, the monitor's counts of a"
        " tenant, filed under NAME beside other code's runs, two minutes a run",
        "python bench/report.py   # rewrites this file from the JSON",
        "```",
        "",
        "The workload is `bench/workload.py` (seeded, streamed in batches of 5,000 events): 100 tenants with "
        "Zipf-skewed activity, sessions of 6-40 turns spread over 180 days, session topics Zipf-distributed over 500 "
        'topics, and user facts that are restated and that change ("I live in X" moves to another city now and '
        "then). Embeddings are off in these runs (`ENGRAM_EMBEDDINGS=false`).",
        "",
    ]
    if quick_runs:
        out += ["## Quick runs (`make bench-quick`)", ""] + headline_table(quick_runs) + [""]
        notes = sorted({n for _, r in quick_runs for n in r.get("notes", [])})
        out += [f"- {n}" for n in notes] + [""]
    if full:
        out += ["## Full run (`make bench`)", "", "Sizes run: " + ", ".join(fmt(s) for s in full["sizes_run"])]
        if full.get("sizes_skipped"):
            out[-1] += "; not run (projected past the time budget): " + ", ".join(fmt(s) for s in full["sizes_skipped"])
        out += ["", ""] + headline_table([("full", full)]) + [""]
        out += ["### Per size", ""] + size_table(full) + [""]
        out += ["![throughput and memory against size](bench/results/full.png)", ""]
        out += ["### Peak memory by phase (RSS, MB)", ""] + rss_table(full) + [""] + heap_table(full)
        out += [f"- {n}" for n in full.get("notes", [])] + [""]
    # The goals are judged on the full run, else on quick.json (what ``make bench-quick`` last wrote).
    newest = dict(quick_runs).get("quick") or (quick_runs[-1][1] if quick_runs else None)
    target = full or newest
    if target:
        label = "full run" if full else ("quick" if dict(quick_runs).get("quick") else quick_runs[-1][0])
        top = target["pipelines"][-1]
        out += [f"## Goals ({label})", ""] + goals(with_largest_cold_search(target, results))
        for make_target, run in sized:
            out += larger_sizes_goals(run, make_target)
        out += [""]
        out += [
            f"## Where the lifecycle time goes ({label}, {fmt(top['events'])} events)",
            "",
            "Each task's function timed from inside its task run; the rest of the lifecycle's wall time is Prefect "
            "(flow and task run creation, state changes, API calls, logging).",
            "",
        ]
        out += task_table(top) + [""]
        if len(target["pipelines"]) > 1:
            out += [
                f"### Cost per event by task and size ({label}, microseconds per event)",
                "",
                "A row that rises from left to right is a task whose cost grows faster than the number of events.",
                "",
            ]
            out += task_growth_table(target) + [""]
        out += write_bound_section(top)
        prof = target.get("profile") or {}
        if prof.get("files"):
            out += [
                f"pyinstrument profiles of a {fmt(prof.get('events'))}-event run: "
                + ", ".join(f"`bench/results/{f}`" for f in prof["files"]),
                "",
            ]
    for make_target, run in sized:
        out += large_section(run, make_target)
    out += locomo_section(results)
    out += embedding_section(results)
    out += bulk_ingest_section(results)
    out += archive_section(results)
    out += archive_reads_section(results)
    out += prefect_server_section(quick_runs)
    out += index_growth_section(results)
    out += lineage_lookup_section(results)
    out += tombstone_lookup_section(results)
    out += monitor_counts_section(results)
    out += flow_overhead_section(results)
    out += cold_section(results)
    out += scale_section(results)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    full = load(args.results / "full.json")
    if full and not (args.results / "full.png").exists():
        plot(full, args.results / "full.png")
    args.out.write_text(render(args.results))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
