"""Ultralytics backend: YOLO, YOLO-World, RT-DETR — anything ``ultralytics`` loads from a
local ``.pt`` file.

The shipped ``builtin:stgr-demo-yolo11n`` model knows the demo classes only; for real video
point ``detector.weights`` at your own weights (e.g. ``yolo11x.pt`` downloaded beforehand).
"""

from __future__ import annotations

import os
from pathlib import Path

from stgr_builder.core.data import data_folder
from stgr_builder.core.resources import Resources
from stgr_builder.detect.base import pick_device, weights_hash
from stgr_builder.detect.runtime import check_runtime, exported_model
from stgr_builder.errors import StgrError, require
from stgr_builder.models import Detection, DetectorConfig

BUILTIN_WEIGHTS = data_folder("stgr_builder.detect") / "weights"

# Ultralytics looks up hosts at import time and would wait on DNS with no network. Its logger
# prints (a settings notice on first import, warnings): a library call here never prints.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_VERBOSE", "False")
# Ultralytics' export and exported-model loading pip-install what they miss (check_requirements'
# AutoUpdate): nothing installs at build time; the runtimes extra holds what they need.
os.environ.setdefault("YOLO_AUTOINSTALL", "False")
os.environ.setdefault("ULTRALYTICS_SKIP_REQUIREMENTS_CHECKS", "1")


def resolve_weights(weights: str, config_dir: Path) -> Path:
    """``builtin:NAME`` -> the shipped file; anything else is a path relative to the config.

    >>> resolve_weights("builtin:stgr-demo-yolo11n", Path("."))  # doctest: +ELLIPSIS
    PosixPath('.../stgr_builder/detect/weights/stgr-demo-yolo11n.pt')
    """
    if weights.startswith("builtin:"):
        path = BUILTIN_WEIGHTS / f"{weights.removeprefix('builtin:')}.pt"
        available = sorted(p.stem for p in BUILTIN_WEIGHTS.glob("*.pt"))
        if not path.is_file():
            raise StgrError(f"no built-in detector {weights!r}; built-in: {', '.join(available) or 'none'}")
        return path
    path = (config_dir / weights).expanduser()
    if not path.is_file():
        raise StgrError(f"detector weights not found: {path} (download them first; nothing is fetched)")
    return path


def _load_model(weights: Path, device: str):
    ultralytics = require("ultralytics")
    if weights.suffix != ".pt":  # an exported model: no task in it to read, device picked at predict time
        return ultralytics.YOLO(str(weights), task="detect")
    model = ultralytics.YOLO(str(weights))
    model.to(device)
    return model


class UltralyticsDetector:
    """Closed-set detection with an Ultralytics model.

    >>> det = UltralyticsDetector(DetectorConfig(), config_dir=Path("."))  # doctest: +SKIP
    >>> det.detect([Path("frame.jpg")])[0][0].label  # doctest: +SKIP
    'car'
    """

    uses_phrases = False  # closed-set: DetectStep batches all frames together

    def __init__(
        self, config: DetectorConfig, config_dir: Path, resources: Resources, *, known_hash: str | None = None
    ):
        self.config = config
        self.weights = resolve_weights(config.weights, config_dir)
        self.weights_hash = known_hash or weights_hash(self.weights)
        self.device = pick_device(config.device)
        # The runtime decides the boxes' last digits (detect/runtime.py): part of the name that
        # provenance records; torch keeps the name it always had.
        runtime = config.runtime
        self.name = f"ultralytics:{self.weights.stem}" + ("" if runtime == "torch" else f":{runtime}")
        check_runtime(runtime, self.device)
        model_file = self.weights
        if runtime != "torch":
            model_file = exported_model(
                self.weights, self.weights_hash, runtime, config.imgsz, config.batch, self.device
            )
        self.frames_inferred = 0  # frames through the model, padding included (the plan's unit)
        # Loaded once per worker process; shard tasks in threads share it and take turns on its
        # one lock (Ultralytics keeps per-call state on the predictor).
        self._loaded = resources.model(
            ("ultralytics", str(model_file), self.device), lambda: _load_model(model_file, self.device)
        )

    def detect(self, images: list[Path], phrases: list[str] | None = None) -> list[list[Detection]]:
        """Boxes that do not depend on the batching: frames are grouped by shape (Ultralytics
        letterboxes a batch of mixed shapes differently) and sent in batches of exactly
        ``config.batch``, the last one padded with copies of its last frame whose predictions
        are dropped. A frame's boxes then depend on the frame and the batch size alone, not on
        which other frames share its batch (measured: batch 1 and 16 differ in the 3rd decimal;
        a fixed size with other companions does not)."""
        import cv2

        results: list[list[Detection] | None] = [None] * len(images)
        by_shape: dict[tuple, list[tuple[int, object]]] = {}
        for pos, path in enumerate(images):
            frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if frame is None:
                raise StgrError(f"detector input {path} is not a readable image")
            by_shape.setdefault(frame.shape, []).append((pos, frame))
        size = self.config.batch
        for shape in sorted(by_shape):
            group = by_shape[shape]
            for start in range(0, len(group), size):
                chunk = group[start : start + size]
                frames = [frame for _, frame in chunk]
                frames += [frames[-1]] * (size - len(frames))  # padding: predictions dropped
                self.frames_inferred += size
                predictions = self._predict(frames, phrases)
                for (pos, _), prediction in zip(chunk, predictions, strict=False):
                    results[pos] = self._to_detections(prediction)
        return results  # type: ignore[return-value]  # every slot is filled above

    def _predict(self, frames: list, phrases: list[str] | None) -> list:
        """The model's predictions for one full batch (``phrases``: unused by a closed set)."""
        with self._loaded.lock:
            return self._loaded.model.predict(
                frames,
                imgsz=self.config.imgsz,
                conf=self.config.conf,
                iou=self.config.iou,
                device=self.device,
                verbose=False,
            )

    def _to_detections(self, prediction) -> list[Detection]:
        names = prediction.names
        boxes = prediction.boxes
        return [
            Detection(
                frame_idx=0,
                label=names[int(cls)],
                score=round(float(score), 4),
                box=[min(max(float(v), 0.0), 1.0) for v in xyxyn],
            )
            for xyxyn, score, cls in zip(boxes.xyxyn.tolist(), boxes.conf.tolist(), boxes.cls.tolist(), strict=True)
        ]
