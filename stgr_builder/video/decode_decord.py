"""The decord backend: one VideoReader per call, one ``get_batch`` per GOP (chunked)."""

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
from stgr_builder.video.probe import decord_errors

# decord materializes a get_batch call as one array: cap it so a GOP with many wanted
# frames (dense fixed-rate sampling) does not hold them all at once.
_DECORD_CHUNK = 8


class DecordDecoder:
    """decord backend: one VideoReader per call, one ``get_batch`` per GOP (chunked)."""

    name = "decord"

    def __init__(self) -> None:
        self.stats = DecodeStats()

    def iter_frames(self, path: Path, info: VideoInfo, indices: Sequence[int]) -> Iterator[DecodedFrame]:
        import decord

        plan = plan_decode(info.keyframes, checked_indices(indices, info))
        if not plan:
            return
        try:
            reader = decord.VideoReader(str(path), num_threads=0)
        except decord_errors() as exc:
            raise DecodeError(f"{path}: decord cannot open it ({first_line(exc)})") from exc
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
                    raise DecodeError(
                        f"{path}: decoding frames {chunk[0]}-{chunk[-1]} failed ({first_line(exc)})"
                    ) from exc
                for idx, rgb, stamp in zip(chunk, batch, stamps, strict=False):
                    yield DecodedFrame(idx=idx, time=exact_seconds(float(stamp[0])), rgb=rgb)
            position = read.frames[-1] + 1

    def _count(self, info: VideoInfo, read: GopRead, position: int) -> None:
        # decord's accurate seek decodes forward without seeking when the target is in the
        # GOP the reader is already in, and seeks to the key frame otherwise.
        same_gop = key_of(info.keyframes, position) == read.key and position <= read.frames[0]
        start = position if same_gop else read.key
        self.stats.seeks += 0 if same_gop else 1
        self.stats.gop_reads.append(read.key)
        self.stats.frames_decoded += read.frames[-1] + 1 - start


def _chunks(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
