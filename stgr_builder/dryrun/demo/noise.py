"""Inherited noise for the demo source: labels as wrong as real datasets' labels are.

Real temporal labels are often imprecise (the TimeLens audit found 34.9% of Charades-STA spans
imprecise) and real gold boxes are sometimes off or on the wrong object. ``apply_noise``
corrupts a chosen share of the demo's temporal-QA spans and of its gold boxes, seeded, and
says what it did in ``corruptions.json`` beside ``truth.json``, so tests and
``bench/inherited_labels.py`` can count how many of them a build lets through.

Spans (``temporal QA`` and ``temporal QA (MCQ)`` answers): ``shift`` by 2-4 s, ``stretch`` to
twice the length about the centre, ``shrink`` to half (one end cut), kept inside the video; an
end moves by at least ``MIN_SPAN_ERROR_S`` (a short span is stretched by that much instead).
Gold boxes (``gold_boxes``: spatio-temporal items get boxes at three times inside the span,
visual-QA items their answer box): ``shift`` by 0.6-1.0 box widths or heights (IoU with the
truth below 0.5), or ``wrong_object`` (the box of another object in the frame; a shift when
there is none). A visual-QA answer follows its corrupted gold box, as a source's would.

>>> noise = DemoNoise(span_share=0.3, box_share=0.3, seed=1)  # doctest: +SKIP
>>> generate_demo(Path("demo"), noise=noise)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from stgr_builder.core import geometry
from stgr_builder.models import Span, Task, TruthImage, TruthVideo

CORRUPTIONS_FILE = "corruptions.json"
#: A corrupted span has an end at least this far (s) off the truth: twice the 0.5 s within
#: which a span counts as right, so no corruption is one only by rounding.
MIN_SPAN_ERROR_S = 1.0
_TEMPORAL = (Task.TEMPORAL, Task.TEMPORAL_MCQ)


class DemoNoise(BaseModel):
    """What share of the demo's inherited labels to corrupt (0: none, the default)."""

    model_config = ConfigDict(extra="forbid")

    span_share: float = Field(0.0, ge=0, le=1, description="share of temporal-QA spans corrupted")
    box_share: float = Field(0.0, ge=0, le=1, description="share of gold boxes corrupted")
    gold_boxes: bool = Field(False, description="give spatio-temporal and visual-QA items gold boxes")
    seed: int = 0

    @property
    def active(self) -> bool:
        return self.gold_boxes or self.span_share > 0 or self.box_share > 0


class SpanCorruption(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="the record's id in demo_source.jsonl")
    kind: Literal["shift", "stretch", "shrink"]
    truth: Span
    corrupted: Span


class BoxCorruption(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    time: float = Field(description="the gold box's time (0 for a still image)")
    kind: Literal["shift", "wrong_object"]
    truth: list[float] = Field(description="normalized box the generator drew")
    corrupted: list[float]


class Corruptions(BaseModel):
    """``corruptions.json``: every corrupted label, and the ids of the intact ones."""

    model_config = ConfigDict(extra="forbid")

    noise: DemoNoise
    spans: list[SpanCorruption] = Field(default_factory=list)
    boxes: list[BoxCorruption] = Field(default_factory=list)
    intact_spans: list[str] = Field(default_factory=list, description="ids of temporal records left intact")
    intact_boxes: list[tuple[str, float]] = Field(default_factory=list, description="(id, time) of intact gold boxes")


def load_corruptions(folder: Path) -> Corruptions:
    """Read ``corruptions.json`` from a demo folder."""
    return Corruptions.model_validate_json((Path(folder) / CORRUPTIONS_FILE).read_text())


def gold_boxes_of(record: dict, video: TruthVideo | None, image: TruthImage | None) -> list[dict]:
    """The record's objects with gold boxes from the truth (a spatio-temporal item: at 25, 50
    and 75% of its span; a visual-QA item: its object's box); other records unchanged."""
    objects = record.get("objects", [])
    if image is not None and record["task"] == Task.VISUAL.value:
        name = objects[0]
        drawn = next(o for o in image.objects if o.name == name)
        box = _normalized(drawn.box, image.width, image.height)
        return [{"name": name, "boxes": [{"time": 0.0, "box": box}]}]
    if video is None or record["task"] != Task.SPATIO_TEMPORAL.value or record.get("span") is None:
        return objects
    name = objects[0]
    obj = next(o for o in video.objects if o.name == name)
    start, end = record["span"]
    boxes = []
    for share in (0.25, 0.5, 0.75):
        idx = math.floor((start + share * (end - start)) * video.fps)
        found = _nearest_box(obj.boxes, idx)
        if found is None:
            continue
        idx, pixels = found
        time = round((idx + 0.5) / video.fps, 3)  # the middle of the frame: frame_at(time) == idx
        boxes.append({"time": time, "box": _normalized(pixels, video.width, video.height)})
    return [{"name": name, "boxes": boxes}]


def apply_noise(
    records: list[dict], noise: DemoNoise, videos: dict[str, TruthVideo], images: dict[str, TruthImage]
) -> Corruptions:
    """Corrupt ``records`` (demo records as JSON dicts) in place; return what was corrupted."""
    rng = np.random.default_rng([noise.seed, 24])
    if noise.gold_boxes or noise.box_share > 0:
        for record in records:
            record["objects"] = gold_boxes_of(
                record, videos.get(record.get("video", "")), images.get(record.get("image", ""))
            )
    report = Corruptions(noise=noise)
    temporal = [r for r in records if r["task"] in {t.value for t in _TEMPORAL}]
    chosen = _choose(rng, len(temporal), noise.span_share)
    for k, record in enumerate(temporal):
        if k in chosen:
            report.spans.append(_corrupt_span(rng, record, videos[record["video"]]))
        else:
            report.intact_spans.append(record["id"])
    boxes = [(r, obj, tb) for r in records for obj in _dict_objects(r) for tb in obj["boxes"]]
    chosen = _choose(rng, len(boxes), noise.box_share)
    for k, (record, obj, timed) in enumerate(boxes):
        if k in chosen:
            report.boxes.append(_corrupt_box(rng, record, obj, timed, videos, images))
        else:
            report.intact_boxes.append((record["id"], timed["time"]))
    return report


def _choose(rng: np.random.Generator, n: int, share: float) -> set[int]:
    count = int(round(share * n))
    return {int(i) for i in rng.permutation(n)[:count]}


def _dict_objects(record: dict) -> list[dict]:
    return [o for o in record.get("objects", []) if isinstance(o, dict)]


def _corrupt_span(rng: np.random.Generator, record: dict, video: TruthVideo) -> SpanCorruption:
    start, end = record["span"]
    duration = round(video.duration, 1)
    kind = str(rng.choice(["shift", "stretch", "shrink"]))
    length = end - start
    if kind == "shrink" and length / 2 < MIN_SPAN_ERROR_S:
        kind = "stretch"  # half of a short span is within the rounding of a right one
    if kind == "shift":
        delta = float(rng.uniform(2.0, 4.0))
        # Shift the way there is room for; clip at the video's ends.
        delta = delta if end + delta <= duration or start - delta < 0 else -delta
        new = [max(0.0, start + delta), min(duration, end + delta)]
    elif kind == "stretch":  # twice the length, each end moved by MIN_SPAN_ERROR_S at least
        grow = max(length / 2, MIN_SPAN_ERROR_S)
        new = [max(0.0, start - grow), min(duration, end + grow)]
    else:  # half the span cut off one end
        new = [start + length / 2, end] if rng.random() < 0.5 else [start, end - length / 2]
    new = [round(new[0], 1), round(new[1], 1)]
    record["span"] = new
    span_text = f"[{new[0]:.1f}, {new[1]:.1f}]"
    record["answer"] = (
        f"{record['answer'].split(chr(10), 1)[0]}\n{span_text}"
        if record["task"] == Task.TEMPORAL_MCQ.value
        else span_text
    )
    return SpanCorruption(id=record["id"], kind=kind, truth=[start, end], corrupted=new)


def _corrupt_box(
    rng: np.random.Generator,
    record: dict,
    obj: dict,
    timed: dict,
    videos: dict[str, TruthVideo],
    images: dict[str, TruthImage],
) -> BoxCorruption:
    truth = list(timed["box"])
    others = _other_boxes(record, obj["name"], timed["time"], videos, images)
    others = [b for b in others if geometry.box_iou(b, truth) < 0.5]
    kind = "wrong_object" if others and rng.random() < 0.5 else "shift"
    new = others[int(rng.integers(len(others)))] if kind == "wrong_object" else _shifted(rng, truth)
    timed["box"] = new
    if record["task"] == Task.VISUAL.value:
        image = images[record["image"]]
        pixels = [round(v * s) for v, s in zip(new, (image.width, image.height) * 2, strict=True)]
        record["answer"] = f"<obj>{obj['name']}</obj><box>[{', '.join(str(v) for v in pixels)}]</box>"
    return BoxCorruption(id=record["id"], time=timed["time"], kind=kind, truth=truth, corrupted=new)


def _shifted(rng: np.random.Generator, box: list[float]) -> list[float]:
    """The box moved by 0.6-1.0 of its width or height, whichever way stays in the frame."""
    width, height = box[2] - box[0], box[3] - box[1]
    for _ in range(20):
        axis = int(rng.integers(2))
        size = width if axis == 0 else height
        delta = float(rng.uniform(0.6, 1.0)) * size * (1 if rng.random() < 0.5 else -1)
        moved = list(box)
        moved[axis] += delta
        moved[axis + 2] += delta
        if min(moved) >= 0 and max(moved) <= 1 and geometry.box_iou(moved, box) < 0.5:
            return [round(v, 4) for v in moved]
    # No room on that side: the box mirrored across the frame's centre.
    return [round(1 - box[2], 4), box[1], round(1 - box[0], 4), box[3]]


def _other_boxes(
    record: dict, name: str, time: float, videos: dict[str, TruthVideo], images: dict[str, TruthImage]
) -> list[list[float]]:
    if record.get("image") is not None:
        image = images[record["image"]]
        return [_normalized(o.box, image.width, image.height) for o in image.objects if o.name != name]
    video = videos[record["video"]]
    idx = math.floor(time * video.fps + 1e-6)
    return [
        _normalized(box, video.width, video.height)
        for o in video.objects
        if o.name != name and (box := o.boxes[idx] if idx < len(o.boxes) else None) is not None
    ]


def _nearest_box(boxes: list[list[int] | None], idx: int) -> tuple[int, list[int]] | None:
    for offset in range(len(boxes)):
        for candidate in (idx - offset, idx + offset):
            if 0 <= candidate < len(boxes) and boxes[candidate] is not None:
                return candidate, boxes[candidate]  # type: ignore[return-value]
    return None


def _normalized(box: list[int], width: int, height: int) -> list[float]:
    return [round(box[0] / width, 4), round(box[1] / height, 4), round(box[2] / width, 4), round(box[3] / height, 4)]


__all__ = [
    "CORRUPTIONS_FILE",
    "BoxCorruption",
    "Corruptions",
    "DemoNoise",
    "SpanCorruption",
    "apply_noise",
    "load_corruptions",
]
