"""QVHighlights (``highlight_train_release.jsonl``): one query per line.

::

    {"qid": 8737, "query": "A family is playing basketball together on a green court outside.",
     "duration": 126, "vid": "bP5KfdFJzC4_660.0_810.0", "relevant_windows": [[0, 16]],
     "relevant_clip_ids": [0, 1, ...], "saliency_scores": [[4, 1, 1], ...]}

A query with several windows takes one of them (``options.multi_window``: ``first`` or
``longest``). The MCQ distractors are the windows of the other queries of the same video.
Video files: ``options.video`` (``{vid}.mp4``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from stgr_builder.models import Span
from stgr_builder.sources import AdapterContext, iter_json_lines, register
from stgr_builder.sources.common import (
    Item,
    Record,
    TemporalOptions,
    parse_options,
    temporal_samples,
    validate,
    video_name,
)


class QVHighlightsOptions(TemporalOptions):
    multi_window: Literal["first", "longest"] = "first"


class QVHighlightsQuery(Record):
    qid: int | str
    query: str = Field(min_length=1)
    vid: str = Field(min_length=1)
    duration: float | None = Field(None, gt=0)
    relevant_windows: list[Span] = Field(min_length=1)


@register("qvhighlights")
def read_qvhighlights(ctx: AdapterContext) -> Iterator[Item]:
    opts = parse_options(ctx, QVHighlightsOptions)
    videos: dict[str, list[tuple[str, str, list[float]]]] = {}
    for line, data in iter_json_lines(ctx.path):
        origin = ctx.origin(line)
        record = validate(ctx, origin, QVHighlightsQuery, data)
        if not isinstance(record, QVHighlightsQuery):
            yield record
            continue
        windows = record.relevant_windows
        window = windows[0] if opts.multi_window == "first" else max(windows, key=lambda w: w[1] - w[0])
        videos.setdefault(record.vid, []).append((origin, record.query, window))
    for vid, sentences in videos.items():
        yield from temporal_samples(ctx, opts, vid=vid, video_path=video_name(opts.video, vid=vid), sentences=sentences)
