"""COIN (``COIN.json``): instructional videos with step segments, keyed by YouTube id.

::

    {"database": {"-0og5X6DMbc": {"recipe_type": 113, "class": "ReplaceAToiletSeat",
                                    "subset": "training", "start": 2.0, "end": 111.0,
                                    "duration": 113.0,
                                    "annotation": [{"id": "1", "segment": [27.0, 48.0],
                                                    "label": "remove the old seat"}]}}}

Each step (label, segment) of a video is a temporal sample (see ``sources.common``; the
Open-o3 mix uses ``tasks: [spatio_temporal]``). ``options.subset`` keeps one subset
(default ``training``; null keeps all). Video files are found by ``options.video``
(default ``{vid}.mp4``).
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import Field

from stgr_builder.errors import StgrError
from stgr_builder.models import Span
from stgr_builder.sources import AdapterContext, register
from stgr_builder.sources.common import (
    Item,
    Record,
    TemporalOptions,
    json_entries,
    load_json,
    parse_options,
    temporal_samples,
    validate,
    video_name,
)


class CoinOptions(TemporalOptions):
    subset: str | None = Field("training", description="keep only videos of this subset; null: all")


class CoinStep(Record):
    segment: Span
    label: str


class CoinVideo(Record):
    duration: float = Field(gt=0)
    subset: str | None = None
    annotation: list[CoinStep]


@register("coin")
def read_coin(ctx: AdapterContext) -> Iterator[Item]:
    opts = parse_options(ctx, CoinOptions)
    data = load_json(ctx)
    if isinstance(data, dict) and "database" in data:
        data = data["database"]
    if not isinstance(data, dict):
        raise StgrError(f"source {ctx.source.name!r}: {ctx.source.path} is not COIN's {{'database': {{vid: ...}}}}")
    for origin, vid, entry in json_entries(ctx, data):
        record = validate(ctx, origin, CoinVideo, entry)
        if not isinstance(record, CoinVideo):
            yield record
            continue
        assert vid is not None  # ``data`` is an object keyed by video id (checked above)
        if opts.subset is not None and record.subset not in (None, opts.subset):
            continue
        sentences = [
            (f"{origin}#{i}", step.label, [step.segment[0], min(step.segment[1], record.duration)])
            for i, step in enumerate(record.annotation)
        ]
        yield from temporal_samples(ctx, opts, vid=vid, video_path=video_name(opts.video, vid=vid), sentences=sentences)
