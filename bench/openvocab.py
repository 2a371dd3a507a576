"""Benchmark: the open-vocabulary backends (YOLOE, YOLO-World) against the closed-set demo model.

    python bench/openvocab.py [--scale s] [--imgsz 320] [--batch 16] [--frames 32] [--phrase-sets 4]

Random-weight models of the real architectures (the compute of a downloaded checkpoint of that
scale) and random text encoders, run through ``make_detector`` as a build does, on
the CPU. Each backend detects ``--frames`` random 320x240 frames once with one phrase set, then
the same frames split over ``--phrase-sets`` phrase sets (a class switch rebuilds Ultralytics'
predictor; the text embeddings come from the cache after the first time). Prints ms per frame
and ratios against the shipped ``builtin:stgr-demo-yolo11n`` measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("YOLO_OFFLINE", "1")

from stgr_builder.detect import make_detector  # noqa: E402
from stgr_builder.models import DetectorConfig  # noqa: E402

from helpers.tiny_openvocab import write_clip_checkpoint, write_model, write_torchscript_encoder  # noqa: E402


def _ms_per_frame(detector, frames: list[Path], phrase_sets: list[list[str]]) -> float:
    share = len(frames) // len(phrase_sets)
    start = time.perf_counter()
    for k, phrases in enumerate(phrase_sets):
        detector.detect(frames[k * share : (k + 1) * share], phrases=phrases)
    return (time.perf_counter() - start) / (share * len(phrase_sets)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="s")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--phrase-sets", type=int, default=4)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="stgr-openvocab-bench-"))
    os.environ["STGR_CACHE_DIR"] = str(folder / "cache")
    rng = np.random.default_rng(0)
    frames = []
    for i in range(args.frames):
        frames.append(folder / f"{i}.jpg")
        Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(frames[-1])
    encoders = {
        "yoloe": write_torchscript_encoder(folder / "enc.ts"),
        "yolo_world": write_clip_checkpoint(folder / "clip.pt"),
    }
    common = {"imgsz": args.imgsz, "batch": args.batch, "device": "cpu"}
    configs = {"closed set (demo yolo11n)": DetectorConfig(**common)}
    for backend in ("yoloe", "yolo_world"):
        write_model(folder / f"{backend}.pt", backend, args.scale)
        configs[f"{backend} ({args.scale}, random weights)"] = DetectorConfig(
            backend=backend, weights=f"{backend}.pt", text_encoder=encoders[backend].name, **common
        )
    one = [["person", "red car", "door"]]
    many = [[f"thing {k}", "door"] for k in range(args.phrase_sets)]
    base = None
    print(f"{args.frames} frames 320x240, imgsz {args.imgsz}, batch {args.batch}, CPU")
    for name, config in configs.items():
        detector = make_detector(config, folder)
        detector.detect(frames[:1], phrases=one[0])  # start-up (predictor set-up) out of the timing
        single = _ms_per_frame(detector, frames, one)
        switched = _ms_per_frame(detector, frames, many)
        base = base or single
        print(
            f"{name:34} {single:7.1f} ms/frame (x{single / base:.2f}); "
            f"over {args.phrase_sets} phrase sets {switched:7.1f} ms/frame (x{switched / base:.2f})"
        )


if __name__ == "__main__":
    main()
