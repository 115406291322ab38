"""Archive paths stay inside the tenant's prefix, and the secrets of blocks never reach logs, artifacts or
exceptions, whether the run succeeds or fails."""

from __future__ import annotations

import asyncio
import socket
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from engram import InvalidInput, Memory
from engram.archive import provision_archive
from engram.store import Store
from tests.conftest import PG_URL, s3_location
from tests.reliability import figures
from tests.reliability.s3_proxy import FaultyProxy
from tests.reliability.scenario import AS_OF, LATER, TENANT, archive_env, memory_at, observe, run_flows_upto

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

ESCAPES = ["../x", "..", "/", "a/b", "/etc", "%2e%2e", "%2e%2e%2fx", "..%2fx", "tenant=x/../y", "x\\y", "x\x00", " x"]


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[FaultyProxy]:
    p = FaultyProxy(s3_endpoint)
    try:
        yield p
    finally:
        p.close()


def test_tenant_ids_that_would_leave_the_prefix_are_rejected_before_any_object_is_touched(
    tmp_path: Path, proxy: FaultyProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.archive import archive, rehydrate

    location = s3_location(proxy.endpoint)
    provision_archive(location)
    for key, value in archive_env(location).items():
        monkeypatch.setenv(key, value)
    memory = memory_at(f"sqlite:///{tmp_path / 'engram.db'}", location, tmp_path)
    try:
        observe(memory, sessions=2)
        for n, bad in enumerate(ESCAPES):
            requests = proxy.requests
            # The flows as Prefect runs them for the first id; for the rest, their bodies (``.fn``), which are what
            # checks the tenant, without a failed flow run each.
            archive_flow, rehydrate_flow = (archive, rehydrate) if n == 0 else (archive.fn, rehydrate.fn)
            for call in (
                lambda bad=bad: memory.search(bad, "dog"),
                lambda bad=bad: memory.forget(bad, "dog"),
                lambda bad=bad: memory.forget(bad),
                lambda bad=bad, flow=archive_flow: flow(store_url=memory.store_url, as_of=LATER, tenant=bad),
                lambda bad=bad, flow=rehydrate_flow: flow(store_url=memory.store_url, as_of=LATER, tenant=bad),
            ):
                with pytest.raises(InvalidInput) as err:
                    call()
                assert err.value.field == "tenant", bad
            assert proxy.requests == requests, f"tenant {bad!r} reached the object storage"
            figures.record_fault("escaping_tenant_id", 5)
    finally:
        memory.close()


def test_every_object_an_archive_run_writes_lies_under_its_tenants_prefix(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.archive import archive

    location = s3_location(s3_endpoint)
    provision_archive(location)
    for key, value in archive_env(location).items():
        monkeypatch.setenv(key, value)
    url = f"sqlite:///{tmp_path / 'engram.db'}"
    memory = memory_at(url, location, tmp_path)
    try:
        observe(memory, sessions=3)
        from tests.conftest import T0
        from tests.flows.helpers import conversation_rows

        memory.observe_many(conversation_rows("globex", sessions=3, start=T0, prefix="g"))
        run_flows_upto(url, "archive")
        archive(store_url=url, as_of=LATER)
        fs = location.filesystem()
        fs.invalidate_cache()
        keys = fs.find(f"{location.bucket}/{location.prefix}")
        assert keys
        for key in keys:
            rel = key.removeprefix(f"{location.bucket}/{location.prefix}/")
            assert rel.split("/", 1)[0] in ("tenant=acme", "tenant=globex"), key
            assert ".." not in rel.split("/"), key
        for tenant in ("acme", "globex"):
            for manifest in memory.store.manifests(tenant):
                assert manifest["uri"].startswith(f"{location.url}/tenant={tenant}/")
                assert all(f["path"].startswith(f"tenant={tenant}/") for f in manifest["files"])
    finally:
        memory.close()


# -- secrets ---------------------------------------------------------------------------------------------------------

ACCESS_KEY = "AKIAENGRAMSECRET7F3Q"
SECRET_KEY = "s3cr3t-Archive-Key-9c1e5b"
DB_PASSWORD = "Db-Pa55word-4e8d1"
API_KEY = "sk-engram-LLM-secret-6a2f90"
SECRETS = [ACCESS_KEY, SECRET_KEY, DB_PASSWORD, API_KEY]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _everything_prefect_kept() -> str:
    """Every log line and artifact the session's Prefect API holds, as one text."""
    from prefect.client.orchestration import get_client

    async def read() -> str:
        async with get_client() as client:
            logs = await client.read_logs(limit=200)
            offset, texts = 200, [log.message for log in logs]
            while len(logs) == 200:
                logs = await client.read_logs(limit=200, offset=offset)
                texts += [log.message for log in logs]
                offset += 200
            offset, artifacts = 0, [None]
            while artifacts:
                artifacts = await client.read_artifacts(limit=200, offset=offset)
                texts += [f"{a.key} {a.description} {a.data}" for a in artifacts]
                offset += 200
            return "\n".join(texts)

    return asyncio.run(read())


def _exception_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + str(exc)


def test_block_secrets_never_reach_logs_artifacts_or_exceptions(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from blocks.archive import ArchiveStorage
    from blocks.consolidator import LLMConsolidatorEndpoint
    from blocks.store import EngramStore
    from flows.archive import archive
    from flows.consolidate import consolidate
    from flows.ingest import ingest
    from flows.sessions import close_sessions

    # The level services run at. At DEBUG, botocore logs each signed request, access key id included.
    caplog.set_level("INFO")
    for key in ("ENGRAM_ARCHIVE_ACCESS_KEY", "ENGRAM_ARCHIVE_SECRET_KEY"):
        monkeypatch.delenv(key, raising=False)
    bucket = s3_location(s3_endpoint).bucket
    good = ArchiveStorage(
        url=f"s3://{bucket}/archive",
        endpoint=s3_endpoint,
        region="us-east-1",
        access_key=SecretStr(ACCESS_KEY),
        secret_key=SecretStr(SECRET_KEY),
    )
    good.save("secret-archive", overwrite=True)
    provision_archive(good)
    bad = good.model_copy(update={"endpoint": f"http://127.0.0.1:{_closed_port()}"})
    bad.save("secret-archive-unreachable", overwrite=True)
    LLMConsolidatorEndpoint(
        base_url=f"http://127.0.0.1:{_closed_port()}/v1", model="m", api_key=SecretStr(API_KEY), timeout_seconds=2
    ).save("secret-llm", overwrite=True)
    host_part = PG_URL.split("://", 1)[1]
    user, rest = host_part.split("@", 1)
    EngramStore(url=SecretStr(f"postgresql://{user}:{DB_PASSWORD}@{rest}")).save("secret-store", overwrite=True)
    seen: list[str] = []

    url = f"sqlite:///{tmp_path / 'engram.db'}"
    memory = memory_at(url, None, tmp_path)
    try:
        observe(memory, sessions=3)
        run_flows_upto(url, "archive")
        # Fails: the endpoint of the block does not answer (retried at once instead of seconds apart).
        import flows.archive

        monkeypatch.setattr(
            flows.archive, "write_archive_files", flows.archive.write_archive_files.with_options(retry_delay_seconds=0)
        )
        with pytest.raises(Exception) as failed:
            archive(store_url=url, as_of=LATER, archive_block="secret-archive-unreachable")
        seen.append(_exception_text(failed.value))
        figures.record_fault("unreachable_endpoint")
        # Succeeds with the credentials of the block, settling what the failed run left.
        done = archive(store_url=url, as_of=LATER, archive_block="secret-archive")
        assert done["semantic_items"] > 0
        # The LLM endpoint of the block does not answer: the consolidator falls back to the local one (by design),
        # and whatever it logs on the way is scanned below.
        memory.observe_many(
            [{"tenant": TENANT, "session": "late", "actor": "a", "text": "a late fact about dogs", "at": AS_OF}]
        )
        ingest(store_url=url, as_of=LATER)
        close_sessions(store_url=url, as_of=LATER)
        done = consolidate(store_url=url, as_of=LATER, consolidator_block="secret-llm")
        assert done["episodes"] == 1
        figures.record_fault("unreachable_endpoint")
    finally:
        memory.close()

    # The store block: a URL with a password, in reprs, the safe URL and the errors of an unreachable server.
    store_block = EngramStore.load("secret-store")
    seen += [repr(store_block), str(store_block), store_block.model_dump_json()]
    store = store_block.get_store()
    seen += [repr(store), store.safe_url]
    with Memory(store_block.url.get_secret_value(), (tmp_path / "a").as_uri(), migrate=False) as m:
        seen.append(repr(m))
    port = _closed_port()
    unreachable = Store(f"postgresql://{user}:{DB_PASSWORD}@127.0.0.1:{port}/test")
    with pytest.raises(Exception) as down:
        unreachable.migrate()
    seen.append(_exception_text(down.value))
    figures.record_fault("unreachable_endpoint")
    store.dispose()

    seen += [caplog.text, _everything_prefect_kept()]
    for secret in SECRETS:
        leaks = [i for i, text in enumerate(seen) if secret in text]
        assert not leaks, f"secret {secret[:6]}... appears in captured texts {leaks}"
    for block in (ArchiveStorage.load("secret-archive"), LLMConsolidatorEndpoint.load("secret-llm")):
        assert not any(s in repr(block) or s in str(block) for s in SECRETS)
