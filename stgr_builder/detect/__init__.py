"""detect: detector backends behind one interface, and the step that runs them."""

from __future__ import annotations

from pathlib import Path

from stgr_builder.detect.base import Detector, DetectStep, file_hash
from stgr_builder.errors import StgrError
from stgr_builder.models import DetectorConfig

__all__ = ["Detector", "DetectStep", "file_hash", "make_detector"]


def make_detector(config: DetectorConfig, config_dir: Path) -> Detector:
    """The detector a config names.

    >>> make_detector(DetectorConfig(weights="builtin:stgr-demo-yolo11n"), Path("."))  # doctest: +SKIP
    <UltralyticsDetector ...>
    """
    if config.backend == "ultralytics":
        from stgr_builder.detect.yolo import UltralyticsDetector

        return UltralyticsDetector(config, config_dir)
    if config.backend == "groundingdino":
        from stgr_builder.detect.groundingdino import GroundingDinoDetector

        return GroundingDinoDetector(config, config_dir)
    raise StgrError(f"unknown detector backend {config.backend!r}")
