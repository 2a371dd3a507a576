"""What the model sees for one sample: the candidate frames and boxes (``SampleView``), the
drawn frames (``FrameImages``), the chat messages around them, the reply's JSON schema as a
``response_format``, and the request body as the ``openai`` client writes it (``json_body``)."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from stgr_builder.annotate import crops
from stgr_builder.annotate.base import object_names, trace_span
from stgr_builder.annotate.cache import image_digest
from stgr_builder.annotate.prepare import PreparePool, base_frame, draw_frame
from stgr_builder.core import geometry, grammar
from stgr_builder.core.geometry import image_size
from stgr_builder.core.gold import evidence_detections
from stgr_builder.core.hashing import digest
from stgr_builder.core.resources import Resources
from stgr_builder.errors import StgrError
from stgr_builder.models import Detection, Frame, SampleWork


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


def build_request(
    view: SampleView, content: LlmPromptContent, root: Path, max_side: int, images: FrameImages | None = None
) -> tuple[list[dict], dict[str, str]]:
    """The chat messages of one sample (system, then the user's text and the labelled frames),
    and the ``image_digest`` of each image by its data URL (so the request
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


def count_images(messages: list[dict]) -> int:
    return sum(
        1
        for m in messages
        if isinstance(m.get("content"), list)
        for part in m["content"]
        if part.get("type") == "image_url"
    )
