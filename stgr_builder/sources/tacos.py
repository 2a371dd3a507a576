"""TACoS, in the form the temporal-grounding code bases publish (2D-TAN, MMN: ``train.json``):
a JSON object keyed by video file, spans in frames.

::

    {"s13-d21.avi": {"num_frames": 8873, "fps": 29.4,
                     "timestamps": [[140, 445], [445, 862]],
                     "sentences": ["He took out a cutting board.", "..."]}}

A span is ``[start / fps, end / fps]`` seconds. Videos: ``options.video`` (default
``{video}``, the key as given; ``{stem}.mp4`` for converted files).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import PurePosixPath

from pydantic import Field, model_validator

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


class TacosOptions(TemporalOptions):
    video: str = "{video}"


class TacosVideo(Record):
    num_frames: int = Field(gt=0)
    fps: float = Field(gt=0)
    timestamps: list[list[float]]
    sentences: list[str]

    @model_validator(mode="after")
    def _aligned(self) -> TacosVideo:
        if len(self.timestamps) != len(self.sentences):
            raise ValueError(f"{len(self.timestamps)} timestamps but {len(self.sentences)} sentences")
        if any(len(t) != 2 for t in self.timestamps):
            raise ValueError("every timestamp must be [start_frame, end_frame]")
        return self


@register("tacos")
def read_tacos(ctx: AdapterContext) -> Iterator[Item]:
    opts = parse_options(ctx, TacosOptions)
    for origin, video, data in json_entries(ctx):
        record = validate(ctx, origin, TacosVideo, data)
        if not isinstance(record, TacosVideo):
            yield record
            continue
        if video is None:  # a list of records: no video file name to read the video from
            yield ctx.malformed(origin, "TACoS annotations are an object keyed by video file name")
            continue
        sentences = [
            (f"{origin}#{i}", sentence, [start / record.fps, end / record.fps])
            for i, (sentence, (start, end)) in enumerate(zip(record.sentences, record.timestamps, strict=False))
        ]
        path = video_name(opts.video, video=video, stem=PurePosixPath(video).stem)
        yield from temporal_samples(ctx, opts, vid=video, video_path=path, sentences=sentences)
