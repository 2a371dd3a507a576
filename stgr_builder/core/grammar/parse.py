"""Reading a trace: the tag check and the strict parser of evidence (``parse_trace``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from stgr_builder.core.grammar.render import BOX_DECIMALS, TIME_DECIMALS, BoxT, TraceError, grammar_error
from stgr_builder.models import RejectCode

# ---------------------------------------------------------------------------------------
# Tags
# ---------------------------------------------------------------------------------------

_TAG_RE = re.compile(r"<(/?)(obj|box|t|think|answer)>")
_LEAF_TAGS = frozenset({"obj", "box", "t"})
ANY_TAG_RE = re.compile(r"</?[A-Za-z][A-Za-z0-9_-]*>")


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
PIXEL_NUMBER = r"-?\d+"
_TIME_RE = re.compile(r"\d+(?:\.\d)?")
_ANY_NUMBER = r"-?\d+(?:\.\d+)?"
_NORM_BOX_RE = re.compile(rf"\[({_NORM}), ({_NORM}), ({_NORM}), ({_NORM})\]")
_PIXEL_BOX_RE = re.compile(rf"\[({PIXEL_NUMBER}), ({PIXEL_NUMBER}), ({PIXEL_NUMBER}), ({PIXEL_NUMBER})\]")
_LOOSE_BOX_RE = re.compile(rf"\[({_ANY_NUMBER}), ({_ANY_NUMBER}), ({_ANY_NUMBER}), ({_ANY_NUMBER})\]")
_ELEMENT_RE = re.compile(r"<(obj|box|t)>([^<]*)</\1>")


@dataclass(frozen=True)
class _Element:
    tag: str
    content: str
    start: int
    end: int


def parse_box(content: str, *, pixels: bool) -> BoxT:
    match = (_PIXEL_BOX_RE if pixels else _NORM_BOX_RE).fullmatch(content)
    if match:
        return tuple(float(g) for g in match.groups())  # type: ignore[return-value]
    if _LOOSE_BOX_RE.fullmatch(content):
        rule = "integer pixels" if pixels else f"at most {BOX_DECIMALS} decimals"
        raise grammar_error(f"box {content} must be written with {rule}")
    raise grammar_error(f"malformed box {content!r}: expected [x1, y1, x2, y2]")


def _parse_time(content: str) -> float:
    if _TIME_RE.fullmatch(content):
        return float(content)
    raise grammar_error(f"time <t>{content}</t> must be seconds with at most {TIME_DECIMALS} decimal")


def _expect_unit(text: str, pos: int) -> None:
    # Every time is followed by its unit, "s", so the trainer's regexes find it.
    if text[pos : pos + 1] != "s":
        raise grammar_error(f"time ending at character {pos} is not followed by 's'")


def _parse_name(content: str) -> str:
    if not content.strip():
        raise grammar_error("empty <obj></obj>")
    if content != content.strip():
        raise grammar_error(f"object name {content!r} has surrounding spaces")
    return content


def _elements(text: str) -> list[_Element]:
    leftover = _ELEMENT_RE.sub("", _TAG_RE.sub(lambda m: m.group(0) if m.group(2) in _LEAF_TAGS else "", text))
    if "<" in leftover or ">" in leftover:
        raise grammar_error("stray '<' or '>' outside the trace's tags")
    return [_Element(m.group(1), m.group(2), m.start(), m.end()) for m in _ELEMENT_RE.finditer(text)]


def _evidence(text: str, els: list[_Element], i: int, *, pixels: bool) -> tuple[Mention, int]:
    """Parse the evidence phrase that starts with the ``<obj>`` at ``els[i]``; return it and
    the index of the next unread element."""
    name = _parse_name(els[i].content)
    boxes: list[BoxT] = []
    pos, j = els[i].end, i + 1
    # Boxes of one phrase touch each other and the <obj>: "<obj>a</obj><box>..</box><box>..</box>".
    while j < len(els) and els[j].tag == "box" and els[j].start == pos:
        boxes.append(parse_box(els[j].content, pixels=pixels))
        pos, j = els[j].end, j + 1
    if not boxes:
        raise grammar_error(f"<obj>{name}</obj> is not followed by a <box>")
    nxt = els[j] if j < len(els) and els[j].tag == "t" else None
    gap = text[pos : nxt.start] if nxt else ""
    if nxt and gap.strip() == "at":
        if pixels:
            raise grammar_error(f"still-image evidence <obj>{name}</obj> must not carry a time")
        if gap != "at":
            raise grammar_error(f"spaces around 'at' in the evidence of <obj>{name}</obj>: write </box>at<t>")
        _expect_unit(text, nxt.end)
        return Mention(name, tuple(boxes), _parse_time(nxt.content)), j + 1
    if not pixels:
        raise grammar_error(f"evidence <obj>{name}</obj> has no 'at<t>T</t>s' right after its boxes")
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
        raise grammar_error("a reasoning trace must not contain <think> or <answer>")
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
            raise grammar_error(f"<box>{el.content}</box> outside an evidence phrase (no <obj> right before it)")
        else:
            if pixels:
                raise grammar_error("still-image traces write no times")
            _expect_unit(text, el.end)
            start = _parse_time(el.content)
            nxt = els[i + 1] if i + 1 < len(els) else None
            if nxt is not None and nxt.tag == "t" and text[el.end : nxt.start] == "s to ":
                _expect_unit(text, nxt.end)
                end = _parse_time(nxt.content)
                if end < start:
                    raise grammar_error(f"span <t>{el.content}</t>s to <t>{nxt.content}</t>s ends before it starts")
                spans.append((start, end))
                i += 2
            else:
                times.append(start)
                i += 1
    return Trace(tuple(mentions), tuple(spans), tuple(times))
