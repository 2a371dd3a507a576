"""The offline template annotator: on hand-built samples (frames + detections) of every task it
writes traces whose rows pass verification, using only the detector's boxes, inside the span."""

import shutil

import pytest

from stgr_builder.annotate import AnnotateStep, TemplateAnnotator, available_prompts, load_prompt
from stgr_builder.core import grammar
from stgr_builder.core.steps import run_steps
from stgr_builder.errors import SampleError, StgrError
from stgr_builder.models import (
    Detection,
    Frame,
    ImageInfo,
    Reject,
    RejectCode,
    SampleWork,
    SourceObject,
    SourceSample,
    Stage,
    Task,
    VerifyConfig,
    VideoInfo,
    sample_id,
)
from stgr_builder.verify import VerifyStep, build_rows, check_row

PROVENANCE_BASE = {"detector_name": "yolo-test", "detector_weights_hash": "w123", "build_id": "b1"}
DURATION = 20.0


def frames(times=tuple(range(20)), fps=25) -> list[Frame]:
    """Candidate frames at ``times`` seconds, plus one at a non-round time (7.52 s)."""
    out = [Frame(idx=round(t * fps), time=float(t), path=f"kfs/{t}.jpg", width=640, height=360) for t in times]
    return out + [Frame(idx=188, time=7.52, path="kfs/7.52.jpg", width=640, height=360)]


def det(t, label, box, score=0.8, fps=25):
    return Detection(frame_idx=round(t * fps), label=label, score=score, box=box)


def video_work(task, answer, *, objects=("dog",), span=None, options=(), caption=None, detections=()) -> SampleWork:
    question = "What does the dog do?"
    sample = SourceSample(
        id=sample_id("STR_test", "v#1", question),
        source="STR_test",
        source_id="v#1",
        task=task,
        question=question,
        options=list(options),
        answer=answer,
        video_path="v.mp4",
        media_root="/m",
        span=list(span) if span else None,
        objects=[SourceObject(name=n) for n in objects],
        caption=caption,
    )
    video = VideoInfo(path="v.mp4", duration=DURATION, fps=25, n_frames=500, width=640, height=360, keyframes=[0])
    return SampleWork(sample=sample, video=video, frames=frames(), detections=list(detections))


def image_work(answer="<obj>cup</obj><box>[64, 90, 320, 270]</box>", detections=()) -> SampleWork:
    question = "Where is the cup?"
    sample = SourceSample(
        id=sample_id("STR_gqa", "i1", question),
        source="STR_gqa",
        source_id="i1",
        task=Task.VISUAL,
        question=question,
        answer=answer,
        image_path="cup.jpg",
        media_root="/m",
        objects=[SourceObject(name="cup")],
    )
    frame = Frame(idx=0, time=0.0, path="kfs/cup.jpg", width=640, height=360)
    return SampleWork(
        sample=sample,
        image=ImageInfo(path="cup.jpg", width=640, height=360),
        frames=[frame],
        detections=list(detections),
    )


def verified(work: SampleWork):
    """Annotate, build the rows and check them as the verify stage does; return the CoT row."""
    work.annotation = TemplateAnnotator().annotate(work)
    cot, rl = build_rows(work, PROVENANCE_BASE)
    for row in (cot, rl):
        violations = check_row(
            row,
            duration=work.video.duration if work.video else None,
            span=work.sample.span,
            gold_answer=work.sample.answer,
        )
        assert violations == [], [str(v) for v in violations]
    return cot


DOG = [0.1, 0.2, 0.4, 0.6]
BALL = [0.5, 0.55, 0.62, 0.7]
DETECTIONS = [
    det(3, "dog", DOG, 0.9),
    det(5, "dog", [0.2, 0.2, 0.5, 0.6], 0.7),
    det(5, "ball", BALL, 0.6),
    det(9, "dog", [0.3, 0.25, 0.6, 0.65]),
    det(12, "dog", [0.4, 0.2, 0.7, 0.6]),
    det(14, "cat", [0, 0, 0.2, 0.2]),
]


# -- every task produces rows that pass verification ---------------------------------------------


@pytest.mark.parametrize(
    ("task", "answer", "options", "span"),
    [
        (Task.SPATIO_TEMPORAL, "The dog chases the ball.", (), (2.0, 13.0)),
        (Task.TEMPORAL, "[2.5, 12.5]", (), (2.5, 12.5)),
        (Task.TEMPORAL_MCQ, "B\n[2.5, 12.5]", ("0 to 2 s", "2.5 to 12.5 s"), (2.5, 12.5)),
        (Task.VIDEO_MCQ, "A", ("it runs", "it sleeps"), None),
        (Task.VIDEO_FREE, "It runs after a ball.", (), None),
    ],
)
def test_every_video_task_gives_rows_that_pass_check_row(task, answer, options, span):
    work = video_work(
        task,
        answer,
        objects=("dog", "ball"),
        span=span,
        options=options,
        caption="A dog <runs> in a park.",
        detections=DETECTIONS,
    )
    row = verified(work)
    assert row.answer == answer
    assert row.key_items, "the detected dog and ball are shown as evidence"
    trace = grammar.parse_trace(row.reasoning_process)
    assert {m.name for m in trace.mentions} == {"dog", "ball"}
    assert "A dog runs in a park" in row.reasoning_process  # the caption, cleaned of its brackets


def test_visual_qa_traces_write_pixels_of_the_original_image_and_no_time():
    work = image_work(detections=[Detection(frame_idx=0, label="cup", score=0.9, box=[0.1, 0.25, 0.5, 0.75])])
    row = verified(work)
    assert "<obj>cup</obj><box>[64, 90, 320, 270]</box>" in row.reasoning_process
    assert "<t>" not in row.reasoning_process
    assert row.image_size == [640, 360]
    assert [(k.idx, k.time) for k in row.key_frames] == [(0, 0.0)]
    assert [(i.name, i.boxes) for i in row.key_items] == [("cup", [[0.1, 0.25, 0.5, 0.75]])]


def test_temporal_tasks_without_detections_still_state_their_span():
    work = video_work(Task.TEMPORAL, "[2.5, 12.5]", objects=(), span=(2.5, 12.5))
    row = verified(work)
    assert row.key_frames == [] and row.key_items == []
    spans = grammar.parse_trace(row.reasoning_process).spans
    assert spans and set(spans) == {(2.5, 12.5)}


@pytest.mark.parametrize("task, answer", [(Task.TEMPORAL, "[2.5, 12.5]"), (Task.TEMPORAL_MCQ, "B\n[2.5, 12.5]")])
def test_temporal_tasks_naming_an_object_found_nowhere_are_no_evidence(task, answer):
    # Issue 21: such a row had 0 key frames where its set's other rows had 4 (a turned video).
    work = video_work(task, answer, objects=("car",), span=(2.5, 12.5), options=("a", "b"))
    with pytest.raises(SampleError) as caught:
        TemplateAnnotator().annotate(work)
    assert caught.value.code is RejectCode.NO_EVIDENCE
    assert "needs at least one key frame" in caught.value.message and "'car'" in caught.value.message


def test_general_tasks_without_detections_pass_with_no_evidence():
    row = verified(video_work(Task.VIDEO_MCQ, "B", options=("it sits", "it runs")))
    assert row.key_items == []
    assert "option B: it runs" in row.reasoning_process


# -- evidence comes from the detector only, inside the span ---------------------------------------


def test_only_detected_boxes_of_named_objects_are_chosen():
    work = video_work(Task.SPATIO_TEMPORAL, "It chases the ball.", objects=("dog", "ball"), detections=DETECTIONS)
    row = verified(work)
    detected = {(d.frame_idx, d.label, tuple(d.box)) for d in DETECTIONS}
    chosen = {(i.idx, i.name, tuple(b)) for i in row.key_items for b in i.boxes}
    assert chosen <= detected
    assert "<obj>cat</obj>" not in row.reasoning_process  # detected, but not an object of the sample


def test_key_frames_respect_the_span():
    work = video_work(Task.SPATIO_TEMPORAL, "It runs.", span=(4.0, 10.0), detections=DETECTIONS)
    row = verified(work)
    assert [k.time for k in row.key_frames] == [5.0, 9.0]


def test_several_instances_on_a_frame_become_several_boxes_best_first():
    dets = [
        det(4, "dog", [0.1, 0.1, 0.2, 0.2], 0.5),
        det(4, "dog", [0.6, 0.6, 0.7, 0.7], 0.9),
        det(4, "dog", [0.3, 0.3, 0.4, 0.4], 0.7),
        det(4, "dog", [0.8, 0.1, 0.9, 0.2], 0.3),
    ]
    row = verified(video_work(Task.SPATIO_TEMPORAL, "It runs.", detections=dets))
    [item] = row.key_items
    assert item.boxes == [[0.6, 0.6, 0.7, 0.7], [0.3, 0.3, 0.4, 0.4], [0.1, 0.1, 0.2, 0.2]]  # capped at 3
    [mention] = grammar.parse_trace(row.reasoning_process).mentions
    assert len(mention.boxes) == 3


def test_key_frames_are_few_spread_over_time_and_cover_every_object():
    dets = [det(t, "dog", [0.1, 0.1, 0.3, 0.3], 0.5 + t / 100) for t in range(20)] + [det(1, "ball", BALL, 0.4)]
    row = verified(video_work(Task.SPATIO_TEMPORAL, "It runs.", objects=("dog", "ball"), detections=dets))
    times = [k.time for k in row.key_frames]
    assert len(times) == 4
    assert 1.0 in times  # the only frame with the ball
    assert 19.0 in times  # the dog's best frame
    assert times[-1] - times[0] >= 15


def test_unusable_detections_are_skipped():
    dets = [
        det(3, "dog", [0.0, 0.0, 0.95, 0.95], 0.99),
        det(4, "dog", [0.2, 0.2, 0.2, 0.5], 0.9),
        det(6, "dog", DOG, 0.3),
    ]
    row = verified(video_work(Task.SPATIO_TEMPORAL, "It runs.", detections=dets))
    assert [(k.time, i.boxes) for k, i in zip(row.key_frames, row.key_items, strict=False)] == [(6.0, [DOG])]


def test_non_round_frame_times_are_written_within_the_tolerance():
    row = verified(
        video_work(
            Task.SPATIO_TEMPORAL,
            "It runs.",
            detections=[Detection(frame_idx=188, label="dog", score=0.8, box=[0.123456, 0.2, 0.4, 0.6])],
        )
    )
    assert "<obj>dog</obj><box>[0.123, 0.2, 0.4, 0.6]</box>at<t>7.5</t>s" in row.reasoning_process
    assert row.key_frames[0].time == 7.52


def test_the_annotation_is_deterministic():
    def make():
        return video_work(
            Task.SPATIO_TEMPORAL,
            "It runs.",
            objects=("dog", "ball"),
            detections=DETECTIONS[::-1],
        )

    first, second = TemplateAnnotator().annotate(make()), TemplateAnnotator().annotate(make())
    assert first == second
    assert first.model == "template" and first.prompt == load_prompt("template-cot").ref


# -- no evidence --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("work", "words"),
    [
        (video_work(Task.SPATIO_TEMPORAL, "It runs."), "'dog'"),
        (video_work(Task.SPATIO_TEMPORAL, "It runs.", detections=[det(14, "cat", BALL)]), "'dog'"),
        (video_work(Task.SPATIO_TEMPORAL, "It runs.", span=(13.0, 20.0), detections=DETECTIONS), "inside span"),
        (video_work(Task.SPATIO_TEMPORAL, "It runs.", objects=()), "names no object"),
        (image_work(), "'cup'"),
    ],
)
def test_grounded_tasks_without_a_detected_object_are_no_evidence(work, words):
    with pytest.raises(SampleError) as caught:
        TemplateAnnotator().annotate(work)
    assert caught.value.code is RejectCode.NO_EVIDENCE
    assert words in caught.value.message


# -- the steps ----------------------------------------------------------------------------------


def test_annotate_and_verify_steps_keep_good_samples_and_reject_the_rest():
    good = video_work(Task.SPATIO_TEMPORAL, "It runs.", detections=DETECTIONS)
    empty = video_work(Task.SPATIO_TEMPORAL, "It runs.")
    annotate = AnnotateStep(TemplateAnnotator())
    kept, rejected = run_steps([good, empty], [annotate, VerifyStep(VerifyConfig(), PROVENANCE_BASE)])
    assert kept.cot_row is not None and kept.cot_row.provenance.prompt_name == "template-cot"
    assert kept.cot_row.provenance.detector_score == pytest.approx(
        sum(d.score for d in DETECTIONS if d.label == "dog") / 4
    )
    assert isinstance(rejected, Reject) and (rejected.stage, rejected.code) == (Stage.ANNOTATE, RejectCode.NO_EVIDENCE)
    assert annotate.stats.rejected == {"no_evidence": 1}


class _FakeBatchAnnotator:
    """An annotator that answers a whole batch at once, as an async LLM client would."""

    name = "fake"
    batch_size = 3
    usage = None

    def __init__(self):
        self.inner = TemplateAnnotator()
        self.prompt = self.inner.prompt
        self.prompts = [self.prompt]
        self.batches: list[int] = []

    def take_usage(self, sample_id):
        return None

    def annotate(self, work):
        raise AssertionError("the step should call annotate_batch")

    def annotate_batch(self, batch):
        self.batches.append(len(batch))
        out = []
        for work in batch:
            try:
                out.append(self.inner.annotate(work))
            except SampleError as err:
                out.append(err)
        return out


def test_annotate_step_hands_batch_annotators_whole_batches():
    annotator = _FakeBatchAnnotator()
    works = [video_work(Task.SPATIO_TEMPORAL, "It runs.", detections=DETECTIONS) for _ in range(4)]
    works.append(video_work(Task.SPATIO_TEMPORAL, "It runs."))
    results = run_steps(works, [AnnotateStep(annotator)])
    assert annotator.batches == [3, 2]
    assert [isinstance(r, Reject) for r in results] == [False, False, False, False, True]
    assert results[-1].code is RejectCode.NO_EVIDENCE


# -- prompts ------------------------------------------------------------------------------------


def test_prompts_load_by_name_or_path_with_a_content_version(tmp_path):
    prompt = load_prompt("template-cot")
    assert prompt.name == "template-cot" and len(prompt.version) == 12
    assert "template-cot" in available_prompts()
    copy = tmp_path / "mine.yaml"
    shutil.copy(prompt.path, copy)
    assert load_prompt(str(copy)).version == prompt.version  # same bytes, same version
    copy.write_text(copy.read_text() + "\n# edited\n")
    assert load_prompt(copy).version != prompt.version


def test_unknown_prompts_and_bad_template_files_are_user_errors(tmp_path):
    with pytest.raises(StgrError, match="available prompts are .*template-cot"):
        load_prompt("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text(load_prompt("template-cot").path.read_text().replace("{question}", "{quesion}"))
    with pytest.raises(StgrError, match="quesion"):
        TemplateAnnotator(str(bad))
    partial = tmp_path / "partial.yaml"
    partial.write_text("name: partial\nkind: template\ndescription: x\ntasks: {}\n")
    with pytest.raises(StgrError, match="no templates for"):
        TemplateAnnotator(str(partial))


def test_temporal_tasks_without_a_sample_span_take_evidence_inside_the_answer_span():
    row = verified(video_work(Task.TEMPORAL, "[4.0, 10.0]", detections=DETECTIONS))
    assert [k.time for k in row.key_frames] == [5.0, 9.0]
