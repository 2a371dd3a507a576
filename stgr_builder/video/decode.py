"""Decode chosen frames with exact presentation timestamps, each GOP at most once.

Three backends with one signature: ``pyav`` (default), ``decord`` and ``opencv`` (fallback).
They return the same pixels (PyAV and decord bit for bit: both convert with swscale).

>>> decoder = get_decoder("pyav")
>>> frames = list(decoder.iter_frames(Path("v.mp4"), info, [15, 300, 310]))  # doctest: +SKIP
>>> [(f.idx, f.time, f.rgb.shape) for f in frames]                          # doctest: +SKIP
[(15, 0.5, (720, 1280, 3)), (300, 10.0, (720, 1280, 3)), (310, 10.333333, (720, 1280, 3))]
>>> decoder.stats                                                            # doctest: +SKIP
DecodeStats(videos=1, gop_reads=[0, 300], seeks=1, frames_decoded=27)

All follow the plan of ``plan_decode``, made from the probe's key-frame index: for each GOP
that holds a wanted frame, position the decoder at its key frame (or keep decoding forward
when that is cheaper), decode forward to the last wanted frame of the GOP, and move on;
frames are yielded GOP by GOP, so memory holds one GOP's wanted frames at most.

``PyAVDecoder`` goes further (see its docstring): no index scan at open, the decoder drained
at the end of a read instead of fed past it, B-frames nobody needs not decoded, threads
chosen by the plan. bench/sample_frames.py compares it with peers and with the limit.

Decoder errors (corrupt data mid-file) raise ``DecodeError``; the sample step turns it
into a ``DECODE_FAILED`` reject.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from stgr_builder.models import VideoInfo
from stgr_builder.video.decode_decord import DecordDecoder
from stgr_builder.video.decode_opencv import OpenCVDecoder
from stgr_builder.video.decode_pyav import PyAVDecoder
from stgr_builder.video.decoded import DecodedFrame, DecodeError, DecodeStats, FrameDecoder

__all__ = [
    "Backend",
    "DecodeError",
    "DecodeStats",
    "DecodedFrame",
    "DecordDecoder",
    "FrameDecoder",
    "OpenCVDecoder",
    "PyAVDecoder",
    "get_decoder",
    "read_frames",
]

Backend = Literal["pyav", "decord", "opencv"]


def get_decoder(name: Backend = "decord") -> FrameDecoder:
    """A fresh decoder of the named backend (each keeps its own ``stats``)."""
    if name == "pyav":
        return PyAVDecoder()
    if name == "decord":
        return DecordDecoder()
    if name == "opencv":
        return OpenCVDecoder()
    raise ValueError(f"unknown decoder backend {name!r}: use 'pyav', 'decord' or 'opencv'")


def read_frames(path: Path, info: VideoInfo, indices: Sequence[int], backend: Backend = "decord") -> list[DecodedFrame]:
    """Decode ``indices`` of one video into a list (convenient for a few frames).

    >>> [f.idx for f in read_frames(Path("v.mp4"), info, [3, 1, 3])]  # doctest: +SKIP
    [1, 3]
    """
    return list(get_decoder(backend).iter_frames(path, info, indices))
