"""Inherited labels: how many corrupted spans and gold boxes a build lets through (issue 24).

    python bench/inherited_labels.py [--seeds 1 2 3] [--span-share 0.33] [--box-share 0.3]
                                     [--mode check|refine|off] [--videos 6] [--images 3] [--out DIR]

For each seed the demo generator (``generate_demo``, media of that seed) corrupts a share of the
temporal spans (shift 2-4 s, stretch x2, shrink to half) and of the gold boxes (shift, wrong
object) and writes ``corruptions.json``; the demo config (with ``--mode`` as
``span_check.mode``) is built in this process (``executor.run_job``, no orchestrator). Then:

- a corrupted span is *caught* when its sample is rejected, or its row's answer span is within
  0.5 s of the truth at both ends (``caught_by_check``: rejected by ``span_imprecise`` /
  ``query_not_unique`` or refined, i.e. by the span check rather than another rule);
- a corrupted gold box is caught when its sample is rejected, or no row holds a box of its
  object at its time with IoU < 0.5 against the truth (a visual-QA answer box included);
- an intact span is *kept* when its sample became a row whose answer span is within 0.5 s of
  the truth; an intact gold box when its sample became a row and no row box of its object at
  its time is off the truth (IoU < 0.5).

Each seed prints its shares; the last line is the worst seed (the goal: caught >= 90%,
kept >= 95%). ``--mode off`` is the baseline: the same sources with the checks off.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from stgr_builder.audit import connect  # noqa: E402
from stgr_builder.core import geometry, grammar  # noqa: E402
from stgr_builder.core.resources import Resources  # noqa: E402
from stgr_builder.executor import run_job  # noqa: E402
from stgr_builder.models import Task, sample_id  # noqa: E402
from stgr_builder.pipeline import BuildJob, context  # noqa: E402
from stgr_builder.sources.demo import DEMO_FILE, generate_demo, load_truth  # noqa: E402
from stgr_builder.sources.demo_config import demo_config  # noqa: E402
from stgr_builder.sources.demo_noise import DemoNoise, load_corruptions  # noqa: E402

SOURCE = "STR_demo"
SPAN_CODES = {"span_imprecise", "query_not_unique"}


def build_noisy(folder: Path, seed: int, args: argparse.Namespace) -> Path:
    """Generate the noisy demo of ``seed`` and build it; return the dataset folder."""
    source = folder / "source"
    noise = DemoNoise(span_share=args.span_share, box_share=args.box_share, gold_boxes=True, seed=seed)
    generate_demo(source, seed=seed, n_videos=args.videos, n_images=args.images, noise=noise)
    config = demo_config(seed).model_dump(mode="json")
    config["span_check"] = {"mode": args.mode}
    config["gold"] = {"keep_unconfirmed": args.mode == "off"}
    (source / "CONFIG.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    out = folder / "out"
    ctx = context(source / "CONFIG.yaml", out)
    run_job(BuildJob(ctx), Resources())
    return out


def score(folder: Path) -> dict[str, float]:
    source, out = folder / "source", folder / "out"
    truth, report = load_truth(source), load_corruptions(source)
    records = {r["id"]: r for r in map(json.loads, (source / DEMO_FILE).read_text().splitlines())}
    ids = {rid: sample_id(SOURCE, rid, r["question"]) for rid, r in records.items()}
    with connect(out) as con:
        rejects = dict(con.sql("SELECT id, code FROM rejects").fetchall())
        rows = {}
        for row_id, task, answer, items, frames, lineage in con.sql(
            "SELECT id, task, answer, key_items, key_frames, provenance.lineage FROM rl"
        ).fetchall():
            rows[row_id] = (task, answer, items, {f["idx"]: f["time"] for f in frames}, lineage)
    videos = {v.path: v for v in truth.videos}
    images = {i.path: i for i in truth.images}

    def span_right(rid: str, true_span: list[float]) -> bool:
        task, answer, *_ = rows[ids[rid]]
        got = grammar.parse_answer(Task(task), answer).span
        return got is not None and max(abs(a - b) for a, b in zip(got, true_span, strict=True)) <= 0.5

    spans_caught = spans_by_check = 0
    for c in report.spans:
        sid = ids[c.id]
        refined = sid in rows and rows[sid][4]["span_check"] == "refined"
        caught = sid in rejects or span_right(c.id, c.truth)
        spans_caught += caught
        spans_by_check += rejects.get(sid) in SPAN_CODES or (refined and span_right(c.id, c.truth))
    spans_kept = 0
    for rid in report.intact_spans:
        record = records[rid]
        spans_kept += ids[rid] in rows and span_right(rid, record["span"])

    def box_truth(rid: str, t: float, name: str) -> list[float] | None:
        record = records[rid]
        if "image" in record:
            image = images[record["image"]]
            obj = next(o for o in image.objects if o.name == name)
            return geometry.from_pixels(obj.box, (image.width, image.height))
        video = videos[record["video"]]
        obj = next(o for o in video.objects if o.name == name)
        box = obj.boxes[math.floor(t * video.fps + 1e-6)]
        return geometry.from_pixels(box, (video.width, video.height)) if box is not None else None

    def box_wrong(rid: str, t: float) -> bool:
        """A row of the record holds a box of the gold object at time t that is off the truth."""
        record = records[rid]
        name = next(o["name"] for o in record["objects"] if isinstance(o, dict))
        true = box_truth(rid, t, name)
        task, answer, items, times, _ = rows[ids[rid]]
        at_time = [item for item in items if item["name"] == name and abs(times[item["idx"]] - t) <= 0.06]
        boxes = [b for item in at_time for b in item["boxes"]]
        if "image" in record:
            boxes = [b for item in items if item["name"] == name for b in item["boxes"]]
            image = images[record["image"]]
            parsed = grammar.parse_answer(Task(task), answer)
            boxes.append(geometry.from_pixels(parsed.box, (image.width, image.height)))
        return true is not None and any(geometry.box_iou(b, true) < 0.5 for b in boxes)

    boxes_caught = sum(ids[c.id] in rejects or not box_wrong(c.id, c.time) for c in report.boxes)
    boxes_kept = sum(ids[rid] in rows and not box_wrong(rid, t) for rid, t in report.intact_boxes)
    return {
        "spans": len(report.spans),
        "spans_caught": spans_caught / max(1, len(report.spans)),
        "spans_caught_by_check": spans_by_check / max(1, len(report.spans)),
        "intact_spans": len(report.intact_spans),
        "intact_spans_kept": spans_kept / max(1, len(report.intact_spans)),
        "boxes": len(report.boxes),
        "boxes_caught": boxes_caught / max(1, len(report.boxes)),
        "intact_boxes": len(report.intact_boxes),
        "intact_boxes_kept": boxes_kept / max(1, len(report.intact_boxes)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--span-share", type=float, default=1 / 3)
    parser.add_argument("--box-share", type=float, default=0.3)
    parser.add_argument("--mode", choices=["check", "refine", "off"], default="check")
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="stgr-inherited-"))
    results = []
    for seed in args.seeds:
        started = time.perf_counter()
        folder = root / f"{args.mode}-seed{seed}"
        build_noisy(folder, seed, args)
        figures = score(folder)
        results.append(figures)
        shown = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
        print(f"seed {seed} ({time.perf_counter() - started:.0f}s): {shown}", flush=True)
    worst = {key: min(r[key] for r in results) for key in results[0] if key.endswith(("caught", "kept", "by_check"))}
    print(f"worst of {len(results)} seeds, mode {args.mode}: " + ", ".join(f"{k} {v:.3f}" for k, v in worst.items()))


if __name__ == "__main__":
    main()
