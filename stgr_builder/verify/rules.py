"""The consistency rules of SPEC section 1, as one function over a finished row.

``check_row`` works on rows built in memory and on rows read back from Parquet
(``CotRow.model_validate(record)``), so a written dataset can be re-checked row by row.
Violations come in a fixed order (trace grammar, key frames, times, boxes, evidence, answer),
so the first one names the most basic problem; the verify step rejects with its code.

>>> check_row(row, duration=30.0, span=[4.0, 9.0], gold_answer=row.answer)   # doctest: +SKIP
[Violation(code=<RejectCode.BOX_TOO_LARGE: 'box_too_large'>, message='key item dog ... covers 0.86 ...')]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stgr_builder.core import geometry, grammar
from stgr_builder.models import CotRow, RejectCode, RlRow, Task, VerifyConfig

EPS = 1e-6
#: A trace box and a key-item box are the same box when each coordinate differs by at most
#: half the trace's last decimal (key items are stored rounded to 3 decimals: they agree exactly).
BOX_MATCH = 0.5 * 10**-grammar.BOX_DECIMALS + 1e-9
#: Pixel boxes of an image trace match key items within one pixel.
PIXEL_MATCH = 1.0 + 1e-6


@dataclass(frozen=True)
class Violation:
    """One broken rule: its reject code and what exactly is wrong."""

    code: RejectCode
    message: str

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"


def _box_text(box: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


# ---------------------------------------------------------------------------------------
# Rules
# ---------------------------------------------------------------------------------------


def _key_frame_rules(row: CotRow | RlRow, is_image: bool, size: Sequence[int] | None) -> list[Violation]:
    out = []
    times = [kf.time for kf in row.key_frames]
    if any(b < a for a, b in zip(times, times[1:], strict=False)):
        out.append(Violation(RejectCode.KEY_FRAMES_INVALID, f"key frames are not sorted by time: {times}"))
    idxs = [kf.idx for kf in row.key_frames]
    if len(set(idxs)) != len(idxs):
        out.append(Violation(RejectCode.KEY_FRAMES_INVALID, f"key frame idx repeated: {idxs}"))
    seen: set[tuple[int, str]] = set()
    for item in row.key_items:
        if item.idx not in idxs:
            out.append(
                Violation(
                    RejectCode.KEY_FRAMES_INVALID,
                    f"key item {item.name!r} is at idx {item.idx}, which is not a key frame",
                )
            )
        if (item.idx, item.name) in seen:
            out.append(
                Violation(
                    RejectCode.KEY_FRAMES_INVALID,
                    f"key items repeat ({item.idx}, {item.name!r}): group the boxes in one item",
                )
            )
        seen.add((item.idx, item.name))
    if is_image:
        if len(row.key_frames) > 1 or any(kf.idx != 0 or kf.time != 0.0 for kf in row.key_frames):
            out.append(
                Violation(
                    RejectCode.KEY_FRAMES_INVALID, "an image row has at most one key frame, with idx 0 and time 0.0"
                )
            )
        if not size or len(size) != 2 or min(size) <= 0:
            out.append(
                Violation(
                    RejectCode.KEY_FRAMES_INVALID,
                    f"an image row needs image_size [W, H] to place its pixel boxes (got {size})",
                )
            )
    return out


def _time_rules(
    row: CotRow | RlRow,
    duration: float | None,
    span: Sequence[float] | None,
    trace: grammar.Trace | None,
    tolerance: float,
) -> list[Violation]:
    out = []
    for kf in row.key_frames:
        if duration is not None and not -EPS <= kf.time <= duration + EPS:
            out.append(
                Violation(
                    RejectCode.TIME_OUTSIDE_VIDEO,
                    f"key frame {kf.idx} at {kf.time:g}s is outside the video (0 to {duration:g}s)",
                )
            )
        elif span is not None and not span[0] - EPS <= kf.time <= span[1] + EPS:
            out.append(
                Violation(
                    RejectCode.TIME_OUTSIDE_SPAN,
                    f"key frame {kf.idx} at {kf.time:g}s is outside the span {_box_text(span)}",
                )
            )
    if trace is not None and duration is not None:
        # Trace times are rounded to 0.1 s, so they may pass the end by up to the tolerance.
        stated = [t for s in trace.spans for t in s] + list(trace.times) + [m.time for m in trace.mentions]
        late = [t for t in stated if t is not None and t > duration + tolerance + EPS]
        if late:
            out.append(
                Violation(
                    RejectCode.TIME_OUTSIDE_VIDEO, f"the trace states times {late} past the video's end ({duration:g}s)"
                )
            )
    return out


def _point_claim_rules(row: CotRow | RlRow, trace: grammar.Trace | None, tolerance: float) -> list[Violation]:
    """Spatio-temporal rows: every ``<t>`` of the trace is a key frame's time (the released
    reward reads each one as a point claim at a key frame)."""
    if trace is None or row.task is not Task.SPATIO_TEMPORAL:
        return []
    stated = [t for s in trace.spans for t in s] + list(trace.times) + [m.time for m in trace.mentions]
    frames = [kf.time for kf in row.key_frames]
    stray = [t for t in stated if t is not None and not any(abs(t - k) <= tolerance + EPS for k in frames)]
    if not stray:
        return []
    return [Violation(RejectCode.TIME_NOT_KEY_FRAME, f"the trace states times {stray} that are no key frame's time")]


def _box_problem(box: Sequence[float], max_area: float) -> tuple[RejectCode, str] | None:
    if not all(0.0 <= v <= 1.0 for v in box):
        return RejectCode.BOX_OUT_OF_RANGE, "is not inside [0, 1]"
    if box[2] <= box[0] or box[3] <= box[1]:
        return RejectCode.BOX_EMPTY, "has no area"
    area = geometry.box_area(box)
    if area > max_area + EPS:
        return RejectCode.BOX_TOO_LARGE, f"covers {area:.2f} of the frame (at most {max_area:g})"
    return None


def _box_rules(
    row: CotRow | RlRow, trace: grammar.Trace | None, size: Sequence[int] | None, config: VerifyConfig
) -> list[Violation]:
    out = []
    for item in row.key_items:
        for box in item.boxes:
            problem = _box_problem(box, config.max_box_area)
            if problem:
                out.append(Violation(problem[0], f"key item {item.name!r} box {_box_text(box)} {problem[1]}"))
    for mention in trace.mentions if trace else ():
        for box in mention.boxes:
            if mention.time is None and not size:
                continue  # pixel box of an image row without a size: already reported
            normalized = geometry.from_pixels(box, size) if mention.time is None else box
            problem = _box_problem(normalized, config.max_box_area)
            if problem:
                out.append(Violation(problem[0], f"trace box of {mention.name!r} {_box_text(box)} {problem[1]}"))
    return out


def _same_box(trace_box: Sequence[float], item_box: Sequence[float], size: Sequence[int] | None) -> bool:
    if size is None:
        return all(abs(a - b) <= BOX_MATCH for a, b in zip(trace_box, item_box, strict=False))
    width, height = size
    scaled = (item_box[0] * width, item_box[1] * height, item_box[2] * width, item_box[3] * height)
    return all(abs(a - b) <= PIXEL_MATCH for a, b in zip(trace_box, scaled, strict=False))


def _evidence_rules(row: CotRow, trace: grammar.Trace, size: Sequence[int] | None, tolerance: float) -> list[Violation]:
    """Every trace (object, box, time) is a key item, and every key item is in the trace.
    ``size`` is set for image rows, whose trace boxes are pixels and carry no time."""
    out = []
    times = {kf.idx: kf.time for kf in row.key_frames}

    def near(mention_time: float | None, idx: int) -> bool:
        return mention_time is None or abs(times[idx] - mention_time) <= tolerance + EPS

    items = [item for item in row.key_items if item.idx in times]
    for mention in trace.mentions:
        for box in mention.boxes:
            if not any(
                item.name == mention.name
                and near(mention.time, item.idx)
                and any(_same_box(box, b, size) for b in item.boxes)
                for item in items
            ):
                at = f" at {mention.time:g}s" if mention.time is not None else ""
                out.append(
                    Violation(
                        RejectCode.EVIDENCE_NOT_IN_KEY_ITEMS,
                        f"trace evidence {mention.name!r} {_box_text(box)}{at} is not in key_items "
                        f"at a key frame within {tolerance:g}s",
                    )
                )
    for item in items:
        for box in item.boxes:
            if not any(
                m.name == item.name and near(m.time, item.idx) and any(_same_box(b, box, size) for b in m.boxes)
                for m in trace.mentions
            ):
                out.append(
                    Violation(
                        RejectCode.KEY_ITEM_NOT_IN_TRACE,
                        f"key item {item.name!r} {_box_text(box)} at key frame {item.idx} "
                        f"({times[item.idx]:g}s) is not mentioned in the trace",
                    )
                )
    return out


def _answer_rules(
    row: CotRow | RlRow, gold_answer: str, trace: grammar.Trace | None, tolerance: float
) -> list[Violation]:
    try:
        answer = grammar.parse_answer(row.task, row.answer)
    except grammar.TraceError as err:
        return [Violation(RejectCode.ANSWER_FORM, f"answer: {err.message}")]
    try:
        agree = grammar.answers_agree(row.task, row.answer, gold_answer, time_tolerance=tolerance)
    except grammar.TraceError as err:
        return [Violation(RejectCode.ANSWER_FORM, f"gold answer: {err.message}")]
    out = []
    if not agree:
        out.append(
            Violation(
                RejectCode.ANSWER_MISMATCH, f"answer {row.answer!r} does not agree with the gold answer {gold_answer!r}"
            )
        )
    if trace is not None and answer.span is not None:
        # Temporal rows state their span in the trace; it must be the answer's.
        if not trace.spans:
            out.append(
                Violation(
                    RejectCode.TRACE_GRAMMAR, "a temporal row's trace must state its span as <t>s</t>s to <t>e</t>s"
                )
            )
        elif not any(grammar.spans_agree(s, answer.span, tolerance) for s in trace.spans):
            out.append(
                Violation(
                    RejectCode.ANSWER_MISMATCH,
                    f"no span of the trace {list(trace.spans)} is the answer's {list(answer.span)}",
                )
            )
    return out


# ---------------------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------------------


def _parse(row: CotRow, pixels: bool) -> tuple[grammar.Trace | None, list[Violation]]:
    try:
        return grammar.parse_trace(row.reasoning_process, pixels=pixels), []
    except grammar.TraceError as err:
        return None, [Violation(err.code, err.message)]


def check_row(
    row: CotRow | RlRow,
    *,
    duration: float | None,
    span: Sequence[float] | None,
    gold_answer: str,
    image_size: Sequence[int] | None = None,
    config: VerifyConfig | None = None,
) -> list[Violation]:
    """Every consistency rule of SPEC section 1 that ``row`` breaks; empty when it is good.

    ``duration``: the video's length in seconds (None for images); ``span``: the sample's
    annotated span when the row was built from one (key frames must lie inside it);
    ``gold_answer``: the source's answer; ``image_size``: ``(W, H)`` of an image row's original
    image (default: ``row.image_size``). RL rows have no trace: their boxes, times, key frames
    and answer are checked. Grounded tasks (spatio-temporal, visual QA) need at least one key
    item (``NO_EVIDENCE``).

    >>> [v.code.value for v in check_row(row, duration=20.0, span=None, gold_answer="B")]  # doctest: +SKIP
    ['answer_mismatch']
    """
    config = config or VerifyConfig()
    tolerance = config.time_tolerance
    is_image = row.image_path is not None
    size = tuple(image_size) if image_size else (tuple(row.image_size) if row.image_size else None)
    trace, out = _parse(row, pixels=is_image) if isinstance(row, CotRow) else (None, [])
    out += _key_frame_rules(row, is_image, size)
    out += _time_rules(row, None if is_image else duration, None if is_image else span, trace, tolerance)
    out += _box_rules(row, trace, size, config)
    if trace is not None and (size or not is_image):
        out += _evidence_rules(row, trace, size if is_image else None, tolerance)
    out += _point_claim_rules(row, trace, tolerance)
    out += _answer_rules(row, gold_answer, trace, tolerance)
    if Task(row.task) in grammar.GROUNDED_TASKS and not row.key_items:
        out.append(Violation(RejectCode.NO_EVIDENCE, f"a {Task(row.task).value} row needs at least one key item"))
    return out
