"""The offline annotator: traces composed from source annotations and detections, no LLM.

It chooses key frames where the sample's named objects are detected (inside the sample's span
when it has one), takes the detector's boxes there as evidence (never a made-up coordinate),
and joins the prompt's sentence templates around them in the trace grammar. The answer is the
source's gold answer. Deterministic: the same work gives the same annotation.

>>> annotator = TemplateAnnotator()
>>> annotation = annotator.annotate(work)        # doctest: +SKIP
>>> annotation.reasoning                          # doctest: +SKIP
'The question asks: "Where is the dog?". ... First, I can see <obj>dog</obj><box>[0.1, ...'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stgr_builder.annotate.base import object_names, trace_span
from stgr_builder.annotate.prompts import Prompt, load_prompt
from stgr_builder.core import geometry, grammar
from stgr_builder.core.geometry import image_size
from stgr_builder.core.gold import evidence_detections
from stgr_builder.errors import SampleError, StgrError
from stgr_builder.models import Annotation, Detection, Evidence, Frame, RejectCode, SampleWork, Task

PLACEHOLDERS = ("question", "targets", "caption", "span", "evidence", "letter", "option", "answer")


class TaskTemplates(BaseModel):
    """The sentences of one task's trace (see prompts/template-cot.yaml)."""

    model_config = ConfigDict(extra="forbid")

    open: str
    caption: str
    span: str
    evidence: list[str] = Field(min_length=1)
    close: str


class TemplatePromptContent(BaseModel):
    """What a template prompt file holds; every task must have its templates."""

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["template"]
    description: str
    tasks: dict[Task, TaskTemplates]


def _parse_templates(prompt: Prompt) -> dict[Task, TaskTemplates]:
    try:
        content = TemplatePromptContent.model_validate(prompt.content)
    except ValidationError as exc:
        raise StgrError(f"prompt {prompt.path} is not a template prompt: {exc}") from exc
    missing = [task.value for task in Task if task not in content.tasks]
    if missing:
        raise StgrError(f"prompt {prompt.path} has no templates for: {', '.join(missing)}")
    dummy = {key: key for key in PLACEHOLDERS}
    for task, templates in content.tasks.items():
        for sentence in [templates.open, templates.caption, templates.span, templates.close, *templates.evidence]:
            try:
                sentence.format(**dummy)
            except (KeyError, IndexError, ValueError) as exc:
                raise StgrError(
                    f"prompt {prompt.path}, task {task.value!r}: bad placeholder in "
                    f"{sentence!r} ({exc!r}); known: {', '.join(PLACEHOLDERS)}"
                ) from exc
    return content.tasks


@dataclass(frozen=True)
class _FrameEvidence:
    """The usable named detections of one candidate frame, per object name."""

    frame: Frame
    by_name: dict[str, list[Detection]]

    @property
    def best_score(self) -> float:
        return max(d.score for dets in self.by_name.values() for d in dets)


class TemplateAnnotator:
    """Offline annotator: key frames and evidence from the detector, sentences from a prompt.

    ``max_key_frames`` caps the key frames of a video sample (a still image has one);
    ``max_boxes_per_name`` caps the instances of one object on one frame (best scores kept);
    boxes a verifier would reject (empty, outside [0, 1], over ``max_box_area`` of the frame)
    are never chosen.
    """

    name = "template"
    model = "template"

    def __init__(
        self,
        prompt_name: str | Prompt = "template-cot",
        *,
        max_key_frames: int = 4,
        max_boxes_per_name: int = 3,
        max_box_area: float = 0.8,
    ):
        loaded = prompt_name if isinstance(prompt_name, Prompt) else load_prompt(prompt_name)
        self.templates = _parse_templates(loaded)
        self.prompt = loaded.ref
        self.prompts = [self.prompt]
        self.batch_size = 1
        self.usage = None  # no LLM
        self.max_key_frames = max_key_frames
        self.max_boxes_per_name = max_boxes_per_name
        self.max_box_area = max_box_area

    # -- public -------------------------------------------------------------------------

    def take_usage(self, sample_id: str) -> None:
        return None

    def annotate(self, work: SampleWork) -> Annotation:
        """Key frames, evidence, trace and answer for one sample; ``SampleError`` when a
        grounded task (spatio-temporal, visual QA) has no detected named object, or a temporal
        task naming objects has no key frame."""
        sample = work.sample
        names = object_names(work)
        span = trace_span(work)
        # Evidence lies inside the sample's span; a temporal task without one uses its answer's.
        eligible = sample.span if sample.span is not None else (span if sample.task in grammar.TEMPORAL_TASKS else None)
        candidates = self._candidates(work, names, eligible)
        chosen = self._choose(candidates, names)
        evidence = [ev for fe in chosen for ev in self._evidence(fe, names)]
        if sample.task in grammar.GROUNDED_TASKS and not evidence:
            raise SampleError(RejectCode.NO_EVIDENCE, _no_evidence_message(work, names))
        if sample.task in grammar.TEMPORAL_TASKS and names and not chosen:
            # The sample names objects to show at its moments and none was found (a detector
            # blind to this footage, a video turned by its container): a row would carry no key
            # frame where its set's other rows carry them. A sample naming no object has none to show.
            raise SampleError(
                RejectCode.NO_EVIDENCE,
                f"a {sample.task.value} row needs at least one key frame: {_no_evidence_message(work, names)}",
            )
        reasoning = self._compose(work, names, span, chosen, evidence)
        return Annotation(
            key_frames=[fe.frame for fe in chosen],
            evidence=evidence,
            reasoning=reasoning,
            answer=sample.answer,
            prompt=self.prompt,
            model=self.model,
        )

    # -- choosing frames and boxes --------------------------------------------------------

    def _usable(self, det: Detection) -> bool:
        box = grammar.round_box(det.box)
        inside = all(0.0 <= v <= 1.0 for v in box)
        return inside and box[2] > box[0] and box[3] > box[1] and geometry.box_area(box) <= self.max_box_area

    def _candidates(self, work: SampleWork, names: list[str], span: Sequence[float] | None) -> list[_FrameEvidence]:
        """Eligible frames (inside ``span``; the image's one frame) with usable named boxes."""
        frames = sorted(work.frames, key=lambda f: (f.time, f.idx))
        frames = list({f.idx: f for f in frames}.values())  # one candidate per frame idx
        if work.sample.image_path is not None:
            frames = frames[:1]
        elif span is not None:
            start, end = span
            frames = [f for f in frames if start <= f.time <= end]
        wanted = set(names)
        out = []
        for frame in frames:
            by_name: dict[str, list[Detection]] = {}
            for det in evidence_detections(work.detections):  # gold boxes win (core/gold.py)
                if det.frame_idx == frame.idx and det.label in wanted and self._usable(det):
                    by_name.setdefault(det.label, []).append(det)
            if by_name:
                out.append(_FrameEvidence(frame, by_name))
        return out

    def _choose(self, candidates: list[_FrameEvidence], names: list[str]) -> list[_FrameEvidence]:
        """Up to ``max_key_frames`` frames: first the best frame of each name (so every
        detected object is shown), then frames spread evenly over time; sorted by time."""
        chosen: list[_FrameEvidence] = []
        for name in names:
            having = [fe for fe in candidates if name in fe.by_name]
            if not having or any(name in fe.by_name for fe in chosen) or len(chosen) >= self.max_key_frames:
                continue
            chosen.append(max(having, key=lambda fe: (max(d.score for d in fe.by_name[name]), -fe.frame.time)))
        rest = [fe for fe in candidates if fe not in chosen]
        chosen += _spread(rest, self.max_key_frames - len(chosen))
        return sorted(chosen, key=lambda fe: (fe.frame.time, fe.frame.idx))

    def _evidence(self, fe: _FrameEvidence, names: list[str]) -> list[Evidence]:
        """The frame's boxes per name, best scores first, duplicates (after rounding) dropped."""
        out = []
        for name in names:
            dets = sorted(fe.by_name.get(name, []), key=lambda d: (-d.score, d.box))
            seen: set[tuple[float, ...]] = set()
            for det in dets:
                box = grammar.round_box(det.box)
                if tuple(box) in seen or len(seen) >= self.max_boxes_per_name:
                    continue
                seen.add(tuple(box))
                out.append(Evidence(frame_idx=fe.frame.idx, time=fe.frame.time, name=name, box=box, score=det.score))
        return out

    # -- composing the trace --------------------------------------------------------------

    def _compose(
        self,
        work: SampleWork,
        names: list[str],
        span: Sequence[float] | None,
        chosen: list[_FrameEvidence],
        evidence: list[Evidence],
    ) -> str:
        sample = work.sample
        templates = self.templates[sample.task]
        values = _values(work, names, span)
        sentences = [templates.open.format(**values)]
        if values["caption"]:
            sentences.append(templates.caption.format(**values))
        if span is not None:
            sentences.append(templates.span.format(**values))
        size = image_size(work)
        for i, fe in enumerate(chosen):
            phrases = _frame_phrases([ev for ev in evidence if ev.frame_idx == fe.frame.idx], names, size)
            pool = templates.evidence if i == 0 else (templates.evidence[1:] or templates.evidence)
            sentence = pool[0] if i == 0 else pool[(i - 1) % len(pool)]
            sentences.append(sentence.format(**{**values, "evidence": " and ".join(phrases)}))
        sentences.append(templates.close.format(**values))
        return " ".join(sentences)


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def _spread(items: list, count: int) -> list:
    """``count`` items spread evenly over ``items`` (first and last included).

    >>> _spread(list(range(10)), 3)
    [0, 4, 9]
    """
    if count <= 0 or not items:
        return []
    if count >= len(items):
        return list(items)
    if count == 1:
        return [items[len(items) // 2]]
    step = (len(items) - 1) / (count - 1)
    return [items[round(i * step)] for i in range(count)]


def _join_names(names: list[str]) -> str:
    """Object names as prose.

    >>> _join_names(["dog", "ball", "cat"])
    'the dog, the ball and the cat'
    """
    # Names that already carry an article ("a man in red") are kept as written.
    named = [n if n.split(" ", 1)[0].lower() in {"the", "a", "an"} else f"the {n}" for n in names]
    named = named or ["the relevant objects"]
    return named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1]


def _values(work: SampleWork, names: list[str], span: Sequence[float] | None) -> dict[str, str]:
    """The placeholder values of one sample (free text cleaned of angle brackets)."""
    sample = work.sample
    if span is None:
        span_text = ""
    elif sample.task is Task.SPATIO_TEMPORAL:
        span_text = grammar.render_plain_span(*span)  # its <t> tags are for key frames only
    else:
        span_text = grammar.render_span(*span)
    letter = option = ""
    try:
        parsed = grammar.parse_answer(sample.task, sample.answer)
    except grammar.TraceError:
        parsed = None  # verify rejects the malformed gold answer with ANSWER_FORM
    if parsed is not None and parsed.letter is not None:
        letter = parsed.letter
        index = grammar.option_index(letter)
        option = grammar.clean_text(sample.options[index]) if index < len(sample.options) else ""
    if sample.task in grammar.FREE_FORM_TASKS:
        answer = grammar.clean_text(sample.answer).rstrip(".")  # the template ends the sentence
    elif sample.task is Task.TEMPORAL:
        answer = span_text
    elif sample.task is Task.VISUAL:
        answer = _join_names(names)
    else:
        answer = letter
    return {
        "question": grammar.clean_text(sample.question),
        "targets": _join_names(names),
        "caption": grammar.clean_text(sample.caption or "").rstrip(". "),
        "span": span_text,
        "evidence": "",
        "letter": letter,
        "option": option,
        "answer": answer,
    }


def _frame_phrases(evidence: list[Evidence], names: list[str], size: tuple[int, int] | None) -> list[str]:
    """One evidence phrase per object on a frame; pixel boxes and no time for still images."""
    phrases = []
    for name in names:
        boxes = [ev.box for ev in evidence if ev.name == name]
        if not boxes:
            continue
        if size is not None:
            phrases.append(grammar.render_pixel_evidence(name, [geometry.to_pixels(b, size) for b in boxes]))
        else:
            phrases.append(grammar.render_evidence(name, boxes, evidence[0].time))
    return phrases


def _no_evidence_message(work: SampleWork, names: list[str]) -> str:
    if not names:
        return f"{work.sample.task.value} sample names no object to ground"
    where = f" inside span {list(work.sample.span)}" if work.sample.span and work.sample.image_path is None else ""
    listed = ", ".join(repr(n) for n in names)
    return (
        f"none of {listed} was detected (usable box) on the {len(work.frames)} candidate frames{where} "
        f"({len(work.detections)} detections in all)"
    )
