"""Which samples a build draws: for a source with ``sample: N``, the first N in seeded-hash order
that pass the probe-time checks; and how the drawn samples are dealt into shards."""

from __future__ import annotations

import hashlib
from collections import defaultdict

from stgr_builder.core.hashing import sha256_bytes
from stgr_builder.errors import SampleError
from stgr_builder.models import (
    BuildConfig,
    ImageInfo,
    Reject,
    SampleWork,
    SourceSample,
    Stage,
    StepStats,
    VideoInfo,
)

Probed = dict[str, VideoInfo | ImageInfo]


def _order_key(seed: int, source: str, sample_id: str) -> str:
    return hashlib.sha256(f"{seed}:{source}:{sample_id}".encode()).hexdigest()


class Prober:
    """The probe stage's checks (``ProbeStep``), one sample at a time, videos probed once."""

    def __init__(self, config: BuildConfig):
        from stgr_builder.storage.media import MediaFiles
        from stgr_builder.video.steps import ProbeStep, missing_media

        filters = {source.name: source.filters for source in config.sources}
        self.step = ProbeStep(filters, media=MediaFiles.of(config.cache))  # media in a bucket: local copies
        self.missing_media = missing_media

    def __call__(self, sample: SourceSample) -> VideoInfo | ImageInfo | Reject:
        # A missing or empty file gives the probe's own reject from one stat: a source whose
        # files are mostly missing is checked in a blink (no work item, no probe memo).
        missing = self.missing_media(sample)
        if missing is not None:
            return missing
        work = SampleWork(sample=sample)
        try:
            work = self.step.process(work)
        except SampleError as err:
            return work.reject(Stage.PROBE, err.code, err.message)
        info = work.video if work.video is not None else work.image
        assert info is not None  # the probe step describes the video or the image
        return info


def draw(
    config: BuildConfig, samples: list[SourceSample], prober: Prober | None = None
) -> tuple[list[SourceSample], list[Reject], Probed]:
    """The samples the build keeps: every sample of an unsampled source, and for a source
    with ``sample: N`` the first N (in seeded-hash order) that pass the probe-time checks.

    Returns the kept samples (sorted by id), the probe rejects met while drawing, and the
    probe results of the drawn samples by id.
    """
    wanted = {s.name: s.sample for s in config.sources if s.sample is not None}
    if not wanted:
        return samples, [], {}
    prober = prober or Prober(config)
    by_source: dict[str, list[SourceSample]] = defaultdict(list)
    kept: list[SourceSample] = []
    for sample in samples:
        (by_source[sample.source] if sample.source in wanted else kept).append(sample)
    rejects: list[Reject] = []
    probed: Probed = {}
    for name, n in wanted.items():
        pool = sorted(by_source.get(name, []), key=lambda s: _order_key(config.seed, name, s.id))
        taken = 0
        for sample in pool:
            if taken >= n:
                break
            result = prober(sample)
            if isinstance(result, Reject):
                rejects.append(result)
                continue
            probed[sample.id] = result
            kept.append(sample)
            taken += 1
    kept.sort(key=lambda s: s.id)
    rejects.sort(key=lambda r: (r.source, r.origin, r.id))
    return kept, rejects, probed


def shard_of(item_id: str, n_shards: int) -> int:
    """Shard assignment is a hash of content, never of arrival order."""
    return int(sha256_bytes(item_id.encode())[:8], 16) % n_shards


def build_shards(config: BuildConfig, n_samples: int) -> int:
    """How many shards a build deals ``n_samples`` into: the samples that pass ingest and the
    media check (rejects occupy no shard slot; they are dealt into these shards by id)."""
    return max(1, -(-n_samples // config.sharding.samples_per_shard))


def draw_stats(stats: StepStats, kept: list[SourceSample], rejects: list[Reject]) -> StepStats:
    """The ingest counts once the draw is applied: kept samples, and the draw's rejects added."""
    rejected = dict(stats.rejected)
    for reject in rejects:
        rejected[reject.code.value] = rejected.get(reject.code.value, 0) + 1
    return stats.model_copy(update={"kept": len(kept), "rejected": rejected})
