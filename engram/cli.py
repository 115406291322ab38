"""The ``engram`` command: load files into memory, search it, inspect an item's history, forget, run the lifecycle.

Every command opens the store and archive given by ``--store`` and ``--archive`` (default: ``ENGRAM_STORE_URL`` and
``ENGRAM_ARCHIVE_URL``, else the embedded defaults in the data folder). A user error (an ``EngramError``: a bad
value, an unknown item, a store that cannot be opened) prints one red line ``error: <message>`` on stderr and exits
with status 2; tables go to stdout, progress bars to stderr.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from engram import demo_data
from engram.errors import EngramError, InvalidInput
from engram.loaders import jsonl_rows, locomo_rows
from engram.memory import IngestReport, Memory
from engram.search import Hit
from engram.settings import Settings
from engram.validation import Limits, validate_event

USER_ERROR = 2
SETUP_ERROR = 1
READERS: dict[str, Callable[[Path], Iterator[dict[str, Any]]]] = {"jsonl": jsonl_rows, "locomo": locomo_rows}

app = typer.Typer(
    name="engram",
    help="Layered memory for long-lived applications: ingest, search, audit, forget.",
    no_args_is_help=True,
    add_completion=False,
    # A traceback's local variables can hold store URLs with passwords: never print them.
    pretty_exceptions_show_locals=False,
)

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="Hot store URL (sqlite:///path.db or postgresql://user@host/db); default ENGRAM_STORE_URL, "
        "else SQLite in the data folder.",
        show_default=False,
    ),
]
ArchiveOption = Annotated[
    str | None,
    typer.Option(
        "--archive",
        help="Archive URL (file:///folder or s3://bucket/prefix); default ENGRAM_ARCHIVE_URL, "
        "else a folder in the data folder.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


# -- output helpers ----------------------------------------------------------------------------------------------


def _stdout() -> Console:
    # Built per call, so the width follows the environment (COLUMNS) of the invocation.
    return Console(highlight=False)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


def _fail(message: str, code: int = USER_ERROR) -> NoReturn:
    """Print one red line ``error: ...`` on stderr and exit with ``code``."""
    one_line = " ".join(str(message).split())
    _stderr().print(Text(f"error: {one_line}", style="red"), soft_wrap=True)
    raise typer.Exit(code)


def _settings_error(exc: Any) -> str:
    """A pydantic error of the settings as one line naming each variable: ``ENGRAM_LEASE_SECONDS: ...``."""
    parts = []
    for error in exc.errors():
        name = "_".join(str(p) for p in error.get("loc", ())).upper()
        parts.append(f"ENGRAM_{name}: {error.get('msg', 'is not valid')}, got {str(error.get('input'))[:40]!r}")
    return "; ".join(parts) or str(exc)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn engram's errors into one line and exit status 2, never a traceback."""
    from pydantic import ValidationError

    try:
        yield
    except EngramError as exc:
        _fail(str(exc))
    except ValidationError as exc:  # a setting from the environment (ENGRAM_*) that is not valid
        _fail(_settings_error(exc))


@contextmanager
def _open_memory(store: str | None, archive: str | None) -> Iterator[Memory]:
    with _user_errors():
        memory = Memory(store, archive)
    try:
        with _user_errors():
            yield memory
    finally:
        memory.close()


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    return value


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(_jsonable(value), ensure_ascii=False, default=str))


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeElapsedColumn(),
        console=_stderr(),
    )


def _report_table(report: IngestReport, title: str) -> Table:
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("count", style="bold")
    table.add_column("rows", justify="right")
    table.add_row("received", f"{report.received:,}")
    table.add_row("accepted", f"{report.accepted:,}")
    table.add_row("duplicates", f"{report.duplicates:,}")
    table.add_row("quarantined", f"{report.quarantined:,}")
    for name, count in sorted(report.reasons.items()):
        table.add_row(f"  quarantined for field {name}", f"{count:,}")
    return table


def _hits_table(hits: Iterable[Hit], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("hit", overflow="fold")
    table.add_column("layer")
    table.add_column("score", justify="right")
    table.add_column("item id", overflow="fold")
    for rank, hit in enumerate(hits, start=1):
        table.add_row(str(rank), hit.text, hit.layer, f"{hit.score:.2f}", hit.item_id)
    return table


def _counts_table(columns: Mapping[str, Mapping[str, int]], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("layer")
    for name in columns:
        table.add_column(name, justify="right")
    keys: list[str] = []
    for counts in columns.values():
        keys += [k for k in counts if k not in keys]
    for key in keys:
        table.add_row(key, *(f"{counts.get(key, 0):,}" for counts in columns.values()))
    return table


def _inline(value: Any) -> str:
    """A flow's result on one line: ``closed: 3, discarded: 0`` for a dict."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_inline(v)}" for k, v in value.items()) or "-"
    return str(value)


def _summary_table(summary: Mapping[str, Any], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("step")
    table.add_column("result", overflow="fold")
    for step, result in summary.items():
        table.add_row(str(step), _inline(result))
    return table


# -- ingest ------------------------------------------------------------------------------------------------------


def _batches(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _file_rows(reader: Callable[[Path], Iterator[dict[str, Any]]], path: Path, fmt: str) -> Iterator[dict[str, Any]]:
    """The reader's rows; a file the reader cannot read at all becomes an ``InvalidInput`` on ``file``."""
    try:
        yield from reader(path)
    except InvalidInput:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise InvalidInput("file", f"{path} is not a {fmt} file: {exc}") from exc
    except (AttributeError, TypeError) as exc:
        # A JSON document of another shape than the reader expects (a list of numbers, say).
        raise InvalidInput("file", f"{path} does not have the shape of a {fmt} file: {exc}") from exc
    except OSError as exc:
        raise InvalidInput("file", f"cannot read {path}: {exc.strerror or exc}") from exc


def _count_lines(path: Path) -> int:
    lines = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            lines += chunk.count(b"\n")
    return lines


def _ingest(
    memory: Memory,
    rows: Iterable[dict[str, Any]],
    batch_size: int,
    description: str,
    total: int | None = None,
) -> IngestReport:
    """Write ``rows`` in batches with a progress bar; returns the summed report."""
    report = IngestReport()
    with _progress() as progress:
        task = progress.add_task(description, total=total)
        for batch in _batches(rows, batch_size):
            report += memory.observe_many(batch, batch_size=batch_size)
            progress.advance(task, len(batch))
        # Blank lines count toward the estimate but are not rows: finish the bar at what was read.
        progress.update(task, total=report.received, completed=report.received)
    return report


@app.command()
def ingest(
    file: Annotated[Path, typer.Argument(help="The file to load.", show_default=False)],
    fmt: Annotated[str, typer.Option("--format", "-f", help="jsonl (one event per line) or locomo.")] = "jsonl",
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Rows per write; default ENGRAM_WRITE_BATCH_SIZE.")
    ] = None,
    as_json: JsonOption = False,
    store: StoreOption = None,
    archive: ArchiveOption = None,
) -> None:
    """Load events from a file into the sensory layer; bad rows are quarantined, resent rows are skipped."""
    reader = READERS.get(fmt)
    if reader is None:
        _fail(f"--format: must be one of {', '.join(READERS)}; got {fmt!r}")
    if batch_size is not None and batch_size < 1:
        _fail(f"--batch-size: must be a positive number of rows; got {batch_size}")
    if not file.exists():
        _fail(f"file: {file} does not exist")
    if not file.is_file():
        _fail(f"file: {file} is not a file")
    with _open_memory(store, archive) as memory:
        size = batch_size or memory.settings.write_batch_size
        total = _count_lines(file) if fmt == "jsonl" else None
        report = _ingest(memory, _file_rows(reader, file, fmt), size, f"ingesting {file.name}", total)
    if as_json:
        _print_json(asdict(report))
    else:
        _stdout().print(_report_table(report, f"ingested {file}"))


# -- reading -----------------------------------------------------------------------------------------------------


@app.command()
def search(
    tenant: Annotated[str, typer.Argument(help="Whose memory to search.", show_default=False)],
    query: Annotated[str, typer.Argument(help="Free text.", show_default=False)],
    limit: Annotated[int, typer.Option("--limit", "-n", help="The most hits to show (1-1000).")] = 10,
    layer: Annotated[
        list[str] | None, typer.Option("--layer", help="Only this layer; repeat for several.", show_default=False)
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="Only items at or after this ISO-8601 time.")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Only items before this ISO-8601 time.")] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", help="Only items with this tag; repeat for several.", show_default=False),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per hit.")] = False,
    store: StoreOption = None,
    archive: ArchiveOption = None,
) -> None:
    """Search a tenant's memory; hits come best first, each rendered with its date and speaker."""
    with _open_memory(store, archive) as memory:
        hits = memory.search(tenant, query, limit=limit, layers=layer or None, since=since, until=until, tags=tag)
    if as_json:
        for hit in hits:
            _print_json(asdict(hit))
        return
    if not hits:
        _stdout().print(Text("no hits", style="dim"))
        return
    _stdout().print(_hits_table(hits))


@app.command()
def stats(
    tenant: Annotated[str | None, typer.Option("--tenant", help="One tenant (default: all).")] = None,
    as_json: JsonOption = False,
    store: StoreOption = None,
    archive: ArchiveOption = None,
) -> None:
    """How many items each layer holds, plus quarantined rows and events received."""
    with _open_memory(store, archive) as memory:
        counts = memory.stats(tenant)
    if as_json:
        _print_json(counts)
        return
    _stdout().print(_counts_table({"items": counts}, f"memory of {tenant or 'all tenants'}"))


@app.command()
def history(
    tenant: Annotated[str, typer.Argument(help="Whose item it is.", show_default=False)],
    item_id: Annotated[str, typer.Argument(help="An item id, as search shows it.", show_default=False)],
    store: StoreOption = None,
    archive: ArchiveOption = None,
) -> None:
    """Where an item came from and every move since, with the flow run that made it."""
    with _open_memory(store, archive) as memory:
        entries = memory.history(tenant, item_id)
    table = Table(title=f"history of {item_id}", title_justify="left")
    table.add_column("time (UTC)")
    table.add_column("action")
    table.add_column("from -> to")
    table.add_column("flow run", overflow="fold")
    table.add_column("item id", overflow="fold")
    for e in entries:
        table.add_row(
            _when(e.at),
            e.action,
            f"{e.from_layer or '-'} -> {e.to_layer or '-'}",
            e.flow_run_id or "-",
            e.item_id,
        )
    _stdout().print(table)


@app.command()
def get(
    tenant: Annotated[str, typer.Argument(help="Whose item it is.", show_default=False)],
    item_id: Annotated[str, typer.Argument(help="An item id, as search shows it.", show_default=False)],
    as_json: JsonOption = False,
    store: StoreOption = None,
    archive: ArchiveOption = None,
) -> None:
    """One item, from whichever layer holds it."""
    with _open_memory(store, archive) as memory:
        item = memory.get(tenant, item_id)
    fields = asdict(item)
    if as_json:
        _print_json(fields)
        return
    table = Table(title=f"item {item_id}", title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in fields.items():
        if value is None or value == ():
            continue
        if isinstance(value, datetime):
            shown = _when(value)
        elif isinstance(value, tuple):
            shown = ", ".join(map(str, value))
        else:
            shown = str(value)
        table.add_row(name, shown)
    _stdout().print(table)


# -- forgetting and the lifecycle ---------------------------------------------------------------------------------


@app.command()
def forget(
    tenant: Annotated[str, typer.Argument(help="Whose memory.", show_default=False)],
    subject: Annotated[
        str | None, typer.Option("--subject", help="Forget what names this subject (default: the whole tenant).")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: forgetting cannot be undone.")] = False,
    store: StoreOption = None,
    archive: ArchiveOption = None,
) -> None:
    """Remove a subject's memories, or a tenant's whole memory, and print the deletion receipt (counts only)."""
    if not yes:
        _fail("--yes: forgetting removes memory for good; pass --yes to confirm")
    with _open_memory(store, archive) as memory:
        receipt = memory.forget(tenant, subject)
    table = Table(title="removed", title_justify="left")
    table.add_column("from")
    table.add_column("rows", justify="right")
    for name, count in receipt.removed.items():
        table.add_row(name, f"{count:,}")
    table.add_row("total", f"{receipt.total:,}", style="bold")
    out = _stdout()
    out.print(f"deletion receipt: {receipt.receipt_id}", soft_wrap=True)
    out.print(f"tenant: {receipt.tenant}")
    out.print(f"subject sha256: {receipt.subject_sha256 or '(whole tenant)'}")
    out.print(f"at: {_when(receipt.at)} UTC")
    out.print(table)


def _run_lifecycle(memory: Memory, as_of: str | None = None, tenant: str | None = None) -> dict[str, Any]:
    try:
        return memory.run_lifecycle(as_of=as_of, tenant=tenant)
    except ImportError as exc:
        _fail(f"cannot load the lifecycle flows: {exc}", SETUP_ERROR)


@app.command()
def lifecycle(
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Run as if it were this ISO-8601 time (default: now).")
    ] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="One tenant (default: all).")] = None,
    as_json: JsonOption = False,
    store: StoreOption = None,
    archive: ArchiveOption = None,
) -> None:
    """Run the lifecycle flow once (every scheduled move between layers, in order) and print its counts."""
    with _open_memory(store, archive) as memory:
        summary = _run_lifecycle(memory, as_of, tenant)
    if as_json:
        _print_json(summary)
        return
    _stdout().print(_summary_table(summary, "lifecycle"))


@app.command("set-aside")
def set_aside(
    tenant: Annotated[str | None, typer.Option("--tenant", help="One tenant (default: all).")] = None,
    as_json: JsonOption = False,
    store: StoreOption = None,
    archive: ArchiveOption = None,
) -> None:
    """The episodes set aside after ENGRAM_CONSOLIDATE_ATTEMPTS consolidation runs failed on them (their errors are
    in the quarantine, source 'consolidate'); `engram retry-held` gives them their attempts back."""
    with _open_memory(store, archive) as memory:
        rows = memory.set_aside(tenant)
    if as_json:
        for row in rows:
            _print_json(row)
        return
    if not rows:
        _stdout().print(Text("no episode set aside", style="dim"))
        return
    table = Table(title="episodes set aside", title_justify="left")
    for name in ("tenant", "episode", "session", "ended (UTC)", "failed runs"):
        table.add_column(name, overflow="fold", justify="right" if name == "failed runs" else "left")
    for r in rows:
        table.add_row(
            r["tenant"], r["episode_id"], r["session_id"], _when(r["ended_at"]), str(r["consolidation_failures"])
        )
    _stdout().print(table)


@app.command("retry-held")
def retry_held(
    tenant: Annotated[str, typer.Argument(help="Whose episodes.", show_default=False)],
    episode: Annotated[
        list[str] | None, typer.Option("--episode", help="One episode id (repeatable; default: every one).")
    ] = None,
    store: StoreOption = None,
    archive: ArchiveOption = None,
) -> None:
    """Give a tenant's set-aside episodes their consolidation attempts back: the next run takes them up."""
    with _open_memory(store, archive) as memory:
        n = memory.retry_set_aside(tenant, episode or None)
    _stdout().print(f"{n} episode(s) of {tenant} will be retried by the next consolidation run after their lease")


@app.command()
def resummarize(
    tenant: Annotated[str, typer.Argument(help="Whose episodes.", show_default=False)],
    as_json: JsonOption = False,
    store: StoreOption = None,
    archive: ArchiveOption = None,
) -> None:
    """Summarize again the episodes written without a summary because the summarizer failed (quarantine source
    'close_sessions', field 'summary'), once it is fixed, and print the counts."""
    with _open_memory(store, archive) as memory:
        counts = memory.resummarize(tenant)
    if as_json:
        _print_json(counts)
        return
    _stdout().print(
        f"{counts['resummarized']} of {counts['episodes']} episode(s) of {tenant} written without a summary now have"
        f" one; {counts['failed']} failed again, {counts['empty']} came out empty, {counts['skipped']} skipped"
    )


# -- moving a tenant ---------------------------------------------------------------------------------------------


@app.command("export")
def export_(
    tenant: Annotated[str, typer.Argument(help="Whose memory to export.", show_default=False)],
    dest: Annotated[
        str, typer.Argument(help="An empty folder, file:// URL or s3://bucket/prefix.", show_default=False)
    ],
    as_json: JsonOption = False,
    store: StoreOption = None,
    archive: ArchiveOption = None,
) -> None:
    """Write a tenant's whole memory (every layer, lineage, history, archived objects) as Parquet plus a manifest."""
    with _open_memory(store, archive) as memory:
        manifest = memory.export(tenant, dest)
    if as_json:
        _print_json({"url": dest, "manifest": json.loads(manifest.to_json())})
        return
    table = Table(title=f"exported {manifest.tenant} to {dest}", title_justify="left")
    table.add_column("table")
    table.add_column("rows", justify="right")
    table.add_column("sha256", overflow="fold")
    for f in manifest.files:
        table.add_row(f.table, f"{f.rows:,}", f.sha256)
    table.add_row("archived objects", f"{len(manifest.archive_objects):,}", "", style="bold")
    _stdout().print(table)


@app.command("import")
def import_(
    src: Annotated[str, typer.Argument(help="An export written by `engram export`.", show_default=False)],
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Import under this tenant id instead of the exported one.")
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Delete the tenant's current memory first, in the same transaction.")
    ] = False,
    as_json: JsonOption = False,
    store: StoreOption = None,
    archive: ArchiveOption = None,
) -> None:
    """Restore an export into this store, after checking every file's row count and sha256 against its manifest."""
    with _open_memory(store, archive) as memory:
        report = memory.import_tenant(src, tenant=tenant, replace=replace)
    if as_json:
        _print_json(asdict(report))
        return
    table = Table(title=f"imported {report.source_tenant} as {report.tenant}", title_justify="left")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, count in report.rows.items():
        table.add_row(name, f"{count:,}")
    table.add_row("archived objects", f"{report.archive_objects:,}", style="bold")
    _stdout().print(table)


# -- demo --------------------------------------------------------------------------------------------------------


def _quarantine_reasons(rows: Iterable[Mapping[str, Any]], limits: Limits) -> list[tuple[str, str, str]]:
    """(event id, field, reason) for each row that validation rejects, as quarantine records them."""
    out = []
    for row in rows:
        try:
            validate_event(row, limits)
        except InvalidInput as exc:
            out.append((str(row.get("event_id")), exc.field, exc.reason))
    return out


@app.command()
def demo(
    store: Annotated[
        str | None,
        typer.Option("--store", help="Use this store instead of a fresh demo folder in the data folder."),
    ] = None,
    archive: ArchiveOption = None,
) -> None:
    """Load a small built-in conversation, run the lifecycle, search it, and print what happened."""
    out = _stdout()
    if store is None:
        root = Settings().data_dir / "demo"
        if root.exists():
            # The demo's own folder, wiped so that every run starts from the same empty memory.
            shutil.rmtree(root)
        store = f"sqlite:///{root / 'engram.db'}"
        archive = archive or (root / "archive").resolve().as_uri()
    with _open_memory(store, archive) as memory:
        out.print(Text("engram demo", style="bold"))
        out.print(f"store: {memory.store.safe_url}", soft_wrap=True)
        out.print(f"archive: {memory.archive_url}", soft_wrap=True)
        rows = demo_data.demo_rows()
        total = demo_data.turn_count() + len(demo_data.BAD_ROWS)
        report = _ingest(memory, rows, memory.settings.write_batch_size, "ingesting the demo", total)
        out.print(_report_table(report, "ingest"))
        rejected = _quarantine_reasons(demo_data.BAD_ROWS, memory.limits)
        if rejected:
            table = Table(title="quarantined rows", title_justify="left")
            table.add_column("event id")
            table.add_column("field")
            table.add_column("reason", overflow="fold")
            for event_id, name, reason in rejected:
                table.add_row(event_id, name, reason)
            out.print(table)
        before = memory.stats()
        summary = _run_lifecycle(memory)
        out.print(_summary_table(summary, "lifecycle"))
        after = memory.stats()
        out.print(_counts_table({"before": before, "after": after}, "items per layer"))
        for tenant, question in demo_data.QUESTIONS:
            hits = memory.search(tenant, question, limit=3)
            out.print(_hits_table(hits, f"{tenant}: {question}"))


if __name__ == "__main__":
    app()
