"""The reply of the annotation prompt (``CotReply``), read and checked against what was
offered, and the trace written from it in the spec's grammar."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stgr_builder.annotate.request import Candidate, SampleView
from stgr_builder.core import geometry, grammar
from stgr_builder.models import Evidence

SCHEMA_NAME = "stgr_cot_reply"


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


def short_error(exc: Exception) -> str:
    """A validation error as a few lines the model can act on."""
    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(str(p) for p in err['loc']) or '(reply)'}: {err['msg']}" for err in exc.errors()[:3]]
        more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
        return "the reply does not follow the JSON schema: " + "; ".join(parts) + more
    return str(exc)
