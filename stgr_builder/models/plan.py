"""``stgr plan``: rows per source and task, what is filtered and why, and the estimate."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from stgr_builder.models._base import (
    Record,
)
from stgr_builder.models.codes import (
    DatasetName,
    Task,
)


class PlanMissing(Record):
    """The missing media of one source from one upstream dataset."""

    upstream: str = Field(description="the upstream dataset (source.upstreams), or 'unknown (FOLDER/)'")
    files: int
    examples: list[str] = Field(default_factory=list, description="up to 3 missing paths, relative to media_root")
    get: str | None = Field(None, description="where to get them (source.upstreams), None when unknown")


class PlanSource(Record):
    """What the plan expects of one source."""

    source: str
    adapter: str
    read: int = Field(description="items read from the file (after limit)")
    ingest_rejects: int = Field(description="malformed, unsafe-path and duplicate items")
    probed: int = Field(description="samples probed (a sampled source: until `sample` passed)")
    filtered: dict[str, int] = Field(default_factory=dict, description="probe-time reject code -> count")
    media_missing: int = 0
    media_referenced: int = Field(0, description="distinct media files the source's items reference")
    media_resolved: int = Field(0, description="of them, those found under media_root")
    missing_media: list[PlanMissing] = Field(
        default_factory=list, description="the missing files grouped by upstream dataset, with where to get them"
    )
    wanted: int | None = Field(None, description="the source's `sample`, if set")
    rows: int = Field(description="samples that go on to annotation")
    shortfall: int = Field(0, description="wanted - rows, when fewer samples passed than wanted")


class PlanCount(Record):
    dataset: DatasetName
    source: str
    task: Task
    rows: int


class PlanEstimate(Record):
    """Estimated LLM work of the build (zero requests with the template annotator)."""

    backend: str
    requests: int = 0
    crop_requests: int = 0
    frames: int = Field(0, description="candidate frames decoded (all backends)")
    images: int = Field(0, description="images sent to the LLM")
    pixels: int = Field(0, description="pixels of the images as sent (downscaled to image_max_side)")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = Field(0.0, description="at estimate.price_in / price_out per million tokens")
    seconds: float = Field(0.0, description="requests / concurrency x estimate.latency_s")
    decoded_frames: int = Field(
        0,
        description="frames the sampler decodes: each needed GOP from its key frame "
        "to its last needed frame, once per video",
    )
    decode_seconds: float = Field(
        0.0,
        description="CPU seconds of probing, decoding and storing key frames "
        "(per-pixel costs measured by bench/full_size.py --per-sample)",
    )
    detector_frames: int = Field(
        0,
        description="frames through the detector, padding to detector.batch included (each frame once per "
        "process; the staged track gate's neighbours estimated)",
    )
    detect_seconds: float = Field(
        0.0,
        description="seconds of detection on the CPU: a start-up, then each frame through the detector (a GPU "
        "takes a fraction)",
    )
    span_checks: int = Field(0, description="temporal samples whose inherited span the span check reads")
    event_judge_requests: int = Field(
        0,
        description="requests of the event judge (span_check.events): one per probe and candidate frame of an "
        "event span",
    )
    span_probe_frames: int = Field(
        0, description="probe frames decoded and detected around span ends for the span check (in decoded_frames)"
    )
    assumptions: dict[str, Any] = Field(default_factory=dict)


class Plan(Record):
    """``stgr plan``: rows per source and task, what is filtered and why, and the estimate,
    before any model runs; a build writes it as ``plan.json``."""

    name: str
    seed: int
    sources: list[PlanSource]
    counts: list[PlanCount]
    estimate: PlanEstimate

    def rows(self, dataset: DatasetName | str) -> int:
        return sum(c.rows for c in self.counts if c.dataset.value == DatasetName(dataset).value)
