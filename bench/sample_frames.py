"""Benchmark: our frame sampling vs decoding every frame with OpenCV.

    python bench/sample_frames.py [--cache-dir DIR] [--repeats 3] [--gops 2 10]

Makes 60 s, 1280x720, 30 fps H.264 videos (moving blocky texture plus a moving square,
made with ``encode_h264``; about 25 s each to encode, kept in ``--cache-dir`` when given)
at a key-frame interval of 2 s and 10 s, then times, in the same run, interleaved:

- ours:      plan_frames (default SamplerConfig: uniform 8, plus 4 frames in the span
             20-35 s) + decord decode of the candidate frames, GOP by GOP, including
             opening the video; JPEG writing excluded;
- ours+jpeg: the same, writing each frame into a FrameStore (temp dir);
- ours/cv:   the same plan decoded by the OpenCV backend (for reference);
- probe:     probe_video (PyAV guard + decord metadata and key-frame index), the stage
             before sampling, for reference;
- baseline:  cv2.VideoCapture read loop over every frame.

Each figure is the median of ``--repeats`` runs; ratio = baseline / ours.
Goal: >= 3x at GOP 2 s, not slower at GOP 10 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stgr_builder.models import SamplerConfig  # noqa: E402
from stgr_builder.video.decode import get_decoder  # noqa: E402
from stgr_builder.core.encode import encode_h264  # noqa: E402
from stgr_builder.video.frames import FrameStore  # noqa: E402
from stgr_builder.video.plan import plan_frames  # noqa: E402
from stgr_builder.video.probe import probe_video  # noqa: E402

WIDTH, HEIGHT, FPS, SECONDS = 1280, 720, 30, 60
SPAN = [20.0, 35.0]


def textured_frames(n: int, seed: int = 0) -> Iterator[np.ndarray]:
    """A scrolling blocky random texture with a red square on a sine path."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, ((HEIGHT + 256) // 8, (WIDTH + 256) // 8, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(cells, 8, axis=0), 8, axis=1)
    for i in range(n):
        dx, dy = (i * 3) % 256, (i * 2) % 256
        frame = texture[dy:dy + HEIGHT, dx:dx + WIDTH].copy()
        x = (i * 10) % (WIDTH - 100)
        y = int(HEIGHT / 2 + 200 * np.sin(i / 20)) - 50
        frame[y:y + 100, x:x + 100] = (255, 0, 0)
        yield frame


def make_video(folder: Path, gop_seconds: int) -> Path:
    path = folder / f"bench_{HEIGHT}p_{SECONDS}s_gop{gop_seconds}s.mp4"
    if not path.exists():
        started = time.perf_counter()
        tmp = path.with_suffix(".tmp.mp4")
        encode_h264(tmp, textured_frames(FPS * SECONDS), fps=FPS, gop=FPS * gop_seconds)
        tmp.replace(path)
        print(f"encoded {path.name} in {time.perf_counter() - started:.1f}s", flush=True)
    return path


def ours(path: Path, info, store: FrameStore | None = None, backend: str = "decord") -> int:
    plan = plan_frames(info, SamplerConfig(), span=SPAN)
    count = 0
    for frame in get_decoder(backend).iter_frames(path, info, plan.indices):
        if store is not None:
            store.put(frame.rgb)
        count += 1
    return count


def baseline(path: Path) -> int:
    import cv2

    capture = cv2.VideoCapture(str(path))
    count = 0
    while True:
        ok, _ = capture.read()
        if not ok:
            break
        count += 1
    capture.release()
    return count


def median_times(runs: dict[str, Callable[[], int]], repeats: int) -> dict[str, float]:
    """Interleave the runs (so machine load hits them alike) and take medians."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def bench(path: Path, gop_seconds: int, repeats: int, scratch: Path) -> None:
    info = probe_video(path, path.name)
    plan = plan_frames(info, SamplerConfig(), span=SPAN)
    gops = len({max(k for k in info.keyframes if k <= i) for i in plan.indices})
    store = FrameStore(scratch / f"store{gop_seconds}", quality=SamplerConfig().jpeg_quality)
    assert ours(path, info) == len(plan.indices) and baseline(path) == info.n_frames  # warm-up + sanity
    medians = median_times({
        "probe": lambda: probe_video(path, path.name),
        "ours": lambda: ours(path, info),
        "ours+jpeg": lambda: ours(path, info, store),
        "ours/cv": lambda: ours(path, info, backend="opencv"),
        "baseline": lambda: baseline(path),
    }, repeats)
    print(f"GOP {gop_seconds:>2d}s: {len(plan.indices)} frames in {gops} GOPs of {len(info.keyframes)} | "
          + " | ".join(f"{name} {seconds:.2f}s" for name, seconds in medians.items())
          + f" | ratio baseline/ours {medians['baseline'] / medians['ours']:.1f}x"
          + f" (with jpeg {medians['baseline'] / medians['ours+jpeg']:.1f}x,"
          + f" with probe and jpeg {medians['baseline'] / (medians['probe'] + medians['ours+jpeg']):.1f}x)",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, help="keep the generated videos here (default: a temp dir)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gops", type=int, nargs="+", default=[2, 10], help="key-frame intervals in seconds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stgr-bench-") as tmp:
        folder = args.cache_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        print(f"{WIDTH}x{HEIGHT} {SECONDS}s {FPS}fps H.264, default SamplerConfig + span {SPAN}, "
              f"median of {args.repeats}", flush=True)
        for gop_seconds in args.gops:
            bench(make_video(folder, gop_seconds), gop_seconds, args.repeats, Path(tmp))


if __name__ == "__main__":
    main()
