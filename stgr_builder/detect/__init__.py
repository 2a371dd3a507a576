"""detect: detector backends behind one interface, and the step that runs them."""

from __future__ import annotations

from pathlib import Path

from stgr_builder.core.resources import Resources
from stgr_builder.detect.base import Detector, DetectStep, weights_hash
from stgr_builder.errors import StgrError
from stgr_builder.models import DetectorConfig

__all__ = ["Detector", "DetectStep", "make_detector", "weights_hash"]


def make_detector(
    config: DetectorConfig, config_dir: Path, resources: Resources | None = None, *, known_hash: str | None = None
) -> Detector:
    """The detector a config names, its model loaded into ``resources`` (once per process, with
    the lock every caller holds while using it); a new ``Resources`` when none is given.
    ``known_hash``: the weights hash the build resolved once (the weights are not read again).

    >>> make_detector(DetectorConfig(weights="builtin:stgr-demo-yolo11n"), Path("."), Resources())  # doctest: +SKIP
    <UltralyticsDetector ...>
    """
    if config.backend == "ultralytics":
        from stgr_builder.detect.yolo import UltralyticsDetector

        return UltralyticsDetector(config, config_dir, resources or Resources(), known_hash=known_hash)
    if config.backend == "groundingdino":
        from stgr_builder.detect.groundingdino import GroundingDinoDetector

        return GroundingDinoDetector(config, config_dir, resources or Resources(), known_hash=known_hash)
    if config.backend in ("yolo_world", "yoloe"):
        from stgr_builder.detect.openvocab import OpenVocabDetector

        return OpenVocabDetector(config, config_dir, resources or Resources(), known_hash=known_hash)
    raise StgrError(f"unknown detector backend {config.backend!r}")
