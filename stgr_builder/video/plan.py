"""Which frames to decode, and in what order: the sampling plan and the GOP decode plan.

Two pure functions, no I/O:

>>> info = VideoInfo(path="v.mp4", duration=60.0, fps=30.0, n_frames=1800,
...                  width=1280, height=720, keyframes=list(range(0, 1800, 60)))
>>> plan = plan_frames(info, SamplerConfig(num_frames=4, span_frames=2), span=[20.0, 30.0])
>>> plan.indices
[225, 675, 825, 1125, 1575]
>>> plan.in_span
[675, 825]
>>> [(read.key, read.frames) for read in plan_decode(info.keyframes, plan.indices)][:3]
[(180, (225,)), (660, (675,)), (780, (825,))]

Times in a plan are *nominal* (``idx / fps``); the decoders return exact presentation
timestamps, and the sample step checks span frames against those.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from stgr_builder.models import SamplerConfig, VideoInfo

# Tolerance for float round-off when turning seconds into frame indices (a span that
# starts exactly on a frame boundary must include that frame).
_EPS = 1e-6


@dataclass(frozen=True)
class FramePlan:
    """Candidate frames of one sample: ``indices`` sorted and unique; ``in_span`` the subset
    that was chosen for the annotated span (their times must lie inside it)."""

    indices: list[int]
    in_span: list[int]


@dataclass(frozen=True)
class GopRead:
    """Decode one GOP once: start at key frame ``key``, keep ``frames`` (ascending, all in
    this GOP), stop after the last of them."""

    key: int
    frames: tuple[int, ...]


def nominal_time(info: VideoInfo, idx: int) -> float:
    """Start time of frame ``idx`` on a constant-rate clock (the plan's notion of time).

    >>> nominal_time(VideoInfo(path="v", duration=2, fps=25, n_frames=50, width=2, height=2,
    ...                        keyframes=[0]), 10)
    0.4
    """
    return idx / info.fps


def frames_in_span(info: VideoInfo, start: float, end: float) -> range:
    """Indices whose nominal start time lies in ``[start, end]`` (may be empty).

    >>> frames_in_span(VideoInfo(path="v", duration=2, fps=25, n_frames=50, width=2,
    ...                          height=2, keyframes=[0]), 0.1, 0.2)
    range(3, 6)
    """
    first = max(0, math.ceil(start * info.fps - _EPS))
    last = min(info.n_frames - 1, math.floor(end * info.fps + _EPS))
    return range(first, last + 1)


def plan_frames(
    info: VideoInfo, config: SamplerConfig, span: Sequence[float] | None = None, extra_times: Sequence[float] = ()
) -> FramePlan:
    """Choose the candidate frames of one sample; deterministic, sorted, unique.

    ``extra_times``: the frames shown at these times are always added, beyond ``max_frames``
    (the times of a source's gold boxes: see ``core/gold.py``).

    The base frames cover the whole video (``uniform``: ``num_frames`` at the centres of
    equal segments; ``fixed_rate``: one every ``1 / fps`` seconds from 0); ``span_frames``
    more go to the centres of equal segments of the annotated span. Past ``max_frames``,
    span frames win (they carry the evidence) and base frames are thinned evenly.

    >>> info = VideoInfo(path="v", duration=10, fps=10, n_frames=100, width=2, height=2,
    ...                  keyframes=[0])
    >>> plan_frames(info, SamplerConfig(strategy="fixed_rate", fps=0.5, span_frames=0)).indices
    [0, 20, 40, 60, 80]
    """
    base = _base_indices(info, config)
    in_span = _span_indices(info, span, config.span_frames) if span is not None else []
    in_span = _thin(in_span, config.max_frames)
    span_set = set(in_span)
    base = _thin([i for i in base if i not in span_set], config.max_frames - len(in_span))
    extra = {info.frame_at(t) for t in extra_times}
    return FramePlan(indices=sorted(span_set.union(base, extra)), in_span=in_span)


def plan_decode(keyframes: Sequence[int], indices: Iterable[int]) -> list[GopRead]:
    """Group wanted frame indices by GOP so that each GOP is decoded at most once.

    Frames before the first listed key frame (open-GOP leaders) belong to a GOP starting
    at frame 0, which a decoder can always reach.

    >>> plan_decode([0, 10, 20], [25, 3, 12, 7, 12])
    [GopRead(key=0, frames=(3, 7)), GopRead(key=10, frames=(12,)), GopRead(key=20, frames=(25,))]
    """
    keys = sorted(set(keyframes) | {0})
    groups: dict[int, list[int]] = {}
    for idx in sorted(set(indices)):
        key = keys[bisect.bisect_right(keys, idx) - 1]
        groups.setdefault(key, []).append(idx)
    return [GopRead(key=key, frames=tuple(frames)) for key, frames in groups.items()]


def _base_indices(info: VideoInfo, config: SamplerConfig) -> list[int]:
    if config.strategy == "uniform":
        # Segment centres rather than ends: the first and last frames are often black or
        # a fade, and centres keep the spacing even.
        times = [(i + 0.5) * info.duration / config.num_frames for i in range(config.num_frames)]
    else:
        count = max(1, math.ceil(info.duration * config.fps - _EPS))
        times = [k / config.fps for k in range(count)]
    return sorted({info.frame_at(t) for t in times})


def _span_indices(info: VideoInfo, span: Sequence[float], count: int) -> list[int]:
    # Spread over the span's own frames, not over its seconds: never outside the span,
    # never two picks on one frame, and every frame when the span holds fewer than asked.
    return _thin(list(frames_in_span(info, float(span[0]), float(span[1]))), count)


def _thin(indices: list[int], limit: int) -> list[int]:
    """Keep at most ``limit`` of the sorted ``indices``, evenly spread, deterministically."""
    if limit <= 0:
        return []
    if len(indices) <= limit:
        return indices
    step = len(indices) / limit
    return [indices[int((k + 0.5) * step)] for k in range(limit)]
