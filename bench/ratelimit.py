"""Benchmark: the demo build against a server limiting requests per minute below its need.

    python bench/ratelimit.py [--server-rpm 30] [--cap 27] [--videos 6] [--images 3]

Starts ``stgr serve-llm --rpm R`` in its own process, builds the demo (``stgr demo`` size by
default: ~70 annotation requests) with the openai backend, once with ``annotator.rpm`` = ``--cap``
and once with no cap (the client keeps to the server's x-ratelimit headers and 429s), and prints
per build: requests, refused (429), share refused, samples annotated, pending, wall time and the
ideal time (requests / rpm). Goal: no refusal with the cap; at most 10% with none, every sample
annotated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from annotate_throughput import start_server  # noqa: E402  (bench/ is on the path)

from stgr_builder.dryrun.demo import (
    demo_config,  # noqa: E402
    generate_demo,  # noqa: E402
)
from stgr_builder.pipeline import build  # noqa: E402


def stats(base_url: str) -> dict:
    with urllib.request.urlopen(base_url.rsplit("/v1", 1)[0] + "/v1/stats") as reply:
        return json.loads(reply.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-rpm", type=float, default=30)
    parser.add_argument("--cap", type=int, default=27)
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--images", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stgr-bench-ratelimit-"))
    generate_demo(work / "src", seed=0, n_videos=args.videos, n_images=args.images)
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench")
    print(
        f"server: {args.server_rpm:g} requests a minute, {args.latency_ms:g} ms a reply; demo "
        f"{args.videos} videos, {args.images} images; default concurrency 8 x 2 shard tasks"
    )
    for label, cap in ((f"annotator.rpm {args.cap}", args.cap), ("no cap", None)):
        config = demo_config().model_dump(mode="json")
        config["annotator"].update({"backend": "openai", "model": "stgr-dry-run", "prompt": "stgr-cot-llm", "rpm": cap})
        path = work / "src" / f"{'capped' if cap else 'uncapped'}.yaml"
        path.write_text(yaml.safe_dump(config))
        proc, base_url = start_server(args.latency_ms, rpm=args.server_rpm)
        os.environ["OPENAI_BASE_URL"] = base_url
        try:
            started = time.perf_counter()
            manifest = build(path, work / path.stem)
            elapsed = time.perf_counter() - started
            seen = stats(base_url)
        finally:
            proc.terminate()
            proc.wait()
        refused = seen["by_outcome"].get("rate_limited", 0)
        print(
            f"{label:>18}: {seen['total']} requests, {refused} refused ({refused / max(1, seen['total']):.1%}), "
            f"{manifest.counts.get('stgr_cot', 0)} rows, {manifest.counts.get('rejects', 0)} rejects, "
            f"pending {manifest.pending}, {elapsed:.0f} s (ideal {seen['total'] / args.server_rpm * 60:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
