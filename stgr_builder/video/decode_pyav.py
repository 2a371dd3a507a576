"""The PyAV backend (the default): see ``PyAVDecoder``'s docstring and ``decode``'s."""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from stgr_builder.models import VideoInfo
from stgr_builder.video.decoded import (
    DecodedFrame,
    DecodeError,
    DecodeStats,
    checked_indices,
    exact_seconds,
    first_line,
)
from stgr_builder.video.plan import GopRead, plan_decode
from stgr_builder.video.probe import open_container

# Seeking costs about this many frames of sequential decoding (demuxer reposition, decoder
# flush, refilling the frame-thread pipeline): measured with bench/sample_frames.py. When
# the next wanted GOP starts fewer frames ahead than this, decoding on is cheaper.
_PYAV_SEEK_COST = 4


# FFmpeg threads one way at a time: with AUTO it takes frame threads, which keep several
# frames in flight (a pipeline that every seek flushes and refills), and ignores slices. A
# stream coded in several slices per frame (x264 with sliced threads, many camera encoders)
# decodes as fast with slice threads and no pipeline: measured with bench/sample_frames.py
# on 2-slice 720p with a key frame every 2 s, 0.42 s with slice threads against 0.55 s with
# frame threads. One slice per frame (bikes.mp4): frame threads, 0.06 s against 0.10 s.


def _slices(packet, codec: str, length_size: int = 4) -> int:
    """Coded slices in one H.264 / HEVC packet (length-prefixed NAL units); 0 if unknown."""
    if codec not in ("h264", "hevc"):
        return 0
    data, pos, count = bytes(packet), 0, 0
    while pos + length_size < len(data):
        size = int.from_bytes(data[pos : pos + length_size], "big")
        header = data[pos + length_size]
        kind = header & 0x1F if codec == "h264" else (header >> 1) & 0x3F
        count += kind in (1, 5) if codec == "h264" else kind <= 21
        pos += length_size + size
    return count


#: A GOP read of at least this many frames (8 s at 30 fps) decodes with one frame thread more
#: than cores (FFmpeg's own pick, and torchcodec's): a deeper pipeline keeps every core busy on
#: a long run. bench/sample_frames.py's 720p clip with 10 s GOPs, under load 7-12 on 2 cores:
#: fastest of 6 interleaved runs 2.8 s with 3 threads against 4.1 s with 2 (single runs swing
#: 2x). Short reads keep one per core (bigbuckbunny.mp4, 124 frames: 94 ms against 112 ms).
LONG_READ_FRAMES = 240


def _thread_count(threads: int, plan: list[GopRead]) -> int:
    """``threads`` when set, else one per core, plus one when a read of ``plan`` is long.

    >>> _thread_count(0, [GopRead(0, (299,))]) == (os.cpu_count() or 1) + 1
    True
    >>> _thread_count(0, [GopRead(0, (10,))]) == (os.cpu_count() or 1)
    True
    """
    if threads:
        return threads
    longest = max((read.frames[-1] + 1 - read.key for read in plan), default=0)
    return (os.cpu_count() or 1) + (longest >= LONG_READ_FRAMES)


class _Irregular(Exception):
    """The stream's timestamps are not on the constant-rate grid the seek plan assumes."""


class PyAVDecoder:
    """PyAV (FFmpeg) backend: seek to the key frame of each wanted GOP, or decode on when
    the GOP is only a few frames ahead; decode with FFmpeg's frame and slice threads;
    colour-convert only the wanted frames.

    No index scan at open: a key frame's position is ``idx / fps`` on the stream's clock,
    from the probe's key-frame index, and every decoded frame's presentation timestamp is
    checked against that grid. A stream whose timestamps are off the grid (variable frame
    rate) is decoded again from its first frame, counting frames, which is exact whatever
    the timestamps. Pixels are those of decord (both convert with FFmpeg's swscale).
    """

    name = "pyav"

    def __init__(self, thread_type: str | None = None, threads: int = 0) -> None:
        self.stats = DecodeStats()
        # FFmpeg's NONE, SLICE, FRAME or AUTO (frame, else slice); None: chosen per video.
        self.thread_type = thread_type
        # One per core: FFmpeg's own pick (cores + 1 frame threads) measured 112 ms against 94 ms for
        # bigbuckbunny.mp4's 124 frames on 2 cores.
        self.threads = threads

    def iter_frames(self, path: Path, info: VideoInfo, indices: Sequence[int]) -> Iterator[DecodedFrame]:
        plan = plan_decode(info.keyframes, checked_indices(indices, info))
        if not plan:
            return
        container = self._open(path, self.thread_type, _thread_count(self.threads, plan))
        self.stats.videos += 1
        done: set[int] = set()
        try:
            try:
                for frame in self._planned(container, path, info, plan):
                    done.add(frame.idx)
                    yield frame
            except _Irregular:
                container.close()
                container = self._open(path, "AUTO", _thread_count(self.threads, plan))
                left = [idx for read in plan for idx in read.frames if idx not in done]
                yield from self._sequential(container, path, left)
        finally:
            container.close()

    def _open(self, path: Path, thread_type: str | None, threads: int = 0):
        import av

        try:
            container = open_container(path)
            stream = container.streams.video[0]
        except (av.error.FFmpegError, OSError, IndexError, ValueError) as exc:
            raise DecodeError(f"{path}: PyAV cannot open it ({first_line(exc)})") from exc
        stream.thread_type = thread_type or self._thread_type(container, stream, path)
        stream.thread_count = threads or _thread_count(self.threads, [])
        return container

    def _thread_type(self, container, stream, path: Path) -> str:
        """SLICE for a stream coded in several slices per frame, else AUTO (frame threads);
        looks at the first packet, then goes back to the start."""
        import av

        codec = stream.codec_context.name
        extradata = stream.codec_context.extradata or b""
        length_size = 4
        if codec == "h264" and len(extradata) > 4 and extradata[0] == 1:
            length_size = (extradata[4] & 3) + 1  # avcC's lengthSizeMinusOne
        elif codec == "hevc" and len(extradata) > 21 and extradata[0] == 1:
            length_size = (extradata[21] & 3) + 1  # hvcC's lengthSizeMinusOne
        elif codec in ("h264", "hevc"):
            return "AUTO"  # Annex B start codes (raw streams): not parsed here
        try:
            first = next((p for p in container.demux(stream) if p.size), None)
            slices = _slices(first, codec, length_size) if first is not None else 0
            container.seek(stream.start_time or 0, stream=stream, backward=True)
        except (av.error.FFmpegError, ValueError, IndexError) as exc:
            raise DecodeError(f"{path}: PyAV cannot read it ({first_line(exc)})") from exc
        return "SLICE" if slices > 1 else "AUTO"

    def _planned(self, container, path: Path, info: VideoInfo, plan: list[GopRead]) -> Iterator[DecodedFrame]:
        stream = container.streams.video[0]
        clock = _Clock(stream, info)
        wanted = frozenset(idx for read in plan for idx in read.frames)
        reader: _PacketReader | None = None
        for pos, read in enumerate(plan):
            if reader is None and read.key == 0:
                reader = _PacketReader(container, stream, clock, path, 0, wanted)  # a fresh open starts at frame 0
            elif (
                reader is None
                or reader.drained
                or reader.position > read.frames[0]
                or read.key - reader.position > _PYAV_SEEK_COST
            ):
                reader = self._seek(container, stream, path, clock, read.key, wanted)
                self.stats.seeks += 1
            self.stats.gop_reads.append(read.key)
            following = plan[pos + 1] if pos + 1 < len(plan) else None
            # Decode on into the next GOP when it is close; otherwise, once every packet up
            # to the last wanted frame is in, drain the decoder instead of feeding it more
            # (B-frames and frame threads hold frames back until later packets arrive).
            drain = following is None or following.key - (read.frames[-1] + 1) > _PYAV_SEEK_COST
            yield from reader.read(read.frames, drain)
            self.stats.frames_decoded += reader.take_decoded()

    def _seek(self, container, stream, path: Path, clock: _Clock, key: int, wanted: frozenset[int]) -> _PacketReader:
        import av

        try:
            container.seek(clock.pts(key), stream=stream, backward=True)  # also flushes the decoder
        except av.error.FFmpegError as exc:
            raise DecodeError(f"{path}: seeking to frame {key} failed ({first_line(exc)})") from exc
        return _PacketReader(container, stream, clock, path, key, wanted)

    def _sequential(self, container, path: Path, wanted: list[int]) -> Iterator[DecodedFrame]:
        """Decode from the first frame counting frames: exact on any timestamps."""
        stream = container.streams.video[0]
        clock = _Clock(stream, None)
        frames = _frames(container, stream)
        self.stats.seeks += 1
        self.stats.gop_reads.append(0)
        position = 0
        for target in wanted:
            while True:
                frame = _next(frames, path, position)
                self.stats.frames_decoded += 1
                position += 1
                if position - 1 == target:
                    yield DecodedFrame(idx=target, time=clock.seconds(frame.pts), rgb=_rgb(frame))
                    break


class _PacketReader:
    """Feed one video stream's packets to its decoder from a key frame on, and yield the
    wanted frames in presentation order; ``position`` is the index of the next frame out.

    A frame that is not wanted and that no other frame refers to (most B-frames) is not
    decoded at all: its packet goes in with ``skip_frame = NONREF``. So frames come out with
    gaps, and their indices come from their timestamps; the packets' timestamps are checked
    to cover every index up to each frame that comes out (a dropped frame in a stream whose
    timestamps are otherwise on the grid would shift every later index)."""

    def __init__(self, container, stream, clock: _Clock, path: Path, position: int, wanted: frozenset[int]):
        self.packets = container.demux(stream)
        self.codec = stream.codec_context
        self.clock, self.path, self.wanted = clock, path, wanted
        # Without B-frames every frame is a reference (x264 and most encoders): nothing to skip.
        self.skip_unwanted = bool(self.codec.has_b_frames)
        self.skipping = False
        self.position = position
        self.sent: set[int] = set()  # frame indices whose packets went in (at or after position)
        self.complete = position  # every frame before this one has had its packet sent
        self.drained = False
        self.decoded = 0
        self.pending: deque = deque()  # frames out of the decoder, not yet looked at

    def take_decoded(self) -> int:
        count, self.decoded = self.decoded, 0
        return count

    def read(self, wanted: Sequence[int], drain: bool) -> Iterator[DecodedFrame]:
        import av

        targets = iter(wanted)
        target = next(targets, None)
        last = wanted[-1]
        while target is not None:
            if not self.pending:
                if self.drained:
                    raise DecodeError(f"{self.path}: the stream ended at frame {self.position} (wanted {target})")
                try:
                    if drain and self.complete > last:
                        # Frames after ``last`` may come out with gaps (their packets were
                        # never sent): this reader is done once the wanted frames are out.
                        self.pending.extend(self.codec.decode(None))
                        self.drained = True
                    else:
                        self.pending.extend(self._feed())
                except (av.error.FFmpegError, ValueError) as exc:
                    raise DecodeError(
                        f"{self.path}: decoding frame {self.position} failed ({first_line(exc)})"
                    ) from exc
                continue
            frame = self.pending.popleft()
            idx = self.clock.index(frame)
            if idx < self.position:
                continue  # an open GOP's leading frames, shown before its key frame
            if self.complete <= idx or idx > target:
                raise _Irregular  # an index no packet had, or the wanted frame did not come out
            self.position = idx + 1
            self.decoded += 1
            if idx == target:
                yield DecodedFrame(idx=idx, time=self.clock.seconds(frame.pts), rgb=_rgb(frame))
                target = next(targets, None)

    def _feed(self) -> list:
        packet = next(self.packets, None)
        if packet is None:
            self.drained = True
            return []
        if packet.size == 0:  # the demuxer's end of stream: decoding it drains the decoder
            self.drained = True
            return packet.decode()
        if packet.pts is None:
            raise _Irregular
        idx = self.clock.packet_index(packet.pts)
        if idx >= self.complete:
            self.sent.add(idx)
            while self.complete in self.sent:
                self.sent.discard(self.complete)
                self.complete += 1
        skip = self.skip_unwanted and idx not in self.wanted
        if skip != self.skipping:
            self.codec.skip_frame = "NONREF" if skip else "DEFAULT"
            self.skipping = skip
        return packet.decode()


class _Clock:
    """Frame index <-> presentation timestamp on a constant-rate grid from the first frame."""

    def __init__(self, stream, info: VideoInfo | None):
        self.time_base = stream.time_base  # a Fraction: times exact before rounding
        self.base = float(stream.time_base)
        self.start = stream.start_time or 0
        self.fps = info.fps if info is not None else 0.0

    def pts(self, idx: int) -> int:
        """A timestamp inside frame ``idx`` (half a frame past its start)."""
        return self.start + int(round((idx + 0.5) / self.fps / self.base))

    def index(self, frame) -> int:
        if frame.pts is None:
            raise _Irregular
        return self.packet_index(frame.pts)

    def seconds(self, pts: int | None) -> float:
        """Seconds from the stream's start (as decord, OpenCV and players count them; frames
        drained from the decoder carry no time base of their own)."""
        return exact_seconds(float(((pts or 0) - self.start) * self.time_base))

    def packet_index(self, pts: int) -> int:
        exact = (pts - self.start) * self.base * self.fps
        idx = int(round(exact))
        if abs(exact - idx) > 0.25:
            raise _Irregular
        return idx


_REFORMATTERS = threading.local()


def _rgb(frame) -> np.ndarray:
    """RGB pixels as shown: turned by the stream's display matrix (phone footage), like
    OpenCV and the ffmpeg CLI do, at the size the probe reports.

    One swscale context per thread, reused (``to_ndarray(format=...)`` builds a new one per
    frame: 0.47 ms against 0.09 ms for a 176x144 frame); the same pixels."""
    reformatter = getattr(_REFORMATTERS, "value", None)
    if reformatter is None:
        from av.video.reformatter import VideoReformatter

        reformatter = _REFORMATTERS.value = VideoReformatter()
    rgb = reformatter.reformat(frame, format="rgb24").to_ndarray()
    turns = round((frame.rotation or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def _frames(container, stream) -> Iterator:
    for packet in container.demux(stream):
        yield from packet.decode()


def _next(frames: Iterator, path: Path, position: int):
    import av

    try:
        return next(frames)
    except StopIteration:
        raise DecodeError(f"{path}: the stream ended at frame {position}") from None
    except (av.error.FFmpegError, ValueError) as exc:
        raise DecodeError(f"{path}: decoding frame {position} failed ({first_line(exc)})") from exc
