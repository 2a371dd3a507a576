"""Inherited spans against evidence: which spans can be checked, where to look, what was seen.

Pure functions, no I/O, shared by the sampler (``video``: which probe frames to decode), the
span check of presence spans (``verify/inherited.py``), the event judge (``annotate/events.py``,
asked before the paid annotation request) and the plan's cost estimate (``planning/cost.py``):
``settle_span`` holds the outcome rules both checks apply to what they observed.

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

from stgr_builder.core import grammar
from stgr_builder.errors import SampleError
from stgr_builder.models import Frame, Lineage, RejectCode, SampleWork, SourceSample, SpanCheckConfig, Task, VideoInfo

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


def event_text(question: str) -> str:
    """The event a temporal question asks about, as the judge is asked it: a quoted sentence
    (the sources' 'When does "{sentence}" happen in the video?'), else the question less its
    "When does/do/is ..." opening and its question mark.

    >>> event_text('When does "a man opens a door" happen in the video?')
    'a man opens a door'
    >>> event_text("When does the red car drive past?")
    'the red car drive past'
    """
    quoted = re.search(r'"([^"]+)"', question)
    if quoted:
        return quoted.group(1).strip()
    text = re.sub(r"^\s*when\s+(does|do|did|is|are|was|were|can)\s+", "", question, flags=re.IGNORECASE)
    return text.strip().rstrip("?").strip()


def judges_event(sample: SourceSample, config: SpanCheckConfig) -> bool:
    """Whether the sample's span is an event the judge is asked about (``span_check.events:
    judge``, a checked span that is not an object's presence)."""
    return config.events == "judge" and checks_span(sample, config) and presence_name(sample, config) is None


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
    steps = int(math.floor(config.reach_s / config.step_s + 1e-9))  # probes on each side of an end
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


# ---------------------------------------------------------------------------------------
# The outcome, from what was observed (the detector's sightings or the judge's verdicts)
# ---------------------------------------------------------------------------------------


def lineage_of(work: SampleWork) -> Lineage:
    """The work's lineage record, made on first use."""
    if work.lineage is None:
        work.lineage = Lineage()
    return work.lineage


def answer_with_span(task: Task, answer: str, span: Sequence[float]) -> str:
    """The temporal answer with its span replaced ("B\\n[1.0, 2.0]" -> "B\\n[1.5, 2.5]").

    >>> answer_with_span(Task.TEMPORAL_MCQ, "B\\n[1.0, 2.0]", [1.5, 2.5])
    'B\\n[1.5, 2.5]'
    """
    if task is Task.TEMPORAL_MCQ:
        return grammar.temporal_mcq_answer(answer.split("\n", 1)[0].strip(), span)
    return grammar.temporal_answer(span)


def settle_span(
    work: SampleWork,
    observations: Sequence[tuple[float, bool]],
    name: str,
    config: SpanCheckConfig,
    span_frames: int,
) -> str:
    """Hold the sample's span against ``observations`` (time, whether ``name`` is there) and
    record the outcome in its lineage: ``ok``, ``refined`` (the span, the answer and the candidate
    frames corrected, ``mode: refine``) or ``unverified`` (never seen); raises ``SampleError``
    ``query_not_unique`` (also seen ``min_elsewhere_s`` apart from the span) or ``span_imprecise``."""
    sample, video = work.sample, work.video
    assert sample.span is not None and video is not None, "a checked span is a span in a video"
    lineage = lineage_of(work)
    lineage.span = "gold"
    claimed = (float(sample.span[0]), float(sample.span[1]))
    seen = read_span(observations, claimed, video.duration, config.step_s)
    if seen is None:
        lineage.span_check = "unverified"
        return "unverified"
    offset = span_offset(claimed, seen, config.step_s)
    lineage.span_offset_s = round(offset, 2)
    evidence = f"[{seen.start:.2f}, {seen.end:.2f}]"
    if seen.elsewhere_s >= config.min_elsewhere_s:
        raise SampleError(
            RejectCode.QUERY_NOT_UNIQUE,
            f"{name!r} is also seen for {seen.elsewhere_s:.1f}s apart from the span {list(claimed)} "
            f"(evidence span {evidence})",
        )
    if offset <= config.tolerance_s:
        lineage.span_check = "ok"
        return "ok"
    if config.mode == "check" or not seen.precise:
        raise SampleError(
            RejectCode.SPAN_IMPRECISE,
            f"span {list(claimed)} is {offset:.1f}s off the evidence {evidence} for {name!r} "
            f"(tolerance {config.tolerance_s}s)",
        )
    refine_span(work, claimed, (seen.start, seen.end), span_frames)
    return "refined"


def refine_span(work: SampleWork, old: tuple[float, float], found: tuple[float, float], span_frames: int) -> None:
    """Correct the span and the answer; the candidate frames follow the new span (frames of the
    old span outside the new one dropped, up to ``span_frames`` probes inside it added)."""
    sample = work.sample
    duration = work.video.duration if work.video is not None else found[1]
    new = [round(max(0.0, found[0]), 1), round(min(duration, found[1]), 1)]
    work.sample = sample.model_copy(update={"span": new, "answer": answer_with_span(sample.task, sample.answer, new)})
    lineage = lineage_of(work)
    lineage.span = lineage.answer = "refined"
    lineage.span_check = "refined"
    lineage.original_span = list(old)
    kept = [f for f in work.frames if not old[0] <= f.time <= old[1] or new[0] <= f.time <= new[1]]
    have = {f.idx for f in kept}
    inside = [f for f in work.span_frames if new[0] <= f.time <= new[1] and f.idx not in have]
    added = _spread(sorted(inside, key=lambda f: f.idx), span_frames)
    work.frames = sorted([*kept, *added], key=lambda f: f.idx)
    frame_ids = {f.idx for f in work.frames}
    added_ids = {f.idx for f in added}
    work.detections = [d for d in work.detections if d.frame_idx in frame_ids] + [
        d for d in work.span_detections if d.frame_idx in added_ids
    ]


def _spread(frames: list[Frame], limit: int) -> list[Frame]:
    if len(frames) <= limit:
        return frames
    step = len(frames) / limit
    return [frames[int((k + 0.5) * step)] for k in range(limit)]
