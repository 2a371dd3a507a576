"""HC-STVG (v1/v2 ``train.json``) and VidSTG-style spatio-temporal tubes: a JSON object
keyed by video file, one person tube per video, boxes ``[x, y, w, h]`` in pixels, one per
frame from ``st_frame`` to ``ed_frame``.

::

    {"49_8rXP6ZBXQOQ.mp4": {"img_num": 500, "img_hw": [720, 1280], "st_frame": 117,
                            "ed_frame": 239, "bbox": [[512, 180, 96, 260], ...],
                            "English": "The man in the suit turns and walks to the door."}}

Frame ``f`` is at ``f / fps`` seconds; ``fps`` is the record's ``fps`` when it has one, else
``options.fps``, else ``img_num / options.clip_s`` (HC-STVG clips are 20 s). The tube becomes
gold boxes (thinned to ``options.max_gold_boxes``) of the sentence's subject (its first object
phrase, else ``person``): a spatio-temporal sample (``What happens in the video from s to
e?`` -> the sentence) whose evidence is the tube, and a temporal sample for the tube's span.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import Field, model_validator

from stgr_builder.models import SourceObject
from stgr_builder.sources import AdapterContext, register
from stgr_builder.sources.common import (
    Item,
    Record,
    TemporalOptions,
    TemporalTask,
    json_entries,
    normalize_xyxy,
    parse_options,
    subject_name,
    temporal_samples,
    timed_boxes,
    validate,
    video_name,
    xywh_to_xyxy,
)


class HcstvgOptions(TemporalOptions):
    tasks: list[TemporalTask] = Field(default_factory=lambda: list[TemporalTask](["spatio_temporal", "temporal"]))
    video: str = "{video}"
    fps: float | None = Field(None, gt=0, description="frame rate of the videos, when records do not say")
    clip_s: float = Field(20.0, gt=0, description="clip length used to derive fps from img_num")
    max_gold_boxes: int = Field(8, ge=1, description="tube boxes kept per sample, evenly spread")
    subject: str = Field("person", description="object name when the sentence names no known noun")


class HcstvgTube(Record):
    img_num: int = Field(gt=0)
    img_hw: list[int] = Field(min_length=2, max_length=2)
    st_frame: int = Field(ge=0)
    ed_frame: int = Field(ge=0)
    bbox: list[list[float]] = Field(min_length=1)
    English: str = Field(min_length=1)
    fps: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _tube(self) -> HcstvgTube:
        if self.ed_frame < self.st_frame:
            raise ValueError(f"ed_frame {self.ed_frame} is before st_frame {self.st_frame}")
        if len(self.bbox) not in (self.ed_frame - self.st_frame, self.ed_frame - self.st_frame + 1):
            raise ValueError(f"{len(self.bbox)} boxes for frames {self.st_frame}-{self.ed_frame}")
        if any(len(b) != 4 or b[2] <= 0 or b[3] <= 0 for b in self.bbox):
            raise ValueError("every bbox must be [x, y, w, h] with positive size")
        return self


@register("hcstvg")
def read_hcstvg(ctx: AdapterContext) -> Iterator[Item]:
    opts = parse_options(ctx, HcstvgOptions)
    for origin, video, data in json_entries(ctx):
        tube = validate(ctx, origin, HcstvgTube, data)
        if not isinstance(tube, HcstvgTube):
            yield tube
            continue
        fps = tube.fps or opts.fps or tube.img_num / opts.clip_s
        height, width = tube.img_hw
        pairs = [
            ((tube.st_frame + k) / fps, normalize_xyxy(xywh_to_xyxy(b), width, height)) for k, b in enumerate(tube.bbox)
        ]
        name = subject_name(tube.English, opts.subject, opts.extra_nouns)
        span = [tube.st_frame / fps, (tube.st_frame + len(tube.bbox) - 1) / fps]
        yield from temporal_samples(
            ctx,
            opts,
            vid=video or origin,
            video_path=video_name(opts.video, video=video),
            sentences=[(origin, tube.English, span)],
            objects={0: [SourceObject(name=name, boxes=timed_boxes(pairs, opts.max_gold_boxes))]},
        )
