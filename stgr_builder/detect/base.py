"""The detector interface and the detect step.

Every backend turns a batch of frames (JPEG paths under the dataset root) into normalized
``Detection`` records; the step batches the candidate frames of many samples, detects each
distinct frame once, and hands each sample the detections of its own frames.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

from stgr_builder.detect.gold import gold_detections
from stgr_builder.models import Detection, SampleWork, Stage
from stgr_builder.steps import Step


class Detector(Protocol):
    """What a detector backend provides.

    >>> detector.detect([Path("kfs/ab/ab12.jpg")], phrases=["car"])  # doctest: +SKIP
    [[Detection(frame_idx=0, label='car', score=0.91, box=[0.1, 0.2, 0.4, 0.5])]]
    """

    name: str
    weights_hash: str

    def detect(self, images: list[Path], phrases: list[str] | None = None) -> list[list[Detection]]:
        """Detections per image, in input order; ``frame_idx`` is left 0 (the step sets it).

        ``phrases``: object phrases for open-vocabulary backends; closed-set ones ignore it
        (and set ``uses_phrases = False``, so the step sends all frames in one call).
        """
        ...


def file_hash(path: Path) -> str:
    """Short sha256 of a file's bytes, for provenance (which weights made these boxes)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


class DetectStep(Step):
    """Run the detector over every candidate frame of a batch of samples.

    Frames are content-addressed, so samples that share a video share frame paths: each
    distinct path is detected once per batch.
    """

    stage = Stage.DETECT

    def __init__(self, detector: Detector, root: Path, batch_size: int = 32):
        super().__init__()
        self.detector = detector
        self.root = root
        self.batch_size = batch_size

    def process_batch(self, batch: list[SampleWork]) -> list[SampleWork]:
        # Each frame is prompted with the object phrases of the samples that use it (open-
        # vocabulary backends: phrases of other videos would only compete for its boxes);
        # frames with the same phrases go to the detector together.
        wanted: dict[str, set[str]] = {}
        for work in batch:
            for frame in work.frames:
                wanted.setdefault(frame.path, set()).update(obj.name for obj in work.sample.objects)
        if not getattr(self.detector, "uses_phrases", True):  # closed-set: one batch, phrases unused
            wanted = {path: set() for path in wanted}
        groups: dict[tuple[str, ...], list[str]] = {}
        for path in sorted(wanted):
            groups.setdefault(tuple(sorted(wanted[path])), []).append(path)
        by_path = {}
        for phrases, paths in groups.items():
            found = self.detector.detect([self.root / path for path in paths], phrases=list(phrases) or None)
            by_path.update(zip(paths, found, strict=True))
        for work in batch:
            work.detections = [
                detection.model_copy(update={"frame_idx": frame.idx})
                for frame in work.frames
                for detection in by_path[frame.path]
            ] + gold_detections(work)  # the source's own boxes, when it has them (detect/gold.py)
        return batch
