"""Decode chosen frames with exact presentation timestamps, each GOP at most once.

Two backends with one signature: ``decord`` (default) and ``opencv`` (fallback).

>>> decoder = get_decoder("decord")
>>> frames = list(decoder.iter_frames(Path("v.mp4"), info, [15, 300, 310]))  # doctest: +SKIP
>>> [(f.idx, f.time, f.rgb.shape) for f in frames]                          # doctest: +SKIP
[(15, 0.5, (720, 1280, 3)), (300, 10.0, (720, 1280, 3)), (310, 10.333333, (720, 1280, 3))]
>>> decoder.stats                                                            # doctest: +SKIP
DecodeStats(videos=1, gop_reads=[0, 300], seeks=2, frames_decoded=27)

Both follow the plan of ``plan_decode``: for each GOP that holds a wanted frame, position
the decoder at its key frame (or keep decoding forward when that is cheaper), decode
forward to the last wanted frame of the GOP, and move on; frames are yielded GOP by GOP,
so memory holds one GOP's wanted frames at most, never the video.

Measured on 60 s of 720p H.264 (bench/sample_frames.py): one ``get_batch`` over all
sorted indices and one ``get_batch`` per GOP cost the same (decord's accurate seek already
skips forward inside a GOP and seeks once per new GOP); per GOP is kept because it bounds
memory and lets ``DecodeStats`` count what was done.

Decoder errors (corrupt data mid-file) raise ``DecodeError``; the sample step turns it
into a ``DECODE_FAILED`` reject.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from stgr_builder.models import VideoInfo
from stgr_builder.video.plan import GopRead, plan_decode
from stgr_builder.video.probe import decord_errors

Backend = Literal["decord", "opencv"]

# decord materializes a get_batch call as one array: cap it so a GOP with many wanted
# frames (dense fixed-rate sampling) does not hold them all at once.
_DECORD_CHUNK = 8
# OpenCV's seek lands 16 frames before the target and decodes forward from the key frame
# before that (CvCapture_FFMPEG::seek); the cost model below needs to know it.
_OPENCV_SEEK_BACKOFF = 16


class DecodeError(Exception):
    """The decoder could not produce a wanted frame (corrupt or unreadable data)."""


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


def get_decoder(name: Backend = "decord") -> FrameDecoder:
    """A fresh decoder of the named backend (each keeps its own ``stats``)."""
    if name == "decord":
        return DecordDecoder()
    if name == "opencv":
        return OpenCVDecoder()
    raise ValueError(f"unknown decoder backend {name!r}: use 'decord' or 'opencv'")


def read_frames(path: Path, info: VideoInfo, indices: Sequence[int],
                backend: Backend = "decord") -> list[DecodedFrame]:
    """Decode ``indices`` of one video into a list (convenient for a few frames).

    >>> [f.idx for f in read_frames(Path("v.mp4"), info, [3, 1, 3])]  # doctest: +SKIP
    [1, 3]
    """
    return list(get_decoder(backend).iter_frames(path, info, indices))


class DecordDecoder:
    """decord backend: one VideoReader per call, one ``get_batch`` per GOP (chunked)."""

    name = "decord"

    def __init__(self) -> None:
        self.stats = DecodeStats()

    def iter_frames(self, path: Path, info: VideoInfo, indices: Sequence[int]) -> Iterator[DecodedFrame]:
        import decord

        plan = plan_decode(info.keyframes, _checked(indices, info))
        if not plan:
            return
        try:
            reader = decord.VideoReader(str(path), num_threads=0)
        except decord_errors() as exc:
            raise DecodeError(f"{path}: decord cannot open it ({_first_line(exc)})") from exc
        self.stats.videos += 1
        try:
            yield from self._read(reader, path, info, plan)
        finally:
            del reader  # free decoder threads and buffers now (decord grows on long runs)

    def _read(self, reader, path: Path, info: VideoInfo, plan: list[GopRead]) -> Iterator[DecodedFrame]:
        position = 0  # the next frame decord would decode without seeking
        for read in plan:
            self._count(info, read, position)
            for chunk in _chunks(read.frames, _DECORD_CHUNK):
                try:
                    batch = reader.get_batch(list(chunk)).asnumpy()
                    stamps = reader.get_frame_timestamp(list(chunk))
                except decord_errors() as exc:
                    raise DecodeError(f"{path}: decoding frames {chunk[0]}-{chunk[-1]} failed "
                                      f"({_first_line(exc)})") from exc
                for idx, rgb, stamp in zip(chunk, batch, stamps):
                    yield DecodedFrame(idx=idx, time=_seconds(float(stamp[0])), rgb=rgb)
            position = read.frames[-1] + 1

    def _count(self, info: VideoInfo, read: GopRead, position: int) -> None:
        # decord's accurate seek decodes forward without seeking when the target is in the
        # GOP the reader is already in, and seeks to the key frame otherwise.
        same_gop = _key_of(info.keyframes, position) == read.key and position <= read.frames[0]
        start = position if same_gop else read.key
        self.stats.seeks += 0 if same_gop else 1
        self.stats.gop_reads.append(read.key)
        self.stats.frames_decoded += read.frames[-1] + 1 - start


class OpenCVDecoder:
    """OpenCV backend: ``grab`` forward, ``retrieve`` only wanted frames; seek only when a
    seek decodes fewer frames than reading on (OpenCV's seek decodes from the key frame
    before ``target - 16``)."""

    name = "opencv"

    def __init__(self) -> None:
        self.stats = DecodeStats()

    def iter_frames(self, path: Path, info: VideoInfo, indices: Sequence[int]) -> Iterator[DecodedFrame]:
        import cv2

        plan = plan_decode(info.keyframes, _checked(indices, info))
        if not plan:
            return
        capture = cv2.VideoCapture(str(path))
        try:
            if not capture.isOpened():
                raise DecodeError(f"{path}: OpenCV cannot open it")
            self.stats.videos += 1
            position = 0  # index of the frame the next grab() returns
            for read in plan:
                position = self._position(capture, info, read, position)
                for idx in read.frames:
                    position = self._grab_to(capture, path, idx, position)
                    yield self._retrieve(capture, path, idx)
        except cv2.error as exc:
            raise DecodeError(f"{path}: OpenCV failed ({_first_line(exc)})") from exc
        finally:
            capture.release()

    def _retrieve(self, capture, path: Path, idx: int) -> DecodedFrame:
        """Colour-convert the frame just grabbed; its time is its presentation timestamp."""
        import cv2

        ok, bgr = capture.retrieve()
        if not ok or bgr is None:
            raise DecodeError(f"{path}: OpenCV could not retrieve frame {idx}")
        time = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        return DecodedFrame(idx=idx, time=_seconds(time), rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))

    def _position(self, capture, info: VideoInfo, read: GopRead, position: int) -> int:
        """Seek for this GOP if that decodes fewer frames than grabbing on from here."""
        import cv2

        target = read.frames[0]
        seek_from = _key_of(info.keyframes, max(0, target - _OPENCV_SEEK_BACKOFF))
        forward = target - position if position <= target else None
        self.stats.gop_reads.append(read.key)
        if forward is not None and forward <= target - seek_from:
            return position
        capture.set(cv2.CAP_PROP_POS_FRAMES, target)
        self.stats.seeks += 1
        self.stats.frames_decoded += target - seek_from
        return target

    def _grab_to(self, capture, path: Path, idx: int, position: int) -> int:
        """Grab (decode without colour conversion) up to and including frame ``idx``."""
        while position <= idx:
            if not capture.grab():
                raise DecodeError(f"{path}: OpenCV stopped decoding at frame {position} (wanted {idx})")
            self.stats.frames_decoded += 1
            position += 1
        return position


def _seconds(value: float) -> float:
    """Timestamps to the microsecond; never below 0 (float noise on a first frame at 0)."""
    return max(0.0, round(value, 6))


def _checked(indices: Sequence[int], info: VideoInfo) -> list[int]:
    wanted = sorted({int(i) for i in indices})
    if wanted and (wanted[0] < 0 or wanted[-1] >= info.n_frames):
        raise ValueError(f"frame indices must lie in [0, {info.n_frames}); got {wanted[0]}..{wanted[-1]}")
    return wanted


def _key_of(keyframes: Sequence[int], idx: int) -> int:
    """The key frame that starts the GOP holding ``idx`` (0 before the first key)."""
    pos = bisect.bisect_right(keyframes, idx) - 1
    return keyframes[pos] if pos >= 0 else 0


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
