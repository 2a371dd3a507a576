"""The plan of a build: which samples it draws, what it filters, and what the LLM work costs.

``draw`` is the build's own selection step (``pipeline.plan`` calls it after ingest): for a
source with ``sample: N`` it orders the source's samples by a seeded hash of their ids, probes
them in that order (media, spans and the source's filters, exactly as the probe stage does)
and keeps the first N that pass. So a sample is drawn only if the build will not filter it,
and ``stgr plan`` counts what the build will annotate. Samples probed and failing become the
build's probe rejects; those never reached are not part of the build.

``make_plan`` runs ingest + draw, probes the remaining (unsampled) sources too, and
estimates requests, images, pixels, tokens, cost and time without calling any model.

The modules: ``selection`` (the draw, the shards), ``plan`` (``make_plan``, the media report)
and ``cost`` (the estimate and the measured constants behind it).

>>> p = make_plan(config, Path("."))  # doctest: +SKIP
>>> p.rows("cot"), p.estimate.requests  # doctest: +SKIP
(31166, 31166)
"""

from __future__ import annotations

from stgr_builder.planning.cost import (
    DECODE_S_PER_MPX,
    DETECT_S_PER_FRAME,
    DETECT_STARTUP_S,
    PROBE_S_PER_VIDEO,
    STAGED_HOLDING,
    STAGED_UNDECIDED,
    STORE_S_PER_MPX,
    detector_frames,
    estimate,
    image_tokens,
    media_seconds,
    span_probes,
)
from stgr_builder.planning.plan import make_plan, media_report, plan_of
from stgr_builder.planning.selection import Probed, Prober, build_shards, draw, draw_stats, shard_of

__all__ = [
    "DECODE_S_PER_MPX",
    "DETECT_STARTUP_S",
    "DETECT_S_PER_FRAME",
    "PROBE_S_PER_VIDEO",
    "STAGED_HOLDING",
    "STAGED_UNDECIDED",
    "STORE_S_PER_MPX",
    "Probed",
    "Prober",
    "build_shards",
    "detector_frames",
    "draw",
    "draw_stats",
    "estimate",
    "image_tokens",
    "make_plan",
    "media_report",
    "media_seconds",
    "plan_of",
    "shard_of",
    "span_probes",
]
