"""VideoEspresso-style pre-annotated key frames: a JSON list (or JSONL) of video QA items whose
evidence is already chosen: key frames with the objects on them, boxes in 0-1000 integers as
centre-x, centre-y, width, height.

::

    [{"id": "ve_000123", "video_path": "videos/bikes.mp4",
      "question": "Which vehicle passes the cyclist?", "answer": "A white car.",
      "evidence": "A white car overtakes the cyclist on the left.",
      "key_frames": [{"time": 2.0, "key_items": {"car": [[310, 540, 180, 220]],
                                                  "cyclist": [[650, 600, 90, 300]]}}]}]

Each item is a ``temporal-spatial free-form QA`` sample (the answer as given, plain text); its
key items are gold boxes of their objects at the key frames' times (``time`` in seconds, or
``frame`` with ``options.fps``). With ``options.span: key_frames`` the sample's span is the
key frames' extent, so the filters judge it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import Field, model_validator

from stgr_builder.core import grammar
from stgr_builder.models import SourceObject, Task
from stgr_builder.sources import AdapterContext, register
from stgr_builder.sources.common import (
    AdapterOptions,
    Item,
    Record,
    parse_options,
    read_records,
    timed_boxes,
    validate,
)


class VideoEspressoOptions(AdapterOptions):
    fps: float | None = Field(None, gt=0, description="frame rate, for key frames given by 'frame'")
    span: Literal["none", "key_frames"] = "none"


class KeyFrameItems(Record):
    time: float | None = Field(None, ge=0)
    frame: int | None = Field(None, ge=0)
    key_items: dict[str, list[list[float]]] = Field(min_length=1)

    @model_validator(mode="after")
    def _when(self) -> KeyFrameItems:
        if (self.time is None) == (self.frame is None):
            raise ValueError("a key frame needs exactly one of 'time' and 'frame'")
        for name, boxes in self.key_items.items():
            for box in boxes:
                if len(box) != 4 or not all(0 <= v <= 1000 for v in box) or box[2] <= 0 or box[3] <= 0:
                    raise ValueError(f"key item {name!r} box {box} is not [cx, cy, w, h] in 0-1000")
        return self


class VideoEspressoItem(Record):
    id: str | int
    video_path: str = Field(min_length=1)
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    evidence: str | None = None
    key_frames: list[KeyFrameItems] = Field(min_length=1)


def from_centre_1000(box: list[float]) -> list[float]:
    """0-1000 ``[cx, cy, w, h]`` -> normalized ``[x1, y1, x2, y2]``, clipped to [0, 1].

    >>> from_centre_1000([500, 500, 200, 100])
    [0.4, 0.45, 0.6, 0.55]
    """
    cx, cy, w, h = (v / 1000 for v in box)
    clip = lambda v: round(min(max(v, 0.0), 1.0), 6)  # noqa: E731
    return [clip(cx - w / 2), clip(cy - h / 2), clip(cx + w / 2), clip(cy + h / 2)]


@register("videoespresso")
def read_videoespresso(ctx: AdapterContext) -> Iterator[Item]:
    opts = parse_options(ctx, VideoEspressoOptions)
    for origin, data in read_records(ctx):
        item = validate(ctx, origin, VideoEspressoItem, data)
        if not isinstance(item, VideoEspressoItem):
            yield item
            continue
        if any(kf.time is None for kf in item.key_frames) and opts.fps is None:
            yield ctx.malformed(origin, "key frames given by 'frame' need options.fps")
            continue
        pairs: dict[str, list[tuple[float, list[float]]]] = {}
        for kf in item.key_frames:
            if kf.time is not None:
                t = kf.time
            else:  # a key frame has a time or a frame, and options.fps was checked above
                assert kf.frame is not None and opts.fps is not None
                t = kf.frame / opts.fps
            for name, boxes in kf.key_items.items():
                for box in boxes:
                    pairs.setdefault(grammar.clean_text(name), []).append((t, from_centre_1000(box)))
        objects = [SourceObject(name=name, boxes=timed_boxes(p, None)) for name, p in pairs.items() if name]
        times = [t for p in pairs.values() for t, _ in p]
        span = [min(times), max(times)] if opts.span == "key_frames" and max(times) > min(times) else None
        yield ctx.sample(
            origin,
            source_id=str(item.id),
            question=item.question.strip(),
            task=Task.SPATIO_TEMPORAL,
            answer=grammar.clean_text(item.answer),
            video_path=item.video_path.removeprefix("./"),
            span=span,
            objects=objects,
            caption=item.evidence,
            gold_evidence=ctx.source.gold_evidence,
        )
