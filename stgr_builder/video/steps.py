"""The probe and sample stages as pipeline steps.

>>> store = FrameStore(Path("out"), quality=90)
>>> items = run_steps(works, [ProbeStep({"STR_demo": FilterConfig()}),
...                           SampleStep(SamplerConfig(), store)])   # doctest: +SKIP

``ProbeStep`` opens each distinct video once per step (a video shared by many samples is
probed once, its failure remembered too), checks spans and applies the paper's filters.
``SampleStep`` plans every sample's candidate frames, then decodes per *video*: the union
of the frames wanted by all samples of that video in the batch, each GOP at most once,
one frame in memory at a time, written to the content-addressed store.

Across steps (the shards of a build run in one process) two memos of the process's
``Resources``, bounded in bytes and keyed by the file's content fingerprint
(``core.hashing.media_fingerprint``: size and sampled blocks, so a same-size replacement with
its mtime restored is noticed), skip repeated work: a video's ``VideoInfo`` (samples of one video
are dealt into many shards) and the frames already decoded into the same store.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from stgr_builder.core.cache import BoundedCache
from stgr_builder.core.geometry import IMAGE_VIEWS, make_view
from stgr_builder.core.gold import gold_times
from stgr_builder.core.images import load_rgb
from stgr_builder.core.resources import Resources
from stgr_builder.core.spans import checks_span, presence_name, probe_indices
from stgr_builder.core.steps import Step
from stgr_builder.errors import SampleError
from stgr_builder.models import (
    FilterConfig,
    Frame,
    Reject,
    RejectCode,
    SamplerConfig,
    SampleWork,
    SourceSample,
    SpanCheckConfig,
    Stage,
    Task,
    VideoInfo,
)
from stgr_builder.storage.location import is_url
from stgr_builder.storage.media import MediaFiles, media_location, remote_stat
from stgr_builder.video.decode import DecodeError, get_decoder
from stgr_builder.video.frames import FrameStore
from stgr_builder.video.plan import FramePlan, plan_frames
from stgr_builder.video.probe import check_file, probe_image, probe_video

_TEMPORAL_TASKS = (Task.TEMPORAL, Task.TEMPORAL_MCQ)
# decord's timestamps are float32: a few microseconds off over minutes of video.
_TIME_TOLERANCE = 1e-4
# Videos of one batch decoded at once: 24 short 640x360 clips on 2 busy cores took 3.6 s one
# after another, 2.3 s two at a time, 1.5 s three at a time (frame decode and JPEG encode
# release the GIL; per-video set-up overlaps).
_VIDEO_WORKERS = min(4, (os.cpu_count() or 1) + 1)


#: Byte bounds of the process's memos (``Resources``): probe results per video file, and the
#: stored ``Frame`` records per decoded frame (a few hundred bytes each).
PROBE_MEMO_BYTES = 16 << 20
FRAME_MEMO_BYTES = 32 << 20


class ProbeStep(Step):
    """Probe media, validate spans, apply per-source filters (keyed by ``sample.source``;
    a source without an entry is not filtered)."""

    stage = Stage.PROBE

    def __init__(
        self,
        filters: dict[str, FilterConfig] | None = None,
        resources: Resources | None = None,
        media: MediaFiles | None = None,
    ):
        super().__init__()
        self.filters = dict(filters or {})
        self.media = media or MediaFiles()  # media under a URL: read from a local copy
        # This step's outcome per file, failures included (a broken file is opened once).
        self._seen: BoundedCache[VideoInfo | SampleError] = BoundedCache(PROBE_MEMO_BYTES)
        # The process's probe results (successes only) across steps and shards.
        self.resources = resources or Resources()
        self._memo = self.resources.memo("probes", PROBE_MEMO_BYTES)
        self.videos_opened = 0

    def process(self, work: SampleWork) -> SampleWork:
        sample = work.sample
        if sample.image_path is not None:
            location = media_path(sample, sample.image_path)
            check_location(location)
            with self.media.local(location) as path:
                work.image = probe_image(path, sample.image_path)
            return work
        assert sample.video_path is not None  # a SourceSample has a video or an image
        info = self._probe(media_path(sample, sample.video_path), sample.video_path)
        check_span(sample, info)
        apply_filters(sample, info, self.filters.get(sample.source))
        work.video = info
        return work

    def _probe(self, path: str, rel_path: str) -> VideoInfo:
        key = path
        cached = self._seen.get(key)
        if cached is None:
            self.videos_opened += 1  # distinct videos this step probed (file or process memo)
            try:
                cached = self._probe_remote(path, rel_path) if is_url(path) else self._probe_local(path, rel_path)
            except SampleError as err:
                cached = err
            self._seen.put(key, cached)
        if isinstance(cached, SampleError):
            raise SampleError(cached.code, cached.message)
        # The same file may be reached through another media_root / relative path.
        return cached if cached.path == rel_path else cached.model_copy(update={"path": rel_path})

    def _probe_local(self, path: str, rel_path: str) -> VideoInfo:
        try:
            memo_key: tuple | None = ("probe", self.resources.media_fingerprint(path))
        except OSError:
            memo_key = None
        # Samples of one video are dealt into many shards: probe the file once per process
        # (the same content gives the same VideoInfo); failures are not kept.
        cached = self._memo.get(memo_key) if memo_key is not None else None
        if cached is None:
            cached = probe_video(Path(path), rel_path)
            if memo_key is not None:
                self._memo.put(memo_key, cached)
        return cached

    def _probe_remote(self, location: str, rel_path: str) -> VideoInfo:
        """The probe of the local copy of an object (the process's memo as for a local file):
        its size and version from one ``HEAD`` (remembered a while), its bytes from one ``GET``
        into the local cache, its fingerprint from the copy."""
        try:
            stat = self.resources.remote_stat(location)
        except FileNotFoundError as exc:
            raise SampleError(RejectCode.MEDIA_MISSING, f"{location}: no such object") from exc
        except OSError as exc:
            raise SampleError(RejectCode.MEDIA_MISSING, f"{location}: cannot stat ({exc})") from exc
        if stat[0] == 0:
            raise SampleError(RejectCode.MEDIA_EMPTY, f"{location}: object is empty (0 bytes)")
        try:
            with self.media.local(location, stat) as path:
                memo_key = ("probe", self.resources.media_fingerprint(location, local_copy=path))
                cached = self._memo.get(memo_key)
                if cached is None:
                    try:
                        cached = probe_video(path, rel_path)
                    except SampleError as err:  # named by its URL, not by the cache's copy
                        raise SampleError(err.code, err.message.replace(str(path), location)) from err
                    self._memo.put(memo_key, cached)
                return cached
        except OSError as exc:
            raise SampleError(RejectCode.MEDIA_MISSING, f"{location}: cannot read ({exc})") from exc


class SampleStep(Step):
    """Decode each sample's candidate frames into the store (``work.frames``).

    Needs ``work.video`` / ``work.image`` from ``ProbeStep``. Samples of one video in a
    batch share one open and one pass over the GOPs they need.
    """

    stage = Stage.SAMPLE
    batch_size = 256

    def __init__(
        self,
        config: SamplerConfig,
        store: FrameStore,
        resources: Resources | None = None,
        track_window: int = 0,
        video_workers: int | None = None,
        span_check: SpanCheckConfig | None = None,
        media: MediaFiles | None = None,
    ):
        super().__init__()
        self.config = config
        self.media = media or MediaFiles()  # media under a URL: decoded from a local copy
        # Probes around the ends of inherited spans, for the span check (verify/inherited.py);
        # they too lie in GOPs read anyway or next to them, decoded in the same pass.
        self.span_check = span_check
        self.store = store
        # Neighbours decoded on each side of every candidate frame, for the track gate; they
        # lie in the GOPs the candidates need, so the same pass decodes them.
        self.track_window = track_window
        # The process's frames already decoded into a store, across steps and shards.
        self.resources = resources or Resources()
        self.memo = self.resources.memo("frames", FRAME_MEMO_BYTES)
        self.decoder = get_decoder(config.decoder)  # its ``stats`` sum those of every video
        # Videos of a batch decoded at once (PyAV and OpenCV release the GIL while decoding,
        # Pillow while encoding JPEGs); 1 decodes them one after another.
        self.video_workers = max(1, video_workers if video_workers is not None else _VIDEO_WORKERS)
        self._stats_lock = threading.Lock()

    def process(self, work: SampleWork) -> SampleWork:
        if work.sample.image_path is not None:
            return self._sample_image(work)
        self._sample_video(_video_key(work), [work])
        return work

    def process_batch(self, batch: list[SampleWork]) -> list[SampleWork | Reject]:
        results: list[SampleWork | Reject | None] = [None] * len(batch)
        by_video: dict[str, list[int]] = {}
        for pos, work in enumerate(batch):
            if work.sample.image_path is not None:
                results[pos] = self._guarded(work)
                continue
            try:
                key = _video_key(work)
            except SampleError as err:
                results[pos] = work.reject(self.stage, err.code, err.message)
                continue
            by_video.setdefault(key, []).append(pos)

        def one_video(key: str, positions: list[int]) -> list[SampleWork | Reject]:
            works = [batch[pos] for pos in positions]
            try:
                self._sample_video(key, works)
                return list(works)
            except SampleError as err:
                return [work.reject(self.stage, err.code, err.message) for work in works]

        groups = list(by_video.items())
        if self.video_workers > 1 and len(groups) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(self.video_workers, len(groups)), thread_name_prefix="stgr-decode") as pool:
                outcomes = list(pool.map(lambda group: one_video(*group), groups))
        else:
            outcomes = [one_video(key, positions) for key, positions in groups]
        for (_, positions), outcome in zip(groups, outcomes, strict=False):
            for pos, item in zip(positions, outcome, strict=False):
                results[pos] = item
        return results  # type: ignore[return-value]  # every slot is filled above

    def _sample_video(self, path: str, works: list[SampleWork]) -> None:
        info = _probed(works[0])
        plans = [plan_frames(_probed(work), self.config, work.sample.span, gold_times(work.sample)) for work in works]
        neighbours = [track_neighbours(plan.indices, info.n_frames, self.track_window) for plan in plans]
        probes = [self._span_probes(work) for work in works]
        wanted = sorted(set().union(*(plan.indices for plan in plans), *neighbours, *probes))
        decoder = get_decoder(self.config.decoder)  # one per video: videos may decode at once
        try:
            frames = self._decode_into_store(decoder, path, info, wanted)
        finally:
            self._add_stats(decoder.stats)
        for work, plan, near, probed in zip(works, plans, neighbours, probes, strict=False):
            work.frames = _frames_of(plan, frames, work.sample.span)
            work.track_frames = [frames[idx] for idx in near]
            work.span_frames = [frames[idx] for idx in probed]

    def _span_probes(self, work: SampleWork) -> list[int]:
        """The probe frames of a span the span check can read (an object's presence, or any
        span when an event judge is configured); none otherwise."""
        config, sample = self.span_check, work.sample
        if config is None or work.video is None or sample.span is None or not checks_span(sample, config):
            return []
        if presence_name(sample, config) is None and config.events != "judge":
            return []
        return probe_indices(work.video, sample.span, config)

    def _add_stats(self, stats) -> None:
        with self._stats_lock:
            total = self.decoder.stats
            total.videos += stats.videos
            total.gop_reads.extend(stats.gop_reads)
            total.seeks += stats.seeks
            total.frames_decoded += stats.frames_decoded

    def _decode_into_store(self, decoder, location: str, info: VideoInfo, wanted: list[int]) -> dict[int, Frame]:
        frames: dict[int, Frame] = {}
        # Frames of this file already decoded into this store by this process (an earlier
        # batch or shard of samples of the same video) are not decoded again.
        try:
            memo_base: tuple | None = (
                self.resources.media_fingerprint(location),
                self.config.decoder,
                str(self.store.root),
                self.store.quality,
            )
        except OSError:
            memo_base = None
        if memo_base is not None:
            for idx in wanted:
                known = self.memo.get((*memo_base, idx))
                if known is not None and self.store.path(known.path).is_file():
                    frames[idx] = known
        todo = [idx for idx in wanted if idx not in frames]
        if todo:
            with self._readable(location) as path:  # a bucket's video: its copy held while it decodes
                self._decode_frames(decoder.iter_frames(path, info, todo), frames, memo_base)
        missing = sorted(set(wanted) - frames.keys())
        if missing:
            raise SampleError(RejectCode.DECODE_FAILED, f"{location}: frames {missing[:5]} were not decoded")
        return frames

    @contextlib.contextmanager
    def _readable(self, location: str) -> Iterator[Path]:
        """A local path of ``location``; an object that cannot be copied is rejected, while an
        error of the block itself (a store write on a full disk) still stops the build."""
        if not is_url(location):
            yield Path(location)
            return
        with contextlib.ExitStack() as stack:
            try:
                path = stack.enter_context(self.media.local(location, self.resources.remote_stat(location)))
            except OSError as exc:
                raise SampleError(RejectCode.MEDIA_MISSING, f"{location}: cannot read ({exc})") from exc
            yield path

    def _decode_frames(self, decoded, frames: dict[int, Frame], memo_base: tuple | None) -> None:
        """Store each decoded frame and remember it in ``frames`` (and the process's memo)."""
        while True:
            # Only decoder failures become rejects; a failing store write (disk full) is
            # the user's problem and must stop the build.
            try:
                item = next(decoded, None)
            except DecodeError as exc:
                raise SampleError(RejectCode.DECODE_FAILED, str(exc)) from exc
            if item is None:
                break
            height, width = item.rgb.shape[:2]
            frames[item.idx] = Frame(
                idx=item.idx, time=item.time, path=self.store.put(item.rgb), width=width, height=height
            )
            if memo_base is not None:
                self.memo.put((*memo_base, item.idx), frames[item.idx])

    def _sample_image(self, work: SampleWork) -> SampleWork:
        location = media_path(work.sample, work.sample.image_path)
        check_location(location)
        with self.media.local(location) as path:
            rgb = load_rgb(path)  # never PIL.Image.open: core/images.py says why
        height, width = rgb.shape[:2]
        work.frames = [Frame(idx=0, time=0.0, path=self.store.put(rgb), width=width, height=height)]
        # No neighbouring frames: the track gate checks boxes on altered views of the image.
        work.track_frames = [
            Frame(idx=k, time=0.0, path=self.store.put(make_view(rgb, view)), width=width, height=height, view=view)
            for k, view in enumerate(IMAGE_VIEWS[: self.track_window], start=1)
        ]
        return work


def _probed(work: SampleWork) -> VideoInfo:
    """The video the probe step described for ``work`` (it runs before sampling)."""
    assert work.video is not None
    return work.video


def missing_media(sample: SourceSample, listed: dict[str, int] | None = None) -> Reject | None:
    """The probe's own reject of a sample whose media file is missing or empty, found by one
    ``stat`` (no open, no decode); None when the file is there. A plan sets such samples aside
    before dealing shards, so they occupy no shard slot, with the reject the probe would give.
    ``listed``: the sizes of objects in a bucket, from one listing per folder
    (``storage.media.list_sizes``); a URL not in it is missing.

    >>> missing_media(sample_with_no_file).code  # doctest: +SKIP
    <RejectCode.MEDIA_MISSING: 'media_missing'>
    """
    rel_path = sample.video_path if sample.video_path is not None else sample.image_path
    try:
        check_location(media_path(sample, rel_path), listed)
    except SampleError as err:
        if err.code in (RejectCode.MEDIA_MISSING, RejectCode.MEDIA_EMPTY):
            return SampleWork(sample=sample).reject(Stage.PROBE, err.code, err.message)
    return None


def media_path(sample: SourceSample, rel_path: str | None) -> str:
    """``media_root / rel_path`` (an absolute path, or a URL under a bucket's media root),
    refusing paths that leave the media root (UNSAFE_PATH).

    The check is lexical (``..``, absolute paths), not ``resolve()``: symlinked media
    folders inside a media root are common and legitimate.
    """
    if not rel_path:
        raise SampleError(RejectCode.MALFORMED_ROW, "sample has no media path")
    # String operations, not PurePath: a plan checks every sample's file (100,000 of them).
    if os.path.isabs(rel_path) or os.path.normpath(rel_path).split(os.sep, 1)[0] == os.pardir:
        raise SampleError(RejectCode.UNSAFE_PATH, f"media path {rel_path!r} leaves the media root")
    return media_location(sample.media_root, rel_path)


def check_location(location: str, listed: dict[str, int] | None = None) -> None:
    """``check_file`` of a local path; of a URL, the same rejects from the object's size
    (``listed``, or one ``HEAD``)."""
    if not is_url(location):
        check_file(Path(location))
        return
    if listed is not None:
        size = listed.get(location)
    else:
        try:
            size, _ = remote_stat(location)
        except FileNotFoundError:
            size = None
        except OSError as exc:
            raise SampleError(RejectCode.MEDIA_MISSING, f"{location}: cannot stat ({exc})") from exc
    if size is None:
        raise SampleError(RejectCode.MEDIA_MISSING, f"{location}: no such object")
    if size == 0:
        raise SampleError(RejectCode.MEDIA_EMPTY, f"{location}: object is empty (0 bytes)")


def check_span(sample: SourceSample, info: VideoInfo) -> None:
    """SPAN_OUTSIDE_VIDEO unless ``0 <= start < end <= duration + one frame``."""
    if sample.span is None:
        return
    start, end = sample.span
    slack = 1.0 / info.fps + 1e-6
    if start < 0 or start >= end or end > info.duration + slack:
        raise SampleError(
            RejectCode.SPAN_OUTSIDE_VIDEO, f"span [{start}, {end}] does not fit the video [0, {info.duration}]"
        )


def apply_filters(sample: SourceSample, info: VideoInfo, filters: FilterConfig | None) -> None:
    """The paper's filters: video length, and the share of the video the span covers.

    A temporal sample's span is its answer, judged by ``max_answer_fraction``; any other
    sample's span is the annotated action, judged by ``max_action_fraction``.
    """
    if filters is None:
        return
    duration = info.duration
    if filters.min_video_s is not None and duration < filters.min_video_s:
        raise SampleError(
            RejectCode.FILTERED_DURATION, f"video is {duration:.1f}s, shorter than {filters.min_video_s}s"
        )
    if filters.max_video_s is not None and duration > filters.max_video_s:
        raise SampleError(RejectCode.FILTERED_DURATION, f"video is {duration:.1f}s, longer than {filters.max_video_s}s")
    if sample.span is None:
        return
    fraction = (min(sample.span[1], duration) - sample.span[0]) / duration
    if sample.task in _TEMPORAL_TASKS:
        limit, code, what = filters.max_answer_fraction, RejectCode.FILTERED_ANSWER_FRACTION, "answer span"
    else:
        limit, code, what = filters.max_action_fraction, RejectCode.FILTERED_ACTION_FRACTION, "annotated span"
    if limit is not None and fraction >= limit:
        raise SampleError(code, f"{what} covers {fraction:.0%} of the video (limit {limit:.0%})")


def _video_key(work: SampleWork) -> str:
    if work.video is None:
        raise ValueError(f"sample {work.sample.id} has no VideoInfo: run ProbeStep before SampleStep")
    return media_path(work.sample, work.sample.video_path)


def track_neighbours(indices: list[int], n_frames: int, window: int) -> list[int]:
    """The frames within ``window`` of a candidate frame that are not candidates themselves.

    >>> track_neighbours([10, 11, 40], n_frames=41, window=1)
    [9, 12, 39]
    """
    near = {idx + k for idx in indices for k in range(-window, window + 1) if 0 <= idx + k < n_frames}
    return sorted(near - set(indices))


def _frames_of(plan: FramePlan, frames: dict[int, Frame], span: list[float] | None) -> list[Frame]:
    """The sample's frames; a span frame whose exact time left the span (variable frame
    rate: the plan only knows nominal times) is dropped rather than mislabelled."""
    chosen = [frames[idx] for idx in plan.indices]
    if span is None:
        return chosen
    start, end = span[0] - _TIME_TOLERANCE, span[1] + _TIME_TOLERANCE
    in_span = set(plan.in_span)
    return [f for f in chosen if f.idx not in in_span or start <= f.time <= end]
