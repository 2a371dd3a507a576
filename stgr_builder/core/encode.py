"""Write H.264 video with PyAV (libx264): the demo generator and the benchmarks use it.

>>> encode_h264(Path("clip.mp4"), frames, fps=25, gop=50)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def encode_h264(path: Path, frames: Iterable[np.ndarray], *, fps: float, gop: int, crf: int = 23) -> int:
    """Encode RGB uint8 frames (H, W, 3; even W and H) to ``path``; return the frame count.

    ``gop`` is the key-frame interval in frames; scene-cut key frames are turned off so the
    GOP structure is exactly what was asked (the sampler's planning depends on it).
    One encoder thread keeps the output byte-identical from run to run.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with av.open(str(path), mode="w") as container:
        stream = None
        for rgb in frames:
            if stream is None:
                height, width = rgb.shape[:2]
                stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
                stream.width, stream.height = width, height
                stream.pix_fmt = "yuv420p"
                stream.thread_count = 1
                stream.options = {
                    "crf": str(crf),
                    "g": str(gop),
                    "keyint_min": str(gop),
                    "sc_threshold": "0",
                    "bf": "0",
                    "preset": "veryfast",
                }
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
            count += 1
        if stream is None:
            raise ValueError(f"no frames to encode into {path}")
        for packet in stream.encode():
            container.mux(packet)
    return count
