"""The trace grammar and the answer forms: what is written reads back the same, and what is
malformed is caught with its own reason."""

import random

import pytest

from stgr_builder.core import geometry, grammar
from stgr_builder.core.grammar import TraceError, parse_answer, parse_trace
from stgr_builder.models import RejectCode, Task

# -- number format --------------------------------------------------------------------------


def test_numbers_are_written_short_with_at_most_3_and_1_decimals():
    assert grammar.render_box([0.21, 0.35, 0.5, 0.62]) == "[0.21, 0.35, 0.5, 0.62]"
    assert grammar.render_box([0.12345, 0.0, 1, 0.9999]) == "[0.123, 0.0, 1.0, 1.0]"
    assert grammar.fmt_time(12) == "12.0"
    assert grammar.fmt_time(3.06) == "3.1"
    assert grammar.fmt_coord(-0.0001) == "0.0"  # never "-0.0"


# -- round trips ----------------------------------------------------------------------------


def test_evidence_round_trips_over_many_random_boxes_and_times():
    rng = random.Random(7)
    for _ in range(500):
        boxes = [
            grammar.round_box(sorted(rng.random() for _ in range(2)) + sorted(rng.random() for _ in range(2)))
            for _ in range(rng.randint(1, 3))
        ]
        boxes = [[b[0], b[2], b[1], b[3]] for b in boxes]
        time = round(rng.uniform(0, 180), 1)
        trace = f"Here {grammar.render_evidence('red car', boxes, time)} moves."
        [mention] = parse_trace(trace).mentions
        assert mention.name == "red car"
        assert [list(b) for b in mention.boxes] == boxes
        assert mention.time == time


def test_unrounded_values_read_back_as_their_rounded_form():
    phrase = grammar.render_evidence("dog", [[0.123456, 0.2, 0.55555, 0.9]], 3.04)
    [mention] = parse_trace(phrase).mentions
    assert mention.boxes == ((0.123, 0.2, 0.556, 0.9),)
    assert mention.time == 3.0


def test_spans_times_and_several_mentions_parse_in_order():
    trace = (
        f"The event runs from {grammar.render_span(2.25, 7)}. At <t>3.0</t>s "
        f"{grammar.render_evidence('dog', [[0.1, 0.1, 0.2, 0.2]], 3)} chases "
        f"{grammar.render_evidence('ball', [[0.3, 0.3, 0.4, 0.4], [0.5, 0.5, 0.6, 0.6]], 4.5)}."
    )
    parsed = parse_trace(trace)
    assert parsed.spans == ((2.2, 7.0),)
    assert parsed.times == (3.0,)
    assert [(m.name, len(m.boxes), m.time) for m in parsed.mentions] == [("dog", 1, 3.0), ("ball", 2, 4.5)]


def test_pixel_evidence_round_trips_without_time():
    phrase = grammar.render_pixel_evidence("cup", [[12, 40, 200, 310], [300, 10, 320, 30]])
    [mention] = parse_trace(f"I find {phrase}.", pixels=True).mentions
    assert mention.boxes == ((12, 40, 200, 310), (300, 10, 320, 30))
    assert mention.time is None
    assert geometry.to_pixels(geometry.from_pixels([12, 40, 200, 310], (640, 480)), (640, 480)) == [12, 40, 200, 310]


@pytest.mark.parametrize(
    ("task", "answer", "model_output"),
    [
        (Task.TEMPORAL, "[3.0, 7.5]", "From <t>3.0</t>s to <t>7.5</t>s"),
        (Task.TEMPORAL_MCQ, "C\n[12.0, 15.5]", "From <t>12.0</t>s to <t>15.5</t>s.\nCorrect Option: C"),
        (Task.VIDEO_MCQ, "B", "B"),
        (Task.VISUAL, "<obj>cup</obj><box>[12, 40, 200, 310]</box>", "<obj>cup</obj><box>[12, 40, 200, 310]</box>"),
        (Task.VIDEO_FREE, "He opens the door.", "He opens the door."),
    ],
)
def test_training_target_round_trips(task, answer, model_output):
    target = grammar.render_target(task, "Some reasoning.", answer)
    assert target == f"<think>Some reasoning.</think>\n<answer>{model_output}</answer>"
    reasoning, output = grammar.parse_target(target)
    assert reasoning == "Some reasoning."
    assert grammar.parse_model_answer(task, output) == answer


# -- malformed traces -----------------------------------------------------------------------

BOX = "<box>[0.1, 0.2, 0.3, 0.4]</box>"


@pytest.mark.parametrize(
    ("trace", "code", "words"),
    [
        ("<obj>dog</obj><box>[0.1, 0.2, 0.3, 0.4]at<t>1.0</t>s", RejectCode.TAGS_UNBALANCED, "opens inside"),
        ("<obj>dog" + BOX + "at<t>1.0</t>s", RejectCode.TAGS_UNBALANCED, "opens inside"),
        ("<obj>dog</obj>" + BOX + "at<t>1.0</t>s</t>", RejectCode.TAGS_UNBALANCED, "</t>"),
        ("<obj>dog</obj>" + BOX + " at <t>1.0</t>s", RejectCode.TRACE_GRAMMAR, "spaces around 'at'"),
        ("<obj>dog</obj>" + BOX + "at <t>1.0</t>s", RejectCode.TRACE_GRAMMAR, "spaces around 'at'"),
        ("<obj>dog</obj><box>[0.1234, 0.2, 0.3, 0.4]</box>at<t>1.0</t>s", RejectCode.TRACE_GRAMMAR, "3 decimals"),
        ("<obj>dog</obj>" + BOX + "at<t>1.25</t>s", RejectCode.TRACE_GRAMMAR, "1 decimal"),
        ("<obj>dog</obj>" + BOX + "at<t>1.0</t> later", RejectCode.TRACE_GRAMMAR, "'s'"),
        ("<obj>dog</obj><box>[0.1,0.2,0.3,0.4]</box>at<t>1.0</t>s", RejectCode.TRACE_GRAMMAR, "malformed box"),
        ("<obj>dog</obj><box>[0.1, 0.2, 0.3]</box>at<t>1.0</t>s", RejectCode.TRACE_GRAMMAR, "malformed box"),
        ("<obj>dog</obj>" + BOX, RejectCode.TRACE_GRAMMAR, "no 'at<t>T</t>s'"),
        ("<obj>dog</obj> runs", RejectCode.TRACE_GRAMMAR, "not followed by a <box>"),
        ("a " + BOX + "at<t>1.0</t>s", RejectCode.TRACE_GRAMMAR, "outside an evidence phrase"),
        ("<obj> dog</obj>" + BOX + "at<t>1.0</t>s", RejectCode.TRACE_GRAMMAR, "surrounding spaces"),
        ("from <t>5.0</t>s to <t>2.0</t>s", RejectCode.TRACE_GRAMMAR, "ends before it starts"),
        ("<think>x</think>", RejectCode.TRACE_GRAMMAR, "<think>"),
        ("a <b> stray", RejectCode.TRACE_GRAMMAR, "stray"),
    ],
)
def test_malformed_video_traces_are_caught(trace, code, words):
    with pytest.raises(TraceError) as caught:
        parse_trace(trace)
    assert caught.value.code is code
    assert words in caught.value.message


@pytest.mark.parametrize(
    ("trace", "words"),
    [
        ("<obj>cup</obj><box>[12, 40, 200, 310]</box>at<t>0.0</t>s", "must not carry a time"),
        ("<obj>cup</obj><box>[0.1, 0.2, 0.3, 0.4]</box>", "integer pixels"),
        ("at <t>1.0</t>s", "no times"),
    ],
)
def test_malformed_image_traces_are_caught(trace, words):
    with pytest.raises(TraceError) as caught:
        parse_trace(trace, pixels=True)
    assert caught.value.code is RejectCode.TRACE_GRAMMAR
    assert words in caught.value.message


def test_names_that_would_break_the_grammar_cannot_be_rendered():
    with pytest.raises(ValueError):
        grammar.render_evidence("a <b>", [[0.1, 0.1, 0.2, 0.2]], 1.0)
    with pytest.raises(ValueError):
        grammar.render_evidence("dog", [], 1.0)


# -- answers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "answer"),
    [
        (Task.TEMPORAL, "[3.0, 7.5]"),
        (Task.TEMPORAL, "[3, 7.25]"),
        (Task.TEMPORAL_MCQ, "A\n[3.0, 7.5]"),
        (Task.VIDEO_MCQ, "D"),
        (Task.VISUAL, "<obj>cup</obj><box>[12, 40, 200, 310]</box>"),
        (Task.VIDEO_FREE, "a red car"),
        (Task.SPATIO_TEMPORAL, "The man picks up the cup."),
    ],
)
def test_well_formed_answers_parse(task, answer):
    assert parse_answer(task, answer).task is task


@pytest.mark.parametrize(
    ("task", "answer"),
    [
        (Task.TEMPORAL, "3.0 to 7.5"),
        (Task.TEMPORAL, "[7.5, 3.0]"),
        (Task.TEMPORAL, "[3.0,7.5]"),
        (Task.TEMPORAL_MCQ, "[3.0, 7.5]"),
        (Task.TEMPORAL_MCQ, "A [3.0, 7.5]"),
        (Task.VIDEO_MCQ, "A."),
        (Task.VIDEO_MCQ, "AB"),
        (Task.VISUAL, "<obj>cup</obj><box>[0.1, 0.2, 0.3, 0.4]</box>"),
        (Task.VISUAL, "<obj>cup</obj><box>[50, 40, 20, 310]</box>"),
        (Task.VISUAL, "cup"),
        (Task.VIDEO_FREE, ""),
        (Task.SPATIO_TEMPORAL, "<obj>cup</obj> on the table"),
    ],
)
def test_malformed_answers_are_answer_form_errors(task, answer):
    with pytest.raises(TraceError) as caught:
        parse_answer(task, answer)
    assert caught.value.code is RejectCode.ANSWER_FORM


@pytest.mark.parametrize(
    ("task", "answer", "gold", "agree"),
    [
        (Task.TEMPORAL, "[3.0, 7.5]", "[3.04, 7.46]", True),
        (Task.TEMPORAL, "[3.0, 7.5]", "[3.1, 7.5]", False),
        (Task.TEMPORAL_MCQ, "A\n[3.0, 7.5]", "A\n[3.0, 7.5]", True),
        (Task.TEMPORAL_MCQ, "B\n[3.0, 7.5]", "A\n[3.0, 7.5]", False),
        (Task.VIDEO_MCQ, "C", "C", True),
        (Task.VIDEO_MCQ, "C", "D", False),
        (
            Task.VISUAL,
            "<obj>cup</obj><box>[10, 10, 110, 110]</box>",
            "<obj>cup</obj><box>[20, 20, 120, 120]</box>",
            True,
        ),
        (
            Task.VISUAL,
            "<obj>cup</obj><box>[10, 10, 110, 110]</box>",
            "<obj>cup</obj><box>[60, 60, 160, 160]</box>",
            False,
        ),
        (Task.VIDEO_FREE, "The red car.", "the  red car", True),
        (Task.VIDEO_FREE, "the blue car", "the red car", False),
    ],
)
def test_answers_are_compared_per_task(task, answer, gold, agree):
    assert grammar.answers_agree(task, answer, gold) is agree


def test_tag_balance_accepts_a_full_target_and_rejects_crossed_tags():
    grammar.check_tags("<think><obj>a</obj>" + BOX + "at<t>1.0</t>s</think>\n<answer>A</answer>")
    with pytest.raises(TraceError) as caught:
        grammar.check_tags("<think><answer></think></answer>")
    assert caught.value.code is RejectCode.TAGS_UNBALANCED
