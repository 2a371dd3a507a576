"""Open a still image safely: its kind checked from its first bytes, its size bounded before
any pixel is decoded, and never through ``PIL.Image.open``.

Why not ``Image.open``: once Ultralytics is imported it replaces ``PIL.Image.open`` with a
wrapper that, on a file Pillow cannot identify (a text file named ``.jpg``, a video given as
an image), imports ``pi_heif`` (or tries to install it) and raised ``ModuleNotFoundError``
out of the build. Here the format is read from the file's signature and the file is opened
by that format's Pillow plugin class directly, so what the user's data holds decides the
reject, not which library happened to be imported first.

>>> with open_image(Path("media/cat.jpg")) as image:   # doctest: +SKIP
...     image.size
(640, 480)

Failures are ``SampleError``: NOT_AN_IMAGE (the bytes are no image format we read; the
message says what they look like), MEDIA_TOO_LARGE (more than ``MAX_PIXELS``), MEDIA_CORRUPT
(the header or the data does not decode).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from stgr_builder.errors import SampleError
from stgr_builder.models import RejectCode

if TYPE_CHECKING:  # numpy and Pillow load on first use
    import numpy
    import PIL.Image

#: The largest image (or video frame) accepted, in pixels: 8192 x 8192. Larger ones are
#: MEDIA_TOO_LARGE before a pixel is decoded (decompression bombs, poster scans): one such
#: frame would take ~200 MB as RGB and far more in the detector.
MAX_PIXELS = 8192 * 8192

# format -> (Pillow plugin module, image class)
_PLUGINS = {
    "JPEG": ("PIL.JpegImagePlugin", "JpegImageFile"),
    "PNG": ("PIL.PngImagePlugin", "PngImageFile"),
    "GIF": ("PIL.GifImagePlugin", "GifImageFile"),
    "BMP": ("PIL.BmpImagePlugin", "BmpImageFile"),
    "TIFF": ("PIL.TiffImagePlugin", "TiffImageFile"),
    "WEBP": ("PIL.WebPImagePlugin", "WebPImageFile"),
    "AVIF": ("PIL.AvifImagePlugin", "AvifImageFile"),
}


def image_format(head: bytes) -> str | None:
    """The image format a file's first 16 bytes announce, or None.

    >>> image_format(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(8)), image_format(b"hello")
    ('PNG', None)
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:2] == b"BM" and len(head) >= 14 and head[6:10] == bytes(4):  # reserved bytes are zero
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:12] in (b"ftypavif", b"ftypavis"):
        return "AVIF"
    return None


def describe_bytes(head: bytes) -> str:
    """What a file that is not an image looks like, for the reject message.

    >>> describe_bytes(b"\\x00\\x00\\x00\\x18ftypmp42")
    'an MP4/MOV video'
    """
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftyphevc", b"ftypmif1", b"ftypmsf1"):
        return "a HEIC/HEIF image, which Pillow does not read: convert it to JPEG"
    if head[4:8] == b"ftyp":
        return "an MP4/MOV video"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "a Matroska/WebM video"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "an AVI video"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head.lstrip()[:1] in (b"<", b"{", b"["):
        return "text (markup or JSON)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "data of an unknown format"
    return "text" if text.isprintable() or text.strip() == "" or "\n" in text else "data of an unknown format"


def check_pixels(path: Path, width: int, height: int, *, what: str, max_pixels: int | None = None) -> None:
    """MEDIA_TOO_LARGE for an image or a video frame (``what``) of more than ``max_pixels``
    (default ``MAX_PIXELS``, read at call time)."""
    max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
    if width * height > max_pixels:
        raise SampleError(
            RejectCode.MEDIA_TOO_LARGE,
            f"{path}: {what} is {width}x{height} pixels, over the limit of {max_pixels:,} (downscale it)",
        )


@contextmanager
def open_image(path: Path, max_pixels: int = MAX_PIXELS) -> Iterator[PIL.Image.Image]:
    """The image at ``path``, opened (header read, pixels not yet decoded) after its kind and
    size were checked; ``SampleError`` otherwise. Call ``.load()`` to decode it."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise SampleError(RejectCode.MEDIA_MISSING, f"{path}: cannot read ({exc.strerror or exc})") from exc
    fmt = image_format(head)
    if fmt is None:
        raise SampleError(
            RejectCode.NOT_AN_IMAGE,
            f"{path}: not an image (its bytes look like {describe_bytes(head)}); "
            f"images must be JPEG, PNG, GIF, BMP, TIFF, WebP or AVIF",
        )
    module, name = _PLUGINS[fmt]
    try:
        image = getattr(importlib.import_module(module), name)(str(path))
    except ImportError as exc:  # a format this Pillow build lacks (AVIF before Pillow 11.3)
        raise SampleError(
            RejectCode.NOT_AN_IMAGE, f"{path}: a {fmt} image, which this Pillow cannot read: convert it to JPEG"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - Pillow fails on bad headers in many shapes
        raise SampleError(RejectCode.MEDIA_CORRUPT, f"{path}: {fmt} header does not decode ({exc})") from exc
    try:
        check_pixels(path, *image.size, what="the image", max_pixels=max_pixels)
        yield image
    finally:
        image.close()


def load_rgb(path: Path, max_pixels: int = MAX_PIXELS) -> numpy.ndarray:
    """The image at ``path`` decoded to an RGB uint8 array (H, W, 3); ``SampleError`` when it is
    not a readable image of a bounded size."""
    import numpy as np

    with open_image(path, max_pixels) as image:
        try:
            return np.asarray(image.convert("RGB"))
        except Exception as exc:  # noqa: BLE001 - truncated or corrupt data fails inside the decoder
            raise SampleError(RejectCode.MEDIA_CORRUPT, f"{path}: image data does not decode ({exc})") from exc
