"""Reading and comparing answers (``parse_answer``, ``answers_agree``), the model-facing answer
forms and the training target (``<think>...</think>\n<answer>...</answer>``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from stgr_builder.core.geometry import box_iou
from stgr_builder.core.grammar.parse import ANY_TAG_RE, PIXEL_NUMBER, check_tags, parse_box
from stgr_builder.core.grammar.render import (
    TEMPORAL_TASKS,
    BoxT,
    form_error,
    grammar_error,
    render_span,
    temporal_answer,
    temporal_mcq_answer,
)
from stgr_builder.models import Task

# ---------------------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------------------

_NUMBER = r"\d+(?:\.\d+)?"
_SPAN_ANSWER_RE = re.compile(rf"\[({_NUMBER}), ({_NUMBER})\]")
_TEMPORAL_MCQ_RE = re.compile(rf"([A-Z])\n(\[{_NUMBER}, {_NUMBER}\])")
_VISUAL_ANSWER_RE = re.compile(
    rf"<obj>([^<>]+)</obj><box>(\[{PIXEL_NUMBER}, {PIXEL_NUMBER}, {PIXEL_NUMBER}, {PIXEL_NUMBER}\])</box>"
)


@dataclass(frozen=True)
class Answer:
    """An answer read for its task; only the fields of that task's form are set."""

    task: Task
    letter: str | None = None
    span: tuple[float, float] | None = None
    name: str | None = None
    box: BoxT | None = None
    text: str | None = None


def _span(text: str) -> tuple[float, float]:
    match = _SPAN_ANSWER_RE.fullmatch(text)
    if not match:
        raise form_error(f"{text!r} is not a span '[s, e]'")
    start, end = float(match.group(1)), float(match.group(2))
    if end < start:
        raise form_error(f"span {text} ends before it starts")
    return start, end


def parse_answer(task: Task, answer: str) -> Answer:
    """Read ``answer`` in the form ``task`` requires, or raise ``TraceError(ANSWER_FORM)``.

    >>> parse_answer(Task.TEMPORAL_MCQ, "B\\n[3.0, 7.5]")
    Answer(task=<Task.TEMPORAL_MCQ: 'temporal QA (MCQ)'>, letter='B', span=(3.0, 7.5), name=None, box=None, text=None)
    """
    task = Task(task)
    if task is Task.TEMPORAL:
        return Answer(task, span=_span(answer))
    if task is Task.TEMPORAL_MCQ:
        match = _TEMPORAL_MCQ_RE.fullmatch(answer)
        if not match:
            raise form_error(f"{answer!r} is not 'X\\n[s, e]'")
        return Answer(task, letter=match.group(1), span=_span(match.group(2)))
    if task is Task.VIDEO_MCQ:
        if not re.fullmatch(r"[A-Z]", answer):
            raise form_error(f"{answer!r} is not a single option letter")
        return Answer(task, letter=answer)
    if task is Task.VISUAL:
        match = _VISUAL_ANSWER_RE.fullmatch(answer)
        if not match or match.group(1) != match.group(1).strip():
            raise form_error(f"{answer!r} is not '<obj>name</obj><box>[x1, y1, x2, y2]</box>' in integer pixels")
        box = parse_box(match.group(2), pixels=True)
        if box[2] <= box[0] or box[3] <= box[1]:
            raise form_error(f"answer box {match.group(2)} has no area")
        return Answer(task, name=match.group(1), box=box)
    # Free-form tasks: plain text, no tags.
    if not answer.strip():
        raise form_error("empty answer")
    if ANY_TAG_RE.search(answer):
        raise form_error(f"free-form answer {answer!r} must be plain text without tags")
    return Answer(task, text=answer)


def normalize_text(text: str) -> str:
    """How free-form answers are compared: case-folded, whitespace collapsed, no final
    punctuation.

    >>> normalize_text("  The  Red car. ")
    'the red car'
    """
    return " ".join(text.casefold().split()).rstrip(".!?;:").strip()


def spans_agree(a: Sequence[float], b: Sequence[float], tolerance: float = 0.05) -> bool:
    """Whether two spans are equal within ``tolerance`` seconds.

    >>> spans_agree([3.0, 7.5], [3.04, 7.46]), spans_agree([3.0, 7.5], [3.1, 7.5])
    (True, False)
    """
    # The epsilon absorbs float noise of rounding to one decimal (|12.35 - 12.3| ~ 0.05).
    return abs(a[0] - b[0]) <= tolerance + 1e-6 and abs(a[1] - b[1]) <= tolerance + 1e-6


def answers_agree(task: Task, answer: str, gold: str, *, time_tolerance: float = 0.05) -> bool:
    """Whether ``answer`` says what ``gold`` says; both must have the task's form (else
    ``TraceError(ANSWER_FORM)``).

    Temporal: spans equal within ``time_tolerance``; temporal MCQ: same letter too; visual QA:
    box IoU >= 0.5 (or exact; names are not compared); MCQ: same letter; free-form: equal
    after ``normalize_text``.

    >>> answers_agree(Task.TEMPORAL, "[3.0, 7.5]", "[3.02, 7.5]")
    True
    >>> answers_agree(Task.VIDEO_MCQ, "A", "B")
    False
    """
    got, want = parse_answer(task, answer), parse_answer(task, gold)
    # Both were read in the task's form: a part ``got`` has, ``want`` has too.
    if got.span is not None and want.span is not None and not spans_agree(got.span, want.span, time_tolerance):
        return False
    if got.letter is not None and got.letter != want.letter:
        return False
    if got.box is not None and want.box is not None:
        return got.box == want.box or box_iou(got.box, want.box) >= 0.5
    if got.text is not None and want.text is not None:
        return normalize_text(got.text) == normalize_text(want.text)
    return True


# ---------------------------------------------------------------------------------------
# The training target
# ---------------------------------------------------------------------------------------


def model_answer(task: Task, answer: str) -> str:
    """What the model outputs inside ``<answer>`` for a gold ``answer``: temporal spans as
    ``From <t>s</t>s to <t>e</t>s``, the rest as the gold itself.

    >>> model_answer(Task.TEMPORAL_MCQ, "B\\n[3.0, 7.5]")
    'From <t>3.0</t>s to <t>7.5</t>s.\\nCorrect Option: B'
    """
    parsed = parse_answer(task, answer)
    if parsed.task is Task.TEMPORAL and parsed.span is not None:
        return f"From {render_span(*parsed.span)}"
    if parsed.task is Task.TEMPORAL_MCQ and parsed.span is not None:
        return f"From {render_span(*parsed.span)}.\nCorrect Option: {parsed.letter}"
    return answer


_MODEL_SPAN_RE = re.compile(r"From <t>(\d+(?:\.\d)?)</t>s to <t>(\d+(?:\.\d)?)</t>s")


def parse_model_answer(task: Task, text: str) -> str:
    """The inverse of ``model_answer``: the gold-form answer a model output stands for.

    >>> parse_model_answer(Task.TEMPORAL, "From <t>3.0</t>s to <t>7.5</t>s")
    '[3.0, 7.5]'
    """
    task = Task(task)
    if task in TEMPORAL_TASKS:
        suffix = r"\.\nCorrect Option: ([A-Z])" if task is Task.TEMPORAL_MCQ else ""
        match = re.fullmatch(_MODEL_SPAN_RE.pattern + suffix, text)
        if not match:
            raise form_error(f"{text!r} is not the model output form of a {task.value} answer")
        span = (float(match.group(1)), float(match.group(2)))
        return temporal_mcq_answer(match.group(3), span) if suffix else temporal_answer(span)
    parse_answer(task, text)
    return text


def render_target(task: Task, reasoning: str, answer: str) -> str:
    """The fine-tuning target of a row.

    >>> render_target(Task.VIDEO_MCQ, "It rolls.", "A")
    '<think>It rolls.</think>\\n<answer>A</answer>'
    """
    return f"<think>{reasoning}</think>\n<answer>{model_answer(task, answer)}</answer>"


_TARGET_RE = re.compile(r"<think>(.*)</think>\n<answer>(.*)</answer>", re.DOTALL)


def parse_target(text: str) -> tuple[str, str]:
    """Split a training target into (reasoning, answer as the model writes it).

    >>> parse_target("<think>It rolls.</think>\\n<answer>A</answer>")
    ('It rolls.', 'A')
    """
    match = _TARGET_RE.fullmatch(text)
    if not match:
        raise grammar_error("not '<think>...</think>\\n<answer>...</answer>'")
    check_tags(text)
    return match.group(1), match.group(2)
