"""Inherited labels checked, not trusted: a source's temporal spans and gold boxes are held
against evidence before they become answers or reward targets.

**The span check** (``SpanCheckStep``, after detect, before the track gate and any annotation).
A temporal sample's span is either an object's presence ("When is the dog visible?": the
question matches ``span_check.presence_pattern`` and names one object) or an event. For a
presence span the detector's boxes on every frame the sample has (candidates, the track gate's
neighbours and the probes the sampler decoded around each span end, ``core/spans.py``) say
where the object is seen, for free; ``read_span`` turns them into the span they show. Then:

- both ends within ``tolerance_s`` of the evidence: ``span_ok`` (lineage ``span_check: ok``);
- the object also seen ``min_elsewhere_s`` or longer apart from the span: reject
  ``query_not_unique`` (the question does not pick one stretch of the video);
- otherwise, ``mode: check``: reject ``span_imprecise``; ``mode: refine``: the span and the
  answer are corrected to the evidence's (lineage ``span: refined``, ``original_span``), unless
  the evidence only bounds the ends (no probe near them): then ``span_imprecise`` too;
- the object never seen: kept, lineage ``span_check: unverified`` (the detector cannot tell).

An event span needs a judge asked about frames inside, outside and around each end ("is
<event> happening here?"). With ``span_check.events: judge`` the annotate stage asks it
(``annotate/events.py``, through the annotator's client, cache and budget, before the paid
annotation request) and applies the same rules (``core/spans.settle_span``); this step leaves
those spans to it. Otherwise event spans are kept with ``span_check: unchecked`` (or judged here
by an ``EventJudge`` handed to the step, as tests do).

**The gold check** (``GoldCheckStep``, before the track gate). A gold box is confirmed by
direct evidence first: where the detector has boxes of its object on its frame, one of them
must overlap it (IoU >= ``gold.support_iou``; otherwise the detector puts the object elsewhere);
where it has none, the gold box's track must pass the gate's test (``verify/tracks.check_box``).
One that is not is replaced by the track-confirmed detector box of its object that overlaps it
most (IoU >= ``gold.replace_iou``; lineage ``refined``), else dropped; an object left without
any gold box rejects the sample ``gold_unconfirmed``. A visual-QA answer that states the
replaced box is rewritten with it. ``gold.keep_unconfirmed`` (``--keep-unconfirmed-gold``) keeps the
old behaviour: flagged, written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from stgr_builder.core import geometry, grammar
from stgr_builder.core.spans import checks_span, event_text, judges_event, lineage_of, presence_name, settle_span
from stgr_builder.core.steps import Step
from stgr_builder.errors import SampleError
from stgr_builder.models import (
    Detection,
    Frame,
    GoldConfig,
    RejectCode,
    SampleWork,
    SpanCheckConfig,
    Stage,
    StepStats,
    Task,
    TrackConfig,
)
from stgr_builder.verify.tracks import check_box


class EventJudge(Protocol):
    """Answers "is <event> happening in this frame?" for the span check of an event span
    (an independent VLM). Returns None when it cannot tell."""

    def __call__(self, frame: Frame, event: str) -> bool | None: ...


def presence_observations(work: SampleWork, name: str) -> list[tuple[float, bool]]:
    """(time, whether the detector saw ``name``) on every frame the sample has."""
    frames = {f.idx: f for f in [*work.frames, *work.track_frames, *work.span_frames]}
    seen = {
        d.frame_idx
        for d in [*work.detections, *work.track_detections, *work.span_detections]
        if not d.gold and d.label == name
    }
    return [(frame.time, idx in seen) for idx, frame in sorted(frames.items())]


def event_observations(work: SampleWork, event: str, judge: EventJudge) -> list[tuple[float, bool]]:
    """(time, the judge's verdict) on the probes and candidate frames; frames it cannot judge are left out."""
    frames = {f.idx: f for f in [*work.frames, *work.span_frames]}
    verdicts = [(frame.time, judge(frame, event)) for _, frame in sorted(frames.items())]
    return [(time, verdict) for time, verdict in verdicts if verdict is not None]


class SpanCheckStep(Step):
    """Check each temporal sample's inherited span against the evidence (module docstring).
    Counters: ``checked``, ``refined``, ``unverified``, ``unchecked``, ``deferred`` (event spans
    left to the annotate stage's judge); rejects are in stats."""

    stage = Stage.TRACK

    def __init__(self, config: SpanCheckConfig, span_frames: int = 4, judge: EventJudge | None = None):
        super().__init__()
        self.stats = StepStats(step="span_check")
        self.config = config
        self.span_frames = span_frames  # candidate frames a refined span gets (the sampler's span_frames)
        self.judge = judge
        self.checked = self.refined = self.unverified = self.unchecked = self.deferred = 0

    def process(self, work: SampleWork) -> SampleWork:
        sample = work.sample
        if not checks_span(sample, self.config) or work.video is None or sample.span is None:
            return work
        if judges_event(sample, self.config) and self.judge is None:
            self.deferred += 1  # the annotate stage asks the judge, before the annotation request
            return work
        name = presence_name(sample, self.config)
        if name is not None:
            observations = presence_observations(work, name)
        elif self.judge is not None:
            name = event_text(sample.question)
            observations = event_observations(work, name, self.judge)
        else:
            self.unchecked += 1
            lineage = lineage_of(work)
            lineage.span = "gold"
            lineage.span_check = "unchecked"
            return work
        self.checked += 1
        outcome = settle_span(work, observations, name, self.config, self.span_frames)
        self.refined += outcome == "refined"
        self.unverified += outcome == "unverified"
        return work


class GoldCheckStep(Step):
    """Confirm gold boxes before they become evidence and reward targets (module docstring).
    Runs before the track gate, on the detector's boxes as they came (the gate then records
    its verdicts as before). Counters: ``confirmed``, ``replaced``, ``dropped``, ``kept_unconfirmed``."""

    stage = Stage.TRACK

    def __init__(self, config: GoldConfig, track: TrackConfig):
        super().__init__()
        self.stats = StepStats(step="gold_check")
        self.config = config
        self.track = track
        self.confirmed = self.replaced = self.dropped = self.kept_unconfirmed = 0

    def process(self, work: SampleWork) -> SampleWork:
        gold = [d for d in work.detections if d.gold]
        if not gold:
            return work
        lineage = lineage_of(work)
        by_frame, present = boxes_by_frame(work)
        still = work.sample.image_path is not None
        window = self.track.window

        def near(det: Detection) -> int:  # neighbour frames (views) there are, as the gate counts them
            return sum(1 for k in range(1, window + 1) for i in (det.frame_idx - k, det.frame_idx + k) if i in present)

        kept: list[Detection] = []
        lost: set[str] = set()
        for det in gold:
            if self._supported(det, by_frame, near, still):
                lineage.gold_confirmed += 1
                self.confirmed += 1
                kept.append(det)
            elif self.config.keep_unconfirmed:
                lineage.gold_unconfirmed += 1
                self.kept_unconfirmed += 1
                kept.append(det)
            elif (tracked := self._tracked(det, by_frame, near, still)) is not None:
                lineage.gold_replaced += 1
                self.replaced += 1
                kept.append(self._replace(work, det, tracked))
            else:
                self.dropped += 1
                lost.add(det.label)
        work.detections = [d for d in work.detections if not d.gold] + kept
        orphaned = sorted(lost - {d.label for d in kept})
        if orphaned:
            raise SampleError(
                RejectCode.GOLD_UNCONFIRMED,
                f"no gold box of {', '.join(orphaned)} is confirmed by a track, seen by the detector on its frame "
                f"(IoU >= {self.config.support_iou}) or overlapped by a tracked box (IoU >= "
                f"{self.config.replace_iou}); the source's box is not written as gold",
            )
        return work

    def _supported(
        self, gold: Detection, by_frame: dict[int, list[Detection]], near: Callable[[Detection], int], still: bool
    ) -> bool:
        """Direct evidence first: where the detector has boxes of the object on the gold box's
        frame, one of them must overlap it (IoU >= ``support_iou``: the detector puts the object
        elsewhere otherwise). Where it has none, the gold box's track must pass the gate's test."""
        own = [d for d in by_frame.get(gold.frame_idx, []) if not d.gold and d.label == gold.label]
        if own:
            return any(geometry.box_iou(d.box, gold.box) >= self.config.support_iou for d in own)
        return check_box(gold, by_frame, self.track, near(gold), still=still).confirmed

    def _tracked(
        self, gold: Detection, by_frame: dict[int, list[Detection]], near: Callable[[Detection], int], still: bool
    ) -> Detection | None:
        """The detector box of the gold box's object on its frame, confirmed by the gate's
        track test, that overlaps it most (IoU >= ``replace_iou``)."""
        scored = [
            (geometry.box_iou(d.box, gold.box), d)
            for d in by_frame.get(gold.frame_idx, [])
            if not d.gold and d.label == gold.label
        ]
        scored = [
            (iou, d)
            for iou, d in scored
            if iou >= self.config.replace_iou and check_box(d, by_frame, self.track, near(d), still=still).confirmed
        ]
        return max(scored, key=lambda item: (item[0], item[1].score))[1] if scored else None

    def _replace(self, work: SampleWork, gold: Detection, tracked: Detection) -> Detection:
        refined = gold.model_copy(update={"box": list(tracked.box)})
        work.refined_boxes.append(refined)
        sample = work.sample
        if sample.task is Task.VISUAL and sample.image_path is not None and work.image is not None:
            answer = grammar.parse_answer(sample.task, sample.answer)
            size = (work.image.width, work.image.height)
            if answer.name == gold.label and answer.box is not None and _same_pixels(answer.box, gold.box, size):
                pixels = geometry.to_pixels(tracked.box, size)
                work.sample = sample.model_copy(update={"answer": grammar.visual_answer(gold.label, pixels)})
                lineage_of(work).answer = "refined"
        return refined


def boxes_by_frame(work: SampleWork) -> tuple[dict[int, list[Detection]], set[int]]:
    """The detector's boxes per frame index as the track gate reads them (a still image's views
    placed back on it), and the indices of the frames (views) there are."""
    views = {f.idx: f.view for f in work.track_frames if f.view is not None}
    size = (work.frames[0].width, work.frames[0].height) if work.frames else None
    by_frame: dict[int, list[Detection]] = {}
    for det in [*work.detections, *work.track_detections]:
        if det.frame_idx in views:
            det = det.model_copy(update={"box": geometry.box_from_view(det.box, views[det.frame_idx], size)})
        by_frame.setdefault(det.frame_idx, []).append(det)
    return by_frame, {f.idx for f in [*work.frames, *work.track_frames]}


def _same_pixels(pixels: Sequence[float], box: Sequence[float], size: tuple[int, int]) -> bool:
    return geometry.box_iou(geometry.from_pixels(pixels, size), box) >= 0.9
