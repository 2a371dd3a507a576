"""ActivityNet Captions (``train.json`` / ``val_1.json``): a JSON object keyed by video id.

::

    {"v_QOlSCBRmfWY": {"duration": 82.73,
                       "timestamps": [[0.83, 19.86], [17.37, 60.81]],
                       "sentences": ["A young woman is seen standing in a room ...", "..."]}}

Each (sentence, timestamp) of a video is a temporal sample (see ``sources.common``); an end
past the stated duration is clipped to it (the published files have a few). Video files are
found by ``options.video`` (default ``{vid}.mp4``).
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import Field, model_validator

from stgr_builder.models import Span
from stgr_builder.sources import AdapterContext, register
from stgr_builder.sources.common import (
    Item,
    Record,
    TemporalOptions,
    json_entries,
    parse_options,
    temporal_samples,
    validate,
    video_name,
)


class ActivityNetVideo(Record):
    duration: float = Field(gt=0)
    timestamps: list[Span]
    sentences: list[str]

    @model_validator(mode="after")
    def _aligned(self) -> ActivityNetVideo:
        if len(self.timestamps) != len(self.sentences):
            raise ValueError(f"{len(self.timestamps)} timestamps but {len(self.sentences)} sentences")
        return self


@register("activitynet_captions")
def read_activitynet_captions(ctx: AdapterContext) -> Iterator[Item]:
    opts = parse_options(ctx, TemporalOptions)
    for origin, vid, data in json_entries(ctx):
        record = validate(ctx, origin, ActivityNetVideo, data)
        if not isinstance(record, ActivityNetVideo):
            yield record
            continue
        if vid is None:  # a list of records: no video id to name the video by
            yield ctx.malformed(origin, "ActivityNet Captions annotations are an object keyed by video id")
            continue
        sentences = [
            (f"{origin}#{i}", sentence, [start, min(end, record.duration)])
            for i, (sentence, (start, end)) in enumerate(zip(record.sentences, record.timestamps, strict=False))
        ]
        yield from temporal_samples(ctx, opts, vid=vid, video_path=video_name(opts.video, vid=vid), sentences=sentences)
