"""Turn an annotated sample into its output rows (SPEC section 1).

Decisions:

- key frames are the annotation's key frames, sorted by time, one per idx; key items group the
  evidence boxes per (key frame idx, object name), boxes rounded to 3 decimals exactly as the
  trace writes them;
- image rows (``image_path`` set) carry ``image_size = [W, H]`` of the original image and a
  single key frame with ``idx`` 0 and ``time`` 0.0 (whatever the decoded frame's own idx); their
  key items hold the normalized boxes, while the trace and the visual-QA answer write integer
  pixels, as the released data does;
- the quality figures: ``detector_score`` is the mean detector confidence of the chosen boxes,
  ``detector_agreement_iou`` the mean IoU of each chosen box against the source's gold boxes of
  the same object at the gold time nearest to the key frame (None when the source has none).

>>> cot, rl = build_rows(work, {"detector_name": "yolo", "detector_weights_hash": "ab12",
...                             "build_id": "b1"})   # doctest: +SKIP
>>> cot.key_items[0]                                  # doctest: +SKIP
KeyItem(idx=12, name='dog', boxes=[[0.1, 0.2, 0.5, 0.75]])
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import fmean

from stgr_builder.core import geometry, grammar
from stgr_builder.core.geometry import image_size
from stgr_builder.errors import SampleError
from stgr_builder.models import (
    CotRow,
    Detection,
    Evidence,
    EvidenceTrack,
    FieldSource,
    KeyFrame,
    KeyItem,
    Lineage,
    Provenance,
    RejectCode,
    RlRow,
    SampleWork,
    SourceSample,
)


def format_question(question: str, options: Sequence[str]) -> str:
    """The row's question: MCQ options appended one per line.

    >>> format_question("What rolls?", ["a ball", "a cube"])
    'What rolls?\\nA. a ball\\nB. a cube'
    """
    lines = [question.rstrip()]
    lines += [f"{grammar.option_letter(i)}. {option}" for i, option in enumerate(options)]
    return "\n".join(lines)


def _key_frames(work: SampleWork, is_image: bool) -> tuple[list[KeyFrame], dict[int, int]]:
    """Key frames sorted by time with unique idx, and the map from frame idx to row idx."""
    assert work.annotation is not None  # build_rows checked it
    frames = sorted(work.annotation.key_frames, key=lambda f: (f.time, f.idx))
    if is_image:
        # An image has one frame: idx 0 at time 0.0 by convention, whatever the decoder said.
        return ([KeyFrame(idx=0, time=0.0, path=frames[0].path)], {f.idx: 0 for f in frames}) if frames else ([], {})
    out: list[KeyFrame] = []
    seen: set[int] = set()
    for frame in frames:
        if frame.idx not in seen:  # an annotator may list a frame twice: keep it once
            seen.add(frame.idx)
            out.append(KeyFrame(idx=frame.idx, time=frame.time, path=frame.path))
    return out, {idx: idx for idx in seen}


def _key_items(evidence: list[Evidence], idx_map: dict[int, int], order: dict[int, int]) -> list[KeyItem]:
    """Evidence grouped per (key frame idx, name), in key-frame order then first mention."""
    groups: dict[tuple[int, str], list[list[float]]] = {}
    for ev in evidence:
        if ev.frame_idx not in idx_map:
            raise SampleError(
                RejectCode.KEY_FRAMES_INVALID,
                f"evidence of {ev.name!r} is on frame {ev.frame_idx}, which is not a key frame",
            )
        box = grammar.round_box(ev.box)
        boxes = groups.setdefault((idx_map[ev.frame_idx], ev.name), [])
        if box not in boxes:
            boxes.append(box)
    keys = sorted(groups, key=lambda key: order[key[0]])  # stable: first mention order within a frame
    return [KeyItem(idx=idx, name=name, boxes=groups[(idx, name)]) for idx, name in keys]


def agreement_iou(sample: SourceSample, evidence: list[Evidence]) -> float | None:
    """Mean IoU of the chosen boxes against the source's gold boxes (nearest gold time, best
    instance there); None when the source has no gold box for any chosen object.

    >>> agreement_iou(sample, evidence)   # doctest: +SKIP
    0.82
    """
    gold = {obj.name: obj.boxes for obj in sample.objects if obj.boxes}
    ious = []
    for ev in evidence:
        timed = gold.get(ev.name)
        if not timed:
            continue
        nearest = min(abs(tb.time - ev.time) for tb in timed)
        box = grammar.round_box(ev.box)  # the box as the row stores it
        ious.append(max(geometry.box_iou(box, tb.box) for tb in timed if abs(tb.time - ev.time) == nearest))
    return fmean(ious) if ious else None


def _agreement(work: SampleWork, evidence: list[Evidence]) -> float | None:
    """Gold evidence is measured against the detector's boxes (core/gold.py); detector
    evidence against the source's gold boxes."""
    from stgr_builder.core.gold import detector_agreement

    measured = detector_agreement(work, evidence)
    return measured if measured is not None else agreement_iou(work.sample, evidence)


def _provenance(work: SampleWork, base: dict, key_items: list[KeyItem], idx_map: dict[int, int]) -> Provenance:
    annotation = work.annotation
    assert annotation is not None  # build_rows checked it
    evidence = annotation.evidence
    return Provenance.model_validate(
        {
            **base,
            "prompt_name": annotation.prompt.name,
            "prompt_version": annotation.prompt.version,
            "annotator_model": annotation.model,
            "detector_score": fmean(ev.score for ev in evidence) if evidence else None,
            "detector_agreement_iou": _agreement(work, evidence),
            "verifier_votes": work.votes,
            "evidence_tracks": _evidence_tracks(work, evidence),
            "lineage": _lineage(work, key_items, idx_map),
            "judge_votes": _judge_votes(work, key_items, idx_map),
        }
    )


def _judge_votes(work: SampleWork, key_items: list[KeyItem], idx_map: dict[int, int]) -> list[int] | None:
    """The judge's yes votes of each key-item box (matched by key frame and box), in key_items
    order (boxes flattened); None when no judge ran."""
    if work.box_votes is None:
        return None
    by_place = {
        (idx_map[idx], tuple(grammar.round_box(box))): votes for idx, box, votes in work.box_votes if idx in idx_map
    }
    return [by_place.get((item.idx, tuple(box)), 0) for item in key_items for box in item.boxes]


def _lineage(work: SampleWork, key_items: list[KeyItem], idx_map: dict[int, int]) -> Lineage:
    """The work's lineage with each key-item box's source, in key_items order (boxes flattened):
    ``gold`` (the source's box), ``refined`` (a gold box replaced by its tracked box) or
    ``generated`` (a detector box an annotator chose)."""
    lineage = (work.lineage or Lineage()).model_copy()
    if work.sample.span is not None and lineage.span is None:
        lineage.span = "gold"

    def places(detections: list[Detection]) -> set[tuple[int, str, tuple[float, ...]]]:
        return {
            (idx_map[d.frame_idx], d.label, tuple(grammar.round_box(d.box)))
            for d in detections
            if d.frame_idx in idx_map
        }

    gold, refined = places([d for d in work.detections if d.gold]), places(work.refined_boxes)
    sources: list[FieldSource] = []
    for item in key_items:
        for box in item.boxes:
            place = (item.idx, item.name, tuple(box))
            sources.append("refined" if place in refined else "gold" if place in gold else "generated")
    lineage.boxes = sources
    return lineage


def _evidence_tracks(work: SampleWork, evidence: list[Evidence]) -> list[EvidenceTrack]:
    """The track gate's verdict on each evidence box (matched by frame and box), in evidence order."""
    by_place = {(t.idx, tuple(grammar.round_box(t.box))): t for t in work.tracks}
    found = (by_place.get((ev.frame_idx, tuple(grammar.round_box(ev.box)))) for ev in evidence)
    return [track for track in found if track is not None]


def build_rows(work: SampleWork, provenance_base: dict) -> tuple[CotRow, RlRow]:
    """The CoT row and the RL row of an annotated sample.

    ``provenance_base`` holds ``detector_name``, ``detector_weights_hash`` and ``build_id``; the
    prompt, the annotator model and the quality figures come from the work. Raises
    ``SampleError(ANNOTATION_FAILED)`` when the work has no annotation.
    """
    if work.annotation is None:
        raise SampleError(RejectCode.ANNOTATION_FAILED, "sample reached verify without an annotation")
    sample, annotation = work.sample, work.annotation
    is_image = sample.image_path is not None
    key_frames, idx_map = _key_frames(work, is_image)
    order = {k.idx: i for i, k in enumerate(key_frames)}
    size = image_size(work) if is_image else None
    key_items = _key_items(annotation.evidence, idx_map, order)
    common = dict(
        id=sample.id,
        task=sample.task,
        source=sample.source,
        question=format_question(sample.question, sample.options),
        answer=annotation.answer,
        video_path=sample.video_path,
        image_path=sample.image_path,
        image_size=list(size) if size else None,
        key_frames=key_frames,
        key_items=key_items,
        provenance=_provenance(work, provenance_base, key_items, idx_map),
    )
    return CotRow(**common, reasoning_process=annotation.reasoning), RlRow(**common)
