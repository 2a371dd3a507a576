"""Measure the track gate against the demo generator's truth (tests and bench/track_gate.py).

Runs ingest -> probe -> sample (with the gate's neighbour frames) -> detect over a demo source,
with any detector (e.g. one that corrupts boxes), then asks the gate about every detector box
whose label is one of its sample's object names, and sorts the verdicts by what the truth says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from stgr_builder.core.geometry import box_iou
from stgr_builder.core.resources import Resources
from stgr_builder.core.steps import run_steps
from stgr_builder.detect import DetectStep, make_detector
from stgr_builder.dryrun.demo import load_truth
from stgr_builder.models import Detection, SampleWork, TrackConfig
from stgr_builder.pipeline import context
from stgr_builder.sources import ingest
from stgr_builder.verify.tracks import gate, sample_names
from stgr_builder.video.frames import FrameStore
from stgr_builder.video.steps import ProbeStep, SampleStep


@dataclass
class GateCounts:
    correct_kept: int = 0
    correct_dropped: int = 0
    wrong_kept: int = 0
    wrong_dropped: int = 0
    wrong_kept_boxes: list = field(default_factory=list)
    correct_dropped_boxes: list = field(default_factory=list)

    @property
    def keep_rate(self) -> float:
        return self.correct_kept / max(1, self.correct_kept + self.correct_dropped)

    @property
    def removal_rate(self) -> float:
        return self.wrong_dropped / max(1, self.wrong_kept + self.wrong_dropped)


def true_boxes(truth, work: SampleWork, frame_idx: int, name: str) -> list[list[float]]:
    """The generator's boxes of ``name`` on that frame, normalized."""
    if work.sample.video_path:
        video = {v.path: v for v in truth.videos}[work.sample.video_path]
        size, boxes = (
            (video.width, video.height),
            [o.boxes[frame_idx] for o in video.objects if o.name == name and o.boxes[frame_idx]],
        )
    else:
        image = {i.path: i for i in truth.images}[work.sample.image_path]
        size, boxes = (image.width, image.height), [o.box for o in image.objects if o.name == name]
    return [[b[0] / size[0], b[1] / size[1], b[2] / size[0], b[3] / size[1]] for b in boxes]


def is_right(truth, work: SampleWork, det: Detection) -> bool:
    return any(box_iou(det.box, t) >= 0.5 for t in true_boxes(truth, work, det.frame_idx, det.label))


def measure_gate(
    config_path: Path, out: Path, track: TrackConfig, wrap: Callable | None = None, frames: list | None = None
) -> GateCounts:
    """Gate verdicts on the candidate boxes of every sample of a demo config, against truth.
    ``frames``: when given, gets (candidate frames, frames detected) appended, a frame of one
    media file counted once."""
    resources = Resources()
    ctx = context(config_path, out)
    samples, _, _ = ingest(ctx.config, ctx.config_dir)
    detector = make_detector(ctx.config.detector, ctx.config_dir, resources)
    if wrap is not None:
        detector = wrap(detector)
    steps = [
        ProbeStep({}, resources),
        SampleStep(ctx.config.sampler, FrameStore(out, 90), resources, track_window=track.window),
        # The build's path: neighbours detected as the gate's config says (staged by default).
        DetectStep(
            detector,
            out,
            batch_size=ctx.config.detector.batch,
            resources=resources,
            track=track,
            pad_to=ctx.config.detector.batch,
        ),
    ]
    works = [w for w in run_steps([SampleWork(sample=s) for s in samples], steps) if isinstance(w, SampleWork)]
    if frames is not None:
        frames.append(detected_frames(works))
    truth = load_truth(
        Path(
            ctx.config.sources[0].path
            if Path(ctx.config.sources[0].path).is_absolute()
            else ctx.config_dir / ctx.config.sources[0].path
        ).parent
    )
    counts = GateCounts()
    seen: set[tuple] = set()
    for work in works:
        names = sample_names(work)
        candidates = [d for d in work.detections if not d.gold and d.label in names]
        verdicts = {(v.idx, tuple(v.box), v.label): v.confirmed for v in gate(work, track, track.window)}
        for det in candidates:
            key = (work.sample.video_path or work.sample.image_path, det.frame_idx, tuple(det.box), det.label)
            if key in seen:  # a frame shared by samples of one video is counted once
                continue
            seen.add(key)
            kept = verdicts[(det.frame_idx, tuple(det.box), det.label)]
            if is_right(truth, work, det):
                counts.correct_kept += kept
                counts.correct_dropped += not kept
                if not kept:
                    counts.correct_dropped_boxes.append(key)
            else:
                counts.wrong_kept += kept
                counts.wrong_dropped += not kept
                if kept:
                    counts.wrong_kept_boxes.append(key)
    return counts


def detected_frames(works: list[SampleWork]) -> tuple[int, int]:
    """(distinct candidate frames, distinct frames detected: candidates and track neighbours)."""
    candidates, detected = set(), set()
    for work in works:
        media = work.sample.video_path or work.sample.image_path
        candidates |= {(media, f.idx) for f in work.frames}
        detected |= {(media, f.idx) for f in [*work.frames, *work.track_frames]}
    return len(candidates), len(detected)


class Corrupting:
    """Wraps a detector and corrupts its output the way a weaker detector errs: ``flip`` of the
    boxes get another class's label, ``shift`` of them move by half their width. Which boxes is
    a hash of the frame's content address and the box's rank, so a frame is corrupted the same
    way whichever batch it is in; ``seed`` picks another set."""

    def __init__(self, detector, classes: list[str], seed: int, flip: float = 0.10, shift: float = 0.05):
        self.inner, self.classes, self.seed, self.flip, self.shift = detector, classes, seed, flip, shift
        self.name, self.weights_hash, self.uses_phrases = detector.name, detector.weights_hash, detector.uses_phrases

    def detect(self, images, phrases=None):
        import hashlib

        out = []
        for path, found in zip(images, self.inner.detect(images, phrases), strict=False):
            boxes = []
            for rank, det in enumerate(found):
                roll = int(hashlib.sha256(f"{self.seed}:{Path(path).name}:{rank}".encode()).hexdigest()[:8], 16) / 2**32
                if roll < self.flip:
                    others = [c for c in self.classes if c != det.label]
                    det = det.model_copy(update={"label": others[int(roll * 1e6) % len(others)]})
                elif roll < self.flip + self.shift:
                    x1, y1, x2, y2 = det.box
                    dx = (x2 - x1) / 2 if x2 + (x2 - x1) / 2 <= 1 else -(x2 - x1) / 2
                    det = det.model_copy(update={"box": [x1 + dx, y1, x2 + dx, y2]})
                boxes.append(det)
            out.append(boxes)
        return out
