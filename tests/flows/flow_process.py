"""Runs one flow in its own process, so a test can kill it with SIGKILL: ``python -m tests.flows.flow_process``."""

from __future__ import annotations

import argparse
from datetime import datetime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("flow", choices=["ingest", "close_sessions", "consolidate", "lifecycle", "archive"])
    parser.add_argument("store_url")
    parser.add_argument("as_of")
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()
    as_of = datetime.fromisoformat(args.as_of)
    if args.flow == "ingest":
        from flows.ingest import ingest

        ingest(store_url=args.store_url, as_of=as_of, batch_size=args.batch_size)
    elif args.flow == "close_sessions":
        from flows.sessions import close_sessions

        close_sessions(store_url=args.store_url, as_of=as_of, batch_size=args.batch_size)
    elif args.flow == "consolidate":
        from flows.consolidate import consolidate

        consolidate(store_url=args.store_url, as_of=as_of, batch_size=args.batch_size)
    elif args.flow == "archive":
        from flows.archive import archive

        # The archive's URL, endpoint and keys come from the ENGRAM_ARCHIVE_* variables the test sets.
        archive(store_url=args.store_url, as_of=as_of, batch_size=args.batch_size)
    else:
        from flows.lifecycle import lifecycle

        lifecycle(store_url=args.store_url, as_of=as_of)


if __name__ == "__main__":
    main()
