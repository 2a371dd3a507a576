"""A sample on its way through the stages (``SampleWork``): each stage fills in its part."""

from __future__ import annotations

from pydantic import Field

from stgr_builder.models._base import (
    Record,
)
from stgr_builder.models.codes import (
    RejectCode,
    Stage,
)
from stgr_builder.models.records import (
    Annotation,
    Detection,
    EvidenceTrack,
    Frame,
    ImageInfo,
    Reject,
    SourceSample,
    VideoInfo,
)
from stgr_builder.models.rows import CotRow, Lineage, RlRow


class SampleWork(Record):
    """A sample on its way through the stages; each stage fills in its part."""

    sample: SourceSample
    video: VideoInfo | None = None
    image: ImageInfo | None = None
    frames: list[Frame] = Field(default_factory=list, description="candidate frames")
    track_frames: list[Frame] = Field(
        default_factory=list, description="neighbours of the candidate frames, decoded for the track gate"
    )
    span_frames: list[Frame] = Field(
        default_factory=list, description="probes around an inherited span's ends, decoded for the span check"
    )
    detections: list[Detection] = Field(default_factory=list, description="on the candidate frames")
    track_detections: list[Detection] = Field(default_factory=list, description="on the track frames")
    span_detections: list[Detection] = Field(default_factory=list, description="on the span-check probes")
    lineage: Lineage | None = Field(None, description="set by the span check and the gold check")
    refined_boxes: list[Detection] = Field(
        default_factory=list, description="gold boxes the gold check replaced by the tracked box (lineage refined)"
    )
    tracks: list[EvidenceTrack] = Field(
        default_factory=list, description="the track gate's verdict on each candidate box it kept or flagged"
    )
    annotation: Annotation | None = None
    votes: int | None = Field(None, description="crop-verifier yes votes, when that check ran")
    box_votes: list[tuple[int, list[float], int]] | None = Field(
        None, description="the judge's yes votes per kept box: (frame idx, box, votes); None: no judge ran"
    )
    cot_row: CotRow | None = Field(None, description="set by verify when the sample passes")
    rl_row: RlRow | None = Field(None, description="set by verify when the sample passes")

    def reject(self, stage: Stage, code: RejectCode, message: str) -> Reject:
        return Reject(
            id=self.sample.id,
            stage=stage,
            code=code,
            message=message,
            source=self.sample.source,
            origin=self.sample.origin,
        )
