"""The LLM annotator: any OpenAI-compatible endpoint writes the reasoning, the detector's boxes
are the evidence.

For each sample the model sees the question, the gold answer, the source's span and caption,
the candidate frames (images, each labelled with its number and timestamp) and the detector's
candidate boxes, numbered, drawn on the frames and listed in text. It replies with a
``CotReply`` (JSON schema from the model): the key frames it chose, on each the chosen box ids
and object names, and its reasoning, which cites boxes as ``[B3]`` and the answer span as
``[SPAN]``. The trace is then written in the spec's grammar (``grammar.py``) from the chosen
detector boxes, so no coordinate is ever typed by the model.

Requests run on ``AsyncOpenAI`` with at most ``concurrency`` in flight per batch (one event loop
and client per process, kept between batches: ``session.py``); the client retries 429 (honouring
Retry-After), 5xx and timeouts,
and a 200 reply that cannot be read (cut short, not JSON, HTML, a dropped connection, a body
over ``MAX_REPLY_BYTES``) is retried the same way. A transient failure that outlasts the
retries leaves the sample *pending* (``RejectCode.PENDING``, never written, never cached): its
shard is not committed and the next run finishes it. A reply that is not valid JSON for the
schema, or that names an unknown frame or box, is asked again with the error
(``max_invalid_retries`` times), then the sample is rejected (``llm_invalid_reply``); a refusal
or a request the endpoint refuses (4xx) is ``llm_error``; a reply still too large after the
retries is ``llm_reply_too_large``. Never a crash.

Every reply and final error goes to the request cache (``cache.py``) before it is used, and the
run's budget (requests, tokens; one ledger per run under ``_cache/budget``, shared by every
process) is checked before any new request: when it is spent the shard raises
``BudgetReached``, writes nothing and is finished by the next run.

Every request (each retry too) is paced by the build's rate limits (``ratelimit.py``: the
``rpm``/``tpm`` caps and the server's ``x-ratelimit`` headers, shared by all its processes); the
frames of a request are drawn in worker processes (``prepare.py``); with ``mode: batch`` the
first requests go through the Batch API (``batch.py``) and this online path finds them cached.

The endpoint and key come from ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``; the key is read by the
client and never stored, logged or hashed here.

>>> annotator = LlmAnnotator(AnnotatorConfig(backend="openai", model="gpt-4o-mini",
...                          prompt="stgr-cot-llm"), VerifyConfig(), root=Path("out"))  # doctest: +SKIP
>>> [annotation] = annotator.annotate_batch([work])                                      # doctest: +SKIP
>>> annotation.reasoning                                                                  # doctest: +SKIP
'The dog appears <obj>dog</obj><box>[0.1, 0.2, 0.4, 0.6]</box>at<t>3.0</t>s and ...'
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import functools
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stgr_builder.annotate import crops
from stgr_builder.annotate.base import object_names, trace_span
from stgr_builder.annotate.batch import BatchJobs
from stgr_builder.annotate.cache import CachedUsage, CacheEntry, ResponseCache, image_digest, request_key
from stgr_builder.annotate.endpoint import EndpointWatch
from stgr_builder.annotate.prepare import PreparePool, base_frame, default_processes, draw_frame
from stgr_builder.annotate.prompts import load_prompt
from stgr_builder.annotate.ratelimit import RateLimiter, limiter_for
from stgr_builder.annotate.session import LlmSession
from stgr_builder.core import geometry, grammar
from stgr_builder.core.geometry import image_size
from stgr_builder.core.gold import evidence_detections
from stgr_builder.core.hashing import digest
from stgr_builder.core.resources import BudgetReached, Resources
from stgr_builder.errors import SampleError, StgrError
from stgr_builder.models import (
    Annotation,
    AnnotatorConfig,
    Detection,
    Evidence,
    Frame,
    LlmUsage,
    RejectCode,
    SampleWork,
    VerifyConfig,
)

SCHEMA_NAME = "stgr_cot_reply"
#: Where each run's budget ledger lives, under the dataset folder.
BUDGET_DIR = Path("_cache") / "budget"
#: Header carrying the request-cache key (not a secret: a hash of the request), so a server's
#: logs can tell a repeated request from a new one.
KEY_HEADER = "X-Stgr-Request-Key"

T = TypeVar("T")

try:  # the HTTP library of the openai client (httpx2 in openai 3.x, httpx before)
    import httpx2 as _http
except ImportError:  # pragma: no cover
    import httpx as _http


# ---------------------------------------------------------------------------------------
# The reply and the prompt
# ---------------------------------------------------------------------------------------


class ChosenBox(BaseModel):
    """One candidate box the model chose, by id, and the object it shows."""

    model_config = ConfigDict(extra="forbid")

    id: int = Field(description="the candidate's number: 3 for B3")
    name: str = Field(description="the object the box shows")


class ChosenFrame(BaseModel):
    """One key frame, by the number it was shown with, and the boxes chosen on it."""

    model_config = ConfigDict(extra="forbid")

    frame: int = Field(description="the frame's number: 2 for 'Frame 2'")
    boxes: list[ChosenBox] = Field(description="chosen candidate boxes of this frame, at least one")


class CotReply(BaseModel):
    """The structured reply of the annotation prompt."""

    model_config = ConfigDict(extra="forbid")

    key_frames: list[ChosenFrame]
    reasoning: str = Field(description="plain text citing every chosen box as [Bn], the span as [SPAN]")


@functools.cache
def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


def response_format(model: type[BaseModel], name: str) -> dict[str, Any]:
    """The ``response_format`` of a chat request asking for JSON of ``model``'s schema."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": _schema(model), "strict": True}}


@functools.cache
def schema_hash(model: type[BaseModel]) -> str:
    """Short sha256 of a reply model's JSON Schema (part of every request-cache key)."""
    return digest(_schema(model))[:16]


class LlmPromptContent(BaseModel):
    """What an LLM annotation prompt file holds (see prompts/stgr-cot-llm.yaml)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["llm"]
    description: str
    system: str
    user: str
    frame: str
    span_rule_temporal: str
    span_rule_other: str
    reask: str


_USER_FIELDS = ("task", "question", "options", "answer", "caption", "span", "objects", "candidates", "span_rule")


def parse_llm_prompt(prompt) -> LlmPromptContent:
    try:
        content = LlmPromptContent.model_validate(prompt.content)
        content.user.format(**{key: key for key in _USER_FIELDS})
        content.frame.format(frame=1, time=0.0, boxes="B1")
        content.reask.format(error="e")
    except (ValidationError, KeyError, IndexError, ValueError) as exc:
        raise StgrError(f"prompt {prompt.path} is not an LLM annotation prompt (kind: llm): {exc}") from exc
    return content


# ---------------------------------------------------------------------------------------
# What one sample shows the model
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    id: int
    frame_no: int
    frame: Frame
    det: Detection


@dataclass(frozen=True)
class SampleView:
    """The candidate frames (numbered from 1) and boxes (numbered from 1) of one sample."""

    work: SampleWork
    names: list[str]
    span: tuple[float, float] | None  # the span the trace states (temporal: the answer's)
    frames: list[Frame]
    candidates: dict[int, Candidate]
    size: tuple[int, int] | None  # original image size for still images (pixel traces)

    @property
    def temporal(self) -> bool:
        return self.work.sample.task in grammar.TEMPORAL_TASKS and self.span is not None


def _usable(box: Sequence[float], max_area: float) -> bool:
    """Whether a box (rounded as the trace writes it) can be offered: inside the frame, not
    empty, not over ``max_area``."""
    inside = all(0.0 <= v <= 1.0 for v in box)
    return inside and box[2] > box[0] and box[3] > box[1] and geometry.box_area(box) <= max_area


def sample_view(work: SampleWork, *, max_per_frame: int, max_area: float) -> SampleView:
    """The frames and boxes offered to the model: eligible frames (inside the sample's span,
    or the temporal answer's; an image's one frame), each with its best usable boxes."""
    sample = work.sample
    span = trace_span(work)
    eligible = sample.span if sample.span is not None else (span if sample.task in grammar.TEMPORAL_TASKS else None)
    frames = list({f.idx: f for f in sorted(work.frames, key=lambda f: (f.time, f.idx))}.values())
    if sample.image_path is not None:
        frames = frames[:1]
    elif eligible is not None:
        frames = [f for f in frames if eligible[0] <= f.time <= eligible[1]]
    shown = {f.idx for f in frames}
    by_frame: dict[int, list[tuple[Detection, tuple]]] = {}
    for det in evidence_detections(work.detections):
        if det.frame_idx in shown:
            rounded = tuple(grammar.round_box(det.box))
            if _usable(rounded, max_area):
                by_frame.setdefault(det.frame_idx, []).append((det, rounded))
    candidates: dict[int, Candidate] = {}
    for number, frame in enumerate(frames, start=1):
        dets = sorted(by_frame.get(frame.idx, ()), key=lambda item: (-item[0].score, item[0].label, item[0].box))
        seen: set[tuple] = set()
        for det, rounded in dets:
            key = (det.label, rounded)
            if key in seen or len(seen) >= max_per_frame:
                continue
            seen.add(key)
            cid = len(candidates) + 1
            candidates[cid] = Candidate(cid, number, frame, det)
    return SampleView(
        work=work, names=object_names(work), span=span, frames=frames, candidates=candidates, size=image_size(work)
    )


class FrameImages:
    """Drawn frames as ``(data URL, image_digest)``, memoized by frame, size and the candidates
    drawn on it: the samples of one video share frames and detections, so most of their frames
    are decoded once, and drawn, encoded and hashed once. Both memos are the process's
    (``Resources``), bounded in bytes."""

    def __init__(self, resources: Resources, pool: PreparePool | None = None):
        # Frames are content-addressed and shared by the samples of a video: decode each once.
        self.bases = resources.memo("llm-base-frames", 128 << 20, weigh=lambda im: im.width * im.height * 3)
        self.drawn = resources.memo("llm-drawn-frames", 128 << 20, weigh=lambda made: len(made[0]) + len(made[1]))
        # Worker processes that draw the frames not in the memo (``prepare.py``), if any.
        self.pool = pool

    def get_many(self, frames: list[tuple[Path, list[Candidate]]], max_side: int) -> list[tuple[str, str]]:
        """``get`` for each frame; the ones not in the memo drawn together in the pool."""
        keys, found, missing = self._lookup(frames, max_side)
        if missing and self.pool is not None:
            self._keep(keys, found, missing, self.pool.render_many(self._jobs(keys, missing, max_side)))
        return self._fill(found, frames, max_side)

    async def get_many_async(self, frames: list[tuple[Path, list[Candidate]]], max_side: int) -> list[tuple[str, str]]:
        """``get_many`` for the event loop: it waits for the pool without holding a thread.

        Waiting in ``asyncio.to_thread`` held one of the loop's few default-executor threads
        per request being prepared; the loop's other thread jobs (the cache writes, the
        ``openai`` client's own) queued behind them, and each request waited ~300 ms more."""
        keys, found, missing = self._lookup(frames, max_side)
        if missing and self.pool is not None:
            if not self.pool.started:
                await asyncio.to_thread(self.pool.start)
            future = self.pool.submit(self._jobs(keys, missing, max_side))
            if future is not None:
                await asyncio.wait([asyncio.wrap_future(future)])
                self._keep(keys, found, missing, self.pool.collect(future))
        if all(made is not None for made in found):
            return found
        return await asyncio.to_thread(self._fill, found, frames, max_side)

    @staticmethod
    def _key(path: Path, candidates: list[Candidate], max_side: int) -> tuple:
        return str(path), max_side, tuple((c.id, tuple(c.det.box)) for c in candidates)

    def _lookup(self, frames: list[tuple[Path, list[Candidate]]], max_side: int) -> tuple[list, list, list[int]]:
        """(memo keys, the memo's drawn frames or None, the indices of those missing)."""
        keys = [self._key(path, cands, max_side) for path, cands in frames]
        found = [self.drawn.get(key) for key in keys]
        return keys, found, [i for i, made in enumerate(found) if made is None]

    @staticmethod
    def _jobs(keys: list, missing: list[int], max_side: int) -> list:
        return [(keys[i][0], keys[i][2], max_side) for i in missing]

    def _keep(self, keys: list, found: list, missing: list[int], made: list | None) -> None:
        for i, item in zip(missing, made or [], strict=False):
            found[i] = item
            self.drawn.put(keys[i], item)

    def _fill(self, found: list, frames: list[tuple[Path, list[Candidate]]], max_side: int) -> list[tuple[str, str]]:
        """``found`` with the frames still missing drawn here (no pool, or it could not)."""
        return [
            made if made is not None else self.get(path, cands, max_side)
            for made, (path, cands) in zip(found, frames, strict=False)
        ]

    def get(self, path: Path, candidates: list[Candidate], max_side: int) -> tuple[str, str]:
        key = self._key(path, candidates, max_side)
        found = self.drawn.get(key)
        if found is not None:
            return found
        base = self.bases.get_or_make((str(path), max_side), lambda: base_frame(str(path), max_side))
        jpeg = draw_frame(path, candidates, max_side, base=base)
        made = (crops.data_url(jpeg), image_digest(jpeg))
        self.drawn.put(key, made)
        return made


def candidate_lines(view: SampleView) -> str:
    """The candidates in text, one per line: ``B3: dog (0.91) on frame 2 at 3.4s``."""
    if not view.candidates:
        return "(none: the detector found no usable box on these frames)"
    lines = []
    for cand in view.candidates.values():
        at = "" if view.size else f" at {grammar.fmt_time(cand.frame.time)}s"
        lines.append(f"B{cand.id}: {cand.det.label} ({cand.det.score:.2f}) on frame {cand.frame_no}{at}")
    return "\n".join(lines)


def build_messages(view: SampleView, content: LlmPromptContent, root: Path, max_side: int) -> list[dict]:
    """The chat messages of one sample: system, then the user's text and the labelled frames."""
    return build_request(view, content, root, max_side)[0]


def build_request(
    view: SampleView, content: LlmPromptContent, root: Path, max_side: int, images: FrameImages | None = None
) -> tuple[list[dict], dict[str, str]]:
    """``build_messages``, and the ``image_digest`` of each image by its data URL (so the request
    key needs not decode them); frames come from ``images`` when given (memoized)."""
    frames = frames_to_draw(view, root)
    if images is not None:
        drawn = images.get_many(frames, max_side)
    else:
        drawn = [
            (crops.data_url(jpeg), image_digest(jpeg))
            for jpeg in (draw_frame(path, on_frame, max_side) for path, on_frame in frames)
        ]
    return compose_request(view, content, frames, drawn)


def frames_to_draw(view: SampleView, root: Path) -> list[tuple[Path, list[Candidate]]]:
    """Each frame of the request with the candidates drawn on it."""
    return [
        (root / frame.path, [c for c in view.candidates.values() if c.frame_no == number])
        for number, frame in enumerate(view.frames, start=1)
    ]


def compose_request(
    view: SampleView,
    content: LlmPromptContent,
    frames: list[tuple[Path, list[Candidate]]],
    drawn: list[tuple[str, str]],
) -> tuple[list[dict], dict[str, str]]:
    """The messages around the drawn frames (``frames_to_draw``'s, and each one's ``(data URL,
    image_digest)`` in order), and the digests by data URL."""
    sample = view.work.sample
    options = "\n".join(f"{grammar.option_letter(i)}. {o}" for i, o in enumerate(sample.options))
    user = content.user.format(
        task=sample.task.value,
        question=sample.question,
        options=f"Options:\n{options}" if options else "",
        answer=sample.answer,
        caption=sample.caption or "(none)",
        span=(f"{grammar.fmt_time(view.span[0])}s to {grammar.fmt_time(view.span[1])}s" if view.span else "(none)"),
        objects=", ".join(view.names) or "(none named)",
        candidates=candidate_lines(view),
        span_rule=content.span_rule_temporal if view.temporal else content.span_rule_other,
    )
    parts: list[dict] = [{"type": "text", "text": user}]
    digests: dict[str, str] = {}
    for number, (frame, (_, on_frame), (url, image_hash)) in enumerate(
        zip(view.frames, frames, drawn, strict=False), start=1
    ):
        time = 0.0 if view.size else frame.time
        parts.append(
            {
                "type": "text",
                "text": content.frame.format(
                    frame=number, time=grammar.fmt_time(time), boxes=", ".join(f"B{c.id}" for c in on_frame) or "none"
                ),
            }
        )
        digests[url] = image_hash
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return [{"role": "system", "content": content.system}, {"role": "user", "content": parts}], digests


# ---------------------------------------------------------------------------------------
# Checking a reply and writing the trace
# ---------------------------------------------------------------------------------------

_REF_RE = re.compile(r"\[\s*(SPAN|B\d+(?:\s*,\s*B\d+)*)\s*\]")


class ReplyError(ValueError):
    """A reply that parses but cannot be used; its message goes back to the model."""


@dataclass(frozen=True)
class Chosen:
    cand: Candidate
    name: str


def parse_reply(text: str, view: SampleView) -> tuple[CotReply, dict[int, Chosen]]:
    """Read and check a reply against what was offered; raises ``ValueError`` (a pydantic
    ``ValidationError`` or ``ReplyError``) with a message meant for the model."""
    reply = CotReply.model_validate_json(text)
    chosen: dict[int, Chosen] = {}
    frames = {f for f in range(1, len(view.frames) + 1)}
    for kf in reply.key_frames:
        if kf.frame not in frames:
            raise ReplyError(f"key frame {kf.frame} was not shown (frames are 1 to {len(view.frames)})")
        if not kf.boxes:
            raise ReplyError(f"key frame {kf.frame} lists no box: choose at least one, or drop the frame")
        for box in kf.boxes:
            cand = view.candidates.get(box.id)
            if cand is None:
                raise ReplyError(
                    f"B{box.id} is not a candidate box (ids are B1 to B{len(view.candidates)})"
                    if view.candidates
                    else f"B{box.id} is not a candidate box: there are none"
                )
            if cand.frame_no != kf.frame:
                raise ReplyError(f"B{box.id} is on frame {cand.frame_no}, not on frame {kf.frame}")
            if box.id in chosen:
                raise ReplyError(f"B{box.id} is chosen twice")
            name = grammar.clean_text(box.name).replace("[", "").replace("]", "").strip()
            if not name:
                raise ReplyError(f"B{box.id} has an empty object name")
            chosen[box.id] = Chosen(cand, name)
    if view.work.sample.task in grammar.GROUNDED_TASKS and view.candidates and not chosen:
        raise ReplyError("this task needs evidence: choose at least one candidate box")
    cited: set[int] = set()
    has_span = False
    for match in _REF_RE.finditer(reply.reasoning):
        if match.group(1) == "SPAN":
            has_span = True
            continue
        ids = [int(part.strip()[1:]) for part in match.group(1).split(",")]
        for cid in ids:
            if cid not in chosen:
                raise ReplyError(f"the reasoning cites B{cid}, which is not among the chosen boxes")
        group = {(chosen[cid].cand.frame_no, chosen[cid].name) for cid in ids}
        if len(group) > 1:
            raise ReplyError(f"{match.group(0)} mixes frames or objects: cite them separately")
        cited.update(ids)
    missing = sorted(set(chosen) - cited)
    if missing:
        raise ReplyError("the reasoning does not cite " + ", ".join(f"[B{c}]" for c in missing))
    if view.temporal and not has_span:
        raise ReplyError("the reasoning must cite the answer's time span as [SPAN]")
    if not view.temporal and has_span:
        raise ReplyError("this task has no answer span: do not write [SPAN]")
    return reply, chosen


def render_trace(reasoning: str, view: SampleView, kept: dict[int, Chosen]) -> str:
    """The reasoning with every citation replaced by its evidence in the trace grammar.

    Boxes dropped by crop verification are left out; a citation left with none becomes the
    object's plain name.
    """
    out: list[str] = []
    pos = 0
    for match in _REF_RE.finditer(reasoning):
        out.append(_plain(reasoning[pos : match.start()]))
        pos = match.end()
        if match.group(1) == "SPAN":
            out.append(grammar.render_span(*view.span) if view.span else "")
            continue
        ids = [int(part.strip()[1:]) for part in match.group(1).split(",")]
        boxes = [kept[c] for c in ids if c in kept]
        if not boxes:
            out.append(f" {_dropped_name(ids, view)} ")
            continue
        name = boxes[0].name
        if view.size is not None:
            out.append(
                grammar.render_pixel_evidence(
                    name, [geometry.to_pixels(grammar.round_box(b.cand.det.box), view.size) for b in boxes]
                )
            )
        else:
            out.append(grammar.render_evidence(name, [b.cand.det.box for b in boxes], boxes[0].cand.frame.time))
    out.append(_plain(reasoning[pos:]))
    return " ".join("".join(out).split())


def _plain(text: str) -> str:
    # Free text of the model: no angle brackets (they would read as tags), spacing kept at the ends.
    cleaned = text.replace("<", "").replace(">", "")
    return cleaned if cleaned.strip() else " "


def _dropped_name(ids: list[int], view: SampleView) -> str:
    cand = view.candidates.get(ids[0])
    return grammar.clean_text(cand.det.label) if cand else "it"


def evidence_of(kept: dict[int, Chosen]) -> list[Evidence]:
    out = []
    for cid in sorted(kept, key=lambda c: (kept[c].cand.frame.time, c)):
        cand, name = kept[cid].cand, kept[cid].name
        out.append(
            Evidence(
                frame_idx=cand.frame.idx,
                time=cand.frame.time,
                name=name,
                box=grammar.round_box(cand.det.box),
                score=cand.det.score,
            )
        )
    return out


# ---------------------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------------------


class LlmError(Exception):
    """A request's final failure that no retry can change (a 4xx other than 408/409/429, a
    refusal, an empty reply); cached, and the sample is rejected."""


class LlmUnavailable(Exception):
    """A transient failure after the retries (429, 5xx, timeout, transport, a broken reply):
    never cached, and the sample is left pending for the next run. The message starts with
    the reason (``models.PENDING_REASONS``): ``server_error: HTTP 503 after 3 retries``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class ReplyTooLarge(Exception):
    """Every try's reply body (two at least) was over ``MAX_REPLY_BYTES``: never cached, the
    sample is rejected. Once only (no retries configured) is a fault: the sample is pending."""


class _BadReply(Exception):
    """A 200 reply that cannot be read as a chat completion (cut short, not JSON, HTML, dropped
    connection): retried like a 5xx."""


class _TooLarge(_BadReply):
    """A reply body over ``MAX_REPLY_BYTES`` (not read further)."""


#: The largest reply body read (a chat completion of a few KB; a gateway's error page or a
#: runaway generation is not read whole, and never cached).
MAX_REPLY_BYTES = 1 << 20


def _async_client(config: AnnotatorConfig, limiter: RateLimiter, base_url: str | None, api_key: str | None):
    from openai import AsyncOpenAI

    return AsyncOpenAI(
        base_url=base_url,
        api_key=api_key,
        max_retries=config.max_retries,
        timeout=config.timeout,
        http_client=limiter.http_client(config.max_tokens),
    )


#: Stands for an image's data URL while the rest of a request body is serialized (``json_body``).
_IMAGE_SLOT = "\ue000stgr-image\ue000"


def _compact_json(value: Any) -> str:
    # The openai client's own settings (``openapi_dumps``).
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def json_body(body: dict[str, Any]) -> bytes:
    """``body`` as compact UTF-8 JSON, as the ``openai`` client writes it, with each image's
    data URL spliced in rather than run through ``json.dumps``.

    The URLs are ~95% of a request's ~120 KB, and JSON-safe as they are (``crops.data_url``:
    base64, whose alphabet needs no escape); ``json.dumps`` scanned each of their bytes for
    escapes and copied them twice, on the event loop that sends the requests. Any other URL
    goes through ``json.dumps`` with the rest. The parsed body is the same either way."""
    urls: list[str] = []

    def slotted(part: dict) -> dict:
        url = part.get("image_url", {}).get("url") if part.get("type") == "image_url" else None
        if (
            isinstance(url, str)
            and url.startswith(crops.DATA_URL_PREFIX)
            and url.isascii()
            and '"' not in url
            and "\\" not in url
        ):
            urls.append(url)
            return {**part, "image_url": {**part["image_url"], "url": _IMAGE_SLOT}}
        return part

    messages = [
        {**m, "content": [slotted(part) for part in m["content"]]} if isinstance(m.get("content"), list) else m
        for m in body["messages"]
    ]
    text = _compact_json({**body, "messages": messages})
    pieces = text.split(_IMAGE_SLOT)
    if len(pieces) != len(urls) + 1:  # the slot's characters in the request's own text
        return _compact_json(body).encode()
    out = [pieces[0].encode()]
    for url, piece in zip(urls, pieces[1:], strict=False):
        out += [url.encode("ascii"), piece.encode()]
    return b"".join(out)


def _count_images(messages: list[dict]) -> int:
    return sum(
        1
        for m in messages
        if isinstance(m.get("content"), list)
        for part in m["content"]
        if part.get("type") == "image_url"
    )


class LlmAnnotator:
    """The ``openai`` annotator backend (see the module's docstring).

    ``annotate_batch`` returns, per sample, its ``Annotation`` or the ``SampleError`` that
    rejects it, and raises ``BudgetReached`` when the run's budget stopped a request.
    ``usage`` accumulates this instance's requests and tokens (one instance per shard task).
    """

    name = "openai"

    def __init__(
        self,
        config: AnnotatorConfig,
        verify: VerifyConfig,
        *,
        root: Path | None = None,
        resources: Resources | None = None,
        run: str = "",
        wait: bool = True,
    ):
        if not config.model:
            raise StgrError("annotator.model is required for backend openai (e.g. model: gpt-4o-mini)")
        if not os.environ.get("OPENAI_API_KEY"):
            raise StgrError(
                "set OPENAI_API_KEY for the openai annotator (any value for a local server such as "
                "`stgr serve-llm`), and OPENAI_BASE_URL for an endpoint other than OpenAI's"
            )
        import openai  # noqa: F401 - fail here, with the config, when the client is missing

        self.config = config
        self.model = config.model
        loaded = load_prompt(config.prompt)
        self.content = parse_llm_prompt(loaded)
        self.prompt = loaded.ref
        self.prompts = [self.prompt]
        self.crop_content = None
        if config.crop_verify:
            crop_prompt = load_prompt(config.crop_prompt)
            self.crop_content = crops.parse_crop_prompt(crop_prompt)
            self.crop_prompt = crop_prompt.ref
            self.prompts.append(self.crop_prompt)
        self.max_area = verify.max_box_area
        self.root = Path(root) if root is not None else None
        resources = resources if resources is not None else Resources()
        # One budget per run, shared by every annotator (shard task) of the run in this process,
        # and, through the run's ledger file, by every process of the run (Dask workers).
        ledger = self.root / BUDGET_DIR / f"{run}.json" if self.root is not None and run else None
        self.budget = resources.budget(run, config.budget, config.budget_tokens, ledger)
        self.cache = ResponseCache(self.root) if self.root is not None else None
        # Many times the concurrency: a batch ends with a tail of slow replies while slots idle,
        # so fewer, larger batches (a default shard is one batch) keep the endpoint busy.
        self.batch_size = max(16 * config.concurrency, 128)
        self.usage = LlmUsage()
        # Usage per sample id, so a resumed build stores and counts each sample's replies once
        # (a batch's total cannot be split after the fact); taken by ``usage_of``.
        self.sample_usage: dict[str, LlmUsage] = {}
        self._sampling = {"temperature": config.temperature, "max_tokens": config.max_tokens}
        processes = default_processes(config.prepare_processes)
        pool = (
            resources.model(("llm-prepare-pool", processes), lambda: PreparePool(processes)).model
            if processes
            else None
        )
        self.images = FrameImages(resources, pool)
        # Requests and tokens per minute, shared by the build's every request (a flock'd file).
        self.limiter = limiter_for(self.root, config.rpm, config.tpm)
        # One event loop and client for the build's annotators in this process, kept between
        # batches (``session.py``); the client reads OPENAI_BASE_URL and OPENAI_API_KEY when made.
        base_url, api_key = os.environ.get("OPENAI_BASE_URL"), os.environ.get("OPENAI_API_KEY")
        self.session = resources.model(
            (
                "llm-session",
                base_url,
                digest(api_key or ""),
                config.max_retries,
                config.timeout,
                config.max_tokens,
                str(self.root),
                config.rpm,
                config.tpm,
            ),
            lambda: LlmSession(functools.partial(_async_client, config, self.limiter, base_url, api_key)),
        ).model
        # Batch mode: wait for the batches (False: ``--no-wait``, ``BatchPending`` once submitted).
        self.wait = wait
        # Stops the build when the endpoint never answers (``endpoint.py``), per process and endpoint.
        self.endpoint = resources.model(
            ("llm-endpoint", base_url, config.dead_endpoint_s),
            lambda: EndpointWatch(base_url, config.dead_endpoint_s),
        ).model

    def take_usage(self, sample_id: str) -> LlmUsage | None:
        return self.sample_usage.pop(sample_id, None)

    # -- public -------------------------------------------------------------------------

    def annotate(self, work: SampleWork) -> Annotation:
        [result] = self.annotate_batch([work])
        if isinstance(result, SampleError):
            raise result
        return result

    def annotate_batch(self, batch: list[SampleWork]) -> list[Annotation | SampleError]:
        if self.root is None or self.cache is None:
            raise StgrError("LlmAnnotator needs the dataset folder (root) to annotate")
        if self.config.mode == "batch":
            self._send_as_batches(batch)  # replies into the cache; the online pass below reads them
        results = self.session.run(lambda client: self._batch(client, batch))
        failures = [r for r in results if isinstance(r, BaseException) and not isinstance(r, SampleError)]
        if any(isinstance(r, BudgetReached) for r in failures):
            raise BudgetReached(f"LLM budget reached (requests {self.budget.requests}, tokens {self.budget.tokens})")
        if failures:
            raise failures[0]
        return results

    # -- batch mode -------------------------------------------------------------------------

    def _send_as_batches(self, batch: list[SampleWork]) -> None:
        """Each sample's first request (``_one``'s, byte for byte) that the cache lacks, sent
        through the Batch API (``batch.py``); the replies go into the request cache. With
        ``batch_reask: batch``, a reply that cannot be used is asked again, with its error, in
        a follow-up round (up to ``max_invalid_retries``), the very messages the online re-ask
        would send, so the online pass that follows finds every reply cached."""
        asking: list[tuple[SampleView, list[dict], dict[str, str]]] = []
        for work in batch:
            view = sample_view(work, max_per_frame=self.config.max_candidates_per_frame, max_area=self.max_area)
            if work.sample.task in grammar.GROUNDED_TASKS and not view.candidates:
                continue  # rejected without a request (no_evidence)
            messages, digests = build_request(view, self.content, self.root, self.config.image_max_side, self.images)
            asking.append((view, messages, digests))
        rounds = 1 + (self.config.max_invalid_retries if self.config.batch_reask == "batch" else 0)
        for number in range(rounds):
            keys = [
                request_key(
                    model=self.model,
                    prompt_version=self.prompt.version,
                    messages=messages,
                    schema_hash=schema_hash(CotReply),
                    sampling=self._sampling,
                    digests=digests,
                )
                for _, messages, digests in asking
            ]
            self._batch_round({key: messages for key, (_, messages, _) in zip(keys, asking, strict=False)})
            if number + 1 == rounds:
                break
            again = []
            for key, (view, messages, digests) in zip(keys, asking, strict=False):
                entry = self.cache.get(key)
                if entry is None or entry.kind != "reply":
                    continue  # a failure: the online pass deals with it
                try:
                    parse_reply(entry.content or "", view)
                except ValueError as exc:
                    again.append(
                        (
                            view,
                            [
                                *messages,
                                {"role": "assistant", "content": entry.content or ""},
                                {"role": "user", "content": self.content.reask.format(error=_short_error(exc))},
                            ],
                            digests,
                        )
                    )
            if not again:
                break
            asking = again

    def _batch_round(self, requests: dict[str, list[dict]]) -> None:
        """Send the requests (cache key -> messages) the cache lacks as batches; cache the replies."""
        bodies: dict[str, dict] = {}
        images: dict[str, int] = {}
        for key, messages in requests.items():
            entry = self.cache.get(key)
            if entry is not None and not (entry.kind == "error" and _TRANSIENT_ERROR.match(entry.error or "")):
                continue
            body: dict[str, Any] = {
                "model": self.model,
                "messages": messages,
                "response_format": response_format(CotReply, SCHEMA_NAME),
                "temperature": self.config.temperature,
            }
            if self.config.max_tokens is not None:
                body["max_tokens"] = self.config.max_tokens
            bodies[key], images[key] = body, _count_images(messages)
        if not bodies:
            return
        jobs = BatchJobs(
            self.root,
            max_requests=self.config.batch_max_requests,
            max_bytes=self.config.batch_max_bytes,
            poll_s=self.config.batch_poll_s,
        )
        # The budget counts only requests submitted now (not those of batches already submitted);
        # one it refuses is asked online, where the budget stops the shard.
        for key, (status, reply) in jobs.run(bodies, wait=self.wait, admit=self.budget.acquire).items():
            if key not in bodies:
                continue
            if status == 200:
                try:
                    entry = _entry_of(json.dumps(reply).encode(), images[key], self.model)
                except _BadReply:
                    continue  # asked again online
            elif 400 <= status < 500 and status not in (408, 409, 429):
                message = (reply or {}).get("error", {}).get("message", "") if isinstance(reply, dict) else ""
                entry = CacheEntry(
                    kind="error",
                    images=images[key],
                    model=self.model,
                    error=f"HTTP {status} (batch): {str(message)[:200]}",
                )
            else:
                continue  # transient (429, 5xx): asked again online
            self.budget.add_tokens(entry.usage.prompt_tokens + entry.usage.completion_tokens)
            self.cache.put(key, entry)
        jobs.collected()

    # -- one batch, one sample ------------------------------------------------------------

    async def _batch(self, client, batch: list[SampleWork]) -> list:
        semaphore = asyncio.Semaphore(self.config.concurrency)
        # Samples under way (prepared, asking, or asked): enough that a freed request slot finds
        # the next sample's messages ready, few enough that preparing them (GIL-bound Python,
        # in threads) does not crowd the event loop that sends and receives the requests.
        under_way = asyncio.Semaphore(2 * self.config.concurrency + 8)

        async def one(ask: _Asker, work: SampleWork) -> Annotation | SampleError:
            async with under_way:
                usage = LlmUsage()
                _SAMPLE_USAGE.set(usage)  # this task's context: its crop checks share it
                try:
                    return await self._one(ask, work)
                finally:
                    self.sample_usage[work.sample.id] = usage

        ask = _Asker(client, semaphore, self)
        return await self.endpoint.guard(asyncio.gather(*(one(ask, work) for work in batch), return_exceptions=True))

    async def _one(self, ask: _Asker, work: SampleWork) -> Annotation | SampleError:
        view = sample_view(work, max_per_frame=self.config.max_candidates_per_frame, max_area=self.max_area)
        if work.sample.task in grammar.GROUNDED_TASKS and not view.candidates:
            listed = ", ".join(repr(n) for n in view.names) or "no named object"
            return SampleError(
                RejectCode.NO_EVIDENCE,
                f"no usable detector box on the {len(view.frames)} eligible frames to ground {listed}",
            )
        frames = frames_to_draw(view, self.root)
        drawn = await self.images.get_many_async(frames, self.config.image_max_side)
        messages, digests = compose_request(view, self.content, frames, drawn)
        try:
            reply, chosen = await ask.valid(
                messages,
                self.prompt.version,
                CotReply,
                SCHEMA_NAME,
                lambda text: parse_reply(text, view),
                self.content.reask,
                digests,
            )
        except LlmUnavailable as err:
            return SampleError(RejectCode.PENDING, str(err))
        except ReplyTooLarge as err:
            return SampleError(RejectCode.LLM_REPLY_TOO_LARGE, str(err))
        except LlmError as err:
            return SampleError(RejectCode.LLM_ERROR, str(err))
        except ReplyRejected as err:
            return SampleError(RejectCode.LLM_INVALID_REPLY, str(err))
        kept = chosen
        if self.crop_content is not None and chosen:
            try:
                kept = await self._verify_crops(ask, chosen)
            except LlmUnavailable as err:
                return SampleError(RejectCode.PENDING, f"{err} (crop verification)")
            except ReplyTooLarge as err:
                return SampleError(RejectCode.LLM_REPLY_TOO_LARGE, f"crop verification: {err}")
            except LlmError as err:
                return SampleError(RejectCode.LLM_ERROR, f"crop verification: {err}")
            except ReplyRejected as err:
                return SampleError(RejectCode.LLM_INVALID_REPLY, f"crop verification: {err}")
            work.votes = len(kept)
            if not kept:
                names = sorted({c.name for c in chosen.values()})
                return SampleError(
                    RejectCode.CROPS_REJECTED,
                    f"the crop verifier answered no for all {len(chosen)} chosen boxes ({', '.join(names)})",
                )
        evidence = evidence_of(kept)
        key_frames = sorted(
            {c.cand.frame.idx: c.cand.frame for c in kept.values()}.values(), key=lambda f: (f.time, f.idx)
        )
        try:
            reasoning = render_trace(reply.reasoning, view, kept)
        except ValueError as err:  # a name the grammar cannot write
            return SampleError(RejectCode.LLM_INVALID_REPLY, f"cannot write the trace: {err}")
        return Annotation(
            key_frames=key_frames,
            evidence=evidence,
            reasoning=reasoning,
            answer=work.sample.answer,
            prompt=self.prompt,
            model=self.model,
        )

    async def _verify_crops(self, ask: _Asker, chosen: dict[int, Chosen]) -> dict[int, Chosen]:
        async def one(cid: int) -> bool:
            item = chosen[cid]
            jpeg = await asyncio.to_thread(crops.crop_jpeg, self.root / item.cand.frame.path, item.cand.det.box)
            messages = crops.crop_messages(self.crop_content, item.name, item.cand.det.label, jpeg)
            verdict = await ask.valid(
                messages,
                self.crop_prompt.version,
                crops.CropVerdict,
                crops.SCHEMA_NAME,
                crops.parse_verdict,
                self.content.reask,
            )
            return verdict.answer == "yes"

        answers = await asyncio.gather(*(one(cid) for cid in chosen))
        return {cid: chosen[cid] for cid, yes in zip(chosen, answers, strict=False) if yes}


_SAMPLE_USAGE: contextvars.ContextVar[LlmUsage] = contextvars.ContextVar("stgr_sample_llm_usage")


class ReplyRejected(Exception):
    """Replies stayed invalid after every re-ask."""


class _Asker:
    """Requests of one batch: cache, budget, semaphore, usage and the re-ask loop."""

    def __init__(self, client, semaphore: asyncio.Semaphore, annotator: LlmAnnotator):
        self.client = client
        self.semaphore = semaphore
        self.cache = annotator.cache
        self.budget = annotator.budget
        self.annotator = annotator

    async def valid(
        self,
        messages: list[dict],
        prompt_version: str,
        model: type[BaseModel],
        name: str,
        parse: Callable[[str], T],
        reask: str,
        digests: Mapping[str, str] | None = None,
    ) -> T:
        """Ask until ``parse`` accepts a reply (at most 1 + max_invalid_retries requests); what
        ``parse`` returns. A rejected reply is sent back with the error, so the model can fix it."""
        config = self.annotator.config
        error = ""
        for _ in range(config.max_invalid_retries + 1):
            text = await self.request(messages, prompt_version, model, name, digests)
            try:
                return parse(text)
            except ValueError as exc:
                error = _short_error(exc)
                messages = [
                    *messages,
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": reask.format(error=error)},
                ]
        raise ReplyRejected(f"{config.max_invalid_retries + 1} replies could not be used; last: {error}")

    async def request(
        self,
        messages: list[dict],
        prompt_version: str,
        model: type[BaseModel],
        name: str,
        digests: Mapping[str, str] | None = None,
    ) -> str:
        """One chat completion's content: from the cache, or sent (budget permitting) and cached."""
        annotator = self.annotator
        key = request_key(
            model=annotator.model,
            prompt_version=prompt_version,
            messages=messages,
            schema_hash=schema_hash(model),
            sampling=annotator._sampling,
            digests=digests,
        )
        entry = self.cache.get(key)
        if entry is not None and entry.kind == "error" and _TRANSIENT_ERROR.match(entry.error or ""):
            entry = None  # a transient failure cached by an earlier version: ask again
        cached = entry is not None
        if not cached:
            if not self.budget.acquire():
                raise BudgetReached()
            entry = await self._send(key, messages, model, name)
            self.budget.add_tokens(entry.usage.prompt_tokens + entry.usage.completion_tokens)
            await asyncio.to_thread(self.cache.put, key, entry)  # before the reply is used
        used = LlmUsage(
            requests=1,
            cached=int(cached),
            failed=int(entry.kind == "error"),
            prompt_tokens=entry.usage.prompt_tokens,
            completion_tokens=entry.usage.completion_tokens,
            images=entry.images,
        )
        for usage in (annotator.usage, _SAMPLE_USAGE.get(None)):
            if usage is not None:
                usage.add(used)
        if entry.kind == "error":
            raise LlmError(entry.error or "request failed")
        return entry.content or ""

    async def _send(self, key: str, messages: list[dict], model: type[BaseModel], name: str) -> CacheEntry:
        """One request: the reply, or a final error that no retry can change (both cached by the
        caller). Raises ``LlmUnavailable`` for a transient failure after the retries (never
        cached: the sample stays pending) and ``ReplyTooLarge``.

        The client retries 429 (Retry-After), 5xx, timeouts and connection errors; a 200 reply
        that cannot be read (cut short, not JSON, HTML, a dropped connection mid-body, over
        ``MAX_REPLY_BYTES``) is retried here, ``max_retries`` times with exponential backoff."""
        import openai

        config = self.annotator.config
        body: dict[str, Any] = {
            "model": self.annotator.model,
            "messages": messages,
            "response_format": response_format(model, name),
            "temperature": config.temperature,
        }
        if config.max_tokens is not None:
            body["max_tokens"] = config.max_tokens
        images = _count_images(messages)
        problem = ""
        too_large = 0
        self.annotator.endpoint.sending()
        for attempt in range(config.max_retries + 1):
            if attempt:
                await asyncio.sleep(min(8.0, 0.25 * 2 ** (attempt - 1)))
            try:
                async with self.semaphore:
                    data = await self._post(key, body)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                raise StgrError(
                    f"the LLM endpoint refused the API key (HTTP {exc.status_code}): "
                    f"check OPENAI_API_KEY and OPENAI_BASE_URL"
                ) from None
            except openai.NotFoundError:
                raise StgrError(
                    f"the LLM endpoint does not know model {self.annotator.model!r} (HTTP 404): "
                    f"check annotator.model and OPENAI_BASE_URL"
                ) from None
            except openai.APITimeoutError:
                self.annotator.endpoint.failed(f"no reply within {config.timeout:g}s")
                raise LlmUnavailable(
                    "timeout", f"no reply within {config.timeout:g}s ({config.max_retries} retries)"
                ) from None
            except openai.APIStatusError as exc:
                self.annotator.endpoint.answered()
                detail = f"HTTP {exc.status_code} after {config.max_retries} retries: {_status_message(exc)}"
                if exc.status_code == 429:
                    raise LlmUnavailable("rate_limited", detail) from None
                if exc.status_code >= 500 or exc.status_code in (408, 409):
                    raise LlmUnavailable("server_error", detail) from None
                # Another 4xx: the request itself is refused; asking again changes nothing.
                return CacheEntry(kind="error", images=images, model=self.annotator.model, error=detail)
            except openai.APIConnectionError as exc:
                self.annotator.endpoint.failed(f"cannot connect ({type(exc).__name__})")
                raise LlmUnavailable(
                    "connection", f"cannot reach the LLM endpoint: {type(exc).__name__} ({config.max_retries} retries)"
                ) from None
            except _BadReply as exc:
                problem = str(exc)
                too_large += isinstance(exc, _TooLarge)
                continue
            self.annotator.endpoint.answered()
            try:
                return _entry_of(data, images, self.annotator.model)
            except _BadReply as exc:
                problem = str(exc)
        if too_large == config.max_retries + 1 and too_large >= 2:
            # Oversized every time it was asked (twice at least): asking again changes nothing.
            raise ReplyTooLarge(f"{problem}, on each of {too_large} tries")
        raise LlmUnavailable("bad_reply", f"{problem} ({config.max_retries} retries)")

    async def _post(self, key: str, body: dict[str, Any]) -> bytes:
        """The body of a 200 reply, read at most ``MAX_REPLY_BYTES``; ``_BadReply`` when it is
        over the bound or the connection drops (or stalls past the timeout) mid-body."""
        response = await self.client.post(
            "/chat/completions",
            cast_to=_http.Response,
            body=json_body(body),
            options={"headers": {KEY_HEADER: key}},
            stream=True,
        )
        # client.post is `chat.completions.create` without its parameter transform, which walks
        # every message part (and the base64 of every image) in Python: same request, retries,
        # timeout and errors, a fraction of the CPU. The body is read here, bounded.
        try:
            declared = int(response.headers.get("content-length") or 0)
            if declared > MAX_REPLY_BYTES:
                raise _TooLarge(f"reply of {declared} bytes, over the bound of {MAX_REPLY_BYTES}")
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    raise _TooLarge(f"reply of more than {MAX_REPLY_BYTES} bytes, over the bound")
                chunks.append(chunk)
            return b"".join(chunks)
        except (_http.TransportError, _http.StreamError) as exc:
            raise _BadReply(f"the connection failed mid-reply ({type(exc).__name__})") from None
        finally:
            await response.aclose()


def _entry_of(data: bytes, images: int, model: str) -> CacheEntry:
    """The cache entry of a 200 reply's body; ``_BadReply`` when it is not a chat completion."""
    try:
        reply = json.loads(data)
    except ValueError:
        start = data[:40].decode("utf-8", "replace").strip()
        kind = "HTML" if start.lower().startswith(("<!doctype", "<html")) else "not JSON (cut short?)"
        raise _BadReply(f"a 200 reply of {len(data)} bytes that is {kind}") from None
    try:
        choices = reply["choices"]
        choice = choices[0] if choices else None
        message = choice["message"] if choice is not None else {}
        content = message.get("content")
        usage = reply.get("usage") or {}
        used = CachedUsage(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )
    except (KeyError, TypeError, AttributeError, IndexError, ValueError):
        raise _BadReply(f"a 200 reply of {len(data)} bytes that is not a chat completion") from None
    if not isinstance(content, str):
        refusal = message.get("refusal") if isinstance(message, dict) else None
        return CacheEntry(
            kind="error",
            usage=used,
            images=images,
            model=model,
            error=f"empty reply ({'refusal: ' + str(refusal) if refusal else 'no content'})",
        )
    return CacheEntry(kind="reply", content=content, usage=used, images=images, model=model)


#: Final errors an earlier version cached although a retry could cure them (429, 5xx, timeouts).
_TRANSIENT_ERROR = re.compile(r"HTTP (429|5\d\d|408|409)\b|timed out after ")


def _status_message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:200]
    return type(exc).__name__


def _short_error(exc: Exception) -> str:
    """A validation error as a few lines the model can act on."""
    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(str(p) for p in err['loc']) or '(reply)'}: {err['msg']}" for err in exc.errors()[:3]]
        more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
        return "the reply does not follow the JSON schema: " + "; ".join(parts) + more
    return str(exc)


def data_url_bytes(url: str) -> bytes:
    """The bytes of a ``data:`` URL (tests and the dry-run server)."""
    return base64.b64decode(url.split(";base64,", 1)[1])


__all__ = ["CotReply", "LlmAnnotator", "SampleView", "parse_reply", "render_trace", "sample_view"]
