"""MiniLM embedding throughput on this machine's CPU, in the batches the consolidate flow uses.

python bench/embed_throughput.py --texts 2000 --json bench/results/embedding.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    from engram.embed import MiniLMEmbedder

    started = time.perf_counter()
    embedder = MiniLMEmbedder()
    load_s = time.perf_counter() - started
    texts = [
        f"Caroline: I went to the support group on {d} May 2023 and met {n} new people there."
        for d, n in zip(range(args.texts), range(args.texts), strict=True)
    ]
    embedder.embed(texts[:64])  # warm-up
    started = time.perf_counter()
    embedder.embed(texts)
    seconds = time.perf_counter() - started
    result = {
        "model": embedder.name,
        "texts": args.texts,
        "seconds": round(seconds, 2),
        "texts_per_s": round(args.texts / seconds, 1),
        "model_load_s": round(load_s, 1),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
