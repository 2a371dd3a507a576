"""The reply of the annotation prompt (``CotReply``), read and checked against what was
offered, and the trace written from it in the spec's grammar."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stgr_builder.annotate.jsontext import extract_json
from stgr_builder.annotate.request import Candidate, SampleView
from stgr_builder.annotate.usage import count_event
from stgr_builder.core import geometry, grammar
from stgr_builder.errors import ReplyError
from stgr_builder.models import Evidence, RejectCode

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


# ---------------------------------------------------------------------------------------
# The semantic checks: what a well-formed reply can still get wrong
# ---------------------------------------------------------------------------------------

#: The checks, each with the reject code of a sample whose re-asks did not fix it.
CHECK_CODES: dict[str, RejectCode] = {
    "wrong_object": RejectCode.WRONG_OBJECT_NAME,
    "prose_time": RejectCode.PROSE_TIME_OR_BOX,
    "off_span": RejectCode.KEY_FRAME_OFF_SPAN,
    "conclusion": RejectCode.CONCLUSION_MISMATCH,
}

# A time (a number with s/sec/seconds) or a coordinate list ([0.1, 0.2, ...]) in the prose.
_PROSE_TIME_RE = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s*(?:s|sec|secs|second|seconds)\b", re.IGNORECASE)
_PROSE_LIST_RE = re.compile(r"\[\s*-?\d+(?:\.\d+)?(?:\s*,\s*-?\d+(?:\.\d+)?)+\s*\]")
_CONCLUSION_RE = re.compile(
    r"\b(?:answer|option|choice)\s+(?:is\s+|would\s+be\s+|must\s+be\s+)?\(?([A-Z])\)?(?![\w])", re.IGNORECASE
)
_ARTICLE_RE = re.compile(r"^(?:the|a|an|some)\s+")


@dataclass(frozen=True)
class ReplyChecks:
    """What the semantic checks compare against: the alias table (a name -> the detector label
    it means) and a temporal key frame's tolerance outside the answer's span (seconds)."""

    aliases: Mapping[str, str] = field(default_factory=dict)
    key_frame_tolerance: float = 0.0


def detector_name(
    name: str, vocabulary: set[str], aliases: Mapping[str, str], labels: Collection[str] = ()
) -> str | None:
    """``name`` in the detector's vocabulary (through the alias table; a plural or an article
    dropped), or None for an open-vocabulary phrase (left to the judge).

    A name that is one of the candidates' detector ``labels`` as written means that label, before
    the alias table: an open-vocabulary detector labels boxes with the sample's own phrases, so
    "man" is a label there, not the closed set's "person".

    >>> detector_name("the man", {"person", "dog"}, {"man": "person"})
    'person'
    >>> detector_name("the man", {"man", "dog"}, {"man": "person"}, labels={"man", "dog"})
    'man'
    >>> detector_name("dogs", {"person", "dog"}, {}), detector_name("red ball", {"dog"}, {})
    ('dog', None)
    """
    words = _ARTICLE_RE.sub("", name.lower().strip())
    for form in (words, words[:-1] if words.endswith("s") else ""):
        if form and form in labels:
            return form
        if form in aliases:
            return aliases[form]
        if form and form in vocabulary:
            return form
    return None


def check_names(view: SampleView, chosen: dict[int, Chosen], checks: ReplyChecks) -> None:
    """The object named for each box is the box's detector label (in the detector's vocabulary)."""
    labels = {c.det.label.lower() for c in view.candidates.values()}
    vocabulary = labels | {n.lower() for n in view.names}
    for cid, item in chosen.items():
        meant = detector_name(item.name, vocabulary, checks.aliases, labels)
        label = item.cand.det.label.lower()
        if meant is not None and meant != label:
            raise ReplyError(
                f"B{cid} shows a {label} (its detector label), not a {item.name}: choose a box that shows "
                f"the {item.name}, or name B{cid} for what it shows",
                check="wrong_object",
                code=CHECK_CODES["wrong_object"],
            )


def swap_named_boxes(
    view: SampleView, reply: CotReply, chosen: dict[int, Chosen], checks: ReplyChecks
) -> tuple[CotReply, dict[int, Chosen]]:
    """Each box named for another object than its detector label swapped, where it can be, for
    the best candidate of the named object on the same frame (not chosen already; its
    citations follow): the model's words say which object it meant, the detector says which box
    shows it, and the judge looks at that box. No request is paid; a box with no such candidate
    is left for ``check_names`` (a re-ask)."""
    labels = {c.det.label.lower() for c in view.candidates.values()}
    vocabulary = labels | {n.lower() for n in view.names}
    swapped: dict[int, int] = {}
    out = dict(chosen)
    for cid, item in chosen.items():
        meant = detector_name(item.name, vocabulary, checks.aliases, labels)
        if meant is None or meant == item.cand.det.label.lower():
            continue
        taken = set(out) | set(swapped.values())
        same_frame = [
            c
            for c in view.candidates.values()
            if c.frame_no == item.cand.frame_no and c.det.label.lower() == meant and c.id not in taken
        ]
        if not same_frame:
            continue
        best = min(same_frame, key=lambda c: (-c.det.score, c.id))
        swapped[cid] = best.id
        del out[cid]
        out[best.id] = Chosen(best, item.name)
    if not swapped:
        return reply, chosen
    count_event("wrong_object.swapped")

    def recite(match: re.Match[str]) -> str:
        if match.group(1) == "SPAN":
            return match.group(0)
        ids = [int(part.strip()[1:]) for part in match.group(1).split(",")]
        return "[" + ", ".join(f"B{swapped.get(i, i)}" for i in ids) + "]"

    reasoning = _REF_RE.sub(recite, reply.reasoning)
    return reply.model_copy(update={"reasoning": reasoning}), dict(sorted(out.items()))


_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+")


def drop_uncited_prose(reasoning: str) -> str:
    """The reasoning without its sentences that state a time or coordinates and cite nothing:
    such a sentence carries no evidence, so dropping it costs no request and loses nothing a
    row needs (one that cites a box or the span is re-asked instead)."""
    sentences = _SENTENCE_END_RE.split(reasoning.strip())
    kept = [s for s in sentences if _REF_RE.search(s) or not (_PROSE_TIME_RE.search(s) or _PROSE_LIST_RE.search(s))]
    if len(kept) == len(sentences):
        return reasoning
    count_event("prose_time.dropped")
    return " ".join(kept)


def check_prose(reasoning: str) -> None:
    """No time or coordinate typed in the prose: every time and box is a citation's."""
    prose = _REF_RE.sub(" ", reasoning)
    found = _PROSE_TIME_RE.search(prose) or _PROSE_LIST_RE.search(prose)
    if found:
        raise ReplyError(
            f"the reasoning states {found.group(0)!r} in its own words: never write a time or coordinates; "
            f"cite the span as [SPAN] and boxes as [Bn]",
            check="prose_time",
            code=CHECK_CODES["prose_time"],
        )


def check_span(view: SampleView, chosen: dict[int, Chosen], checks: ReplyChecks) -> None:
    """A temporal task's key frames lie in the answer's span (within the tolerance)."""
    if not view.temporal or view.span is None:
        return
    low, high = view.span[0] - checks.key_frame_tolerance, view.span[1] + checks.key_frame_tolerance
    for item in chosen.values():
        if not low <= item.cand.frame.time <= high:
            raise ReplyError(
                f"key frame {item.cand.frame_no} (t={grammar.fmt_time(item.cand.frame.time)}s) is outside the "
                f"answer's span: choose key frames within [SPAN]",
                check="off_span",
                code=CHECK_CODES["off_span"],
            )


def check_conclusion(view: SampleView, reasoning: str) -> None:
    """An MCQ's reasoning concludes the gold option, not another one."""
    sample = view.work.sample
    if not sample.options:
        return
    try:
        gold = grammar.parse_answer(sample.task, sample.answer).letter
    except ValueError:
        return
    letters = {grammar.option_letter(i) for i in range(len(sample.options))}
    for match in _CONCLUSION_RE.finditer(reasoning):
        said = match.group(1).upper()
        if said in letters and gold is not None and said != gold:
            raise ReplyError(
                f"the reasoning concludes option {said}, but the correct answer is {gold}: reason to {gold}",
                check="conclusion",
                code=CHECK_CODES["conclusion"],
            )


def run_checks(view: SampleView, reply: CotReply, chosen: dict[int, Chosen], checks: ReplyChecks) -> None:
    """Every semantic check; the first that fails raises its ``ReplyError``."""
    check_names(view, chosen, checks)
    check_prose(reply.reasoning)
    check_span(view, chosen, checks)
    check_conclusion(view, reply.reasoning)


@dataclass(frozen=True)
class Chosen:
    cand: Candidate
    name: str


def parse_reply(text: str, view: SampleView, checks: ReplyChecks | None = None) -> tuple[CotReply, dict[int, Chosen]]:
    """Read and check a reply against what was offered (and, with ``checks``, the semantic
    checks); raises ``ValueError`` (a pydantic ``ValidationError`` or ``ReplyError``) with a
    message meant for the model."""
    reply = CotReply.model_validate_json(extract_json(text))
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
    if checks is not None:
        reasoning = drop_uncited_prose(reply.reasoning)
        if reasoning != reply.reasoning:
            reply = reply.model_copy(update={"reasoning": reasoning})
        reply, chosen = swap_named_boxes(view, reply, chosen, checks)
        run_checks(view, reply, chosen, checks)
    return reply, chosen


def render_trace(reasoning: str, view: SampleView, kept: dict[int, Chosen]) -> str:
    """The reasoning with every citation replaced by its evidence in the trace grammar.

    Boxes the judge did not confirm are left out; a citation left with none becomes the
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
