"""The event judge: an inherited event span checked before the paid annotation request.

A temporal sample whose span is an event ("When does the person open the door?"), not an
object's presence (the detector checks those, ``verify/inherited.py``), is checked here when
``span_check.events`` is ``judge``: each frame the sampler decoded for it (the probes every
``step_s`` around each span end, and the candidate frames spread over the video) is put to the
judge's model (``annotator.judge.model``, else the annotator's) with "Is this happening here:
<event>?" and the frame, nothing else. The verdicts are the observations ``core/spans.settle_span``
reads, with the rules of the presence check: ``ok``, ``refined`` (``mode: refine``) or a reject
``span_imprecise`` / ``query_not_unique``; a sample rejected here costs no annotation request.

The requests go through the annotator's judge ``Asker`` (``client.py``): the same client,
request cache, budget, rate limits and usage (``judge_requests``) as the crop judge of
``judge.py``, whose reply schema (``CropVerdict``) and parser they reuse.

>>> event_messages(parse_event_prompt(load_prompt("event-judge")), "a man opens a door", b"")[1]["content"][0]
{'type': 'text', 'text': 'Is this happening here: a man opens a door?'}
"""

from __future__ import annotations

import asyncio
import io
import string
from pathlib import Path
from typing import Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, ValidationError

from stgr_builder.annotate.client import Asker
from stgr_builder.annotate.crops import data_url
from stgr_builder.annotate.judge import CropVerdict, parse_verdict
from stgr_builder.annotate.prompts import Prompt, load_prompt
from stgr_builder.core.spans import event_text, judges_event, settle_span
from stgr_builder.errors import StgrError
from stgr_builder.models import Frame, SampleWork, SpanCheckConfig

#: The reply schema's name: the crop judge's yes/no (``CropVerdict``), asked of a whole frame.
SCHEMA_NAME = "event_verdict"
#: The shipped prompt.
PROMPT = "event-judge"

__all__ = [
    "PROMPT",
    "SCHEMA_NAME",
    "EventJudging",
    "event_messages",
    "frame_jpeg",
    "judged_frames",
    "parse_event_prompt",
]


class EventPromptContent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["event-judge"]
    description: str
    system: str
    user: str


def parse_event_prompt(prompt: Prompt) -> EventPromptContent:
    """The event judge's prompt, checked: its question uses ``{event}`` and nothing else (the
    span, the answer or the detector's boxes would make the verdict less than independent)."""
    try:
        content = EventPromptContent.model_validate(prompt.content)
        fields = {field for _, field, _, _ in string.Formatter().parse(content.user) if field is not None}
        if fields != {"event"}:
            raise ValueError(f"its question must use {{event}} and no other placeholder, not {sorted(fields)}")
    except (ValidationError, ValueError) as exc:
        raise StgrError(f"prompt {prompt.path} is not an event judge prompt (kind: event-judge): {exc}") from exc
    return content


def event_messages(content: EventPromptContent, event: str, jpeg: bytes) -> list[dict]:
    """The chat messages that ask whether ``event`` is happening in the frame."""
    return [
        {"role": "system", "content": content.system},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": content.user.format(event=event)},
                {"type": "image_url", "image_url": {"url": data_url(jpeg)}},
            ],
        },
    ]


def frame_jpeg(path: Path, max_side: int, quality: int = 90) -> bytes:
    """The frame as JPEG bytes, its longer side at most ``max_side`` (deterministic: the bytes
    are part of the request-cache key)."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    scale = min(1.0, max_side / max(rgb.size))
    if scale < 1.0:
        rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))))
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def judged_frames(work: SampleWork) -> list[Frame]:
    """The frames the judge is asked about: the probes and the candidate frames, by index."""
    return sorted({f.idx: f for f in [*work.frames, *work.span_frames]}.values(), key=lambda f: f.idx)


class EventJudging:
    """The event check of the LLM annotator (``llm.LlmAnnotator``), run first in each sample's task."""

    def __init__(
        self, config: SpanCheckConfig, span_frames: int, root: Path, image_max_side: int, prompt: Prompt | None = None
    ):
        self.config = config
        self.span_frames = span_frames
        self.root = root
        self.image_max_side = image_max_side
        loaded = prompt if prompt is not None else load_prompt(PROMPT)  # the build resolves it once
        self.content = parse_event_prompt(loaded)
        self.prompt = loaded.ref

    def wanted(self, work: SampleWork) -> bool:
        return work.video is not None and judges_event(work.sample, self.config)

    async def check(self, ask: Asker, work: SampleWork, reask: str) -> str:
        """Ask the judge about each frame; settle the span (``core/spans.settle_span``): the
        outcome, or ``SampleError`` (``span_imprecise``, ``query_not_unique``). A request that
        fails raises as the annotator's requests do."""
        event = event_text(work.sample.question)

        async def verdict(frame: Frame) -> tuple[float, bool]:
            jpeg = await asyncio.to_thread(frame_jpeg, self.root / frame.path, self.image_max_side)
            reply = await ask.valid(
                event_messages(self.content, event, jpeg),
                self.prompt.version,
                CropVerdict,
                SCHEMA_NAME,
                parse_verdict,
                reask,
            )
            ask.count(f"event_judge.{reply.answer}")
            return frame.time, reply.answer == "yes"

        observations = await asyncio.gather(*(verdict(frame) for frame in judged_frames(work)))
        return settle_span(work, observations, event, self.config, self.span_frames)
