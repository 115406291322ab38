"""The ``archive`` and ``rehydrate`` flows on Prefect's harness against an S3 server on loopback, and the faults
the archive must survive: an object-storage outage midway, SIGKILL between write and tombstone, a corrupted file.

Each fault test ends with "nothing lost": every fact and turn is hot with its text or archived and readable from a
committed, verified manifest, with the text it had before.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from engram import ArchiveError, Memory
from engram.archive import (
    ArchiveLocation,
    archive_batch,
    archive_cold_items,
    provision_archive,
    verify_manifest,
)
from engram.errors import ArchiveMismatch
from engram.layers import Layer
from engram.store import SEMANTIC, TRANSITIONS
from engram.testing import FixedClock, free_port
from flows.archive import archive, rehydrate
from tests.conftest import s3_location
from tests.engram.archive_helpers import COLD, LATER, contents, fill

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def filled(sqlite_memory: Memory, s3_archive: ArchiveLocation) -> tuple[Memory, ArchiveLocation, dict]:
    provision_archive(s3_archive)
    fill(sqlite_memory)
    return sqlite_memory, s3_archive, contents(sqlite_memory.store, s3_archive, "acme")


def test_archive_and_rehydrate_flows_with_blocks(filled: tuple[Memory, ArchiveLocation, dict]) -> None:
    from blocks.archive import ArchiveStorage
    from blocks.policy import RetentionPolicy

    memory, location, before = filled
    block = ArchiveStorage(
        url=location.url,
        endpoint=location.endpoint,
        region=location.region,
        access_key=location.access_key,
        secret_key=location.secret_key,
    )
    block.save("test-archive", overwrite=True)
    RetentionPolicy(semantic_idle_days=30, episode_age_days=30).save("test-retention", overwrite=True)

    summary = archive(
        store_url=memory.store_url,
        as_of=LATER,
        batch_size=1_000,
        archive_block="test-archive",
        retention_block="test-retention",
    )
    assert summary["semantic_items"] == sum(1 for name, _ in before if name == "semantic_items")
    assert contents(memory.store, location, "acme") == before
    with memory.store.read() as conn:
        runs = {r[0] for r in conn.execute(select(TRANSITIONS.c.flow_run_id).where(TRANSITIONS.c.action == "archive"))}
    assert len(runs) == 1 and None not in runs  # every move names the flow run that made it

    reader = Memory(memory.store_url, location)
    try:
        by_query = rehydrate(
            store_url=memory.store_url, as_of=LATER, tenant="acme", query="pottery bowl", archive_block="test-archive"
        )
        assert by_query["rehydrated"] >= 1
        hit = reader.search("acme", "pottery bowl", limit=1)[0]
        assert hit.layer == Layer.SEMANTIC
        whole = rehydrate(store_url=memory.store_url, as_of=LATER, tenant="acme", archive_block="test-archive")
        again = rehydrate(store_url=memory.store_url, as_of=LATER, tenant="acme", archive_block="test-archive")
        assert whole["rehydrated"] + by_query["rehydrated"] == summary["semantic_items"]
        assert again["rehydrated"] == 0
    finally:
        reader.close()


# -- faults -------------------------------------------------------------------------------------------------------


def _committed(memory: Memory) -> int:
    return sum(1 for m in memory.store.manifests("acme") if m["status"] == "committed")


@pytest.mark.reliability
def test_storage_outage_midway_then_rerun_finishes(sqlite_memory: Memory) -> None:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    location = s3_location(f"http://127.0.0.1:{port}")
    provision_archive(location)
    fill(sqlite_memory)
    before = contents(sqlite_memory.store, location, "acme")
    failure: list[BaseException] = []

    def run() -> None:
        try:
            archive_cold_items(sqlite_memory.store, location, COLD, LATER, batch_size=1)
        except BaseException as exc:  # handed to the test thread
            failure.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 60
    while _committed(sqlite_memory) < 1 and worker.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    server.stop()  # the object storage goes away midway
    worker.join(timeout=120)
    assert failure and isinstance(failure[0], ArchiveError), failure
    assert "engram-test-secret" not in str(failure[0]) and "engram-test-key" not in str(failure[0])
    assert _committed(sqlite_memory) > 0

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        assert contents(sqlite_memory.store, location, "acme") == before  # nothing lost while half done
        archive_cold_items(sqlite_memory.store, location, COLD, LATER, batch_size=50)
        assert {m["status"] for m in sqlite_memory.store.manifests("acme")} == {"committed"}
        assert sqlite_memory.stats("acme")["semantic_versions"] == 0
        assert contents(sqlite_memory.store, location, "acme") == before
    finally:
        server.stop()


@pytest.mark.reliability
def test_sigkill_between_write_and_tombstone_then_rerun_finishes(
    filled: tuple[Memory, ArchiveLocation, dict],
) -> None:
    memory, location, before = filled
    env = dict(os.environ)
    env.update(
        PREFECT_API_URL=os.environ["ENGRAM_TEST_PREFECT_API_URL"],
        ENGRAM_ARCHIVE_URL=location.url,
        ENGRAM_ARCHIVE_ENDPOINT=location.endpoint or "",
        ENGRAM_ARCHIVE_REGION=location.region or "",
        ENGRAM_ARCHIVE_ACCESS_KEY=location.access_key.get_secret_value(),  # type: ignore[union-attr]
        ENGRAM_ARCHIVE_SECRET_KEY=location.secret_key.get_secret_value(),  # type: ignore[union-attr]
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.flows.flow_process", "archive", memory.store_url, LATER.isoformat()],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    try:
        # Kill as soon as a manifest is written but not yet committed: between write and tombstone.
        while not memory.store.manifests("acme", ["written", "verified"]):
            assert proc.poll() is None, f"the archive run ended before it was caught: {proc.stderr.read()!r}"
            assert time.monotonic() < deadline, "the archive run wrote nothing in 120 s"
            time.sleep(0.002)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert memory.store.manifests("acme", ["written", "verified"]), "the kill came after the commit"
    assert contents(memory.store, location, "acme") == before  # nothing lost at the moment of the kill

    totals = archive_cold_items(memory.store, location, COLD, LATER)
    assert totals["manifests_resumed"] + totals["manifests_discarded"] >= 1
    assert {m["status"] for m in memory.store.manifests("acme")} == {"committed"}
    assert memory.stats("acme")["semantic_versions"] == 0
    assert contents(memory.store, location, "acme") == before


@pytest.mark.reliability
def test_a_corrupted_file_fails_verification_and_nothing_is_tombstoned(
    filled: tuple[Memory, ArchiveLocation, dict],
) -> None:
    memory, location, before = filled
    keys = memory.store.archive_candidates(Layer.SEMANTIC, LATER, COLD, "acme", 1_000)
    (manifest,) = archive_batch(memory.store, location, Layer.SEMANTIC, keys, LATER, None)
    fs = location.filesystem()
    path = f"{location.bucket}/{location.prefix}/{manifest['files'][0]['path']}"
    fs.pipe_file(path, fs.cat_file(path)[:-40] + b"\0" * 40)

    with pytest.raises(ArchiveMismatch, match="sha256") as caught:
        verify_manifest(memory.store, location, manifest)
    assert manifest["manifest_id"] in str(caught.value)
    with memory.store.read() as conn:
        assert not conn.execute(select(SEMANTIC.c.item_id).where(SEMANTIC.c.archived_manifest_id.is_not(None))).all()
    assert contents(memory.store, location, "acme") == before

    # The next run discards the damaged write and archives the rows again.
    totals = archive_cold_items(memory.store, location, COLD, LATER)
    assert totals["manifests_discarded"] == 1
    assert contents(memory.store, location, "acme") == before
    assert memory.stats("acme")["semantic_versions"] == 0


@pytest.mark.reliability
def test_a_corrupted_committed_file_is_detected_on_read(
    filled: tuple[Memory, ArchiveLocation, dict], caplog: pytest.LogCaptureFixture
) -> None:
    memory, location, _ = filled
    archive_cold_items(memory.store, location, COLD, LATER)
    manifest = next(m for m in memory.store.manifests("acme") if m["layer"] == "semantic")
    fs = location.filesystem()
    path = f"{location.bucket}/{location.prefix}/{manifest['files'][0]['path']}"
    fs.pipe_file(path, b"not parquet")
    with memory.store.read() as conn:
        damaged_item = conn.execute(
            select(SEMANTIC.c.item_id).where(SEMANTIC.c.archived_manifest_id == manifest["manifest_id"]).limit(1)
        ).scalar_one()
    reader = Memory(memory.store_url, location, clock=FixedClock(LATER))
    try:
        # Reading the damaged item names the manifest; search leaves the damaged manifest out and says so,
        # instead of failing every search of the tenant.
        with pytest.raises(ArchiveMismatch, match=manifest["manifest_id"]):
            reader.get("acme", damaged_item)
        with caplog.at_level("WARNING", logger="engram"):
            hits = reader.search("acme", "pottery bowl")
        assert damaged_item not in {h.item_id for h in hits}
        assert manifest["manifest_id"] in caplog.text and "left out of search" in caplog.text
    finally:
        reader.close()


def test_compact_archive_flow_merges_and_one_damaged_tenant_does_not_hold_back_the_others(
    sqlite_memory: Memory, s3_archive: ArchiveLocation
) -> None:
    """Two tenants with many small manifests: one of them has a damaged file. The flow compacts the other, leaves
    the damaged one's archive as it was, and fails naming that tenant."""
    from flows.archive import compact_archive

    memory, location = sqlite_memory, s3_archive
    provision_archive(location)
    fill(memory, tenant="acme", sessions=8)
    fill(memory, tenant="globex", sessions=2)
    archive_cold_items(memory.store, location, COLD, LATER, batch_size=1)  # a manifest per episode or fact
    assert min(Counter(m["layer"] for m in memory.store.manifests("acme", ["committed"])).values()) >= 8
    before = {t: contents(memory.store, location, t) for t in ("acme", "globex")}
    # A manifest of the layer the flow compacts (globex's few episodic manifests are left as they are).
    semantic = [m for m in memory.store.manifests("globex", ["committed"]) if m["layer"] == "semantic"]
    assert len(semantic) >= 8
    damaged = semantic[0]
    client = location.minio_client()
    key = f"{location.prefix}/{damaged['files'][0]['path']}" if location.prefix else damaged["files"][0]["path"]
    client.put_object(location.bucket, key, io.BytesIO(b"not parquet"), len(b"not parquet"))
    globex = memory.store.manifests("globex", ["committed"])

    from blocks.archive import ArchiveStorage

    ArchiveStorage(
        url=location.url,
        endpoint=location.endpoint,
        region=location.region,
        access_key=location.access_key,
        secret_key=location.secret_key,
    ).save("test-compact-archive", overwrite=True)

    with pytest.raises(ArchiveError, match="globex"):
        compact_archive(store_url=memory.store_url, as_of=LATER, archive_block="test-compact-archive", batch_size=1)

    merged = memory.store.manifests("acme", ["committed"])
    assert sorted(m["layer"] for m in merged) == ["episodic", "semantic"]
    assert contents(memory.store, location, "acme") == before["acme"]
    assert memory.store.manifests("globex") == globex  # left as it was, the damage there for an operator to see
