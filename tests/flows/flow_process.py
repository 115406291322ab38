"""Runs one flow in its own process, so a test can kill it with SIGKILL: ``python -m tests.flows.flow_process``.

Prints ``ready`` once the flow's modules are imported, so a test can time its kill from the start of the run itself.
With ``--meet DIR`` a consolidation waits, after its first claim of episodes, until one other process has claimed
its own: two runs then hold leases at once, however their starts fell. Each must find episodes left to claim: the
batch size must leave some for the other.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import datetime
from pathlib import Path

FLOWS = [
    "ingest",
    "close_sessions",
    "expire_working",
    "consolidate",
    "lifecycle",
    "archive",
    "rehydrate",
    "compact_archive",
    "forget",
]


def _meet_after_first_claim(directory: str) -> None:
    """Each process, once its first claim returned episodes, leaves its mark in ``directory`` and waits (up to
    120 s) for another process's mark. The claim itself is the store's own; only the wait after it is added."""
    from engram.store import Store

    claim = Store.claim_episodes
    met = False

    def claim_then_meet(self, *args, **kwargs):
        nonlocal met
        episodes = claim(self, *args, **kwargs)
        if episodes and not met:
            met = True
            Path(directory, str(os.getpid())).touch()
            deadline = time.monotonic() + 120
            while len(list(Path(directory).iterdir())) < 2:
                if time.monotonic() > deadline:
                    raise SystemExit("no other process claimed episodes within 120 s")
                time.sleep(0.01)
        return episodes

    Store.claim_episodes = claim_then_meet


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("flow", choices=FLOWS)
    parser.add_argument("store_url")
    parser.add_argument("as_of")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--tenant", default=None)
    parser.add_argument("--subject", default=None, help="what forget removes; the whole tenant when not given")
    parser.add_argument("--meet", default=None, help="a directory where consolidations meet after their first claim")
    args = parser.parse_args()
    as_of = datetime.fromisoformat(args.as_of)
    batch_size = args.batch_size or 1
    if args.flow == "ingest":
        from flows.ingest import ingest

        print("ready", flush=True)
        ingest(store_url=args.store_url, as_of=as_of, batch_size=batch_size)
    elif args.flow == "close_sessions":
        from flows.sessions import close_sessions

        print("ready", flush=True)
        close_sessions(store_url=args.store_url, as_of=as_of, batch_size=batch_size)
    elif args.flow == "expire_working":
        from flows.sessions import expire_working

        print("ready", flush=True)
        expire_working(store_url=args.store_url, as_of=as_of, batch_size=batch_size)
    elif args.flow == "consolidate":
        from flows.consolidate import consolidate

        if args.meet is not None:
            _meet_after_first_claim(args.meet)
        print("ready", flush=True)
        consolidate(store_url=args.store_url, as_of=as_of, batch_size=batch_size)
    elif args.flow == "archive":
        from flows.archive import archive

        print("ready", flush=True)
        # The archive's URL, endpoint and keys come from the ENGRAM_ARCHIVE_* variables the test sets.
        archive(store_url=args.store_url, as_of=as_of, batch_size=batch_size)
    elif args.flow == "rehydrate":
        from flows.archive import rehydrate

        print("ready", flush=True)
        rehydrate(store_url=args.store_url, as_of=as_of, tenant=args.tenant, batch_size=batch_size)
    elif args.flow == "compact_archive":
        from flows.archive import compact_archive

        print("ready", flush=True)
        compact_archive(store_url=args.store_url, as_of=as_of, tenant=args.tenant, batch_size=batch_size)
    elif args.flow == "forget":
        from flows.forget import forget

        print("ready", flush=True)
        forget(tenant=args.tenant, subject=args.subject, store_url=args.store_url, as_of=as_of)
    else:
        from flows.lifecycle import lifecycle

        print("ready", flush=True)
        lifecycle(store_url=args.store_url, as_of=as_of, batch_size=args.batch_size)


if __name__ == "__main__":
    main()
