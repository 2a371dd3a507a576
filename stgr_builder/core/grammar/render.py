"""The grammar's vocabulary and its writing side: the number format, the tasks' kinds, the error
every rule raises, and the renderers of evidence, spans and answers."""

from __future__ import annotations

from collections.abc import Sequence

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


def grammar_error(message: str) -> TraceError:
    return TraceError(RejectCode.TRACE_GRAMMAR, message)


def form_error(message: str) -> TraceError:
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
