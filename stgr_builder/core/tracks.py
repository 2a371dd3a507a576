"""The track gate: every candidate box is checked against its neighbouring frames before any
annotator sees it, so a box the detector got wrong on one frame never becomes evidence.

One detection decides both where a box is and what it is; a wrong label (a dog labelled "bird")
or a misplaced box passes every other rule. The gate asks the frames around it instead: the
sampler decoded ``window`` frames on each side of every candidate frame and the detector ran on
them. For each candidate box:

A still image has no neighbouring frames: its neighbours are altered views of it (a mirror,
a zoom: ``core/geometry.py``), whose boxes are placed back on the image before linking.

1. **link**: walk outwards frame by frame, joining the best-overlapping box of any label on the
   next frame (IoU >= ``link_iou``); the joined boxes are the box's *track*;
2. **length**: the track must span ``min_length`` frames (fewer when the video has fewer
   frames there);
3. **label**: each frame of the track votes with the label of its best-scoring box on the track;
   the box's own label must hold at least ``min_agreement`` of the votes and no other label more;
4. **stability**: the box must overlap (IoU >= ``stability_iou``) its place as predicted from
   the track's neighbours (between the two sides, or carried on from one side; any of those
   guesses will do, so one bad neighbour does not condemn a right box): a box shifted off its
   object fails even when the object's track runs next to it. A still image's views must
   show the box in place.

Neighbours are detected in stages (``track.staged``, the default; the detect step asks
``neighbours_to_detect``): first one neighbour of each candidate frame that holds a box (the next
frame, or a still image's first view), none where the frame next to it is a candidate already;
the rest of the window only around a box that the frames detected so far do not confirm. A box
one neighbour confirms (linked, same label, in place) is kept on that evidence; every other box
is judged on its whole window, as without stages. The verdict is always the rule above applied
to the frames detected for the sample (``frames_near`` counts them), so it depends on the
sample alone, never on its batch.

A detector box that fails is dropped. A source's gold box is never dropped: it is checked the
same way against the detector's boxes and flagged (``EvidenceTrack.confirmed = False``).

>>> boxes = {9: [Detection(frame_idx=9, label="dog", score=0.9, box=[0.1, 0.1, 0.3, 0.3])],
...          11: [Detection(frame_idx=11, label="dog", score=0.9, box=[0.12, 0.1, 0.32, 0.3])]}
>>> bird = Detection(frame_idx=10, label="bird", score=0.5, box=[0.11, 0.1, 0.31, 0.3])
>>> check_box(bird, {**boxes, 10: [bird]}, TrackConfig(), frames_near=2).confirmed
False
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence

from stgr_builder.core import geometry, grammar
from stgr_builder.core.hashing import digest
from stgr_builder.models import Detection, EvidenceTrack, SampleWork, TrackConfig

#: Frames in a row a track may skip (the detector missed the object on one frame).
MAX_GAP = 1


def check_box(
    box: Detection, by_frame: dict[int, list[Detection]], config: TrackConfig, frames_near: int, still: bool = False
) -> EvidenceTrack:
    """The gate's verdict on one candidate box. ``by_frame``: the detector's boxes per frame
    index (candidate and neighbour frames, a still image's views placed back on it);
    ``frames_near``: how many neighbour frames (views) exist within the window."""
    track = _link_views(box, by_frame, config) if still else _link_frames(box, by_frame, config)
    votes = [
        label
        for idx, place in sorted(track.items())
        if (label := _vote(place, by_frame.get(idx, []), config.link_iou)) is not None
    ]
    counts = Counter(votes)
    agreement = counts[box.label] / len(votes) if votes else 0.0
    label_ok = agreement >= config.min_agreement and counts[box.label] >= max(counts.values(), default=0)
    long_enough = len(track) >= min(config.min_length, 1 + frames_near)
    places = [place for idx, place in track.items() if idx != box.frame_idx] if still else _predictions(box, track)
    stable = not places or any(geometry.box_iou(box.box, place) >= config.stability_iou for place in places)
    return EvidenceTrack(
        idx=box.frame_idx,
        box=list(box.box),
        label=box.label,
        track_id=digest(sorted(track.items()))[:10],
        length=len(track),
        label_agreement=round(agreement, 4),
        gold=box.gold,
        confirmed=long_enough and label_ok and stable,
    )


def _link_frames(box: Detection, by_frame: dict[int, list[Detection]], config: TrackConfig) -> dict[int, list[float]]:
    """Walk outwards from the box's frame, joining the best-overlapping box of the next frame."""
    track = {box.frame_idx: list(box.box)}
    for step in (-1, 1):
        previous, missed = box.box, 0
        for k in range(1, config.window + 1):
            idx = box.frame_idx + step * k
            found = _best_overlap(previous, by_frame.get(idx, []), config.link_iou)
            if found is None:
                missed += 1
                if missed > MAX_GAP:
                    break
                continue  # one frame without the object (occluded, missed) does not end a track
            track[idx] = list(found.box)
            previous, missed = found.box, 0
    return track


def _link_views(box: Detection, by_frame: dict[int, list[Detection]], config: TrackConfig) -> dict[int, list[float]]:
    """A still image: each view's best-overlapping box joins (views show the object in place)."""
    track = {box.frame_idx: list(box.box)}
    for idx in range(box.frame_idx + 1, box.frame_idx + config.window + 1):
        found = _best_overlap(box.box, by_frame.get(idx, []), config.link_iou)
        if found is not None:
            track[idx] = list(found.box)
    return track


def _predictions(box: Detection, track: dict[int, list[float]]) -> list[list[float]]:
    """Where the track's neighbours put the box: between two sides, or carried on from two
    frames of one side; a lone neighbour's own box when that is all there is. Several guesses,
    so that one corrupted neighbour does not condemn a right box."""
    f = box.frame_idx
    guesses = []
    for a, b in ((f - 1, f + 1), (f - 2, f + 2)):
        if a in track and b in track:
            guesses.append([(x + y) / 2 for x, y in zip(track[a], track[b], strict=False)])
    for near, far in ((f + 1, f + 2), (f - 1, f - 2)):
        if near in track and far in track:
            guesses.append([2 * x - y for x, y in zip(track[near], track[far], strict=False)])
    if not guesses:
        guesses = [place for idx, place in track.items() if idx != f]
    return guesses


def _best_overlap(place: Sequence[float], boxes: list[Detection], least: float) -> Detection | None:
    scored = [(geometry.box_iou(place, d.box), d.score, d) for d in boxes if not d.gold]
    scored = [item for item in scored if item[0] >= least]
    return max(scored, key=lambda item: (item[0], item[1]))[2] if scored else None


def _vote(place: Sequence[float], boxes: list[Detection], least: float) -> str | None:
    """The label of the best-scoring detector box on this place of the track."""
    on_place = [d for d in boxes if not d.gold and geometry.box_iou(place, d.box) >= least]
    return max(on_place, key=lambda d: (d.score, d.label)).label if on_place else None


def gate(
    work: SampleWork, config: TrackConfig, window_frames: int, only: Collection[str] | None = None
) -> list[EvidenceTrack]:
    """Check every candidate box of ``work`` (``only``: the detector's boxes of these labels,
    the others pass unchecked): drop the detector's boxes that fail from ``work.detections``,
    keep (and flag) gold ones; returns every verdict, dropped boxes too."""
    judged = judge(work, config, window_frames, only)
    failed = {id(det) for det, verdict in judged if not verdict.confirmed and not det.gold}
    work.detections = [det for det in work.detections if id(det) not in failed]
    return [verdict for _, verdict in judged]


def judge(
    work: SampleWork, config: TrackConfig, window_frames: int, only: Collection[str] | None = None
) -> list[tuple[Detection, EvidenceTrack]]:
    """Each checked box of ``work`` (``boxes_to_check``) with its verdict on the neighbour frames
    detected so far (``work.track_frames`` / ``work.track_detections``); changes nothing."""
    by_frame = _boxes_by_frame(work)
    present = {f.idx for f in [*work.frames, *work.track_frames]}
    still = work.sample.image_path is not None
    judged = []
    for det in boxes_to_check(work, only):
        near = sum(
            1 for k in range(1, window_frames + 1) for idx in (det.frame_idx - k, det.frame_idx + k) if idx in present
        )
        judged.append((det, check_box(det, by_frame, config, near, still=still)))
    return judged


def _boxes_by_frame(work: SampleWork) -> dict[int, list[Detection]]:
    """Candidate and neighbour boxes per frame index, a still image's views placed back on it."""
    views = {f.idx: f.view for f in work.track_frames if f.view is not None}
    size = (work.frames[0].width, work.frames[0].height) if work.frames else None
    by_frame: dict[int, list[Detection]] = {}
    for det in [*work.detections, *work.track_detections]:
        if det.frame_idx in views:  # a still image's view: its boxes placed back on the image
            det = det.model_copy(update={"box": geometry.box_from_view(det.box, views[det.frame_idx], size)})
        by_frame.setdefault(det.frame_idx, []).append(det)
    return by_frame


def boxes_to_check(work: SampleWork, only: Collection[str] | None = None) -> list[Detection]:
    """The candidate boxes the gate judges: every one, or (``only``) gold boxes and the
    detector's boxes of those labels (the template annotator's evidence is named by label: a box
    of another label can never become its evidence, so checking it would buy nothing)."""
    if only is None:
        return list(work.detections)
    return [det for det in work.detections if det.gold or det.label in only]


def first_neighbours(work: SampleWork, available: Sequence[int], only: Collection[str] | None = None) -> list[int]:
    """The neighbour frames to detect first (``available``: the neighbours decoded): one for each
    candidate frame that holds a box, the next one (the previous at the video's end; a still
    image's first view), none where a frame next to it is a candidate of the sample already.

    >>> from stgr_builder.models import Frame, SourceSample
    >>> work = SampleWork(sample=SourceSample(id="s", source="S", source_id="s", task="temporal QA",
    ...     question="q", answer="a", video_path="v.mp4", media_root="/m"),
    ...     frames=[Frame(idx=i, time=i / 10, path=f"{i}.jpg", width=8, height=8) for i in (10, 11, 40)],
    ...     detections=[Detection(frame_idx=i, label="dog", score=0.9, box=[0, 0, 1, 1]) for i in (10, 40)])
    >>> first_neighbours(work, available=[8, 9, 12, 13, 38, 39, 41, 42])
    [41]
    """
    candidates = {f.idx for f in work.frames}
    offered = set(available)
    holding = sorted({det.frame_idx for det in boxes_to_check(work, only)})
    if work.sample.image_path is not None:  # a still image: its views are 1, 2, ...
        return [min(offered)] if holding and offered else []
    picks = set()
    for idx in holding:
        if idx - 1 in candidates or idx + 1 in candidates:
            continue
        pick = next((near for near in (idx + 1, idx - 1) if near in offered), None)
        if pick is not None:
            picks.add(pick)
    return sorted(picks)


def rest_of_window(
    work: SampleWork,
    config: TrackConfig,
    window_frames: int,
    available: Sequence[int],
    only: Collection[str] | None = None,
) -> list[int]:
    """The neighbours (of ``available``, not yet detected) within the window of each checked box
    that the frames detected so far do not confirm with every vote: such a box is judged on its
    whole window. (A tie of two votes passes ``min_agreement`` 0.5 on a whole window that holds
    only two frames, never on the first neighbour alone: a label flipped on one frame would.)"""
    detected = {f.idx for f in work.track_frames}
    undecided = {
        det.frame_idx
        for det, verdict in judge(work, config, window_frames, only)
        if not (verdict.confirmed and verdict.label_agreement >= 1.0)
    }
    if work.sample.image_path is not None:
        return sorted(set(available) - detected) if undecided else []
    wanted = {idx + k for idx in undecided for k in range(-window_frames, window_frames + 1)}
    return sorted((wanted & set(available)) - detected)


def sample_names(work: SampleWork) -> set[str]:
    """The object names a sample grounds (a visual-QA sample without objects: its answer's)."""
    names = {obj.name for obj in work.sample.objects}
    if not names and work.sample.image_path is not None:
        try:
            answer_name = grammar.parse_answer(work.sample.task, work.sample.answer).name
        except grammar.TraceError:
            answer_name = None
        names = {answer_name} if answer_name else set()
    return {name for name in names if name}
