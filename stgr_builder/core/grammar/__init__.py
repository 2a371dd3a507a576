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

The modules: ``render`` (the number format, the tasks' kinds, ``TraceError``, the renderers),
``parse`` (the tag check, ``parse_trace``) and ``answers`` (answers read and compared, the
model-facing forms, the training target); every name is re-exported here.
"""

from __future__ import annotations

from stgr_builder.core.grammar.answers import (
    Answer,
    answers_agree,
    model_answer,
    normalize_text,
    parse_answer,
    parse_model_answer,
    parse_target,
    render_target,
    spans_agree,
)
from stgr_builder.core.grammar.parse import (
    Mention,
    Trace,
    check_tags,
    parse_trace,
)
from stgr_builder.core.grammar.render import (
    BOX_DECIMALS,
    FREE_FORM_TASKS,
    GROUNDED_TASKS,
    TEMPORAL_TASKS,
    TIME_DECIMALS,
    BoxT,
    TraceError,
    clean_text,
    fmt_coord,
    fmt_time,
    option_index,
    option_letter,
    render_box,
    render_evidence,
    render_pixel_box,
    render_pixel_evidence,
    render_plain_span,
    render_span,
    round_box,
    temporal_answer,
    temporal_mcq_answer,
    visual_answer,
)

__all__ = [
    "BOX_DECIMALS",
    "TIME_DECIMALS",
    "GROUNDED_TASKS",
    "TEMPORAL_TASKS",
    "FREE_FORM_TASKS",
    "BoxT",
    "TraceError",
    "fmt_coord",
    "fmt_time",
    "round_box",
    "render_box",
    "render_pixel_box",
    "clean_text",
    "render_evidence",
    "render_pixel_evidence",
    "render_span",
    "render_plain_span",
    "option_letter",
    "option_index",
    "temporal_answer",
    "temporal_mcq_answer",
    "visual_answer",
    "check_tags",
    "Mention",
    "Trace",
    "parse_trace",
    "Answer",
    "parse_answer",
    "normalize_text",
    "spans_agree",
    "answers_agree",
    "model_answer",
    "parse_model_answer",
    "render_target",
    "parse_target",
]
