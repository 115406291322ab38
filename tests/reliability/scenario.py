"""What the reliability tests share: a fresh store on either backend, an archive bucket, memory filled through the
flows themselves (so every move is audited with a run id), a flow in a subprocess to kill, and "nothing of the
subject is left anywhere"."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from engram import Memory
from engram.archive import ArchiveLocation, decode_parquet, provision_archive, read_file
from engram.store import EPISODES, EVENTS, QUARANTINE, SEMANTIC, TURNS, WORKING
from engram.testing import FixedClock
from engram.text import mentions
from tests.conftest import T0, s3_location
from tests.flows.helpers import conversation_rows

REPO = Path(__file__).resolve().parents[2]
AS_OF = T0 + timedelta(days=60)  # every session is idle, every task-scoped item past its TTL
LATER = AS_OF + timedelta(days=365)  # everything consolidated by AS_OF is cold
TENANT = "acme"
SUBJECT = "Lisbon"


def soak_trials(default: int = 1) -> int:
    """Trials per case: ``ENGRAM_SOAK_TRIALS`` (``make soak`` sets 20), else ``default``."""
    return max(1, int(os.environ.get("ENGRAM_SOAK_TRIALS", default)))


def archive_env(location: ArchiveLocation) -> dict[str, str]:
    """The ``ENGRAM_ARCHIVE_*`` variables that point the flows (in this process or a child) at ``location``."""
    return {
        "ENGRAM_ARCHIVE_URL": location.url,
        "ENGRAM_ARCHIVE_ENDPOINT": location.endpoint or "",
        "ENGRAM_ARCHIVE_REGION": location.region or "",
        "ENGRAM_ARCHIVE_ACCESS_KEY": location.access_key.get_secret_value() if location.access_key else "",
        "ENGRAM_ARCHIVE_SECRET_KEY": location.secret_key.get_secret_value() if location.secret_key else "",
    }


def use_archive(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> ArchiveLocation:
    """A fresh, provisioned bucket on ``endpoint``, set as the archive of every flow this test runs."""
    location = s3_location(endpoint)
    provision_archive(location)
    for key, value in archive_env(location).items():
        monkeypatch.setenv(key, value)
    return location


def observe(memory: Memory, sessions: int, task_items: int = 0, bad_rows: int = 0) -> list[dict[str, Any]]:
    """Conversations, task-scoped scratch items (expire after their TTL) and rows written straight to the sensory
    table that the ingest gate must quarantine; returns every row observed."""
    rows = conversation_rows(TENANT, sessions=sessions, start=T0)
    rows += [
        {
            "tenant": TENANT,
            "session": f"job-{i}",
            "actor": "agent",
            "text": f"scratch note {i} for the running task",
            "at": T0 + timedelta(hours=i),
            "event_id": f"task-{i}",
            "metadata": {"scope": "task"},
        }
        for i in range(task_items)
    ]
    memory.observe_many(rows)
    if bad_rows:
        # Empty texts bypass the API's checks here; the gate's byte-length expectation catches them.
        with memory.store.write() as conn:
            conn.execute(
                insert(EVENTS),
                [
                    {
                        "tenant": TENANT,
                        "event_id": f"bad-{i}",
                        "session_id": f"{TENANT}-s{i}",
                        "actor": "Caroline",
                        "text": "",
                        "at": T0 + timedelta(days=i, minutes=30),
                        "metadata": {},
                        "received_at": T0,
                        "routed_at": None,
                        "seq": 0,
                    }
                    for i in range(bad_rows)
                ],
            )
    return rows


def run_flows_upto(store_url: str, stage: str, archive_as_of: Any = LATER) -> None:
    """Run the flows, in process, that come before ``stage``: ingest, close_sessions, consolidate, archive."""
    from flows.archive import archive
    from flows.consolidate import consolidate
    from flows.ingest import ingest
    from flows.sessions import close_sessions

    order = ["ingest", "close_sessions", "consolidate", "archive"]
    for name in order[: order.index(stage)]:
        if name == "ingest":
            ingest(store_url=store_url, as_of=AS_OF)
        elif name == "close_sessions":
            close_sessions(store_url=store_url, as_of=AS_OF)
        elif name == "consolidate":
            consolidate(store_url=store_url, as_of=AS_OF)
        else:
            archive(store_url=store_url, as_of=archive_as_of)


def memory_at(store_url: str, location: ArchiveLocation | None, tmp_path: Path) -> Memory:
    return Memory(store_url, location or (tmp_path / "archive").as_uri(), clock=FixedClock(T0))


class FlowProcess:
    """A flow in a subprocess (``tests.flows.flow_process``) reporting to the session's Prefect API."""

    def __init__(
        self,
        flow: str,
        store_url: str,
        as_of: Any,
        *,
        args: tuple[str, ...] = (),
        extra_env: dict[str, str] | None = None,
    ):
        env = dict(os.environ)
        env["PREFECT_API_URL"] = os.environ["ENGRAM_TEST_PREFECT_API_URL"]
        env.update(extra_env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.flows.flow_process", flow, store_url, as_of.isoformat(), *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self._stderr: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.strip())

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr[-60:])

    def wait_ready(self, timeout: float = 120) -> None:
        """Block until the flow's modules are imported and the run is about to start."""
        try:
            while self._lines.get(timeout=timeout) != "ready":
                pass
        except queue.Empty:
            self.kill()
            raise AssertionError(f"the flow process was not ready in {timeout} s: {self.stderr}") from None

    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> bool:
        """SIGKILL; returns whether the process was still running when killed."""
        alive = self.running()
        if alive:
            self.proc.kill()
        self.proc.wait()
        return alive

    def wait(self, timeout: float = 300) -> int:
        return self.proc.wait(timeout=timeout)


def subject_left(memory: Memory, location: ArchiveLocation | None, tenant: str, subject: str) -> list[str]:
    """Every place, hot or archived, that still names ``subject``: must be empty after a forget."""
    found: list[str] = []
    with memory.store.read() as conn:
        for table, key, col in (
            (EVENTS, "event_id", "text"),
            (WORKING, "item_id", "text"),
            (TURNS, "item_id", "text"),
            (SEMANTIC, "item_id", "text"),
            (SEMANTIC, "item_id", "rendered"),
            (EPISODES, "episode_id", "summary"),
            (QUARANTINE, "quarantine_id", "raw_payload"),
            (QUARANTINE, "quarantine_id", "reason"),
        ):
            for r in conn.execute(select(table.c[key], table.c[col]).where(table.c.tenant == tenant)):
                if r[1] and mentions(r[1], subject):
                    found.append(f"{table.name}.{col}:{r[0]}")
    if location is not None:
        for manifest in memory.store.manifests(tenant, ["committed"]):
            for entry in manifest["files"]:
                for r in decode_parquet(entry["table"], read_file(location, manifest, entry)):
                    text = r.get("text") or r.get("summary") or ""
                    if mentions(text, subject) or mentions(r.get("rendered") or "", subject):
                        found.append(f"archive:{entry['path']}:{r.get('item_id') or r.get('episode_id')}")
    return found
