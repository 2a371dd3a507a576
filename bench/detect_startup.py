"""Benchmark: the detector's start-up (its first call in a process) against its cost per frame.

    python bench/detect_startup.py [--imgsz 320] [--batch 16] [--calls 4]

Loads the shipped demo model (``builtin:stgr-demo-yolo11n``) on the CPU, then times its first
``predict`` on a batch of random 320x240 frames (Ultralytics sets up its predictor: fuses the
model, warms it up) and ``--calls`` more. Prints the start-up (first call less a later call),
the seconds per frame of the later calls, and their ratio: the start-up in frames, which
``planning.DETECT_STARTUP_S`` scales by ``planning.DETECT_S_PER_FRAME``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("YOLO_OFFLINE", "1")

from stgr_builder.detect.yolo import resolve_weights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--calls", type=int, default=4)
    args = parser.parse_args()
    import ultralytics

    model = ultralytics.YOLO(str(resolve_weights("builtin:stgr-demo-yolo11n", Path("."))))
    model.to("cpu")
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (240, 320, 3), dtype=np.uint8) for _ in range(args.batch)]
    seconds = []
    for _ in range(1 + args.calls):
        started = time.perf_counter()
        model.predict(frames, imgsz=args.imgsz, verbose=False, device="cpu")
        seconds.append(time.perf_counter() - started)
    later = sorted(seconds[1:])[len(seconds[1:]) // 2]  # the median later call
    per_frame = later / args.batch
    print(f"first call {seconds[0]:.2f} s, later calls {', '.join(f'{s:.2f}' for s in seconds[1:])} s")
    print(
        f"start-up {seconds[0] - later:.2f} s, {per_frame * 1000:.1f} ms per frame: "
        f"start-up = {(seconds[0] - later) / per_frame:.0f} frames"
    )


if __name__ == "__main__":
    main()
