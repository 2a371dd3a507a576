"""Box geometry shared by every stage: area, IoU, pixels <-> normalized, an image row's size.

Boxes are ``[x_min, y_min, x_max, y_max]``, normalized to [0, 1] unless a name says pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from stgr_builder.models import SampleWork

if TYPE_CHECKING:  # numpy loads on first use
    import numpy


def to_pixels(box: Sequence[float], size: Sequence[int]) -> list[int]:
    """A normalized box in integer pixels of an image of ``size = (W, H)``.

    >>> to_pixels([0.1, 0.25, 0.5, 1.0], (640, 480))
    [64, 120, 320, 480]
    """
    width, height = size
    x1, y1, x2, y2 = box
    return [round(x1 * width), round(y1 * height), round(x2 * width), round(y2 * height)]


def from_pixels(box: Sequence[float], size: Sequence[int]) -> list[float]:
    """A pixel box normalized by ``size = (W, H)`` (not rounded).

    >>> from_pixels([64, 120, 320, 480], (640, 480))
    [0.1, 0.25, 0.5, 1.0]
    """
    width, height = size
    x1, y1, x2, y2 = box
    return [x1 / width, y1 / height, x2 / width, y2 / height]


def box_area(box: Sequence[float]) -> float:
    """Area of ``[x1, y1, x2, y2]``; 0 when the box is empty or inverted.

    >>> box_area([0.0, 0.0, 0.5, 0.5])
    0.25
    """
    x1, y1, x2, y2 = box
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes in the same units.

    >>> box_iou([0, 0, 2, 2], [1, 0, 3, 2])
    0.3333333333333333
    """
    inter = box_area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def image_size(work: SampleWork) -> tuple[int, int] | None:
    """``(W, H)`` of a still-image sample's original image, else None.

    The probe's ``ImageInfo`` is the original; a decoded frame's size is the fallback.
    """
    if work.sample.image_path is None:
        return None
    if work.image is not None:
        return work.image.width, work.image.height
    if work.frames:
        return work.frames[0].width, work.frames[0].height
    return None


#: A still image has no neighbouring frames: the track gate compares each box with the
#: detector's boxes on altered views of the image instead (``make_view`` / ``box_from_view``).
IMAGE_VIEWS = ("mirror", "zoom")
_ZOOM_MARGIN = 0.05  # the zoom view is the middle 90% of the image, scaled back to full size


def make_view(rgb: numpy.ndarray, view: str) -> numpy.ndarray:
    """The image (an RGB uint8 array) as seen in ``view``: mirrored left-right, or zoomed in."""
    import numpy as np
    from PIL import Image

    if view == "mirror":
        return np.ascontiguousarray(rgb[:, ::-1])
    if view == "zoom":
        height, width = rgb.shape[:2]
        dx, dy = round(width * _ZOOM_MARGIN), round(height * _ZOOM_MARGIN)
        crop = Image.fromarray(rgb[dy : height - dy, dx : width - dx])
        return np.asarray(crop.resize((width, height), Image.Resampling.BILINEAR))
    raise ValueError(f"unknown image view {view!r}: one of {IMAGE_VIEWS}")


def box_from_view(box: Sequence[float], view: str | None, size: Sequence[int] | None = None) -> list[float]:
    """A normalized box found on a view, placed on the original image (``size``: its W, H).

    >>> box_from_view([0.1, 0.2, 0.3, 0.4], "mirror")
    [0.7, 0.2, 0.9, 0.4]
    """
    x1, y1, x2, y2 = box
    if view is None:
        return [x1, y1, x2, y2]
    if view == "mirror":
        return [round(1.0 - x2, 12), y1, round(1.0 - x1, 12), y2]
    if view == "zoom":
        width, height = size or (1, 1)
        mx, my = round(width * _ZOOM_MARGIN) / width, round(height * _ZOOM_MARGIN) / height
        sx, sy = 1 - 2 * mx, 1 - 2 * my
        return [mx + sx * x1, my + sy * y1, mx + sx * x2, my + sy * y2]
    raise ValueError(f"unknown image view {view!r}: one of {IMAGE_VIEWS}")
