"""Benchmark: peak memory of a build does not grow with the size of the dataset.

    python bench/memory.py [--scale 10] [--flow]

Generates the demo source at its default size (6 videos, 3 images) and at ``--scale`` times
that, builds each in a fresh child process (``stgr_builder.pipeline.build``, or the Prefect
flow with ``--flow``), and reads each child's peak resident set size (``ru_maxrss``). Shards are
written one at a time and nothing holds the whole dataset, so the ratio of the two peaks
should stay near 1. Goal: ratio < 1.3 at scale 10.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stgr_builder.dryrun.demo import (
    demo_config,  # noqa: E402
    generate_demo,  # noqa: E402
)

_CHILD = """
import json, os, resource, sys, tempfile
from pathlib import Path
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp())
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("YOLO_OFFLINE", "1")
if sys.argv[3] == "flow":
    from stgr_builder.flows.build import flow_runner as runner
else:
    from stgr_builder.executor import in_process as runner
from stgr_builder.pipeline import build
manifest = build(Path(sys.argv[1]), Path(sys.argv[2]), runner=runner)
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "counts": manifest.counts}))
"""


def measure(folder: Path, scale: int, mode: str) -> dict:
    source = folder / f"source-x{scale}"
    generate_demo(source, seed=0, n_videos=6 * scale, n_images=3 * scale)
    config = source / "CONFIG.yaml"
    config.write_text(yaml.safe_dump(demo_config().model_dump(mode="json")))
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(config), str(folder / f"out-x{scale}"), mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    import json

    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["seconds"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--flow", action="store_true", help="build through the Prefect flow (thread runner)")
    args = parser.parse_args()
    mode = "flow" if args.flow else "plain"
    with tempfile.TemporaryDirectory(prefix="stgr-bench-memory-") as tmp:
        base = measure(Path(tmp), 1, mode)
        big = measure(Path(tmp), args.scale, mode)
    for name, result in (("x1", base), (f"x{args.scale}", big)):
        print(
            f"{name}: {result['counts']['samples']} samples, {result['counts']['stgr_cot']} rows, "
            f"peak RSS {result['peak_kib'] / 1024:.0f} MiB, {result['seconds']:.0f} s"
        )
    ratio = big["peak_kib"] / base["peak_kib"]
    print(f"peak RSS ratio x{args.scale} / x1: {ratio:.2f} (goal < 1.3)")


if __name__ == "__main__":
    main()
