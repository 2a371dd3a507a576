"""Benchmark: LLM annotation throughput against the shipped server at a fixed latency.

    python bench/annotate_throughput.py [--latency-ms 200] [--concurrency 32,128] [--samples 480]
        [--repeats 3] [--shared-frames]

Starts ``stgr serve-llm --latency-ms L`` in its own process (so the server does not share this
process's interpreter lock), makes ``--samples`` synthetic samples, each with its own frames
(4 to 8 a sample, 5.7 on average as in the demo's requests, at the demo's sizes: 320x240 mostly,
480x360 and 400x300 stills; 2 detector boxes a frame; a temporal-spatial question), so every
request decodes, resizes, draws and encodes its frames (``--shared-frames``: the old bench, where
all samples share 4 frames and the frame memo hides that work), and runs the real
``LlmAnnotator`` (AsyncOpenAI, ``concurrency`` in flight, request cache in a fresh temp folder
so every request is sent) over them in batches as the annotate step does.

Prints, per level of concurrency, achieved requests per second, the ratio to the ideal
(concurrency / latency: every slot always busy, zero overhead) and the client's CPU milliseconds
per request (the event loop's process and the message-preparation pool's workers). Each level
runs ``--repeats`` times, each on new samples with a new cache and pool, and the median is the
figure: on a shared 2-core machine single runs of the same code spread by +-0.02. Goal: ratio
>= 0.9 at 200 ms and 32 in flight.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stgr_builder.annotate.llm import LlmAnnotator  # noqa: E402
from stgr_builder.annotate.prepare import default_processes  # noqa: E402
from stgr_builder.core.resources import Resources  # noqa: E402
from stgr_builder.models import (  # noqa: E402
    AnnotatorConfig,
    Detection,
    Frame,
    SampleWork,
    SourceObject,
    SourceSample,
    Task,
    VerifyConfig,
    sample_id,
)

#: Frames a demo annotation request carries (the small demo's 23 requests sent 132 images) and
#: the demo's frame sizes (videos 320x240; stills 320x240, 480x360, 400x300).
FRAMES_PER_SAMPLE = (4, 5, 6, 6, 7, 8, 4)
SIZES = ((320, 240), (320, 240), (320, 240), (480, 360), (320, 240), (400, 300))


def _picture(width: int, height: int, seed: int) -> np.ndarray:
    """A frame-like picture (gradients, two blocks, mild noise), not pure noise: JPEG size (and
    so request size) like a real frame's; ``seed`` makes each one different."""
    yy, xx = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    shift = int(rng.integers(0, 256))
    rgb = np.stack([(xx + shift) % 256, (yy * 2 + shift // 2) % 256, (xx + yy) % 256], axis=-1).astype(np.int16)
    x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    rgb[y0 : y0 + height // 3, x0 : x0 + width // 4] = (200, 120, 40)
    rgb[height // 3 : height // 3 + height // 3, width * 5 // 8 : width * 5 // 8 + width // 6] = (40, 60, 200)
    rgb += rng.integers(-8, 8, rgb.shape, dtype=np.int16)
    return rgb.clip(0, 255).astype(np.uint8)


def make_samples(root: Path, count: int, distinct: bool = True, seed: int = 0) -> list[SampleWork]:
    """``count`` samples; with ``distinct`` each has its own frames (4 to 8, the demo's sizes),
    so no memo hides the per-request work; else all share 4 frames of 320x240 (the old bench).
    ``seed`` varies the pictures between repeats."""
    shared: list[Frame] = []
    works = []
    for n in range(count):
        if distinct or not shared:
            n_frames = FRAMES_PER_SAMPLE[n % len(FRAMES_PER_SAMPLE)] if distinct else 4
            width, height = SIZES[n % len(SIZES)] if distinct else (320, 240)
            frames = []
            for index in range(n_frames):
                rel = f"kfs/bench/s{n:05d}/f{index}.jpg" if distinct else f"kfs/bench/f{index}.jpg"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(_picture(width, height, seed * 1_000_003 + n * 16 + index)).save(root / rel, quality=90)
                frames.append(Frame(idx=index * 10, time=index * 1.0, path=rel, width=width, height=height))
            shared = frames
        frames = shared
        question = f"Where is the dog in clip {n}?"
        sample = SourceSample(
            id=sample_id("bench", str(n), question),
            source="STR_bench",
            source_id=str(n),
            task=Task.SPATIO_TEMPORAL,
            question=question,
            answer="On the left.",
            video_path="v.mp4",
            media_root=str(root),
            span=[0.0, float(len(frames))],
            objects=[SourceObject(name="dog")],
            caption=f"A dog walks (clip {n}).",
        )
        dets = [
            Detection(frame_idx=f.idx, label=label, score=0.9 - 0.1 * k, box=[0.1 + 0.3 * k, 0.2, 0.3 + 0.3 * k, 0.6])
            for f in frames
            for k, label in enumerate(("dog", "cat"))
        ]
        works.append(SampleWork(sample=sample, frames=frames, detections=dets))
    return works


def start_server(latency_ms: float, rpm: float | None = None) -> tuple[subprocess.Popen, str]:
    """``stgr serve-llm`` in a child process on a free port; (process, base URL)."""
    limits = ["--rpm", str(rpm)] if rpm is not None else []
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stgr_builder.cli",
            "serve-llm",
            "--port",
            "0",
            "--latency-ms",
            str(latency_ms),
            *limits,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
    )
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"serve-llm did not start: {line!r}")
    return proc, line.split("listening on ", 1)[1].split()[0]


def _cpu_of_children(exclude: set[int]) -> float:
    """CPU seconds so far of this process's live descendants (the message-preparation pool's
    workers, children of its forkserver), from /proc; ``exclude``: pids not to count (the server)."""
    tick = os.sysconf("SC_CLK_TCK")
    procs = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        procs[int(stat.parent.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    total, frontier = 0.0, {os.getpid()}
    while frontier:
        frontier = {pid for pid, (ppid, _) in procs.items() if ppid in frontier and pid not in exclude}
        total += sum(procs[pid][1] for pid in frontier)
    return total


def run(
    works: list[SampleWork], root: Path, concurrency: int, latency_ms: float, server_pid: int, processes: int | None
) -> dict:
    config = AnnotatorConfig(
        backend="openai",
        model="stgr-dry-run",
        prompt="stgr-cot-llm",
        concurrency=concurrency,
        timeout=30.0,
        prepare_processes=processes,
    )
    resources = Resources()
    # Warm-up (imports, first connections, the preparation pool) on other samples, not timed.
    warm, works = works[:concurrency], works[concurrency:]
    LlmAnnotator(config, VerifyConfig(), root=root, run=f"warm{concurrency}", resources=resources).annotate_batch(warm)
    annotator = LlmAnnotator(config, VerifyConfig(), root=root, run=f"bench{concurrency}", resources=resources)
    size = annotator.batch_size
    children = _cpu_of_children({server_pid})
    started, cpu = time.perf_counter(), time.process_time()
    results = []
    for start in range(0, len(works), size):
        results += annotator.annotate_batch(works[start : start + size])
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    pool_cpu = _cpu_of_children({server_pid}) - children
    requests = annotator.usage.requests - annotator.usage.cached
    images = annotator.usage.images
    achieved = requests / elapsed
    ideal = concurrency / (latency_ms / 1000)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "images": images,
        "elapsed": elapsed,
        "failed": sum(1 for r in results if not hasattr(r, "reasoning")),
        "batch": size,
        "achieved": achieved,
        "ideal": ideal,
        "ratio": achieved / ideal,
        "cpu_ms": 1000 * cpu / requests,
        "pool_cpu_ms": 1000 * pool_cpu / requests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--concurrency", default="32,128", help="requests in flight; a comma-separated list")
    parser.add_argument("--samples", type=int, default=480, help="timed samples per run (plus a warm-up batch)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per level, on new samples; the median is reported")
    parser.add_argument(
        "--shared-frames",
        action="store_true",
        help="the old bench: every sample shows the same 4 frames (the frame memo hides their cost)",
    )
    parser.add_argument(
        "--prepare-processes",
        type=int,
        default=None,
        help="annotator.prepare_processes (default: the config's default; 0: threads)",
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    proc, base_url = start_server(args.latency_ms)
    os.environ["OPENAI_BASE_URL"] = base_url
    os.environ.setdefault("OPENAI_API_KEY", "bench-not-a-secret")
    reports = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            for level in levels:
                runs = []
                for repeat in range(args.repeats):
                    folder = root / f"c{level}-r{repeat}"
                    works = make_samples(folder, args.samples + level, distinct=not args.shared_frames, seed=repeat)
                    runs.append(run(works, folder, level, args.latency_ms, proc.pid, args.prepare_processes))
                    shutil.rmtree(folder)
                reports.append(runs)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    server_cpu = os.times().children_user + os.times().children_system  # whole server life
    requests = sum(r["requests"] for runs in reports for r in runs)
    frames = "the same 4 frames" if args.shared_frames else "distinct frames"
    processes = default_processes(args.prepare_processes)
    print(
        f"{frames} per sample; preparation in {f'{processes} processes' if processes else 'threads'}; "
        f"latency {args.latency_ms:g} ms; cores here: {os.cpu_count()}, "
        f"load {os.getloadavg()[0]:.1f}; server CPU {1000 * server_cpu / requests:.1f} "
        f"ms a request (its whole life)"
    )
    for runs in reports:
        for r in runs:
            print(
                f"{r['concurrency']:>4} in flight: {r['requests']} requests ({r['images'] / r['requests']:.1f} images "
                f"each, {r['failed']} samples not annotated) in {r['elapsed']:.2f}s, batches of {r['batch']}: "
                f"{r['achieved']:.1f} req/s of ideal {r['ideal']:.1f}: ratio {r['ratio']:.3f}; client CPU "
                f"{r['cpu_ms'] + r['pool_cpu_ms']:.1f} ms a request ({r['cpu_ms']:.1f} event loop process, "
                f"{r['pool_cpu_ms']:.1f} preparation pool)",
                flush=True,
            )
        ratios = sorted(r["ratio"] for r in runs)
        cpu = statistics.median(r["cpu_ms"] + r["pool_cpu_ms"] for r in runs)
        print(
            f"{runs[0]['concurrency']:>4} in flight, median of {len(runs)}: ratio {statistics.median(ratios):.3f} "
            f"(runs {ratios[0]:.3f}-{ratios[-1]:.3f}); client CPU {cpu:.1f} ms a request",
            flush=True,
        )


if __name__ == "__main__":
    main()
