"""Gold evidence: a source's own boxes (HC-STVG tubes, PLM-RDCap masklets, VideoEspresso key
items, GQA / Visual-CoT regions) used as the evidence of its rows, in one place.

For a sample with ``gold_evidence`` set (``SourceConfig.gold_evidence``, on by default):

1. ``gold_times`` -> the sampler adds the frame shown at each gold box's time to the candidate
   frames (``plan_frames(..., extra_times=...)``), so a key frame exists at every gold time;
2. ``gold_detections`` -> the detect step adds each gold box as a ``Detection`` (label: the
   object's name, score 1.0, ``gold=True``) on the frame at its time; the detector's own
   boxes stay beside them;
3. ``evidence_detections`` -> what annotators choose from: for an object that has gold boxes
   only the gold ones (so rows carry the source's boxes, never a detector's guess for that
   object); other objects keep the detector's boxes;
4. ``detector_agreement`` -> ``provenance.detector_agreement_iou``: for each chosen gold box, the
   best IoU of a detector box of the same label on the same frame (0 when the detector found
   none), averaged. It measures the detector against the source instead of reading 1.0.

>>> [d.label for d in evidence_detections([Detection(frame_idx=3, label="car", score=0.9, box=[0, 0, .5, .5]),
...     Detection(frame_idx=3, label="car", score=1.0, box=[0, 0, .4, .4], gold=True)])]
['car']
"""

from __future__ import annotations

from statistics import fmean

from stgr_builder.core import geometry, grammar
from stgr_builder.models import Detection, Evidence, SampleWork, SourceSample


def gold_times(sample: SourceSample) -> list[float]:
    """Times of the sample's gold boxes (video samples with gold evidence), sorted, unique."""
    if not sample.gold_evidence or sample.video_path is None:
        return []
    return sorted({tb.time for obj in sample.objects for tb in obj.boxes})


def gold_detections(work: SampleWork) -> list[Detection]:
    """The sample's gold boxes as detections on the candidate frames at their times."""
    sample = work.sample
    if not sample.gold_evidence or not work.frames:
        return []
    out = []
    for obj in sample.objects:
        for tb in obj.boxes:
            if sample.image_path is not None:
                frames = work.frames[:1]
            elif work.video is not None:
                idx = work.video.frame_at(tb.time)
                frames = [f for f in work.frames if f.idx == idx][:1]
            else:
                frames = []
            out += [Detection(frame_idx=f.idx, label=obj.name, score=1.0, box=list(tb.box), gold=True) for f in frames]
    return out


def evidence_detections(detections: list[Detection]) -> list[Detection]:
    """The detections an annotator may choose: gold ones replace the detector's for their label."""
    gold_labels = {d.label for d in detections if d.gold}
    return [d for d in detections if d.gold or d.label not in gold_labels]


def detector_agreement(work: SampleWork, evidence: list[Evidence]) -> float | None:
    """Mean best IoU of the detector's boxes against the chosen gold boxes; None when no chosen
    box is gold (then ``verify.rows.agreement_iou`` compares the chosen boxes with the gold)."""
    gold = [d for d in work.detections if d.gold]
    if not gold:
        return None
    ious = []
    for ev in evidence:
        box = grammar.round_box(ev.box)
        if not any(
            d.frame_idx == ev.frame_idx and d.label == ev.name and grammar.round_box(d.box) == box for d in gold
        ):
            continue
        found = [d.box for d in work.detections if not d.gold and d.frame_idx == ev.frame_idx and d.label == ev.name]
        ious.append(max((geometry.box_iou(box, b) for b in found), default=0.0))
    return fmean(ious) if ious else None
