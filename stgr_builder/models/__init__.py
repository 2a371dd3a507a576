"""Every record that crosses a stage boundary, one module a kind, every name re-exported here.

The build flows through these models::

    SourceSample --probe--> VideoInfo --sample--> Frame --detect--> Detection
        --annotate--> Annotation --verify--> CotRow / RlRow   (or a Reject at any stage)

Boxes are always normalized ``[x_min, y_min, x_max, y_max]`` floats in [0, 1] inside the
pipeline; only the visual-QA answer and trace write integer pixels, as the released
Open-o3 Video data does.

Modules: ``codes`` (closed vocabularies, reject codes), ``records`` (stage records), ``work``
(``SampleWork``), ``rows`` (dataset rows), ``results`` (shard results, manifest), ``config``
(``BuildConfig``), ``truth`` (the demo's ground truth), ``plan`` (``stgr plan``).
"""

from __future__ import annotations

from pydantic import BaseModel

from stgr_builder.models._base import (
    MAX_ANSWER_CHARS,
    MAX_CAPTION_CHARS,
    MAX_GOLD_BOXES,
    MAX_NAME_CHARS,
    MAX_OBJECTS,
    MAX_OPTION_CHARS,
    MAX_OPTIONS,
    MAX_QUESTION_CHARS,
    PROMPT_NAME,
    Box,
    ConfigModel,
    Record,
    Span,
    check_prompt,
)
from stgr_builder.models.codes import (
    PENDING_REASONS,
    REJECT_CODE_HELP,
    DatasetName,
    RejectCode,
    RejectHelp,
    Stage,
    Task,
)
from stgr_builder.models.config import (
    DEFAULT_ALIASES,
    DEFAULT_PROMPTS,
    MAX_DETECTOR_BATCH_PIXELS,
    PRESENCE_PATTERN,
    AdapterName,
    AnnotatorConfig,
    BuildConfig,
    CacheConfig,
    ChecksConfig,
    DetectorConfig,
    EstimateConfig,
    FilterConfig,
    GoldConfig,
    JudgeConfig,
    SamplerConfig,
    ShardingConfig,
    SourceConfig,
    SpanCheckConfig,
    TrackConfig,
    Upstream,
    VerifyConfig,
)
from stgr_builder.models.plan import Plan, PlanCount, PlanEstimate, PlanMissing, PlanSource
from stgr_builder.models.records import (
    Annotation,
    Detection,
    Evidence,
    EvidenceTrack,
    Frame,
    ImageInfo,
    PromptRef,
    Reject,
    SourceObject,
    SourceSample,
    TimedBox,
    VideoInfo,
    sample_id,
)
from stgr_builder.models.results import (
    BuildPlan,
    LlmUsage,
    Manifest,
    ParentRef,
    Reannotation,
    ShardFile,
    ShardPlan,
    ShardResult,
    StepStats,
)
from stgr_builder.models.rows import CotRow, FieldSource, KeyFrame, KeyItem, Lineage, Provenance, RlRow
from stgr_builder.models.truth import DemoTruth, TruthImage, TruthImageObject, TruthObject, TruthVideo
from stgr_builder.models.work import SampleWork

#: Models whose JSON Schemas are exported to schemas/ (tests fail when one is stale).
SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "build_config": BuildConfig,
    "source_sample": SourceSample,
    "video_info": VideoInfo,
    "image_info": ImageInfo,
    "frame": Frame,
    "detection": Detection,
    "evidence": Evidence,
    "annotation": Annotation,
    "reject": Reject,
    "cot_row": CotRow,
    "rl_row": RlRow,
    "shard_result": ShardResult,
    "manifest": Manifest,
    "plan": Plan,
}


def json_schemas() -> dict[str, str]:
    """The JSON Schema text of every exported model, as checked in under ``schemas/``.

    >>> sorted(json_schemas())[:2]
    ['annotation', 'build_config']
    """
    import json

    return {
        name: json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n"
        for name, model in SCHEMA_MODELS.items()
    }


__all__ = [
    "Record",
    "ConfigModel",
    "Box",
    "Span",
    "MAX_QUESTION_CHARS",
    "MAX_ANSWER_CHARS",
    "MAX_CAPTION_CHARS",
    "MAX_OPTIONS",
    "MAX_OPTION_CHARS",
    "MAX_OBJECTS",
    "MAX_NAME_CHARS",
    "MAX_GOLD_BOXES",
    "PROMPT_NAME",
    "check_prompt",
    "Task",
    "DatasetName",
    "Stage",
    "RejectCode",
    "PENDING_REASONS",
    "RejectHelp",
    "REJECT_CODE_HELP",
    "sample_id",
    "TimedBox",
    "SourceObject",
    "SourceSample",
    "VideoInfo",
    "ImageInfo",
    "Frame",
    "Detection",
    "Evidence",
    "EvidenceTrack",
    "PromptRef",
    "Annotation",
    "Reject",
    "KeyFrame",
    "KeyItem",
    "FieldSource",
    "Lineage",
    "Provenance",
    "CotRow",
    "RlRow",
    "SampleWork",
    "StepStats",
    "ShardPlan",
    "BuildPlan",
    "ShardFile",
    "LlmUsage",
    "ShardResult",
    "Manifest",
    "ParentRef",
    "Reannotation",
    "AdapterName",
    "FilterConfig",
    "Upstream",
    "SourceConfig",
    "SamplerConfig",
    "TrackConfig",
    "PRESENCE_PATTERN",
    "SpanCheckConfig",
    "GoldConfig",
    "MAX_DETECTOR_BATCH_PIXELS",
    "DetectorConfig",
    "DEFAULT_PROMPTS",
    "DEFAULT_ALIASES",
    "ChecksConfig",
    "JudgeConfig",
    "AnnotatorConfig",
    "VerifyConfig",
    "ShardingConfig",
    "EstimateConfig",
    "CacheConfig",
    "BuildConfig",
    "TruthObject",
    "TruthVideo",
    "TruthImageObject",
    "TruthImage",
    "DemoTruth",
    "PlanMissing",
    "PlanSource",
    "PlanCount",
    "PlanEstimate",
    "Plan",
    "SCHEMA_MODELS",
    "json_schemas",
]
