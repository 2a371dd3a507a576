"""DiDeMo (``train_data.json``): a JSON list; times are 5-second segment indices.

::

    [{"annotation_id": 24062, "video": "12090392@N02_13482799053_87ef417396.mov",
      "description": "a man walks into the frame.", "times": [[0, 0], [0, 0], [0, 1], [0, 0]],
      "train_times": [[0, 0]], "dl_link": "https://..."}]

Each annotator's ``[first, last]`` segment pair covers ``[5 * first, 5 * (last + 1)]`` seconds
(segments of ``options.segment_s``); the span is the pair most annotators chose (ties: the
earliest). Videos are named by ``options.video`` (default ``{video}``, the name as given;
``{stem}.mp4`` for converted files).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import PurePosixPath

from pydantic import Field

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


class DidemoOptions(TemporalOptions):
    video: str = "{video}"
    segment_s: float = Field(5.0, gt=0)


class DidemoRecord(Record):
    annotation_id: int | str
    video: str = Field(min_length=1)
    description: str = Field(min_length=1)
    times: list[list[int]] = Field(min_length=1)


@register("didemo")
def read_didemo(ctx: AdapterContext) -> Iterator[Item]:
    opts = parse_options(ctx, DidemoOptions)
    videos: dict[str, list[tuple[str, str, list[float]]]] = {}
    for origin, _, data in json_entries(ctx):
        record = validate(ctx, origin, DidemoRecord, data)
        if not isinstance(record, DidemoRecord):
            yield record
            continue
        pairs = [tuple(t) for t in record.times if len(t) == 2 and 0 <= t[0] <= t[1]]
        if len(pairs) != len(record.times):
            yield ctx.malformed(origin, f"times {record.times} are not [first, last] segment pairs")
            continue
        counts = Counter(pairs)
        first, last = min(counts, key=lambda p: (-counts[p], p))
        span = [first * opts.segment_s, (last + 1) * opts.segment_s]
        videos.setdefault(record.video, []).append((origin, record.description, span))
    for video, sentences in videos.items():
        path = video_name(opts.video, video=video, stem=PurePosixPath(video).stem)
        yield from temporal_samples(ctx, opts, vid=video, video_path=path, sentences=sentences)
