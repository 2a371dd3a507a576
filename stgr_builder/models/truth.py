"""Ground truth of generated media (the demo source)."""

from __future__ import annotations

from pydantic import Field

from stgr_builder.models._base import (
    Record,
)


class TruthObject(Record):
    name: str
    colour: str
    boxes: list[list[int] | None] = Field(
        description="per frame: [x1, y1, x2, y2] pixels (clipped), or null when absent"
    )


class TruthVideo(Record):
    path: str = Field(description="relative to media/")
    fps: float
    n_frames: int
    width: int
    height: int
    gop: int
    objects: list[TruthObject]

    @property
    def duration(self) -> float:
        return self.n_frames / self.fps


class TruthImageObject(Record):
    name: str
    colour: str
    box: list[int]


class TruthImage(Record):
    path: str = Field(description="relative to media/")
    width: int
    height: int
    objects: list[TruthImageObject]


class DemoTruth(Record):
    """``truth.json``: what the demo generator drew, frame by frame (written by the demo source,
    read by tests and by the audit's evidence-against-truth table)."""

    seed: int
    classes: list[str]
    videos: list[TruthVideo]
    images: list[TruthImage]
