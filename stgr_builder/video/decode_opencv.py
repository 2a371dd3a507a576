"""The OpenCV backend (the fallback): ``grab`` forward, ``retrieve`` only wanted frames."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from stgr_builder.models import VideoInfo
from stgr_builder.video.decoded import (
    DecodedFrame,
    DecodeError,
    DecodeStats,
    checked_indices,
    exact_seconds,
    first_line,
    key_of,
)
from stgr_builder.video.plan import GopRead, plan_decode

# OpenCV's seek lands 16 frames before the target and decodes forward from the key frame
# before that (CvCapture_FFMPEG::seek); the cost model below needs to know it.
_OPENCV_SEEK_BACKOFF = 16


class OpenCVDecoder:
    """OpenCV backend: ``grab`` forward, ``retrieve`` only wanted frames; seek only when a
    seek decodes fewer frames than reading on (OpenCV's seek decodes from the key frame
    before ``target - 16``)."""

    name = "opencv"

    def __init__(self) -> None:
        self.stats = DecodeStats()

    def iter_frames(self, path: Path, info: VideoInfo, indices: Sequence[int]) -> Iterator[DecodedFrame]:
        import cv2

        plan = plan_decode(info.keyframes, checked_indices(indices, info))
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
            raise DecodeError(f"{path}: OpenCV failed ({first_line(exc)})") from exc
        finally:
            capture.release()

    def _retrieve(self, capture, path: Path, idx: int) -> DecodedFrame:
        """Colour-convert the frame just grabbed; its time is its presentation timestamp."""
        import cv2

        ok, bgr = capture.retrieve()
        if not ok or bgr is None:
            raise DecodeError(f"{path}: OpenCV could not retrieve frame {idx}")
        time = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        return DecodedFrame(idx=idx, time=exact_seconds(time), rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))

    def _position(self, capture, info: VideoInfo, read: GopRead, position: int) -> int:
        """Seek for this GOP if that decodes fewer frames than grabbing on from here."""
        import cv2

        target = read.frames[0]
        seek_from = key_of(info.keyframes, max(0, target - _OPENCV_SEEK_BACKOFF))
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
