"""Probe a video or image once: size, timing and the key-frame (GOP) index.

>>> probe_video(Path("media/v001.mp4"), "v001.mp4")  # doctest: +SKIP
VideoInfo(path='v001.mp4', duration=60.0, fps=30.0, n_frames=1800, width=1280, height=720,
          keyframes=[0, 60, 120, ...])

Bad input never crashes the process; it raises ``SampleError`` with a reject code:
``MEDIA_MISSING`` (no such file), ``MEDIA_EMPTY`` (zero bytes), ``MEDIA_CORRUPT`` (not a
container, truncated, undecodable), ``NO_FRAMES`` (no video stream, or a video stream
without a single frame), ``NOT_AN_IMAGE`` (an image path whose bytes are no image:
``core/images.py``), ``MEDIA_TOO_LARGE`` (an image or video frame of more than ``MAX_PIXELS``).
A video whose container asks players to rotate it is shown as the viewer sees it: its size
is the turned size, and the PyAV and OpenCV decoders return turned frames.

The probe is one PyAV pass (PyAV raises Python exceptions): open the container, find a
video stream, demux every packet of it (a file cut short, or whose index promises more
frames than it holds, is truncated), collecting each packet's timestamp and key flag, and
decode the first frame. That pass is the index the decoders plan from: nothing scans the
file again. Demuxing reads but does not decode: the whole probe of a minute of 720p takes
~80 ms. It gives the same VideoInfo as the decord probe it replaced on 206 files (real,
generated, B-frames, rotated). decord is still used for streams whose packets carry no
timestamps, and as a selectable decoder; a file only reaches it after this pass.

decord is a C++ library whose failures on broken input were reported to abort the process
(dmlc/decord#25, from a decoder thread).
decord 0.6.0 itself never aborted on the broken files tried here (random bytes, text,
truncations, a clobbered index, an AV1 stream it has no decoder for, ~470 fuzzed copies:
random blocks, bit flips, clobbered length fields, cuts at random points, with and
without B-frames): it raised ``DECORDError`` or decoded with error concealment. So
decoding stays in-process: no subprocess per video (start-up cost, and Dask workers are
daemonic processes that ``multiprocessing`` may not fork from).
"""

from __future__ import annotations

import math
from pathlib import Path

import av
import numpy as np

from stgr_builder.core.images import check_pixels, open_image
from stgr_builder.errors import SampleError
from stgr_builder.models import ImageInfo, RejectCode, VideoInfo


def decord_errors() -> tuple[type[BaseException], ...]:
    """What decord raises on bad input: DECORDError (a plain Exception), RuntimeError for
    a file it cannot open, AssertionError for a zero frame count."""
    import decord

    return (decord.DECORDError, RuntimeError, AssertionError, ValueError, IndexError)


def probe_video(path: Path, rel_path: str) -> VideoInfo:
    """Open ``path`` once with PyAV and describe it; ``rel_path`` is recorded.

    One pass over the container's packets (demuxing reads, it does not decode) gives the
    frame count, every presentation timestamp and the key frames; decoding the first
    frame proves the stream decodes and gives the size. Duration is the end time of the
    last frame. A stream whose packets carry no timestamps is described by decord instead.
    """
    check_file(path)
    demuxed = _demux(path)
    if demuxed.timestamps is None:
        return _probe_with_decord(path, rel_path, demuxed.codec)
    return demuxed.info(path, rel_path)


def probe_image(path: Path, rel_path: str) -> ImageInfo:
    """Open and fully decode an image to check it; return its original size.

    >>> probe_image(Path("media/cat.jpg"), "cat.jpg")  # doctest: +SKIP
    ImageInfo(path='cat.jpg', width=640, height=480)

    Sizes are those of the stored pixels (EXIF orientation is not applied), which is the
    frame that source boxes in pixel coordinates refer to.
    """
    check_file(path)
    with open_image(path) as image:  # kind and size checked before any pixel is decoded
        width, height = image.size
        try:
            image.load()  # a truncated file only fails here
        except Exception as exc:  # noqa: BLE001 - Pillow's decoders fail in many shapes
            raise SampleError(RejectCode.MEDIA_CORRUPT, f"{path}: not a readable image ({exc})") from exc
    if width <= 0 or height <= 0:
        raise SampleError(RejectCode.NO_FRAMES, f"{path}: image has no pixels ({width}x{height})")
    return ImageInfo(path=rel_path, width=width, height=height)


def check_file(path: Path) -> None:
    """Raise ``MEDIA_MISSING`` / ``MEDIA_EMPTY`` unless ``path`` is a non-empty file."""
    try:
        stat = path.stat()
    except FileNotFoundError as exc:
        raise SampleError(RejectCode.MEDIA_MISSING, f"{path}: no such file") from exc
    except OSError as exc:
        raise SampleError(RejectCode.MEDIA_MISSING, f"{path}: cannot stat ({exc})") from exc
    if not path.is_file():
        raise SampleError(RejectCode.MEDIA_MISSING, f"{path}: not a regular file")
    if stat.st_size == 0:
        raise SampleError(RejectCode.MEDIA_EMPTY, f"{path}: file is empty (0 bytes)")


class _Demuxed:
    """What one pass over a video stream's packets found."""

    def __init__(
        self,
        codec: str,
        time_base,
        start_time: int | None,
        fps: float,
        count: int,
        timestamps: list[int] | None,
        keys: list[int],
        last_duration: int,
        size: tuple[int, int],
    ):
        self.codec, self.time_base, self.start_time, self.fps, self.count = codec, time_base, start_time, fps, count
        self.timestamps, self.keys, self.last_duration, self.size = timestamps, keys, last_duration, size

    def info(self, path: Path, rel_path: str) -> VideoInfo:
        """Frame ``i`` is the ``i``-th in presentation order (as decord and every decoder
        here count them); a key frame's index is the rank of its timestamp."""
        assert self.timestamps is not None  # probe_video sends streams without them to decord
        order = sorted(self.timestamps)
        rank = {pts: i for i, pts in enumerate(order)}
        keyframes = sorted({rank[pts] for pts in self.keys})
        # Seconds as float32, as the decord probe gave them before: VideoInfo, and every
        # plan made from it, stay what they were for existing builds.
        # Times count from the stream's start, as the decoders give them.
        zero = self.start_time if self.start_time is not None else order[0]
        start = float(np.float32((order[-1] - zero) * self.time_base))
        end = float(np.float32((order[-1] - zero + self.last_duration) * self.time_base))
        fps = self.fps
        if not math.isfinite(fps) or fps <= 0:
            fps = len(order) / end if end > 0 else 0.0
        if end <= start and fps > 0:
            end = start + 1.0 / fps  # containers without packet durations
        if fps <= 0 or end <= 0:
            raise SampleError(RejectCode.MEDIA_CORRUPT, f"{path}: no usable timestamps or frame rate")
        width, height = self.size
        return VideoInfo(
            path=rel_path,
            duration=round(end, 6),
            fps=fps,
            n_frames=len(order),
            width=width,
            height=height,
            keyframes=keyframes or [0],
        )


def open_container(path: Path):
    """The file opened with PyAV, from its headers alone where they describe its video stream.

    FFmpeg's stream analysis (``avformat_find_stream_info``) decodes frames when the headers
    leave a codec parameter open: it decoded bigbuckbunny.mp4's first 720p key frame, 9 ms
    of a 100 ms read. The probe and the decoders decode what they need themselves, and the
    decoder learns the pixel format from the frames. Where the headers do not give the video
    stream's size (or the small read fails), the file is opened again with the full analysis,
    and its errors are the ones raised."""
    try:
        container = av.open(str(path), options={"probesize": "32"})
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError):
        return av.open(str(path))
    videos = container.streams.video
    if (
        videos
        and videos[0].codec_context is not None
        and videos[0].codec_context.width
        and videos[0].codec_context.height
    ):
        return container
    container.close()
    return av.open(str(path))


def _demux(path: Path) -> _Demuxed:
    """Prove with PyAV that the file is a sane video, and index it on the way."""
    try:
        container = open_container(path)
    except (av.error.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise SampleError(RejectCode.MEDIA_CORRUPT, f"{path}: not a readable media container ({exc})") from exc
    with container:
        if not container.streams.video:
            raise SampleError(RejectCode.NO_FRAMES, f"{path}: no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None:
            raise SampleError(RejectCode.MEDIA_CORRUPT, f"{path}: video stream of an unknown codec")
        try:
            demuxed = _index(container, stream)
        except SampleError:
            raise
        except Exception as exc:  # noqa: BLE001
            # Broad on purpose: garbage makes PyAV fail in many shapes (FFmpegError mostly,
            # but not only), and this guard exists to classify a file, never to crash.
            raise SampleError(
                RejectCode.MEDIA_CORRUPT, f"{path}: unreadable video data ({type(exc).__name__}: {exc})"
            ) from exc
        declared = stream.frames or 0
    packets = demuxed.count
    if packets == 0:
        raise SampleError(RejectCode.NO_FRAMES, f"{path}: video stream has no frames")
    if declared and packets < declared:
        raise SampleError(RejectCode.MEDIA_CORRUPT, f"{path}: truncated, {packets} of {declared} frames present")
    if demuxed.size == (0, 0):
        raise SampleError(RejectCode.NO_FRAMES, f"{path}: no frame of the video stream decodes")
    check_pixels(path, *demuxed.size, what="each frame")
    return demuxed


def _index(container, stream) -> _Demuxed:
    """Every packet's timestamp and key flag (reading, not decoding); decode until one frame."""
    timestamps: list[int] | None = []
    keys: list[int] = []
    count, last_pts, last_duration, first = 0, None, 0, None
    for packet in container.demux(stream):
        if packet.size == 0:
            continue  # the demuxer's end-of-stream marker
        count += 1
        pts = packet.pts
        if pts is None or timestamps is None:
            timestamps = None
        else:
            timestamps.append(pts)
            if packet.is_keyframe:
                keys.append(pts)
            if last_pts is None or pts > last_pts:
                last_pts, last_duration = pts, packet.duration or 0
        if first is None:
            frames = packet.decode()
            first = frames[0] if frames else None
    if count and first is None:
        frames = stream.codec_context.decode(None)  # drain frames the decoder holds back
        first = frames[0] if frames else None
    size = (0, 0)
    if first is not None:
        # The size as shown: a display matrix turning the picture a quarter turn swaps it
        # (the decoders return the turned picture).
        size = (first.height, first.width) if round(first.rotation or 0) % 180 == 90 else (first.width, first.height)
    fps = float(stream.average_rate) if stream.average_rate else 0.0
    codec = stream.codec_context.name
    return _Demuxed(codec, stream.time_base, stream.start_time, fps, count, timestamps, keys, last_duration, size)


def _probe_with_decord(path: Path, rel_path: str, codec: str) -> VideoInfo:
    import decord

    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        n_frames = len(reader)
        if n_frames == 0:
            raise SampleError(RejectCode.NO_FRAMES, f"{path}: decord finds no frames")
        keyframes = [int(k) for k in reader.get_key_indices()]
        fps = float(reader.get_avg_fps())
        stamps = np.asarray(reader.get_frame_timestamp([n_frames - 1]), dtype=np.float64)
        # Decoding frame 0 gives the size as decoded (rotation applied), which is the
        # size every sampled frame will have.
        height, width = reader.next().shape[:2]
    except decord_errors() as exc:
        raise SampleError(
            RejectCode.MEDIA_CORRUPT, f"{path}: decord cannot read this {codec} video ({_first_line(exc)})"
        ) from exc
    finally:
        reader = None  # release decoder threads and the file now, not at GC time
    start, end = float(stamps[0][0]), float(stamps[0][1])
    if not math.isfinite(fps) or fps <= 0:
        fps = n_frames / end if end > 0 else 0.0
    if end <= start and fps > 0:
        end = start + 1.0 / fps  # containers without packet durations
    if fps <= 0 or end <= 0:
        raise SampleError(RejectCode.MEDIA_CORRUPT, f"{path}: no usable timestamps or frame rate")
    return VideoInfo(
        path=rel_path,
        duration=round(end, 6),
        fps=fps,
        n_frames=n_frames,
        width=int(width),
        height=int(height),
        keyframes=keyframes,
    )


def _first_line(exc: BaseException) -> str:
    """decord's messages carry a C++ stack trace; the first line says what happened."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
