"""The trace grammar and the answer forms of SPEC section 1, in one place.

Everything that writes or reads a reasoning trace or an answer goes through this module, so
the renderer and the verifier cannot drift apart.

Number format (renders read back to the same values):

- normalized box coordinates are rounded to 3 decimals and written in the shortest form that
  reads back as the same float, keeping at least one decimal: ``0.5``, ``0.21``, ``0.125``,
  ``1.0``, ``0.0``. Trailing zeros are dropped, except the single ``.0`` of a whole number.
  This is Python's ``repr`` of the rounded float, which is also what ``json.dumps`` writes, so
  the released examples (``[0.21, 0.35, 0.5, 0.62]``) come out exactly so;
- times are rounded to 1 decimal by the same rule: ``12.0``, ``3.5``;
- pixel boxes (visual QA on still images) are integers: ``[12, 40, 200, 310]``.

The parser is strict about what it reads: lists are written ``[a, b, c, d]`` with ``", "``
between numbers, a box has at most 3 decimals, a time at most 1, ``at`` touches both the
``</box>`` before it and the ``<t>`` after it.

>>> phrase = render_evidence("dog", [[0.1, 0.2, 0.5, 0.75]], 3.04)
>>> phrase
'<obj>dog</obj><box>[0.1, 0.2, 0.5, 0.75]</box>at<t>3.0</t>s'
>>> parse_trace(f"I see {phrase}.").mentions
(Mention(name='dog', boxes=((0.1, 0.2, 0.5, 0.75),), time=3.0),)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from stgr_builder.core.geometry import box_iou
from stgr_builder.errors import TraceError as TraceError  # raised here; importable from here
from stgr_builder.models import RejectCode, Task

BOX_DECIMALS = 3
TIME_DECIMALS = 1

#: Tasks whose rows must carry spatial evidence (a grounded claim) to be kept.
GROUNDED_TASKS = frozenset({Task.SPATIO_TEMPORAL, Task.VISUAL})
#: Tasks whose answer is a temporal span (and whose trace must state it).
TEMPORAL_TASKS = frozenset({Task.TEMPORAL, Task.TEMPORAL_MCQ})
#: Tasks answered with plain text.
FREE_FORM_TASKS = frozenset({Task.SPATIO_TEMPORAL, Task.VIDEO_FREE})

BoxT = tuple[float, float, float, float]


def _grammar(message: str) -> TraceError:
    return TraceError(RejectCode.TRACE_GRAMMAR, message)


def _form(message: str) -> TraceError:
    return TraceError(RejectCode.ANSWER_FORM, message)


# ---------------------------------------------------------------------------------------
# Numbers and boxes
# ---------------------------------------------------------------------------------------


def fmt_coord(value: float) -> str:
    """A normalized coordinate, at most 3 decimals.

    >>> fmt_coord(0.5), fmt_coord(0.12345), fmt_coord(1)
    ('0.5', '0.123', '1.0')
    """
    # "+ 0.0" turns -0.0 into 0.0, so a tiny negative never prints as "-0.0".
    return repr(round(float(value), BOX_DECIMALS) + 0.0)


def fmt_time(seconds: float) -> str:
    """A time in seconds, at most 1 decimal.

    >>> fmt_time(12), fmt_time(3.04), fmt_time(7.25)
    ('12.0', '3.0', '7.2')
    """
    return repr(round(float(seconds), TIME_DECIMALS) + 0.0)


def round_box(box: Sequence[float]) -> list[float]:
    """A box as the trace writes it: each coordinate rounded to 3 decimals.

    >>> round_box([0.12345, 0.5, 0.99999, 1])
    [0.123, 0.5, 1.0, 1.0]
    """
    return [round(float(v), BOX_DECIMALS) + 0.0 for v in box]


def render_box(box: Sequence[float]) -> str:
    """A normalized box as the trace writes it.

    >>> render_box([0.21, 0.35, 0.5, 0.62])
    '[0.21, 0.35, 0.5, 0.62]'
    """
    return "[" + ", ".join(fmt_coord(v) for v in box) + "]"


def render_pixel_box(box: Sequence[float]) -> str:
    """A pixel box, integers.

    >>> render_pixel_box([64, 120.4, 320, 480])
    '[64, 120, 320, 480]'
    """
    return "[" + ", ".join(str(round(v)) for v in box) + "]"


def clean_text(text: str) -> str:
    """Free text made safe to put inside a trace: no angle brackets (they would read as
    tags), whitespace collapsed.

    >>> clean_text("a <b>bold</b>  move")
    'a bbold/b move'
    """
    return " ".join(text.replace("<", "").replace(">", "").split())


# ---------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------


def _check_name(name: str) -> str:
    if not name or name != clean_text(name):
        raise ValueError(f"object name {name!r} cannot be written in a trace: use clean_text() first")
    return name


def render_evidence(name: str, boxes: Sequence[Sequence[float]], time: float) -> str:
    """One piece of video evidence: the object, its boxes (one per instance), its time.

    >>> render_evidence("person", [[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.9, 0.95]], 12)
    '<obj>person</obj><box>[0.1, 0.2, 0.3, 0.4]</box><box>[0.5, 0.5, 0.9, 0.95]</box>at<t>12.0</t>s'
    """
    if not boxes:
        raise ValueError("evidence needs at least one box")
    rendered = "".join(f"<box>{render_box(box)}</box>" for box in boxes)
    return f"<obj>{_check_name(name)}</obj>{rendered}at<t>{fmt_time(time)}</t>s"


def render_pixel_evidence(name: str, boxes: Sequence[Sequence[float]]) -> str:
    """Still-image evidence (and the visual-QA answer): integer pixel boxes, no time.

    >>> render_pixel_evidence("cup", [[12, 40, 200, 310]])
    '<obj>cup</obj><box>[12, 40, 200, 310]</box>'
    """
    if not boxes:
        raise ValueError("evidence needs at least one box")
    rendered = "".join(f"<box>{render_pixel_box(box)}</box>" for box in boxes)
    return f"<obj>{_check_name(name)}</obj>{rendered}"


def render_span(start: float, end: float) -> str:
    """A temporal span as traces mention it.

    >>> render_span(3, 7.25)
    '<t>3.0</t>s to <t>7.2</t>s'
    """
    return f"<t>{fmt_time(start)}</t>s to <t>{fmt_time(end)}</t>s"


def render_plain_span(start: float, end: float) -> str:
    """A span stated without tags: a spatio-temporal trace's ``<t>`` are point claims at key
    frames (the released reward reads every one so), and a span's ends are not key frames.

    >>> render_plain_span(3, 7.25)
    '3.0s to 7.2s'
    """
    return f"{fmt_time(start)}s to {fmt_time(end)}s"


def option_letter(index: int) -> str:
    """The letter of the option at ``index``.

    >>> option_letter(0), option_letter(3)
    ('A', 'D')
    """
    if not 0 <= index < 26:
        raise ValueError(f"option index {index} has no letter (A-Z)")
    return chr(ord("A") + index)


def option_index(letter: str) -> int:
    """The index of the option lettered ``letter``.

    >>> option_index("C")
    2
    """
    return ord(letter) - ord("A")


def temporal_answer(span: Sequence[float]) -> str:
    """The gold form of a `temporal QA` answer.

    >>> temporal_answer([3, 7.25])
    '[3.0, 7.2]'
    """
    start, end = span
    return f"[{fmt_time(start)}, {fmt_time(end)}]"


def temporal_mcq_answer(letter: str, span: Sequence[float]) -> str:
    r"""The gold form of a `temporal QA (MCQ)` answer.

    >>> temporal_mcq_answer("B", [3, 7.5])
    'B\n[3.0, 7.5]'
    """
    return f"{letter}\n{temporal_answer(span)}"


def visual_answer(name: str, box_px: Sequence[float]) -> str:
    """The gold form of a `visual QA` answer: one object, one integer pixel box.

    >>> visual_answer("cup", [12, 40, 200, 310])
    '<obj>cup</obj><box>[12, 40, 200, 310]</box>'
    """
    return render_pixel_evidence(name, [box_px])


# ---------------------------------------------------------------------------------------
# Tags
# ---------------------------------------------------------------------------------------

_TAG_RE = re.compile(r"<(/?)(obj|box|t|think|answer)>")
_LEAF_TAGS = frozenset({"obj", "box", "t"})
_ANY_TAG_RE = re.compile(r"</?[A-Za-z][A-Za-z0-9_-]*>")


def check_tags(text: str) -> None:
    """Raise ``TraceError(TAGS_UNBALANCED)`` unless every tag closes, in order, and the leaf
    tags (``obj``, ``box``, ``t``) hold no other tag.

    >>> check_tags("<obj>a</obj><box>[0.1, 0.1, 0.2, 0.2]</box>")
    >>> try:
    ...     check_tags("<obj>a<box>")
    ... except TraceError as err:
    ...     err.message
    '<box> opens inside <obj> at character 6'
    """
    stack: list[str] = []
    for match in _TAG_RE.finditer(text):
        closing, tag = match.group(1) == "/", match.group(2)
        if not closing:
            if stack and stack[-1] in _LEAF_TAGS:
                raise TraceError(
                    RejectCode.TAGS_UNBALANCED, f"<{tag}> opens inside <{stack[-1]}> at character {match.start()}"
                )
            stack.append(tag)
        elif not stack or stack[-1] != tag:
            expected = f"</{stack[-1]}>" if stack else "no closing tag"
            raise TraceError(
                RejectCode.TAGS_UNBALANCED, f"</{tag}> at character {match.start()} where {expected} was due"
            )
        else:
            stack.pop()
    if stack:
        raise TraceError(RejectCode.TAGS_UNBALANCED, f"<{stack[-1]}> is never closed")


# ---------------------------------------------------------------------------------------
# Parsing traces
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mention:
    """One evidence phrase of a trace: ``time`` is None in still-image traces."""

    name: str
    boxes: tuple[BoxT, ...]
    time: float | None


@dataclass(frozen=True)
class Trace:
    """What a trace says: its evidence, its spans, and lone ``<t>T</t>s`` times."""

    mentions: tuple[Mention, ...]
    spans: tuple[tuple[float, float], ...]
    times: tuple[float, ...]


_NORM = r"-?\d+(?:\.\d{1,3})?"
_PIXEL = r"-?\d+"
_TIME_RE = re.compile(r"\d+(?:\.\d)?")
_ANY_NUMBER = r"-?\d+(?:\.\d+)?"
_NORM_BOX_RE = re.compile(rf"\[({_NORM}), ({_NORM}), ({_NORM}), ({_NORM})\]")
_PIXEL_BOX_RE = re.compile(rf"\[({_PIXEL}), ({_PIXEL}), ({_PIXEL}), ({_PIXEL})\]")
_LOOSE_BOX_RE = re.compile(rf"\[({_ANY_NUMBER}), ({_ANY_NUMBER}), ({_ANY_NUMBER}), ({_ANY_NUMBER})\]")
_ELEMENT_RE = re.compile(r"<(obj|box|t)>([^<]*)</\1>")


@dataclass(frozen=True)
class _Element:
    tag: str
    content: str
    start: int
    end: int


def _parse_box(content: str, *, pixels: bool) -> BoxT:
    match = (_PIXEL_BOX_RE if pixels else _NORM_BOX_RE).fullmatch(content)
    if match:
        return tuple(float(g) for g in match.groups())  # type: ignore[return-value]
    if _LOOSE_BOX_RE.fullmatch(content):
        rule = "integer pixels" if pixels else f"at most {BOX_DECIMALS} decimals"
        raise _grammar(f"box {content} must be written with {rule}")
    raise _grammar(f"malformed box {content!r}: expected [x1, y1, x2, y2]")


def _parse_time(content: str) -> float:
    if _TIME_RE.fullmatch(content):
        return float(content)
    raise _grammar(f"time <t>{content}</t> must be seconds with at most {TIME_DECIMALS} decimal")


def _expect_unit(text: str, pos: int) -> None:
    # Every time is followed by its unit, "s", so the trainer's regexes find it.
    if text[pos : pos + 1] != "s":
        raise _grammar(f"time ending at character {pos} is not followed by 's'")


def _parse_name(content: str) -> str:
    if not content.strip():
        raise _grammar("empty <obj></obj>")
    if content != content.strip():
        raise _grammar(f"object name {content!r} has surrounding spaces")
    return content


def _elements(text: str) -> list[_Element]:
    leftover = _ELEMENT_RE.sub("", _TAG_RE.sub(lambda m: m.group(0) if m.group(2) in _LEAF_TAGS else "", text))
    if "<" in leftover or ">" in leftover:
        raise _grammar("stray '<' or '>' outside the trace's tags")
    return [_Element(m.group(1), m.group(2), m.start(), m.end()) for m in _ELEMENT_RE.finditer(text)]


def _evidence(text: str, els: list[_Element], i: int, *, pixels: bool) -> tuple[Mention, int]:
    """Parse the evidence phrase that starts with the ``<obj>`` at ``els[i]``; return it and
    the index of the next unread element."""
    name = _parse_name(els[i].content)
    boxes: list[BoxT] = []
    pos, j = els[i].end, i + 1
    # Boxes of one phrase touch each other and the <obj>: "<obj>a</obj><box>..</box><box>..</box>".
    while j < len(els) and els[j].tag == "box" and els[j].start == pos:
        boxes.append(_parse_box(els[j].content, pixels=pixels))
        pos, j = els[j].end, j + 1
    if not boxes:
        raise _grammar(f"<obj>{name}</obj> is not followed by a <box>")
    nxt = els[j] if j < len(els) and els[j].tag == "t" else None
    gap = text[pos : nxt.start] if nxt else ""
    if nxt and gap.strip() == "at":
        if pixels:
            raise _grammar(f"still-image evidence <obj>{name}</obj> must not carry a time")
        if gap != "at":
            raise _grammar(f"spaces around 'at' in the evidence of <obj>{name}</obj>: write </box>at<t>")
        _expect_unit(text, nxt.end)
        return Mention(name, tuple(boxes), _parse_time(nxt.content)), j + 1
    if not pixels:
        raise _grammar(f"evidence <obj>{name}</obj> has no 'at<t>T</t>s' right after its boxes")
    return Mention(name, tuple(boxes), None), j


def parse_trace(text: str, *, pixels: bool = False) -> Trace:
    """Read a reasoning trace (without ``<think>``): its evidence mentions, spans and times.

    ``pixels=True`` reads a still-image trace: integer pixel boxes and no times.
    Raises ``TraceError`` (TAGS_UNBALANCED or TRACE_GRAMMAR) on the first problem.

    >>> t = parse_trace("From <t>1.0</t>s to <t>4.5</t>s, "
    ...                 "<obj>dog</obj><box>[0.1, 0.2, 0.3, 0.4]</box>at<t>2.0</t>s runs.")
    >>> t.spans, t.mentions[0].time
    (((1.0, 4.5),), 2.0)
    """
    check_tags(text)
    if re.search(r"</?(think|answer)>", text):
        raise _grammar("a reasoning trace must not contain <think> or <answer>")
    els = _elements(text)
    mentions: list[Mention] = []
    spans: list[tuple[float, float]] = []
    times: list[float] = []
    i = 0
    while i < len(els):
        el = els[i]
        if el.tag == "obj":
            mention, i = _evidence(text, els, i, pixels=pixels)
            mentions.append(mention)
        elif el.tag == "box":
            raise _grammar(f"<box>{el.content}</box> outside an evidence phrase (no <obj> right before it)")
        else:
            if pixels:
                raise _grammar("still-image traces write no times")
            _expect_unit(text, el.end)
            start = _parse_time(el.content)
            nxt = els[i + 1] if i + 1 < len(els) else None
            if nxt is not None and nxt.tag == "t" and text[el.end : nxt.start] == "s to ":
                _expect_unit(text, nxt.end)
                end = _parse_time(nxt.content)
                if end < start:
                    raise _grammar(f"span <t>{el.content}</t>s to <t>{nxt.content}</t>s ends before it starts")
                spans.append((start, end))
                i += 2
            else:
                times.append(start)
                i += 1
    return Trace(tuple(mentions), tuple(spans), tuple(times))


# ---------------------------------------------------------------------------------------
# Answers
# ---------------------------------------------------------------------------------------

_NUMBER = r"\d+(?:\.\d+)?"
_SPAN_ANSWER_RE = re.compile(rf"\[({_NUMBER}), ({_NUMBER})\]")
_TEMPORAL_MCQ_RE = re.compile(rf"([A-Z])\n(\[{_NUMBER}, {_NUMBER}\])")
_VISUAL_ANSWER_RE = re.compile(rf"<obj>([^<>]+)</obj><box>(\[{_PIXEL}, {_PIXEL}, {_PIXEL}, {_PIXEL}\])</box>")


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
        raise _form(f"{text!r} is not a span '[s, e]'")
    start, end = float(match.group(1)), float(match.group(2))
    if end < start:
        raise _form(f"span {text} ends before it starts")
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
            raise _form(f"{answer!r} is not 'X\\n[s, e]'")
        return Answer(task, letter=match.group(1), span=_span(match.group(2)))
    if task is Task.VIDEO_MCQ:
        if not re.fullmatch(r"[A-Z]", answer):
            raise _form(f"{answer!r} is not a single option letter")
        return Answer(task, letter=answer)
    if task is Task.VISUAL:
        match = _VISUAL_ANSWER_RE.fullmatch(answer)
        if not match or match.group(1) != match.group(1).strip():
            raise _form(f"{answer!r} is not '<obj>name</obj><box>[x1, y1, x2, y2]</box>' in integer pixels")
        box = _parse_box(match.group(2), pixels=True)
        if box[2] <= box[0] or box[3] <= box[1]:
            raise _form(f"answer box {match.group(2)} has no area")
        return Answer(task, name=match.group(1), box=box)
    # Free-form tasks: plain text, no tags.
    if not answer.strip():
        raise _form("empty answer")
    if _ANY_TAG_RE.search(answer):
        raise _form(f"free-form answer {answer!r} must be plain text without tags")
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
            raise _form(f"{text!r} is not the model output form of a {task.value} answer")
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
        raise _grammar("not '<think>...</think>\\n<answer>...</answer>'")
    check_tags(text)
    return match.group(1), match.group(2)
