"""PLM-RDCap (PerceptionLM region dense captioning, ``rdcap`` of PLM-Video-Human): one JSON
object per line, one subject (an SA-V masklet) per record, captions over frame ranges.

::

    {"uid": 0, "video": "sav_017599.mp4", "masklet_id": 2, "total_frames": 73,
     "dense_captions": [{"start_frame": 0, "end_frame": 20, "caption": "A man in a red ..."},
                        {"start_frame": 21, "end_frame": 72, "caption": "The man waves ..."}]}

The published records point at SA-V masklets by id; the subject's location can come with the
record as ``masklet`` (frame -> COCO RLE ``{"size": [H, W], "counts": ...}``, as SA-V stores
it) or ``boxes`` (frame -> ``[x1, y1, x2, y2]`` pixels, with ``width`` and ``height``). They
become the gold boxes of the caption's subject inside each caption's frame range. Frame ``f``
is at ``f / fps`` (``fps`` of the record, else ``options.fps``). Each caption gives a
spatio-temporal sample (-> the caption), a temporal sample and a temporal MCQ (the other
captions' spans as options).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import Field, model_validator

from stgr_builder.models import SourceObject
from stgr_builder.sources import AdapterContext, iter_json_lines, register
from stgr_builder.sources.common import (
    Item,
    Record,
    TemporalOptions,
    TemporalTask,
    normalize_xyxy,
    parse_options,
    subject_name,
    temporal_samples,
    timed_boxes,
    validate,
    video_name,
    xywh_to_xyxy,
)


class RdcapOptions(TemporalOptions):
    tasks: list[TemporalTask] = Field(
        default_factory=lambda: list[TemporalTask](["spatio_temporal", "temporal", "temporal_mcq"])
    )
    video: str = "{video}"
    fps: float | None = Field(None, gt=0, description="frame rate of the videos, when records do not say")
    max_gold_boxes: int = Field(8, ge=1)
    subject: str = Field("person", description="object name when a caption names no known noun")


class DenseCaption(Record):
    start_frame: int = Field(ge=0)
    end_frame: int = Field(ge=0)
    caption: str = Field(min_length=1)


class RdcapRecord(Record):
    uid: int | str
    video: str = Field(min_length=1)
    masklet_id: int | str = 0
    total_frames: int | None = Field(None, gt=0)
    dense_captions: list[DenseCaption] = Field(min_length=1)
    fps: float | None = Field(None, gt=0)
    masklet: dict[int, dict[str, Any]] | None = None
    boxes: dict[int, list[float]] | None = None
    width: int | None = Field(None, gt=0)
    height: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _located(self) -> RdcapRecord:
        if self.boxes is not None and (self.width is None or self.height is None):
            raise ValueError("'boxes' in pixels need 'width' and 'height'")
        return self


def _gold(record: RdcapRecord) -> dict[int, list[float]]:
    """Normalized box per frame, from the masklet's RLEs or the pixel boxes."""
    if record.masklet:
        from pycocotools import mask as mask_utils

        out = {}
        for frame, rle in record.masklet.items():
            height, width = rle["size"]
            counts = rle["counts"].encode() if isinstance(rle["counts"], str) else rle["counts"]
            x, y, w, h = mask_utils.toBbox({"size": [height, width], "counts": counts}).tolist()
            if w > 0 and h > 0:  # an empty mask: the subject is not visible in that frame
                out[frame] = normalize_xyxy(xywh_to_xyxy([x, y, w, h]), width, height)
        return out
    if record.boxes is None or record.width is None or record.height is None:  # pixel boxes come with a size
        return {}
    return {f: normalize_xyxy(b, record.width, record.height) for f, b in record.boxes.items()}


@register("plm_rdcap")
def read_plm_rdcap(ctx: AdapterContext) -> Iterator[Item]:
    opts = parse_options(ctx, RdcapOptions)
    for line, data in iter_json_lines(ctx.path):
        origin = ctx.origin(line)
        record = validate(ctx, origin, RdcapRecord, data)
        if not isinstance(record, RdcapRecord):
            yield record
            continue
        fps = record.fps or opts.fps
        if fps is None:
            yield ctx.malformed(origin, "no 'fps' in the record and no options.fps: frames cannot be timed")
            continue
        try:
            gold = _gold(record)
        except (KeyError, TypeError, ValueError) as exc:
            yield ctx.malformed(origin, f"masklet is not COCO RLE per frame: {exc!r}")
            continue
        sentences, objects = [], {}
        for i, dc in enumerate(record.dense_captions):
            sentences.append((f"{origin}#{i}", dc.caption, [dc.start_frame / fps, dc.end_frame / fps]))
            pairs = [(f / fps, b) for f, b in gold.items() if dc.start_frame <= f <= dc.end_frame]
            if pairs:
                name = subject_name(dc.caption, opts.subject, opts.extra_nouns)
                objects[i] = [SourceObject(name=name, boxes=timed_boxes(pairs, opts.max_gold_boxes))]
        vid = f"{record.video}#{record.masklet_id}"
        yield from temporal_samples(
            ctx,
            opts,
            vid=vid,
            video_path=video_name(opts.video, video=record.video),
            sentences=sentences,
            objects=objects,
        )
