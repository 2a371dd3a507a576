"""The ``demo`` adapter: reads ``demo_source.jsonl``, the QA items that the demo generator
(``stgr_builder.dryrun.demo``, a stand-in for a real dataset) writes, one ``DemoRecord`` per line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stgr_builder.models import Reject, SourceObject, SourceSample, Span, Task
from stgr_builder.sources import AdapterContext, describe_error, iter_json_lines, register

#: The letters of MCQ options, in order (an answer starts with one).
OPTION_LETTERS = "ABCDEFGHIJ"


# ---------------------------------------------------------------------------------------
# The source format (one JSON object per line)
# ---------------------------------------------------------------------------------------


class DemoRecord(BaseModel):
    """One line of ``demo_source.jsonl``.

    ``answer`` is the gold answer in the exact form of its task (SPEC section 1); ``options``
    are MCQ option texts, lettered A, B, ... by order; ``video``/``image`` are relative to
    the media root; ``span`` is when the thing asked about happens; ``objects`` are the
    names the detector grounds (a name, or ``{"name": ..., "boxes": [{"time", "box"}]}``).
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    task: Task
    question: str = Field(min_length=1)
    options: list[str] = Field(default_factory=list)
    answer: str = Field(min_length=1)
    video: str | None = Field(None, min_length=1)
    image: str | None = Field(None, min_length=1)
    span: Span | None = None
    objects: list[str | SourceObject] = Field(default_factory=list)
    caption: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> DemoRecord:
        if (self.video is None) == (self.image is None):
            raise ValueError("exactly one of 'video' and 'image' must be set")
        if self.span is not None and not 0 <= self.span[0] <= self.span[1]:
            raise ValueError(f"span {self.span} must be [start, end] with 0 <= start <= end")
        mcq = self.task in (Task.TEMPORAL_MCQ, Task.VIDEO_MCQ)
        if mcq and len(self.options) < 2:
            raise ValueError(f"task {self.task.value!r} needs at least 2 options")
        if not mcq and self.options:
            raise ValueError(f"task {self.task.value!r} takes no options")
        if mcq:
            letter = self.answer.split("\n", 1)[0].strip()
            if letter not in OPTION_LETTERS[: len(self.options)]:
                last = OPTION_LETTERS[len(self.options) - 1]
                raise ValueError(f"answer {self.answer!r} does not start with an option letter A-{last}")
        if self.task in (Task.TEMPORAL, Task.TEMPORAL_MCQ):
            tail = self.answer.split("\n", 1)[-1] if self.task is Task.TEMPORAL_MCQ else self.answer
            if not _SPAN_RE.fullmatch(tail.strip()):
                raise ValueError(f"answer {self.answer!r} lacks the '[s, e]' span its task requires")
        return self


_SPAN_RE = re.compile(r"\[\s*\d+(\.\d+)?\s*,\s*\d+(\.\d+)?\s*\]")


# ---------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------


@register("demo")
def read_demo(ctx: AdapterContext) -> Iterator[SourceSample | Reject]:
    """Read ``demo_source.jsonl``: one ``DemoRecord`` per line; a bad line is a MALFORMED_ROW reject."""
    for line, data in iter_json_lines(ctx.path):
        origin = ctx.origin(line)
        if isinstance(data, ValueError):
            yield ctx.malformed(origin, str(data))
            continue
        if not isinstance(data, dict):
            yield ctx.malformed(origin, f"expected a JSON object, got {type(data).__name__}")
            continue
        try:
            record = DemoRecord.model_validate(data)
        except ValidationError as err:
            yield ctx.malformed(origin, describe_error(err))
            continue
        objects = [SourceObject(name=o) if isinstance(o, str) else o for o in record.objects]
        has_gold = any(obj.boxes for obj in objects)
        yield ctx.sample(
            origin,
            source_id=record.id,
            question=record.question,
            task=record.task,
            options=record.options,
            answer=record.answer,
            video_path=record.video,
            image_path=record.image,
            span=record.span,
            objects=objects,
            caption=record.caption,
            gold_evidence=has_gold and ctx.source.gold_evidence,
        )
