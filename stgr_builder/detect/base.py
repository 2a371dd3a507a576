"""The detector interface and the detect step.

Every backend turns a batch of frames (JPEG paths under the dataset root) into normalized
``Detection`` records; the step batches the candidate frames of many samples, detects each
distinct frame once, and hands each sample the detections of its own frames.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Protocol

from stgr_builder.core.gold import gold_detections
from stgr_builder.core.hashing import sha256_file
from stgr_builder.core.resources import Resources
from stgr_builder.core.steps import Step
from stgr_builder.core.tracks import first_neighbours, rest_of_window
from stgr_builder.models import Detection, Frame, Reject, SampleWork, Stage, TrackConfig


class Detector(Protocol):
    """What a detector backend provides.

    >>> detector.detect([Path("kfs/ab/ab12.jpg")], phrases=["car"])  # doctest: +SKIP
    [[Detection(frame_idx=0, label='car', score=0.91, box=[0.1, 0.2, 0.4, 0.5])]]
    """

    name: str
    weights_hash: str
    #: Whether ``detect`` reads ``phrases`` (open vocabulary); closed-set backends set False and
    #: the step sends all frames in one call.
    uses_phrases: bool

    def detect(self, images: list[Path], phrases: list[str] | None = None) -> list[list[Detection]]:
        """Detections per image, in input order; ``frame_idx`` is left 0 (the step sets it).

        ``phrases``: object phrases for open-vocabulary backends; closed-set ones ignore it.
        """
        ...


def weights_hash(path: Path) -> str:
    """Short sha256 of a weights file, for provenance (which weights made these boxes)."""
    return sha256_file(path)[:16]


def pick_device(device: str) -> str:
    """``auto`` means the first GPU when torch sees one, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


#: Bytes the process's detections memo may hold (about 2 KB per frame with boxes).
DETECTIONS_MEMO_BYTES = 64 << 20


class DetectStep(Step):
    """Run the detector over every candidate frame of a batch of samples.

    Frames are content-addressed, so samples that share a video share frame paths: each
    distinct path is detected once per batch. With a ``memo_key`` (everything of the
    configuration that decides the boxes: the pipeline passes the detect stage's fingerprint),
    a frame's detections are also remembered across batches and shards in this process (the
    ``detections`` memo of ``resources``, bounded in bytes): a path names the frame's bytes, so
    the same path, phrases and memo key give the same detections, and each distinct frame is
    detected once.
    """

    stage = Stage.DETECT

    def __init__(
        self,
        detector: Detector,
        root: Path,
        batch_size: int = 32,
        memo_key: str | None = None,
        resources: Resources | None = None,
        track: TrackConfig | None = None,
        pad_to: int | None = None,
    ):
        super().__init__()
        self.detector = detector
        # The track gate's config when it is on: with ``track.staged`` the neighbour frames are
        # detected only where the gate needs them (core/tracks.py).
        self.track = track
        self.frames_detected = 0  # frames sent to the detector (memo hits not counted)
        # The detector runs frames of one size in batches of exactly this many, padding the last
        # with copies (detect/yolo.py); the gate's rounds fill those slots with neighbours.
        self.pad_to = pad_to
        self.root = root
        self.batch_size = batch_size
        self.memo_key = memo_key
        self.memo = (resources or Resources()).memo("detections", DETECTIONS_MEMO_BYTES)
        self.memo_hits = 0  # frames whose detections came from the memo

    def process_batch(self, batch: list[SampleWork]) -> list[SampleWork | Reject]:
        if self.track is None or not self.track.staged:
            # Every decoded frame, neighbours included, in one pass.
            found_by = self._detect(batch, lambda work: [*work.frames, *work.track_frames, *work.span_frames])
            for work in batch:
                phrases = self._phrases_of(work)
                work.detections = _on_frames(work.frames, found_by, phrases) + gold_detections(work)  # core/gold.py
                work.track_detections = _on_frames(work.track_frames, found_by, phrases)  # for the track gate
                work.span_detections = _on_frames(work.span_frames, found_by, phrases)  # for the span check
            return list(batch)  # no rejects: a detector failure fails the whole batch
        decoded = {id(work): {f.idx: f for f in work.track_frames} for work in batch}
        # Detections of neighbours run in the padding of an earlier round (``pad_to``), by path.
        spare: dict[tuple[str, tuple[str, ...]], list[Detection]] = {}
        found_by = self._detect(
            batch, lambda work: [*work.frames, *work.span_frames], partial(_likely_next, decoded), spare
        )
        for work in batch:
            phrases = self._phrases_of(work)
            work.detections = _on_frames(work.frames, found_by, phrases) + gold_detections(work)
            work.span_detections = _on_frames(work.span_frames, found_by, phrases)  # for the span check
            work.track_frames, work.track_detections = [], []
        # The track gate's neighbours in two rounds (core/tracks.py): one neighbour per frame
        # holding a box, then the whole window around each box that one does not confirm.
        window = self.track.window
        for round_ in ("first", "rest"):
            wanted: dict[int, list[Frame]] = {}
            for work in batch:
                available = sorted(decoded[id(work)])
                idxs = (
                    first_neighbours(work, available)
                    if round_ == "first"
                    else rest_of_window(work, self.track, window, available)
                )
                wanted[id(work)] = [decoded[id(work)][idx] for idx in idxs]
            later = partial(_rest_of, decoded) if round_ == "first" else None
            found_by = self._detect(batch, partial(_wanted_of, wanted), later, spare)
            for work in batch:
                new = wanted[id(work)]
                work.track_frames = sorted([*work.track_frames, *new], key=lambda f: f.idx)
                work.track_detections = sorted(
                    [*work.track_detections, *_on_frames(new, found_by, self._phrases_of(work))],
                    key=lambda d: d.frame_idx,
                )
        return list(batch)

    def _phrases_of(self, work: SampleWork) -> tuple[str, ...]:
        # Each frame is prompted with the object phrases of the sample that uses it (open-
        # vocabulary backends: phrases of other videos would only compete for its boxes). The
        # phrases are the sample's own, never a union over the batch: a frame's boxes must not
        # depend on which samples share its batch (a resumed shard batches differently).
        if not self.detector.uses_phrases:  # closed-set: one group, phrases unused
            return ()
        return tuple(sorted({obj.name for obj in work.sample.objects}))

    def _detect(
        self,
        batch: list[SampleWork],
        frames_of: Callable[[SampleWork], list[Frame]],
        fill_of: Callable[[SampleWork], list[Frame]] | None = None,
        spare: dict[tuple[str, tuple[str, ...]], list[Detection]] | None = None,
    ) -> dict[tuple[str, tuple[str, ...]], list[Detection]]:
        """The detections of each distinct (frame path, phrases) of the batch, detected once.

        ``fill_of``: frames a later round may ask for; with ``pad_to`` they take the slots the
        detector would pad with copies (a frame's boxes do not depend on its batch), and their
        detections wait in ``spare``."""
        spare = spare if spare is not None else {}
        groups: dict[tuple[str, ...], dict[str, Frame]] = {}
        fills: dict[tuple[str, ...], dict[str, Frame]] = {}
        for work in batch:
            phrases = self._phrases_of(work)
            groups.setdefault(phrases, {}).update((frame.path, frame) for frame in frames_of(work))
            if fill_of is not None and self.pad_to:
                fills.setdefault(phrases, {}).update((frame.path, frame) for frame in fill_of(work))
        found_by: dict[tuple[str, tuple[str, ...]], list[Detection]] = {}
        for phrases in sorted(groups):
            todo = [path for path in sorted(groups[phrases]) if not self._known(path, phrases, spare, found_by)]
            if not todo:
                continue
            filler = self._filler(groups[phrases], todo, fills.get(phrases, {}), phrases, spare)
            self.frames_detected += len(todo) + len(filler)
            sent = todo + filler
            found = self.detector.detect([self.root / path for path in sent], phrases=list(phrases) or None)
            for path, detections in zip(sent, found, strict=True):
                (found_by if path in groups[phrases] else spare)[(path, phrases)] = detections
                if self.memo_key is not None:
                    self.memo.put((self.memo_key, path, phrases), detections)
        return found_by

    def _known(self, path: str, phrases: tuple[str, ...], spare: dict, found_by: dict) -> bool:
        """Whether the frame's detections are at hand (a filled slot, or the memo): put them in
        ``found_by``."""
        known = spare.get((path, phrases))
        if known is None and self.memo_key is not None:
            known = self.memo.get((self.memo_key, path, phrases))
            self.memo_hits += known is not None
        if known is not None:
            found_by[(path, phrases)] = known
        return known is not None

    def _filler(
        self,
        wanted: dict[str, Frame],
        todo: list[str],
        fills: dict[str, Frame],
        phrases: tuple[str, ...],
        spare: dict[tuple[str, tuple[str, ...]], list[Detection]],
    ) -> list[str]:
        """Frames of ``fills`` for the slots each frame size leaves empty in its last batch of
        ``pad_to`` (the detector batches frames of one size together), in ``fills``' order."""
        pad_to = self.pad_to or 1
        empty = Counter((wanted[path].width, wanted[path].height) for path in todo)
        for size, count in empty.items():
            empty[size] = -count % pad_to
        filler = []
        for path, frame in fills.items():
            size = (frame.width, frame.height)
            if empty[size] > 0 and path not in wanted and (path, phrases) not in spare and path not in filler:
                if self.memo_key is not None and self.memo.get((self.memo_key, path, phrases)) is not None:
                    continue
                filler.append(path)
                empty[size] -= 1
        return filler


def _wanted_of(wanted: dict[int, list[Frame]], work: SampleWork) -> list[Frame]:
    return wanted[id(work)]


def _likely_next(decoded: dict[int, dict[int, Frame]], work: SampleWork) -> list[Frame]:
    """The neighbours the first round will most likely ask for (the next frame of each
    candidate: ``core.tracks.first_neighbours``), then the rest of the window."""
    mine = decoded[id(work)]
    nexts = [mine[f.idx + 1] for f in work.frames if f.idx + 1 in mine]
    return nexts + [frame for idx, frame in sorted(mine.items()) if frame not in nexts]


def _rest_of(decoded: dict[int, dict[int, Frame]], work: SampleWork) -> list[Frame]:
    """The neighbours not detected for the sample yet (the last round's candidates)."""
    asked = {f.idx for f in work.track_frames}
    return [frame for idx, frame in sorted(decoded[id(work)].items()) if idx not in asked]


def _on_frames(
    frames: list[Frame], found_by: dict[tuple[str, tuple[str, ...]], list[Detection]], phrases: tuple[str, ...]
) -> list[Detection]:
    """The detections of each frame (prompted with ``phrases``), with the frame's index set."""
    return [
        detection.model_copy(update={"frame_idx": frame.idx})
        for frame in frames
        for detection in found_by[(frame.path, phrases)]
    ]
