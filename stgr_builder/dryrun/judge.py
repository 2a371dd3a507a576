"""The dry-run server's judge: it answers "Is this a {object}?" from the crop's pixels.

The crop is pasted, at its own size, on a grey canvas the size of a demo frame, and the shipped
demo detector (``builtin:stgr-demo-yolo11n``, trained on the demo's renderer) runs on it: the
answer is "yes" when it finds the asked class there. Nothing of the prompt but the asked name is
read, so a label in the prompt cannot sway it.

>>> DemoJudge().answer(jpeg_bytes, "dog")    # doctest: +SKIP
'yes'
"""

from __future__ import annotations

import hashlib
import io
import threading
from typing import Any

from PIL import Image

from stgr_builder.detect.yolo import BUILTIN_WEIGHTS

WEIGHTS = BUILTIN_WEIGHTS / "stgr-demo-yolo11n.pt"
#: The canvas a crop is pasted on: a demo frame's size at least (the detector's training scale).
CANVAS = (320, 240)
CONFIDENCE = 0.25


class DemoJudge:
    """The demo detector, loaded on first use, one prediction at a time (the server's threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.model: Any = None
        # Verdicts by crop: a crop asked again (a rerun, a retry) is answered without the model.
        self.seen: dict[str, set[str]] = {}

    def _loaded(self) -> Any:
        if self.model is None:
            import ultralytics

            self.model = ultralytics.YOLO(str(WEIGHTS))
        return self.model

    def warm(self) -> None:
        """Load the detector now (seconds, once per process), so no request waits for it."""
        with self.lock:
            if self.model is None:
                # The first prediction sets the predictor up (a second or more): done here too.
                blank = Image.new("RGB", CANVAS, (114, 114, 114))
                self._loaded().predict(blank, imgsz=320, verbose=False, device="cpu")

    def found(self, jpeg: bytes) -> set[str]:
        """The classes the detector finds on the crop (pasted at its size on a grey canvas)."""
        key = hashlib.sha256(jpeg).hexdigest()
        known = self.seen.get(key)
        if known is not None:
            return known
        with Image.open(io.BytesIO(jpeg)) as image:
            crop = image.convert("RGB")
        width, height = max(CANVAS[0], crop.width + 32), max(CANVAS[1], crop.height + 32)
        canvas = Image.new("RGB", (width, height), (114, 114, 114))
        canvas.paste(crop, ((width - crop.width) // 2, (height - crop.height) // 2))
        with self.lock:
            model = self._loaded()
            [prediction] = model.predict(canvas, imgsz=320, conf=CONFIDENCE, verbose=False, device="cpu")
            found = {prediction.names[int(cls)].lower() for cls in prediction.boxes.cls.tolist()}
            self.seen[key] = found
        return found

    def answer(self, jpeg: bytes, name: str) -> str:
        """``yes`` when the detector finds ``name`` (its last word, singular) on the crop."""
        asked = name.lower().strip().split(" ")[-1]
        found = self.found(jpeg)
        return "yes" if asked in found or asked.removesuffix("s") in found else "no"
