"""Content-addressed JPEG store for sampled frames.

>>> store = FrameStore(Path("out/stgr_cot"), quality=90)   # doctest: +SKIP
>>> store.put(rgb)                                           # doctest: +SKIP
'kfs/3f/3f9a0c...e1.jpg'

The address is the SHA-256 of the *JPEG bytes* (first 32 hex digits), not of the pixels:
a path then names exactly one file, its checksum can be verified by anyone, and the same
frame encoded at the same quality (libjpeg-turbo is deterministic) gets the same path, so
frames shared by samples, shards or re-runs are written once. Writing is atomic (a temp
file in the target folder, then ``os.replace``) and an existing file is never rewritten,
so a build killed mid-write leaves no half JPEG behind a valid name.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np

from stgr_builder.core.files import atomic_write_bytes
from stgr_builder.core.hashing import sha256_bytes

_DIGITS = 32  # 128 bits of SHA-256: collisions are not a practical concern
PREFIX = "kfs"


class FrameStore:
    """JPEGs under ``root/kfs/<2 hex>/<32 hex>.jpg``; paths returned relative to ``root``."""

    def __init__(self, root: Path, quality: int = 90):
        if not 1 <= quality <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
        self.root = Path(root)
        self.quality = quality
        self.written = 0  # files this store created (others were already there)
        self._lock = threading.Lock()  # videos of a batch are stored from several threads

    def put(self, rgb: np.ndarray) -> str:
        """Encode an RGB uint8 (H, W, 3) array as JPEG, store it, return its relative path."""
        data = encode_jpeg(rgb, self.quality)
        digest = sha256_bytes(data)[:_DIGITS]
        rel = f"{PREFIX}/{digest[:2]}/{digest}.jpg"
        target = self.root / rel
        if not target.exists():
            # No fsync: a torn frame after a power loss is caught by `stgr verify` (content hash).
            atomic_write_bytes(target, data, durable=False)
            with self._lock:
                self.written += 1
        return rel

    def path(self, rel: str) -> Path:
        """Absolute path of a stored frame: ``store.path(store.put(rgb))``."""
        return self.root / rel


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an RGB uint8 array (Pillow / libjpeg-turbo: same input, same bytes)."""
    from PIL import Image

    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 array (H, W, 3), got {rgb.dtype} {rgb.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
