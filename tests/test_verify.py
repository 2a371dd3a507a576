"""The verify stage: rows are built as the contract says, every consistency rule of SPEC
section 1 rejects the row that breaks it with its own code, and good rows (also read back
from Parquet) pass."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stgr_builder.core import geometry, grammar
from stgr_builder.core.steps import run_steps
from stgr_builder.models import (
    Annotation,
    CotRow,
    DatasetName,
    Evidence,
    Frame,
    ImageInfo,
    KeyFrame,
    KeyItem,
    PromptRef,
    Provenance,
    Reject,
    RejectCode,
    RlRow,
    SampleWork,
    SourceObject,
    SourceSample,
    Stage,
    Task,
    TimedBox,
    VerifyConfig,
    VideoInfo,
    sample_id,
)
from stgr_builder.verify import VerifyStep, build_rows, check_row

PROVENANCE_BASE = {"detector_name": "yolo-test", "detector_weights_hash": "w123", "build_id": "b1"}
PROVENANCE = Provenance(prompt_name="template-cot", prompt_version="v1", annotator_model="template", **PROVENANCE_BASE)

DOG_3 = [0.1, 0.2, 0.4, 0.5]
BALL_3 = [[0.5, 0.5, 0.6, 0.6], [0.7, 0.7, 0.8, 0.8]]
DOG_6 = [0.2, 0.2, 0.5, 0.5]


def _trace(dog3=DOG_3, t3=3.0, dog6=DOG_6, t6=6.04, extra=""):
    return (
        f"The question asks where the dog goes. From {grammar.render_plain_span(2.0, 8.0)} "
        f"I see {grammar.render_evidence('dog', [dog3], t3)} and "
        f"{grammar.render_evidence('ball', BALL_3, t3)}. Then "
        f"{grammar.render_evidence('dog', [dog6], t6)}.{extra} So it chases the ball."
    )


def video_row(**changes) -> CotRow:
    """A good spatio-temporal row: two key frames (3.0 s, 6.04 s), a dog twice, two balls."""
    fields = dict(
        id="row1",
        task=Task.SPATIO_TEMPORAL,
        source="STR_test",
        question="Where does the dog go?",
        answer="It chases the ball.",
        video_path="v/dog.mp4",
        key_frames=[KeyFrame(idx=30, time=3.0, path="kfs/a.jpg"), KeyFrame(idx=60, time=6.04, path="kfs/b.jpg")],
        key_items=[
            KeyItem(idx=30, name="dog", boxes=[DOG_3]),
            KeyItem(idx=30, name="ball", boxes=BALL_3),
            KeyItem(idx=60, name="dog", boxes=[DOG_6]),
        ],
        provenance=PROVENANCE,
        reasoning_process=_trace(),
    )
    fields.update(changes)
    return CotRow(**fields)


def codes(row, *, duration=10.0, span=(2.0, 8.0), gold="It chases the ball.", **kw):
    return [v.code for v in check_row(row, duration=duration, span=span, gold_answer=gold, **kw)]


def test_a_good_video_row_passes():
    assert codes(video_row()) == []


def test_a_spatio_temporal_trace_states_no_time_that_is_not_a_key_frame():
    # The released reward reads every <t> of such a trace as a point claim at a key frame: a
    # span written with tags (its ends are no key frames) would lose points against our own gold.
    tagged = _trace().replace(grammar.render_plain_span(2.0, 8.0), grammar.render_span(2.0, 8.0))
    assert codes(video_row(reasoning_process=tagged)) == [RejectCode.TIME_NOT_KEY_FRAME]
    lone = _trace(extra=" It is still there at <t>7.5</t>s.")
    assert codes(video_row(reasoning_process=lone)) == [RejectCode.TIME_NOT_KEY_FRAME]


@pytest.mark.parametrize(
    ("row", "check", "code"),
    [
        (video_row(reasoning_process=_trace().replace("</obj>", "", 1)), {}, RejectCode.TAGS_UNBALANCED),
        (
            video_row(reasoning_process=_trace().replace("</box>at<t>", "</box> at <t>", 1)),
            {},
            RejectCode.TRACE_GRAMMAR,
        ),
        (
            video_row(reasoning_process=_trace().replace("[0.1, 0.2, 0.4, 0.5]", "[0.1001, 0.2, 0.4, 0.5]")),
            {},
            RejectCode.TRACE_GRAMMAR,
        ),
        (
            video_row(
                reasoning_process=_trace(extra=" " + grammar.render_evidence("cat", [[0.1, 0.1, 0.2, 0.2]], 3.0))
            ),
            {},
            RejectCode.EVIDENCE_NOT_IN_KEY_ITEMS,
        ),
        (video_row(reasoning_process=_trace(dog3=[0.1, 0.2, 0.4, 0.51])), {}, RejectCode.EVIDENCE_NOT_IN_KEY_ITEMS),
        (video_row(reasoning_process=_trace(t3=3.1)), {}, RejectCode.EVIDENCE_NOT_IN_KEY_ITEMS),
        (
            video_row(key_items=[*video_row().key_items, KeyItem(idx=60, name="ball", boxes=[[0.3, 0.3, 0.4, 0.4]])]),
            {},
            RejectCode.KEY_ITEM_NOT_IN_TRACE,
        ),
        (
            video_row(
                key_items=[KeyItem(idx=30, name="dog", boxes=[[0.0, 0.0, 0.95, 0.95]]), *video_row().key_items[1:]],
                reasoning_process=_trace(dog3=[0.0, 0.0, 0.95, 0.95]),
            ),
            {},
            RejectCode.BOX_TOO_LARGE,
        ),
        (
            video_row(
                key_items=[KeyItem(idx=30, name="dog", boxes=[[0.3, 0.2, 0.3, 0.5]]), *video_row().key_items[1:]],
                reasoning_process=_trace(dog3=[0.3, 0.2, 0.3, 0.5]),
            ),
            {},
            RejectCode.BOX_EMPTY,
        ),
        (
            video_row(
                key_items=[KeyItem(idx=30, name="dog", boxes=[[0.5, 0.2, 1.2, 0.5]]), *video_row().key_items[1:]],
                reasoning_process=_trace(dog3=[0.5, 0.2, 1.2, 0.5]),
            ),
            {},
            RejectCode.BOX_OUT_OF_RANGE,
        ),
        (video_row(), {"span": (4.0, 8.0)}, RejectCode.TIME_OUTSIDE_SPAN),
        (video_row(), {"duration": 5.0}, RejectCode.TIME_OUTSIDE_VIDEO),
        (video_row(key_frames=video_row().key_frames[::-1]), {}, RejectCode.KEY_FRAMES_INVALID),
        (
            video_row(key_frames=[*video_row().key_frames, KeyFrame(idx=60, time=7.0, path="kfs/c.jpg")]),
            {},
            RejectCode.KEY_FRAMES_INVALID,
        ),
        (video_row(answer="It <obj>chases</obj> the ball."), {}, RejectCode.ANSWER_FORM),
        (video_row(answer="It sleeps."), {}, RejectCode.ANSWER_MISMATCH),
        (video_row(key_items=[], reasoning_process="The dog chases the ball."), {}, RejectCode.NO_EVIDENCE),
    ],
    ids=[
        "unbalanced",
        "space-around-at",
        "4-decimals",
        "unknown-object",
        "box-not-in-items",
        "time-off-0.1s",
        "item-not-in-trace",
        "box-over-80pct",
        "zero-area",
        "out-of-range",
        "outside-span",
        "outside-duration",
        "unsorted-key-frames",
        "repeated-idx",
        "answer-form",
        "answer-mismatch",
        "grounded-without-evidence",
    ],
)
def test_each_broken_rule_rejects_with_its_own_code(row, check, code):
    found = codes(row, **check)
    assert found, "the row should have been rejected"
    assert found[0] is code, found


def test_a_time_off_by_0_1s_reports_both_sides_of_the_mismatch():
    found = codes(video_row(reasoning_process=_trace(t3=3.1)))
    # The dog and the two balls at 3.1 s are not key items, and the items at 3.0 s go unmentioned.
    assert found.count(RejectCode.EVIDENCE_NOT_IN_KEY_ITEMS) == 3
    assert found.count(RejectCode.KEY_ITEM_NOT_IN_TRACE) == 3


def test_trace_times_match_key_frames_within_the_tolerance_only():
    # Key frame at 6.04 s: 6.0 is 0.04 s off (kept), 6.1 is 0.06 s off (rejected).
    assert codes(video_row(reasoning_process=_trace(t6=6.0))) == []
    assert codes(video_row(reasoning_process=_trace(t6=6.1)))[0] is RejectCode.EVIDENCE_NOT_IN_KEY_ITEMS
    loose = VerifyConfig(time_tolerance=0.1)
    assert codes(video_row(reasoning_process=_trace(t6=6.1)), config=loose) == []


def test_box_area_limit_comes_from_the_config():
    row = video_row()  # the dog at 6 s covers 0.09 of the frame
    assert codes(row, config=VerifyConfig(max_box_area=0.05))[0] is RejectCode.BOX_TOO_LARGE


def test_a_key_item_at_a_frame_that_is_not_a_key_frame_is_invalid():
    row = video_row(key_items=[*video_row().key_items, KeyItem(idx=99, name="dog", boxes=[DOG_3])])
    assert codes(row)[0] is RejectCode.KEY_FRAMES_INVALID


# -- temporal rows ---------------------------------------------------------------------------


def temporal_row(trace: str, answer: str = "[2.0, 8.0]", task: Task = Task.TEMPORAL) -> CotRow:
    return video_row(task=task, answer=answer, key_frames=[], key_items=[], reasoning_process=trace)


def test_temporal_rows_must_state_the_answer_span_in_the_trace():
    good = temporal_row(f"The event runs from {grammar.render_span(2.0, 8.0)}.")
    assert codes(good, gold="[2.0, 8.0]") == []
    assert codes(temporal_row("The event runs for a while."), gold="[2.0, 8.0]") == [RejectCode.TRACE_GRAMMAR]
    other = temporal_row(f"The event runs from {grammar.render_span(1.0, 8.0)}.")
    assert codes(other, gold="[2.0, 8.0]") == [RejectCode.ANSWER_MISMATCH]


def test_temporal_answers_are_checked_for_form_and_agreement():
    trace = f"The event runs from {grammar.render_span(2.0, 8.0)}."
    assert codes(temporal_row(trace, answer="2.0 to 8.0"), gold="[2.0, 8.0]")[0] is RejectCode.ANSWER_FORM
    assert codes(temporal_row(trace), gold="[2.0, 9.0]") == [RejectCode.ANSWER_MISMATCH]
    assert codes(temporal_row(trace), gold="[2.0, 8.04]") == []  # within the 0.05 s tolerance
    mcq = temporal_row(trace, answer="B\n[2.0, 8.0]", task=Task.TEMPORAL_MCQ)
    assert codes(mcq, gold="B\n[2.0, 8.0]") == []
    assert codes(mcq, gold="C\n[2.0, 8.0]") == [RejectCode.ANSWER_MISMATCH]
    assert codes(mcq, gold="C")[0] is RejectCode.ANSWER_FORM  # a malformed gold is reported too


def test_mcq_answers_are_single_letters_that_match_the_gold():
    row = video_row(task=Task.VIDEO_MCQ, answer="A")
    assert codes(row, gold="A") == []
    assert codes(video_row(task=Task.VIDEO_MCQ, answer="A."), gold="A") == [RejectCode.ANSWER_FORM]
    assert codes(row, gold="B") == [RejectCode.ANSWER_MISMATCH]


# -- image rows --------------------------------------------------------------------------------

CUP = [0.1, 0.25, 0.5, 0.75]  # 640 x 480: [64, 120, 320, 360]


def image_row(pixels=(64, 120, 320, 360), **changes) -> CotRow:
    fields = dict(
        id="img1",
        task=Task.VISUAL,
        source="STR_gqa",
        question="Where is the cup?",
        answer="<obj>cup</obj><box>[60, 118, 322, 362]</box>",
        image_path="i/cup.jpg",
        image_size=[640, 480],
        key_frames=[KeyFrame(idx=0, time=0.0, path="kfs/cup.jpg")],
        key_items=[KeyItem(idx=0, name="cup", boxes=[CUP])],
        provenance=PROVENANCE,
        reasoning_process=f"I find {grammar.render_pixel_evidence('cup', [list(pixels)])}. So the cup is there.",
    )
    fields.update(changes)
    return CotRow(**fields)


def image_codes(row, gold="<obj>cup</obj><box>[60, 118, 322, 362]</box>", **kw):
    return [v.code for v in check_row(row, duration=None, span=None, gold_answer=gold, **kw)]


def test_image_rows_write_pixels_that_match_key_items_within_a_pixel():
    assert image_codes(image_row()) == []
    assert image_codes(image_row(pixels=(65, 121, 319, 359))) == []
    off = image_codes(image_row(pixels=(67, 120, 320, 360)))
    assert off == [RejectCode.EVIDENCE_NOT_IN_KEY_ITEMS, RejectCode.KEY_ITEM_NOT_IN_TRACE]


def test_image_rows_need_their_size_and_a_single_frame_at_zero():
    assert image_codes(image_row(image_size=None)) == [RejectCode.KEY_FRAMES_INVALID]
    assert image_codes(image_row(image_size=None), image_size=(640, 480)) == []
    moved = image_row(
        key_frames=[KeyFrame(idx=3, time=1.0, path="x.jpg")], key_items=[KeyItem(idx=3, name="cup", boxes=[CUP])]
    )
    assert image_codes(moved)[0] is RejectCode.KEY_FRAMES_INVALID


def test_image_traces_write_no_time_and_visual_answers_are_compared_by_iou():
    timed = image_row(reasoning_process="I find <obj>cup</obj><box>[64, 120, 320, 360]</box>at<t>0.0</t>s.")
    assert image_codes(timed)[0] is RejectCode.TRACE_GRAMMAR
    far = "<obj>cup</obj><box>[400, 300, 600, 470]</box>"
    assert image_codes(image_row(), gold=far) == [RejectCode.ANSWER_MISMATCH]
    normalized_answer = image_row(answer="<obj>cup</obj><box>[0.1, 0.25, 0.5, 0.75]</box>")
    assert image_codes(normalized_answer) == [RejectCode.ANSWER_FORM]


# -- RL rows and rows read back from Parquet ---------------------------------------------------


def _rl(row: CotRow, **changes) -> RlRow:
    return RlRow(**{**row.model_dump(exclude={"reasoning_process"}), **changes})


def test_rl_rows_are_checked_without_a_trace():
    assert codes(_rl(video_row())) == []
    big = _rl(video_row(), key_items=[KeyItem(idx=30, name="dog", boxes=[[0.0, 0.0, 1.0, 0.9]])])
    assert codes(big) == [RejectCode.BOX_TOO_LARGE]
    assert codes(_rl(video_row()), gold="It sleeps.") == [RejectCode.ANSWER_MISMATCH]
    assert codes(_rl(video_row()), span=(4.0, 8.0)) == [RejectCode.TIME_OUTSIDE_SPAN]


def test_rows_read_back_from_parquet_check_the_same(tmp_path):
    rows = [video_row(), image_row(), video_row(id="bad", reasoning_process=_trace(t3=3.1))]
    pq.write_table(pa.Table.from_pylist([r.model_dump(mode="json") for r in rows]), tmp_path / "part.parquet")
    back = [CotRow.model_validate(record) for record in pq.read_table(tmp_path / "part.parquet").to_pylist()]
    assert codes(back[0]) == []
    assert image_codes(back[1]) == []
    assert codes(back[2])[0] is RejectCode.EVIDENCE_NOT_IN_KEY_ITEMS


# -- build_rows and the verify step -------------------------------------------------------------


def _work(
    *, task=Task.VIDEO_MCQ, answer="B", options=("a cat", "a dog"), evidence=None, datasets=None, gold_boxes=()
) -> SampleWork:
    question = "Which animal runs?"
    sample = SourceSample(
        id=sample_id("STR_test", "v1#0", question),
        source="STR_test",
        source_id="v1#0",
        task=task,
        question=question,
        options=list(options),
        answer=answer,
        video_path="v1.mp4",
        media_root="/media",
        span=[2.0, 8.0],
        objects=[SourceObject(name="dog", boxes=list(gold_boxes))],
        **({"datasets": datasets} if datasets else {}),
    )
    frames = [
        Frame(idx=60, time=6.0, path="kfs/b.jpg", width=320, height=240),
        Frame(idx=30, time=3.0, path="kfs/a.jpg", width=320, height=240),
    ]
    if evidence is None:
        evidence = [
            Evidence(frame_idx=60, time=6.0, name="dog", box=DOG_6, score=0.6),
            Evidence(frame_idx=30, time=3.0, name="dog", box=[0.1, 0.2, 0.4, 0.50004], score=0.9),
            Evidence(frame_idx=30, time=3.0, name="dog", box=[0.6, 0.2, 0.9, 0.5], score=0.6),
        ]
    trace = (
        "The dog runs: "
        + grammar.render_evidence("dog", [DOG_3, [0.6, 0.2, 0.9, 0.5]], 3.0)
        + " then "
        + grammar.render_evidence("dog", [DOG_6], 6.0)
        + "."
    )
    annotation = Annotation(
        key_frames=frames,
        evidence=evidence,
        reasoning=trace,
        answer=answer,
        prompt=PromptRef(name="template-cot", version="abc"),
        model="template",
    )
    video = VideoInfo(path="v1.mp4", duration=10.0, fps=10.0, n_frames=100, width=320, height=240, keyframes=[0])
    return SampleWork(sample=sample, video=video, frames=frames, annotation=annotation)


def test_build_rows_writes_the_contract_fields():
    cot, rl = build_rows(
        _work(gold_boxes=[TimedBox(time=2.9, box=DOG_3), TimedBox(time=9.5, box=[0, 0, 0.1, 0.1])]), PROVENANCE_BASE
    )
    assert cot.question == "Which animal runs?\nA. a cat\nB. a dog"
    assert [(k.idx, k.time) for k in cot.key_frames] == [(30, 3.0), (60, 6.0)]
    assert [(i.idx, i.name, i.boxes) for i in cot.key_items] == [
        (30, "dog", [DOG_3, [0.6, 0.2, 0.9, 0.5]]),
        (60, "dog", [DOG_6]),
    ]
    assert cot.video_path == "v1.mp4" and cot.image_path is None and cot.image_size is None
    prov = cot.provenance
    assert (prov.prompt_name, prov.prompt_version, prov.annotator_model) == ("template-cot", "abc", "template")
    assert (prov.detector_name, prov.detector_weights_hash, prov.build_id) == ("yolo-test", "w123", "b1")
    assert prov.detector_score == pytest.approx(0.7)
    # Every chosen box meets the gold box nearest in time (2.9 s, not 9.5 s): IoU 1.0, 0.0 and IoU(DOG_6, DOG_3).
    assert prov.detector_agreement_iou == pytest.approx((1.0 + 0.0 + geometry.box_iou(DOG_6, DOG_3)) / 3)
    assert rl.model_dump() == cot.model_dump(exclude={"reasoning_process"})
    assert build_rows(_work(), PROVENANCE_BASE)[0].provenance.detector_agreement_iou is None


def test_build_rows_gives_image_rows_one_key_frame_at_zero_with_normalized_items():
    work = _work(task=Task.VISUAL, answer="<obj>dog</obj><box>[32, 48, 128, 120]</box>", options=())
    work.sample = work.sample.model_copy(update={"video_path": None, "image_path": "dog.jpg", "span": None})
    work.video, work.image = None, ImageInfo(path="dog.jpg", width=640, height=480)
    work.annotation.key_frames = [Frame(idx=5, time=0.2, path="kfs/dog.jpg", width=320, height=240)]
    work.annotation.evidence = [Evidence(frame_idx=5, time=0.2, name="dog", box=[0.05, 0.1, 0.2, 0.25], score=0.8)]
    work.annotation.reasoning = "I find " + grammar.render_pixel_evidence("dog", [[32, 48, 128, 120]]) + "."
    cot, _ = build_rows(work, PROVENANCE_BASE)
    assert cot.image_size == [640, 480]
    assert [(k.idx, k.time, k.path) for k in cot.key_frames] == [(0, 0.0, "kfs/dog.jpg")]
    assert [(i.idx, i.boxes) for i in cot.key_items] == [(0, [[0.05, 0.1, 0.2, 0.25]])]
    assert check_row(cot, duration=None, span=None, gold_answer=work.sample.answer) == []


def test_verify_step_keeps_good_rows_and_rejects_bad_ones_with_all_reasons():
    good, bad = _work(), _work(answer="A")
    bad.sample = bad.sample.model_copy(update={"answer": "B", "id": "bad"})
    bad.annotation.reasoning = bad.annotation.reasoning.replace("</box>at", "</box> at")
    step = VerifyStep(VerifyConfig(), PROVENANCE_BASE)
    kept, rejected = run_steps([good, bad], [step])
    assert kept.cot_row.id == good.sample.id and kept.rl_row is not None
    assert isinstance(rejected, Reject)
    assert (rejected.stage, rejected.code) == (Stage.VERIFY, RejectCode.TRACE_GRAMMAR)
    assert "spaces around 'at'" in rejected.message and "answer_mismatch" in rejected.message
    assert step.stats.kept == 1 and step.stats.rejected == {"trace_grammar": 1}


def test_verify_step_sets_only_the_rows_of_the_sample_datasets():
    [work] = run_steps([_work(datasets=[DatasetName.RL])], [VerifyStep(VerifyConfig(), PROVENANCE_BASE)])
    assert work.cot_row is None and work.rl_row is not None


def test_verify_step_rejects_work_without_annotation():
    work = _work()
    work.annotation = None
    [reject] = run_steps([work], [VerifyStep(VerifyConfig(), PROVENANCE_BASE)])
    assert reject.code is RejectCode.ANNOTATION_FAILED
