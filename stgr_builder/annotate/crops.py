"""Crop verification: each box an annotator chose, cut out of its frame and put to a VLM.

The question is the crop-verification prompt's ("Is this a NAME?"); the reply is the
structured ``CropVerdict``. The LLM annotator runs it (``annotator.crop_verify: true``) after it
has resolved the boxes the model chose and before it writes the trace, so a box answered "no"
is dropped from both the trace and the key items, and a sample left without evidence is
rejected (``crops_rejected``).

>>> jpeg = crop_jpeg(Path("out/kfs/ab/ab12.jpg"), [0.1, 0.2, 0.5, 0.9])   # doctest: +SKIP
>>> messages = crop_messages(load_prompt("crop-verify"), "dog", "dog", jpeg)  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, ValidationError

from stgr_builder.annotate.prompts import Prompt
from stgr_builder.errors import StgrError

SCHEMA_NAME = "crop_verdict"


class CropVerdict(BaseModel):
    """The VLM's answer about one crop."""

    model_config = ConfigDict(extra="forbid")

    answer: Literal["yes", "no"]


class CropPromptContent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["crop-verify"]
    description: str
    system: str
    user: str


def parse_crop_prompt(prompt: Prompt) -> CropPromptContent:
    """The crop prompt's fields, checked; a bad placeholder is a user error.

    >>> from stgr_builder.annotate.prompts import load_prompt
    >>> parse_crop_prompt(load_prompt("crop-verify")).kind
    'crop-verify'
    """
    try:
        content = CropPromptContent.model_validate(prompt.content)
        content.user.format(name="x", label="x")
    except (ValidationError, KeyError, IndexError, ValueError) as exc:
        raise StgrError(f"prompt {prompt.path} is not a crop-verification prompt: {exc}") from exc
    return content


def crop_jpeg(
    frame_path: Path, box: Sequence[float], *, pad: float = 0.1, min_side: int = 32, quality: int = 90
) -> bytes:
    """The JPEG bytes of ``box`` (normalized) cut from the frame, with ``pad`` of the box's
    size added on each side, scaled up so its shorter side is at least ``min_side`` pixels.

    Deterministic: the same frame and box give the same bytes (they are part of the
    request-cache key).
    """
    with Image.open(frame_path) as image:
        rgb = image.convert("RGB")
    width, height = rgb.size
    x1, y1, x2, y2 = box
    pw, ph = (x2 - x1) * pad, (y2 - y1) * pad
    left = max(0, int((x1 - pw) * width))
    top = max(0, int((y1 - ph) * height))
    right = min(width, max(left + 1, round((x2 + pw) * width)))
    bottom = min(height, max(top + 1, round((y2 + ph) * height)))
    crop = rgb.crop((left, top, right, bottom))
    short = min(crop.size)
    if short < min_side:
        scale = min_side / short
        crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))))
    buffer = io.BytesIO()
    crop.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


#: What every image URL of a request starts with (``data_url``); base64 follows.
DATA_URL_PREFIX = "data:image/jpeg;base64,"


def data_url(jpeg: bytes) -> str:
    """A JPEG as a ``data:`` URL for an image part of a chat message."""
    return DATA_URL_PREFIX + base64.b64encode(jpeg).decode("ascii")


def crop_messages(content: CropPromptContent, name: str, label: str, jpeg: bytes) -> list[dict]:
    """The chat messages that ask whether the crop shows ``name``."""
    return [
        {"role": "system", "content": content.system},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": content.user.format(name=name, label=label)},
                {"type": "image_url", "image_url": {"url": data_url(jpeg)}},
            ],
        },
    ]


def parse_verdict(text: str) -> CropVerdict:
    """Read a reply; raises ``ValueError`` (a pydantic ``ValidationError``) when it is not one."""
    return CropVerdict.model_validate_json(text)
