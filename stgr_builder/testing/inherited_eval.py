"""Score a build of a noisy demo source against the generator's truth and corruptions.json
(tests/test_inherited_labels.py and bench/inherited_labels.py). What counts as caught and kept
is described in bench/inherited_labels.py."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from stgr_builder.audit import connect
from stgr_builder.core import geometry, grammar
from stgr_builder.dryrun.demo import DEMO_FILE, DemoNoise, demo_config, generate_demo, load_corruptions, load_truth
from stgr_builder.dryrun.server import serve_llm
from stgr_builder.models import Task, sample_id
from stgr_builder.pipeline import build

SOURCE = "STR_demo"
SPAN_CODES = {"span_imprecise", "query_not_unique"}


def build_noisy(
    folder: Path,
    seed: int,
    *,
    mode: str = "check",
    span_share: float = 1 / 3,
    box_share: float = 0.3,
    videos: int = 6,
    images: int = 3,
    events: bool = False,
) -> Path:
    """Generate the noisy demo of ``seed`` (media and noise) and build it with
    ``span_check.mode: mode`` (``off``: the checks off, unconfirmed gold kept); return the out folder.

    ``events``: the demo's event questions too, built with the openai backend against the
    dry-run server on 127.0.0.1 (``stgr serve-llm``: its judge answers from the frames' pixels)
    and ``span_check.events: judge`` (``off`` in mode off)."""
    source = folder / "source"
    noise = DemoNoise(span_share=span_share, box_share=box_share, gold_boxes=True, seed=seed)
    generate_demo(source, seed=seed, n_videos=videos, n_images=images, noise=noise, event_spans=events)
    config = demo_config(seed).model_dump(mode="json")
    config["span_check"] = {"mode": mode}
    config["gold"] = {"keep_unconfirmed": mode == "off"}
    if events:
        config["span_check"]["events"] = "off" if mode == "off" else "judge"
        config["annotator"].update(
            {"backend": "openai", "model": "stgr-dry-run", "prompt": "stgr-cot-llm", "timeout": 10.0, "max_retries": 1}
        )
    (source / "CONFIG.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    out = folder / "out"
    shutil.rmtree(out, ignore_errors=True)  # a build of other code in the same folder would be resumed
    if not events:
        build(source / "CONFIG.yaml", out)
        return out
    with serve_llm() as server, _environ(OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="sk-dry-run"):
        build(source / "CONFIG.yaml", out)
    return out


@contextmanager
def _environ(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def is_event(record: dict) -> bool:
    """An event question of the demo (``generate_demo(event_spans=True)``): checked by the judge."""
    return record["task"] == "temporal QA" and record["question"].startswith("When does ")


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
    event_caught = event_kept = 0
    event_corrupted = [c for c in report.spans if is_event(records[c.id])]
    event_intact = [rid for rid in report.intact_spans if is_event(records[rid])]
    event_by_check = 0
    for c in event_corrupted:
        sid = ids[c.id]
        event_caught += sid in rejects or span_right(c.id, c.truth)
        refined = sid in rows and rows[sid][4]["span_check"] == "refined"
        event_by_check += rejects.get(sid) in SPAN_CODES or (refined and span_right(c.id, c.truth))
    for rid in event_intact:
        event_kept += ids[rid] in rows and span_right(rid, records[rid]["span"])
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
            still = next(o for o in image.objects if o.name == name)
            return geometry.from_pixels(still.box, (image.width, image.height))
        video = videos[record["video"]]
        moving = next(o for o in video.objects if o.name == name)
        box = moving.boxes[math.floor(t * video.fps + 1e-6)]
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
            if parsed.box is not None:
                boxes.append(geometry.from_pixels(parsed.box, (image.width, image.height)))
        return true is not None and any(geometry.box_iou(b, true) < 0.5 for b in boxes)

    boxes_caught = sum(ids[c.id] in rejects or not box_wrong(c.id, c.time) for c in report.boxes)
    boxes_kept = sum(ids[rid] in rows and not box_wrong(rid, t) for rid, t in report.intact_boxes)
    events = (
        {
            "event_spans": len(event_corrupted),
            "event_spans_caught": event_caught / max(1, len(event_corrupted)),
            "event_spans_caught_by_check": event_by_check / max(1, len(event_corrupted)),
            "intact_event_spans": len(event_intact),
            "intact_event_spans_kept": event_kept / max(1, len(event_intact)),
            "event_judge_requests_per_sample": _event_requests(out) / max(1, len(event_corrupted) + len(event_intact)),
        }
        if any(is_event(r) for r in records.values())
        else {}
    )
    return {
        **events,
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


def _event_requests(out: Path) -> int:
    """The event judge's requests of the build (its checks' yes and no verdicts, cached or not)."""
    manifest = json.loads((out / "manifest.json").read_text())
    checks = (manifest.get("llm") or {}).get("checks") or {}
    return int(checks.get("event_judge.yes", 0)) + int(checks.get("event_judge.no", 0))
