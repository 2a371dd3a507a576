"""Stage records: what each stage reads and writes for one sample."""

from __future__ import annotations

import hashlib
import math
from typing import Annotated, Literal

from pydantic import Field, model_validator

from stgr_builder.models._base import (
    MAX_ANSWER_CHARS,
    MAX_CAPTION_CHARS,
    MAX_GOLD_BOXES,
    MAX_NAME_CHARS,
    MAX_OBJECTS,
    MAX_OPTION_CHARS,
    MAX_OPTIONS,
    MAX_QUESTION_CHARS,
    Box,
    Record,
    Span,
)
from stgr_builder.models.codes import (
    DatasetName,
    RejectCode,
    Stage,
    Task,
)


def sample_id(source: str, source_id: str, question: str) -> str:
    """Stable id: the same (source, source's id, question) always gives the same id.

    >>> sample_id("STR_demo", "v001#3", "When does the ball appear?")
    '710cbdac4177b040'
    """
    digest = hashlib.sha256("\x1f".join((source, source_id, question)).encode("utf-8"))
    return digest.hexdigest()[:16]


class TimedBox(Record):
    """A gold box that a source annotates at a time (e.g. HC-STVG tubes, VideoEspresso)."""

    time: float = Field(ge=0)
    box: Box


class SourceObject(Record):
    """An object phrase the sample is about: what the detector is asked to ground."""

    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    boxes: list[TimedBox] = Field(
        default_factory=list, max_length=MAX_GOLD_BOXES, description="gold boxes from the source, if any"
    )


class SourceSample(Record):
    """One QA item, normalized from any source format by its adapter (stage: ingest)."""

    id: str = Field(description="sample_id(source, source_id, question)")
    source: str = Field(description="output source name, e.g. STR_activitynet")
    source_id: str = Field(description="the source's own id for the item")
    task: Task
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS, description="the question without its options")
    options: list[Annotated[str, Field(max_length=MAX_OPTION_CHARS)]] = Field(
        default_factory=list, max_length=MAX_OPTIONS, description="MCQ option texts, lettered A, B, ... in order"
    )
    answer: str = Field(max_length=MAX_ANSWER_CHARS, description="gold answer in the exact form the task requires")
    video_path: str | None = Field(None, description="relative to media_root")
    image_path: str | None = Field(None, description="relative to media_root")
    media_root: str = Field(description="folder that media paths are relative to (absolute at build time)")
    span: Span | None = Field(None, description="annotated temporal span in seconds, if the source has one")
    objects: list[SourceObject] = Field(default_factory=list, max_length=MAX_OBJECTS)
    caption: str | None = Field(
        None, max_length=MAX_CAPTION_CHARS, description="source annotation text the annotator may use"
    )
    datasets: list[DatasetName] = Field(default_factory=lambda: [DatasetName.COT, DatasetName.RL])
    origin: str = Field("", description="file:line the item came from, for error messages")
    gold_evidence: bool = Field(
        False, description="the objects' gold boxes are offered as evidence at frames at their times (core/gold.py)"
    )

    @model_validator(mode="after")
    def _one_media(self) -> SourceSample:
        if (self.video_path is None) == (self.image_path is None):
            raise ValueError("exactly one of video_path and image_path must be set")
        return self


class VideoInfo(Record):
    """What probing a video once tells (stage: probe)."""

    path: str = Field(description="relative to the sample's media_root")
    duration: float = Field(gt=0, description="seconds")
    fps: float = Field(gt=0)
    n_frames: int = Field(gt=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    keyframes: list[int] = Field(description="frame indices of the key frames (GOP starts), ascending")

    def frame_at(self, t: float) -> int:
        """The frame shown at time ``t`` on the nominal clock: the last frame starting at or
        before it (the sampler plans with it, gold evidence finds its frames with it).

        >>> VideoInfo(path="v", duration=10, fps=25, n_frames=250, width=2, height=2, keyframes=[0]).frame_at(2.0)
        50
        """
        return min(self.n_frames - 1, max(0, math.floor(t * self.fps + 1e-6)))


class ImageInfo(Record):
    """What probing a still image tells (stage: probe)."""

    path: str
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class Frame(Record):
    """A decoded frame, stored as a content-addressed JPEG (stage: sample)."""

    idx: int = Field(ge=0, description="frame index in the video (0 for a still image)")
    time: float = Field(ge=0, description="presentation timestamp in seconds")
    path: str = Field(description="JPEG path relative to the dataset root, e.g. kfs/ab/abcd....jpg")
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    view: Literal["mirror", "zoom"] | None = Field(
        None, description="a still image's altered view for the track gate (core/geometry.py), else None"
    )


class Detection(Record):
    """One detector box on one frame (stage: detect)."""

    frame_idx: int = Field(ge=0)
    label: str
    score: float = Field(ge=0, le=1)
    box: Box
    gold: bool = Field(
        False, description="a source's gold box offered as evidence (core/gold.py), not a detector output"
    )


class Evidence(Record):
    """One grounded claim: this object is in this box at this key frame."""

    frame_idx: int = Field(ge=0)
    time: float = Field(ge=0)
    name: str
    box: Box
    score: float = Field(ge=0, le=1, description="detector confidence of the chosen box")


class EvidenceTrack(Record):
    """How the track gate saw one evidence box: the boxes linked to it on neighbouring frames."""

    idx: int = Field(ge=0, description="the key frame's index")
    box: Box
    label: str = Field(description="the box's label (the detector's, or the gold object's name)")
    track_id: str = Field(description="a short hash of the linked boxes (same track, same id)")
    length: int = Field(ge=1, description="frames the track spans, the box's own included")
    label_agreement: float = Field(ge=0, le=1, description="share of the track's frames whose label is the box's")
    gold: bool = False
    confirmed: bool = Field(description="the track passed the gate (a gold box that did not is kept, flagged)")


class PromptRef(Record):
    name: str
    version: str = Field(description="content hash of the prompt template")


class Annotation(Record):
    """What an annotator returns for one sample (stage: annotate)."""

    key_frames: list[Frame]
    evidence: list[Evidence]
    reasoning: str = Field(description="the trace, in the spec's grammar, without <think> tags")
    answer: str
    prompt: PromptRef
    model: str = Field(description="annotator model name ('template' for the offline annotator)")


class Reject(Record):
    """A sample that did not become a row, and why. A value, never an escaping exception."""

    id: str
    stage: Stage
    code: RejectCode
    message: str
    source: str = ""
    origin: str = ""
