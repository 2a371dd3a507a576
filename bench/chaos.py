"""The long chaos run: rounds of five SIGKILLs (one in each stage, then random ones) of a small
demo build against the shipped LLM server, each round resumed to the end and compared byte for
byte with an uninterrupted build; replies received are never asked for again.

    python bench/chaos.py [--rounds 3] [--kills 5] [--seed 0]

Prints one line per kill and per round; exits 1 when a round's shards differ.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from stgr_builder.annotate.cache import ResponseCache  # noqa: E402
from stgr_builder.dryrun.demo import generate_demo  # noqa: E402
from stgr_builder.dryrun.server import serve_llm  # noqa: E402
from stgr_builder.pipeline import build  # noqa: E402
from stgr_builder.testing import chaos  # noqa: E402
from stgr_builder.testing.demo import write_config  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--videos", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-chaos-0123456789")
    failures = 0
    with tempfile.TemporaryDirectory(prefix="stgr-chaos-") as tmp, serve_llm(latency_ms=40) as server:
        os.environ["OPENAI_BASE_URL"] = server.base_url
        source = Path(tmp) / "source"
        generate_demo(source, seed=0, n_videos=args.videos, n_images=1)
        config = write_config(
            source,
            "chaos",
            annotator={
                "backend": "openai",
                "model": "stgr-dry-run",
                "prompt": "stgr-cot-llm",
                "concurrency": 2,
                "timeout": 5.0,
            },
            sharding={"samples_per_shard": 12},
        )
        reference = Path(tmp) / "reference"
        started = time.perf_counter()
        build(config, reference)
        print(f"reference: {len(chaos.digests(reference))} shard files in {time.perf_counter() - started:.1f} s")
        for round_no in range(args.rounds):
            rng = random.Random(args.seed * 1000 + round_no)
            out = Path(tmp) / f"round-{round_no}"
            asked_again = 0
            started = time.perf_counter()
            for stage in chaos.kill_plan(reference, rng, args.kills):
                received = ResponseCache(out).keys()
                server.reset_stats()
                print(f"  round {round_no}: {chaos.run_and_kill(config, out, stage, reference, rng)}")
                asked_again += len(set(server.stats()["by_key"]) & received)
            received = ResponseCache(out).keys()
            server.reset_stats()
            build(config, out)
            asked_again += len(set(server.stats()["by_key"]) & received)
            same = chaos.digests(out) == chaos.digests(reference)
            failures += not same or asked_again > 0
            print(
                f"round {round_no}: shards {'identical' if same else 'DIFFERENT'} to the uninterrupted build, "
                f"replies asked again {asked_again}, {time.perf_counter() - started:.1f} s"
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
