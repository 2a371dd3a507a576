"""The dry-run server's judge: it answers "Is this a {object}?" from the crop's pixels.

A request holds numbered crops, each after its own question ("Crop 2: Is this a dog? ..."); a
sentence's claim ("Does this crop show: the dog runs left?") is answered "yes" when the crop
shows an object of the detector's vocabulary that the claim names.

The crop is pasted, at its own size, on a grey canvas the size of a demo frame, and the shipped
demo detector (``builtin:stgr-demo-yolo11n``, trained on the demo's renderer) runs on it: the
answer is "yes" when it finds the asked class there. Nothing of the prompt but the asked name is
read, so a label in the prompt cannot sway it.

>>> DemoJudge().answer(jpeg_bytes, "dog")    # doctest: +SKIP
'yes'
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import threading
from collections.abc import Sequence
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

    def answer_claim(self, jpeg: bytes, claim: str) -> str:
        """``yes`` when the crop shows an object (of the detector's classes) the claim names."""
        with self.lock:
            classes = {str(name).lower() for name in self._loaded().names.values()}
        words = {word.removesuffix("s") for word in re.findall(r"[a-z]+", claim.lower())} | set(
            re.findall(r"[a-z]+", claim.lower())
        )
        return "yes" if words & classes & self.found(jpeg) else "no"


_ITEM_RE = re.compile(r"^Crop \d+: (.*)$", re.DOTALL)
_BOX_RE = re.compile(r"^Is this an? (.+?)\?")
_CLAIM_RE = re.compile(r"^Does this crop show: (.+)\? Answer", re.DOTALL)


def crop_items(messages: list[dict]) -> list[tuple[str, bytes]]:
    """(question, crop) of each numbered crop of the first user message."""
    for message in messages:
        content = message.get("content")
        if message.get("role") != "user" or not isinstance(content, list):
            continue
        items, question = [], None
        for part in content:
            if part.get("type") == "text":
                found = _ITEM_RE.match(part.get("text", ""))
                question = found.group(1) if found else None
            elif part.get("type") == "image_url" and question is not None:
                url = (part.get("image_url") or {}).get("url", "")
                if ";base64," in url:
                    items.append((question, base64.b64decode(url.split(";base64,", 1)[1])))
                question = None
        return items
    return []


def verdicts(judge: DemoJudge, messages: list[dict], deny: Sequence[str]) -> dict[str, list[str]]:
    """The judge's answers, one per crop: a box question from the crop's pixels (and "no" for a
    name in ``deny``), a claim by the objects it names."""
    answers = []
    for question, jpeg in crop_items(messages):
        box, claim = _BOX_RE.match(question), _CLAIM_RE.match(question)
        if box is not None:
            name = box.group(1).lower()
            answers.append("no" if name in deny else judge.answer(jpeg, name))
        elif claim is not None:
            answers.append(judge.answer_claim(jpeg, claim.group(1)))
        else:
            answers.append("no")
    return {"answers": answers}
