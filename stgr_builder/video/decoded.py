"""What every decoder backend shares: the decoded frame, the error, the counts, the backends'
protocol, and the small helpers they all use (indices checked, GOP of a frame, exact seconds)."""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from stgr_builder.errors import DecodeError as DecodeError  # the decoders raise it; importable from here
from stgr_builder.models import VideoInfo


@dataclass
class DecodedFrame:
    """One decoded frame: index, exact start time in seconds, RGB uint8 (H, W, 3)."""

    idx: int
    time: float
    rgb: np.ndarray


@dataclass
class DecodeStats:
    """What a decoder did, summed over its calls: the key frame of every GOP read (in
    order; a GOP read twice for one video shows up twice), seeks issued, frames decoded."""

    videos: int = 0
    gop_reads: list[int] = field(default_factory=list)
    seeks: int = 0
    frames_decoded: int = 0


class FrameDecoder(Protocol):
    name: str
    stats: DecodeStats

    def iter_frames(self, path: Path, info: VideoInfo, indices: Sequence[int]) -> Iterator[DecodedFrame]:
        """Yield the frames at ``indices`` (sorted, unique) in ascending order."""
        ...


def exact_seconds(value: float) -> float:
    """Timestamps to the microsecond; never below 0 (float noise on a first frame at 0)."""
    return max(0.0, round(value, 6))


def checked_indices(indices: Sequence[int], info: VideoInfo) -> list[int]:
    wanted = sorted({int(i) for i in indices})
    if wanted and (wanted[0] < 0 or wanted[-1] >= info.n_frames):
        raise ValueError(f"frame indices must lie in [0, {info.n_frames}); got {wanted[0]}..{wanted[-1]}")
    return wanted


def key_of(keyframes: Sequence[int], idx: int) -> int:
    """The key frame that starts the GOP holding ``idx`` (0 before the first key)."""
    pos = bisect.bisect_right(keyframes, idx) - 1
    return keyframes[pos] if pos >= 0 else 0


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
