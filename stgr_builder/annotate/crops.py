"""Boxes cut out of their frames (the judge's crops, ``judge.py``), and JPEGs as data URLs.

>>> jpeg = crop_jpeg(Path("out/kfs/ab/ab12.jpg"), [0.1, 0.2, 0.5, 0.9])   # doctest: +SKIP
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image


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
