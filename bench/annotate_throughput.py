"""Benchmark: LLM annotation throughput against the shipped server at a fixed latency.

    python bench/annotate_throughput.py [--latency-ms 200] [--concurrency 32] [--samples 480]

Starts ``stgr serve-llm --latency-ms L`` in its own process (so the server does not share this
process's interpreter lock), makes ``--samples`` synthetic samples (4 candidate frames of
320x240 JPEG, 2 detector boxes each, a temporal-spatial question), and runs the real
``LlmAnnotator`` (AsyncOpenAI, ``concurrency`` in flight, request cache in a fresh temp folder
so every request is sent) over them in batches as the annotate step does.

Prints achieved requests per second and the ratio to the ideal, concurrency / latency (every
slot always busy, zero overhead). Goal: ratio >= 0.9 at 200 ms and 32 in flight.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stgr_builder.annotate.llm import LlmAnnotator  # noqa: E402
from stgr_builder.models import (  # noqa: E402
    AnnotatorConfig, Detection, Frame, SampleWork, SourceObject, SourceSample, Task, VerifyConfig, sample_id)


def make_samples(root: Path, count: int) -> list[SampleWork]:
    frames = []
    yy, xx = np.mgrid[0:240, 0:320]
    for index in range(4):
        rel = f"kfs/bench/f{index}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        # A frame-like picture (gradients, two blocks, mild noise), not pure noise: JPEG size
        # (and so request size) like a real 320x240 frame's.
        rgb = np.stack([(xx + 40 * index) % 256, (yy * 2) % 256, (xx + yy) % 256], axis=-1).astype(np.int16)
        rgb[60:160, 40 + 20 * index:120 + 20 * index] = (200, 120, 40)
        rgb[100:200, 200:260] = (40, 60, 200)
        rgb += np.random.default_rng(index).integers(-8, 8, rgb.shape, dtype=np.int16)
        Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(root / rel, quality=90)
        frames.append(Frame(idx=index * 10, time=index * 1.0, path=rel, width=320, height=240))
    works = []
    for n in range(count):
        question = f"Where is the dog in clip {n}?"
        sample = SourceSample(id=sample_id("bench", str(n), question), source="STR_bench", source_id=str(n),
                              task=Task.SPATIO_TEMPORAL, question=question, answer="On the left.",
                              video_path="v.mp4", media_root=str(root), span=[0.0, 3.0],
                              objects=[SourceObject(name="dog")], caption=f"A dog walks (clip {n}).")
        dets = [Detection(frame_idx=f.idx, label=label, score=0.9 - 0.1 * k, box=[0.1 + 0.3 * k, 0.2, 0.3 + 0.3 * k, 0.6])
                for f in frames for k, label in enumerate(("dog", "cat"))]
        works.append(SampleWork(sample=sample, frames=frames, detections=dets))
    return works


def start_server(latency_ms: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "stgr_builder.cli", "serve-llm", "--port", "0",
                             "--latency-ms", str(latency_ms)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "300"})
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"serve-llm did not start: {line!r}")
    return proc, line.split("listening on ", 1)[1].split()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--samples", type=int, default=480, help="timed samples (plus one warm-up batch)")
    args = parser.parse_args()

    proc, base_url = start_server(args.latency_ms)
    os.environ["OPENAI_BASE_URL"] = base_url
    os.environ.setdefault("OPENAI_API_KEY", "bench-not-a-secret")
    try:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            works = make_samples(root, args.samples + args.concurrency)
            config = AnnotatorConfig(backend="openai", model="stgr-dry-run", prompt="stgr-cot-llm",
                                     concurrency=args.concurrency, timeout=30.0)
            annotator = LlmAnnotator(config, VerifyConfig(), root=root, run="bench")
            size = annotator.batch_size
            # Warm-up (imports, first connections) on other samples, not timed.
            warm, works = works[:args.concurrency], works[args.concurrency:]
            LlmAnnotator(config, VerifyConfig(), root=root, run="warm").annotate_batch(warm)
            started, cpu = time.perf_counter(), time.process_time()
            results = []
            for start in range(0, len(works), size):
                results += annotator.annotate_batch(works[start:start + size])
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    server_cpu = os.times().children_user + os.times().children_system  # whole server life
    failed = sum(1 for r in results if not hasattr(r, "reasoning"))
    requests = annotator.usage.requests - annotator.usage.cached
    achieved = requests / elapsed
    ideal = args.concurrency / (args.latency_ms / 1000)
    print(f"{requests} requests ({failed} samples not annotated) in {elapsed:.2f}s, batches of {size}, "
          f"{args.concurrency} in flight, latency {args.latency_ms:g} ms")
    print(f"CPU per request: client {1000 * cpu / requests:.1f} ms, server {1000 * server_cpu / requests:.1f} ms "
          f"(incl. its start-up and the warm-up); cores here: {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    print(f"achieved {achieved:.1f} req/s, ideal {ideal:.1f} req/s: ratio {achieved / ideal:.3f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
