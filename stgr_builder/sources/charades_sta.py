"""Charades-STA (``charades_sta_train.txt``): one moment per line, ``VID START END##SENTENCE``.

::

    AO8RW 0.0 6.9##a person is putting a book on a shelf.
    AO8RW 5.9 16.1##person begins to play on a phone.

Lines of one video are grouped (the MCQ distractors are the video's other moments); the
file gives no duration, the probe measures it. Video files: ``options.video`` (``{vid}.mp4``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from stgr_builder.sources import AdapterContext, register
from stgr_builder.sources.common import Item, TemporalOptions, parse_options, temporal_samples, video_name

_LINE = re.compile(r"(?P<vid>\S+) (?P<start>\d+(?:\.\d+)?) (?P<end>\d+(?:\.\d+)?)##(?P<sentence>.*)")


@register("charades_sta")
def read_charades_sta(ctx: AdapterContext) -> Iterator[Item]:
    opts = parse_options(ctx, TemporalOptions)
    videos: dict[str, list[tuple[str, str, list[float]]]] = {}
    with ctx.path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            origin = ctx.origin(number)
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()  # a leading BOM is accepted
            except UnicodeDecodeError as exc:
                yield ctx.malformed(origin, f"not UTF-8: {exc}")
                continue
            if not text:
                continue
            match = _LINE.fullmatch(text)
            if match is None:
                yield ctx.malformed(origin, f"expected 'VID START END##SENTENCE', got {text[:80]!r}")
                continue
            videos.setdefault(match["vid"], []).append(
                (origin, match["sentence"], [float(match["start"]), float(match["end"])])
            )
    for vid, sentences in videos.items():
        yield from temporal_samples(ctx, opts, vid=vid, video_path=video_name(opts.video, vid=vid), sentences=sentences)
