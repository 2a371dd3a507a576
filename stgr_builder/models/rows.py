"""Dataset rows: what STGR-CoT and STGR-RL shards hold."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from stgr_builder.models._base import (
    Box,
    Record,
    Span,
)
from stgr_builder.models.codes import (
    Task,
)
from stgr_builder.models.records import (
    EvidenceTrack,
)


class KeyFrame(Record):
    idx: int = Field(ge=0)
    time: float = Field(ge=0, description="seconds")
    path: str = Field(description="JPEG path relative to the dataset root")


class KeyItem(Record):
    """Boxes of one object at one key frame; the export turns a row's list of these into
    ``{str(idx): {name: [[x1, y1, x2, y2], ...]}}``."""

    idx: int = Field(ge=0, description="the key frame's idx")
    name: str
    boxes: list[Box] = Field(min_length=1, description="normalized boxes, one per instance")


FieldSource = Literal["gold", "refined", "generated"]
"""Where a row's field came from: the source as it was (``gold``), the source corrected by a
check (``refined``), or made by the pipeline (``generated``: the detector's or annotator's)."""


class Lineage(Record):
    """Per inherited field: gold, refined or generated, and what the checks found."""

    answer: FieldSource = Field("gold", description="the answer: the source's, or its span refined")
    span: FieldSource | None = Field(None, description="the sample's span (None: it has none)")
    boxes: list[FieldSource] = Field(
        default_factory=list, description="one per evidence box, in key_items order (boxes flattened)"
    )
    span_check: Literal["ok", "refined", "unverified", "unchecked"] | None = Field(
        None,
        description="ok: the evidence agrees; refined: corrected (span_check.mode refine); unverified: no "
        "evidence either way; unchecked: an event span and no judge; None: no span check ran",
    )
    original_span: Span | None = Field(None, description="the source's span, when it was refined")
    span_offset_s: float | None = Field(
        None, description="largest distance (s) between a stated span end and the evidence's, when measured"
    )
    gold_confirmed: int = Field(0, description="gold boxes the track gate confirmed")
    gold_replaced: int = Field(0, description="unconfirmed gold boxes replaced by the tracked box they overlap")
    gold_unconfirmed: int = Field(0, description="unconfirmed gold boxes kept (--keep-unconfirmed-gold)")


class Provenance(Record):
    prompt_name: str
    prompt_version: str
    annotator_model: str
    detector_name: str
    detector_weights_hash: str
    build_id: str
    detector_agreement_iou: float | None = Field(
        None, description="mean IoU of chosen boxes against the source's gold boxes, where the source has them"
    )
    detector_score: float | None = Field(None, description="mean detector confidence of the chosen boxes")
    verifier_votes: int | None = Field(
        None, description="the judge's yes votes of the row's boxes in all (the sum of judge_votes), when it ran"
    )
    evidence_tracks: list[EvidenceTrack] = Field(
        default_factory=list, description="the track gate's verdict on each evidence box of the row"
    )
    replaces: str | None = Field(
        None, description="re-annotated rows: the build_id of the row version this row replaces"
    )
    lineage: Lineage = Field(default_factory=Lineage, description="gold, refined or generated, per inherited field")
    judge_votes: list[int] | None = Field(
        None,
        description="the judge's yes votes per evidence box, in key_items order (boxes flattened); None: no judge ran",
    )


class _RowBase(Record):
    id: str
    task: Task
    source: str
    question: str = Field(description="MCQ options are written into it, one per line ('A. ...')")
    answer: str
    video_path: str | None = None
    image_path: str | None = None
    image_size: list[int] | None = Field(None, description="[W, H] for image rows")
    key_frames: list[KeyFrame]
    key_items: list[KeyItem]
    provenance: Provenance


class CotRow(_RowBase):
    """A row of STGR-CoT (fine-tuning): the reasoning trace is the training target."""

    reasoning_process: str


class RlRow(_RowBase):
    """A row of STGR-RL (reinforcement learning): the key frames and items are the gold
    evidence that the rewards score against."""
