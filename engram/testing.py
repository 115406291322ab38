"""What users need to test code that uses engram: a fixed clock, a fresh temporary memory, a Prefect server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from engram.memory import Memory


class FixedClock:
    """A clock that stands still until moved.

    Example:
        >>> clock = FixedClock(datetime(2024, 1, 1, tzinfo=UTC))
        >>> clock.advance(minutes=5)
        >>> clock()
        datetime.datetime(2024, 1, 1, 0, 5, tzinfo=datetime.timezone.utc)
    """

    def __init__(self, now: datetime | None = None):
        self.now = now or datetime(2024, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now = self.now + timedelta(**delta)


@contextmanager
def temporary_memory(clock: FixedClock | None = None, store: str | None = None) -> Iterator[Memory]:
    """A ``Memory`` on a fresh SQLite file and archive folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="engram-") as tmp:
        root = Path(tmp)
        memory = Memory(
            store or f"sqlite:///{root / 'engram.db'}",
            (root / "archive").as_uri(),
            clock=clock,
        )
        try:
            yield memory
        finally:
            memory.close()


def create_pg_schema(server_url: str, prefix: str = "t") -> tuple[str, str]:
    """A new private schema on a PostgreSQL server, and the store URL whose connections use it (``search_path``):
    tests and benchmarks on one database never see each other's rows. Drop it with ``drop_pg_schema``."""
    import uuid

    from sqlalchemy import create_engine, text

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = create_engine(server_url)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    sep = "&" if "?" in server_url else "?"
    return schema, f"{server_url}{sep}options=-csearch_path%3D{schema}"


def drop_pg_schema(server_url: str, schema: str) -> None:
    """Drop a schema made by ``create_pg_schema`` and everything in it."""
    from sqlalchemy import create_engine, text

    engine = create_engine(server_url)
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


def free_port() -> int:
    """A TCP port free on loopback right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """End a process started with ``start_new_session=True``, and its process group (a server's or a worker's
    children): SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_until_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"prefect server did not answer in {timeout} s:\n{log.read_text()[-3000:]}")


@contextmanager
def prefect_server(
    home: Path,
    database_server: str | None = None,
    *,
    env: dict[str, str] | None = None,
    port: int | None = None,
    startup_timeout: float = 180,
) -> Iterator[str]:
    """``prefect server start`` on a free loopback port, in its own process group, with ``PREFECT_HOME`` ``home``
    and its log in ``home/server.log``; yields its URL (``http://127.0.0.1:PORT``, the API under ``/api``) once it
    answers, and stops it afterwards.

    With ``database_server`` (a PostgreSQL URL), the server keeps its state in a fresh database on that server,
    dropped afterwards, as a fleet runs it; else in a SQLite file in ``home``, which turns away concurrent writes
    with 503 (Prefect's client then waits about two seconds before it retries). ``env`` is the server's environment
    (default: this process's, without its ``PREFECT_`` settings); ``port`` a free port (default: one found free).
    """
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = env if env is not None else {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    url = f"http://127.0.0.1:{port or free_port()}"
    server_env = {**base, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    admin, database = None, f"prefect_{uuid.uuid4().hex[:12]}"
    if database_server is not None:
        admin = create_engine(database_server, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{database}"'))
        server_url = make_url(database_server).set(drivername="postgresql+asyncpg", database=database, query={})
        server_env["PREFECT_API_DATABASE_CONNECTION_URL"] = server_url.render_as_string(hide_password=False)
    log = home / "server.log"
    proc = None
    try:
        with log.open("w") as out:
            proc = subprocess.Popen(
                [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1"]
                + ["--port", url.rsplit(":", 1)[1]],
                env=server_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_until_healthy(url, proc, log, startup_timeout)
        yield url
    finally:
        if proc is not None:
            stop_process_group(proc, timeout=30)
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            admin.dispose()
