"""Benchmark: what the track gate costs per sample, and what it buys, in one run.

    python bench/track_gate.py [--seed 11] [--videos 12] [--images 6] [--repeats 1]

Generates a demo source (distinct media per video; seed 11 was never used to train the demo
detector), then builds it three times in this process, interleaved, with fresh output folders:

- ``off``:  ``track.enabled: false`` (the detector's boxes go straight to the annotator);
- ``full``: ``track.staged: false`` (2 frames detected on each side of every candidate frame;
  2 altered views of each still image);
- ``on``:   the default gate (staged: one neighbour of each candidate frame holding a box first,
  the whole window only around a box that one does not confirm).

It prints, per build: distinct candidate frames, distinct frames detected (candidates and
neighbours, from the stage store) and their ratio, sample/detect/track seconds, seconds per
sample, and the evidence against the generator's truth (boxes, wrong boxes, mean IoU); then the
gate's cost as ratios against ``off``. Detection time scales with the frames detected, so the
detect-time ratio should sit near the frame ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stgr_builder.audit import connect  # noqa: E402
from stgr_builder.audit.evidence import judge, load_truths  # noqa: E402
from stgr_builder.core.layout import load_manifest  # noqa: E402
from stgr_builder.dryrun.demo import (
    demo_config,  # noqa: E402
    generate_demo,  # noqa: E402
)
from stgr_builder.pipeline import build  # noqa: E402


def write_config(source: Path, name: str, enabled: bool, staged: bool = True) -> Path:
    config = demo_config().model_dump(mode="json")
    config["track"]["enabled"] = enabled
    config["track"]["staged"] = staged
    path = source / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def measure(config: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    manifest = build(config, out)
    wall = time.perf_counter() - started
    steps = {s.step: s for s in manifest.stats}
    with connect(out) as con:
        rows = con.execute("SELECT id, source, video_path, image_path, key_items FROM cot").fetchall()
    judged = judge(load_truths(load_manifest(out)), rows)
    candidates, detected = frames_detected(out)
    return {
        "wall": wall,
        "samples": manifest.counts["samples"],
        "rows": manifest.counts["stgr_cot"],
        "candidates": candidates,
        "frames": detected,
        "sample_s": steps["sample"].seconds,
        "detect_s": steps["detect"].seconds,
        "track_s": steps["track"].seconds if "track" in steps else 0.0,
        "boxes": len(judged),
        "wrong": sum(1 for j in judged if j[4] < 0.5),
        "mean_iou": sum(j[4] for j in judged) / max(1, len(judged)),
    }


def frames_detected(out: Path) -> tuple[int, int]:
    """(distinct candidate frames, distinct frames detected) of a build, from its stage store: the
    sample stage holds each sample's candidate frames, the detect stage the neighbours it detected."""
    stages = out / "_cache" / "stages"
    candidates: set[str] = set()
    neighbours: set[str] = set()
    for stage, into, field in (("sample", candidates, "frames"), ("detect", neighbours, "track_frames")):
        for path in (stages / stage).rglob("*.json"):
            work = json.loads(path.read_text()).get("work") or {}
            into.update(frame["path"] for frame in work.get(field, []))
    return len(candidates), len(candidates | neighbours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stgr-bench-gate-"))
    try:
        generate_demo(work / "source", seed=args.seed, n_videos=args.videos, n_images=args.images)
        configs = {
            "off": write_config(work / "source", "off", False),
            "full": write_config(work / "source", "full", True, staged=False),
            "on": write_config(work / "source", "on", True),
        }
        results: dict[str, list[dict]] = {name: [] for name in configs}
        for _ in range(args.repeats):
            for name, config in configs.items():
                results[name].append(measure(config, work / f"out-{name}"))
        best = {name: min(runs, key=lambda r: r["wall"]) for name, runs in results.items()}
        print(f"demo seed {args.seed}: {args.videos} videos, {args.images} stills, {best['on']['samples']} samples")
        print(
            f"{'gate':5} {'wall s':>7} {'s/sample':>9} {'cands':>6} {'frames':>7} {'x cand':>7} {'sample s':>9} "
            f"{'detect s':>9} "
            f"{'track s':>8} {'rows':>5} {'boxes':>6} {'wrong':>6} {'mean IoU':>9}"
        )
        for name, r in best.items():
            print(
                f"{name:5} {r['wall']:7.1f} {r['wall'] / r['samples']:9.3f} {r['candidates']:6d} {r['frames']:7d} "
                f"{r['frames'] / r['candidates']:7.2f} {r['sample_s']:9.2f} "
                f"{r['detect_s']:9.2f} {r['track_s']:8.2f} {r['rows']:5d} {r['boxes']:6d} {r['wrong']:6d} "
                f"{r['mean_iou']:9.3f}"
            )
        off = best["off"]
        for name in ("full", "on"):
            gated = best[name]
            print(
                f"{name}/off: frames {gated['frames'] / off['frames']:.2f}x, "
                f"detect {gated['detect_s'] / off['detect_s']:.2f}x, "
                f"decode {gated['sample_s'] / max(off['sample_s'], 1e-9):.2f}x, "
                f"wall {gated['wall'] / off['wall']:.2f}x; "
                f"{(gated['wall'] - off['wall']) / gated['samples']:.3f} s per sample; "
                f"wrong boxes {off['wrong']} -> {gated['wrong']}"
            )
        print(
            f"on/full: frames {best['on']['frames'] / best['full']['frames']:.2f}x, "
            f"detect {best['on']['detect_s'] / best['full']['detect_s']:.2f}x"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
