"""A real Prefect server for the service tests: started once per session in a subprocess on a free loopback port,
with its own PREFECT_HOME; workers, ``prefect deploy`` and ``prefect deployment run`` talk to it as users do."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engram.testing import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class PrefectServer:
    url: str  # http://127.0.0.1:PORT
    home: Path
    env: dict[str, str]  # the environment of a client, a worker or the CLI pointed at this server
    log: Path

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def cli(self, *args: str, timeout: float = 180, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run ``prefect ARGS`` from the repository against this server; fails the test with its output on error."""
        proc = subprocess.run(
            [str(BIN / "prefect"), *args],
            cwd=REPO,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert proc.returncode == 0, f"prefect {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        return proc

    def worker(self, pool: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """``prefect worker start --pool POOL`` in the background (its own process group, output in the home)."""
        log = open(self.home / f"worker-{pool}-{time.monotonic_ns()}.log", "w")  # noqa: SIM115 - lives with the process
        return subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process", *extra],
            cwd=REPO,
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from engram.testing import prefect_server as start_prefect_server
    from tests.conftest import PG_OK, PG_URL

    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    server_env = {
        **base,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": f"{url}/api",
    }
    # On PostgreSQL when the test server answers: a SQLite-backed Prefect server turns away requests with 503 under a
    # dozen concurrent flow runs on two cores.
    with start_prefect_server(home, PG_URL if PG_OK else None, env=server_env, port=port):
        client_env = {
            **base,
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": f"{url}/api",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "5",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "ENGRAM_HOME": str(REPO),  # prefect.yaml's pull step runs flows from here
            "ENGRAM_EMBEDDINGS": "false",
            "PYTHONPATH": str(REPO),
        }
        with temporary_settings(updates={PREFECT_API_URL: f"{url}/api"}):
            yield PrefectServer(url, home, client_env, home / "server.log")
