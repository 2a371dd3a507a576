"""Inherited spans against evidence: which spans can be checked, where to look, what was seen.

Pure functions, no I/O, shared by the sampler (``video``: which probe frames to decode), the
span check (``verify/spans.py``) and the plan's cost estimate (``planning/cost.py``).

A span is checked where it is decided: at its ends. The sampler decodes *probe* frames every
``step_s`` within ``reach_s`` of each end (in the GOPs it reads anyway, one pass); the
detector (an object's presence) or a judge (an event) says for each frame whether the thing
asked about is there. ``read_span`` turns those observations into the span they show:

>>> seen = [(t / 2, 3.0 <= t / 2 <= 6.0) for t in range(0, 21)]  # present from 3 s to 6 s
>>> found = read_span(seen, claimed=(4.0, 6.0), duration=10.0)
>>> (found.start, found.end, found.precise)
(2.75, 6.25, True)
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from stgr_builder.models import SourceSample, SpanCheckConfig, Task, VideoInfo

TEMPORAL_TASKS = (Task.TEMPORAL, Task.TEMPORAL_MCQ)


def presence_name(sample: SourceSample, config: SpanCheckConfig) -> str | None:
    """The object whose presence the sample's span is ("When is the dog visible?": ``dog``),
    or None: not a temporal task, not one object, or the question asks about an event."""
    if sample.task not in TEMPORAL_TASKS or sample.span is None or sample.video_path is None:
        return None
    names = {obj.name for obj in sample.objects}
    if len(names) != 1 or not re.search(config.presence_pattern, sample.question, re.IGNORECASE):
        return None
    return names.pop()


def checks_span(sample: SourceSample, config: SpanCheckConfig) -> bool:
    """Whether the span check looks at this sample (a temporal task with a span in a video)."""
    return (
        config.mode != "off" and sample.task in TEMPORAL_TASKS and sample.span is not None and bool(sample.video_path)
    )


def probe_times(span: Sequence[float], duration: float, config: SpanCheckConfig) -> list[float]:
    """Times of the probe frames: every ``step_s`` within ``reach_s`` of each span end, in the video.

    >>> probe_times([3.0, 5.0], 10.0, SpanCheckConfig(step_s=1.0, reach_s=1.0))
    [2.0, 3.0, 4.0, 5.0, 6.0]
    """
    steps = int(math.floor(config.reach_s / config.step_s + 1e-9))
    times = {round(end + k * config.step_s, 6) for end in span for k in range(-steps, steps + 1)}
    return sorted(t for t in times if 0 <= t < duration)


def probe_indices(info: VideoInfo, span: Sequence[float], config: SpanCheckConfig) -> list[int]:
    """The frames shown at the probe times (sorted, unique)."""
    return sorted({info.frame_at(t) for t in probe_times(span, info.duration, config)})


@dataclass(frozen=True)
class SeenSpan:
    """The span the observations show: each end is somewhere between the last observation on
    one side and the first on the other; ``start``/``end`` are the midpoints, ``precise`` says
    both gaps are at most two probe steps (else the evidence only bounds the ends)."""

    start: float
    end: float
    start_bounds: tuple[float, float]
    end_bounds: tuple[float, float]
    precise: bool
    elsewhere_s: float  # the longest other stretch in which the thing is seen, apart from this span


def read_span(
    observations: Sequence[tuple[float, bool]], claimed: Sequence[float], duration: float, step_s: float = 0.5
) -> SeenSpan | None:
    """The stretch of presence the observations (time, seen) show around the ``claimed`` span,
    or None when the thing is never seen. One-off misses and false sightings are smoothed
    away (each observation takes the majority of itself and its two neighbours)."""
    points = _smoothed(sorted(dict(observations).items()))
    runs = _runs(points)
    if not runs:
        return None
    s, e = claimed

    def overlap(run: tuple[int, int]) -> tuple[float, float]:
        a, b = points[run[0]][0], points[run[1]][0]
        return (max(0.0, min(b, e) - max(a, s)), -min(abs(a - s), abs(b - e)))

    best = max(runs, key=overlap)
    first, last = best
    start_lo = points[first - 1][0] if first > 0 else 0.0
    end_hi = points[last + 1][0] if last + 1 < len(points) else duration
    start_bounds = (start_lo, points[first][0])
    end_bounds = (points[last][0], end_hi)
    wide = 2 * step_s + 1e-6
    precise = start_bounds[1] - start_bounds[0] <= wide and end_bounds[1] - end_bounds[0] <= wide
    elsewhere = max(
        (points[b][0] - points[a][0] + step_s for a, b in runs if (a, b) != best and b - a >= 2), default=0.0
    )
    return SeenSpan(
        start=sum(start_bounds) / 2,
        end=sum(end_bounds) / 2,
        start_bounds=start_bounds,
        end_bounds=end_bounds,
        precise=precise,
        elsewhere_s=elsewhere,
    )


def span_offset(claimed: Sequence[float], seen: SeenSpan, step_s: float) -> float:
    """The larger distance (s) between a claimed end and where the evidence puts it: the
    midpoint of its bounds when they are probe-close, else the nearer bound (0 inside them).

    >>> span_offset([3.0, 9.0], SeenSpan(2.75, 6.25, (2.5, 3.0), (6.0, 6.5), True, 0.0), 0.5)
    2.75
    """
    return max(_distance(claimed[0], seen.start_bounds, step_s), _distance(claimed[1], seen.end_bounds, step_s))


def _distance(value: float, bounds: tuple[float, float], step_s: float) -> float:
    lo, hi = bounds
    if hi - lo <= 2 * step_s + 1e-6:
        return abs(value - (lo + hi) / 2)
    return 0.0 if lo <= value <= hi else min(abs(value - lo), abs(value - hi))


def _smoothed(points: list[tuple[float, bool]]) -> list[tuple[float, bool]]:
    if len(points) < 3:
        return points
    out = [points[0]]
    for k in range(1, len(points) - 1):
        votes = points[k - 1][1] + points[k][1] + points[k + 1][1]
        out.append((points[k][0], votes >= 2))
    out.append(points[-1])
    return out


def _runs(points: list[tuple[float, bool]]) -> list[tuple[int, int]]:
    """(first, last) positions of each stretch of consecutive sightings."""
    runs, start = [], None
    for k, (_, seen) in enumerate(points):
        if seen and start is None:
            start = k
        if not seen and start is not None:
            runs.append((start, k - 1))
            start = None
    if start is not None:
        runs.append((start, len(points) - 1))
    return runs
