"""YOLO-World and YOLOE prompted with each sample's phrases (detect/openvocab.py), offline: random-
weight models from Ultralytics' yaml and random text encoders in the real files' formats, loaded
through the same code a user's downloaded files go through."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stgr_builder.core.resources import Resources
from stgr_builder.detect import DetectStep, make_detector
from stgr_builder.detect.openvocab import TextEmbeddings
from stgr_builder.errors import StgrError, StgrWarning
from stgr_builder.models import DetectorConfig, Frame, SampleWork, SourceObject, SourceSample, Task, VideoInfo

from helpers.tiny_openvocab import write_clip_checkpoint, write_model, write_torchscript_encoder

ENCODER = {"yoloe": "mobileclip.ts", "yolo_world": "ViT-B-32.pt"}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STGR_CACHE_DIR", str(tmp_path / "cache"))  # each test computes its own embeddings


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Both models, both encoders, and textured frames of two sizes."""
    root = tmp_path_factory.mktemp("openvocab")
    write_model(root / "yoloe-11n.pt", "yoloe")
    write_model(root / "yolov8n-worldv2.pt", "yolo_world")
    write_torchscript_encoder(root / ENCODER["yoloe"])
    write_clip_checkpoint(root / ENCODER["yolo_world"])
    for i in range(6):
        size = (320, 240) if i < 4 else (200, 300)
        pixels = np.random.default_rng(i).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"f{i}.jpg")
    return root


def _config(backend: str, **over) -> DetectorConfig:
    weights = "yoloe-11n.pt" if backend == "yoloe" else "yolov8n-worldv2.pt"
    base = {"backend": backend, "weights": weights, "text_encoder": ENCODER[backend]}
    # imgsz 128: at 96 the attention of C2PSA runs on 3x3 maps, where torch's batched matmul on
    # this CPU gives a frame other bits at another batch position (any model, closed set too)
    return DetectorConfig.model_validate({**base, "conf": 0.0, "imgsz": 128, "batch": 2, "device": "cpu", **over})


def test_each_phrase_is_encoded_once_and_keyed_by_the_encoder_file(tmp_path):
    encoder = write_torchscript_encoder(tmp_path / "enc.ts", seed=0)
    first = TextEmbeddings(encoder, "cpu", Resources(), folder=tmp_path)
    ab, bc = first.of(["a dog", "red car"]), first.of(["red car", "door"])
    assert first.phrases_encoded == 3  # "red car" came from the memo the second time
    assert ab.shape == (2, 512) and np.allclose(np.linalg.norm(ab, axis=1), 1.0)
    assert np.array_equal(ab[1], bc[0]) and not np.array_equal(ab[0], ab[1])
    # Another process (a new Resources): read from disk, the encoder is never run.
    again = TextEmbeddings(encoder, "cpu", Resources(), folder=tmp_path)
    assert np.array_equal(again.of(["door", "a dog"]), np.stack([bc[1], ab[0]]))
    assert again.phrases_encoded == 0
    # Another encoder file gives other embeddings: its own cache, computed anew.
    other = TextEmbeddings(write_torchscript_encoder(tmp_path / "other.ts", seed=1), "cpu", Resources(), tmp_path)
    assert other.identity != first.identity
    assert not np.allclose(other.of(["a dog", "red car"]), ab)
    assert other.phrases_encoded == 2
    # A cache folder that cannot be written: a warning, and the same embeddings.
    (tmp_path / "not-a-folder").write_text("")
    unwritable = TextEmbeddings(encoder, "cpu", Resources(), folder=tmp_path / "not-a-folder")
    with pytest.warns(StgrWarning, match="STGR_CACHE_DIR"):
        assert np.array_equal(unwritable.of(["a dog"]), ab[:1])


def test_missing_or_wrong_files_are_one_line_errors_naming_the_real_files(tmp_path):
    (tmp_path / "yoloe-11s-seg.pt").write_bytes(b"not read before the encoder is checked")
    (tmp_path / "ViT-B-32.pt").write_bytes(b"x")

    def error(**config) -> str:
        with pytest.raises(StgrError) as caught:
            make_detector(DetectorConfig.model_validate(config), tmp_path)
        assert "\n" not in str(caught.value)
        return str(caught.value)

    message = error(backend="yoloe", weights="yoloe-11s-seg.pt", text_encoder="mobileclip_blt.ts")
    assert "text encoder not found" in message and "nothing is fetched" in message
    assert "mobileclip_blt.ts" in message and "docs/detection.md" in message
    assert "detector.text_encoder" in error(backend="yoloe", weights="yoloe-11s-seg.pt")
    assert "ViT-B-32.pt" in error(backend="yolo_world", weights="world.pt", text_encoder="ViT-B-32.pt")
    assert "MobileCLIP" in error(backend="yoloe", weights="yoloe-11s-seg.pt", text_encoder="ViT-B-32.pt")
    write_torchscript_encoder(tmp_path / "mobileclip_blt.ts")
    closed_set = error(backend="yoloe", weights="builtin:stgr-demo-yolo11n", text_encoder="mobileclip_blt.ts")
    assert "is not a yoloe model (DetectionModel)" in closed_set


@pytest.mark.slow  # builds both models (~20 s)
@pytest.mark.parametrize("backend", ["yoloe", "yolo_world"])
def test_boxes_are_labelled_with_the_phrases_each_call_asks_for(files, backend):
    detector = make_detector(_config(backend), files)
    frames = [files / f"f{i}.jpg" for i in range(3)]
    found = detector.detect(frames, phrases=["red car", "door"])
    assert [len(dets) > 0 for dets in found] == [True, True, True]  # a random model at conf 0 proposes boxes
    assert {d.label for dets in found for d in dets} <= {"red car", "door"}
    for det in (d for dets in found for d in dets):
        x1, y1, x2, y2 = det.box
        assert 0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1 and 0 <= det.score <= 1
    assert {d.label for dets in detector.detect(frames, phrases=["bicycle"]) for d in dets} == {"bicycle"}
    assert detector.detect(frames, phrases=["red car", "door"]) == found  # the classes set back
    assert detector.detect(frames, phrases=None) == [[], [], []]
    assert detector.name == f"{backend}:{_config(backend).weights.removesuffix('.pt')}"
    # The text encoder is part of the detector's identity (the build id, the rows' provenance).
    other = files / f"other-{ENCODER[backend]}"
    if backend == "yoloe":
        write_torchscript_encoder(other, seed=5)
    else:
        write_clip_checkpoint(other, seed=5)
    swapped = make_detector(_config(backend, text_encoder=other.name), files)
    assert swapped.weights_hash != detector.weights_hash
    assert swapped.detect(frames, phrases=["red car", "door"]) != found


def _work(root: Path, sid: str, names: list[str], frames: list[int]) -> SampleWork:
    sample = SourceSample(
        id=sid,
        source="S",
        source_id=sid,
        task=Task.SPATIO_TEMPORAL,
        question=f"q{sid}",
        answer="a",
        video_path="v.mp4",
        media_root=str(root),
        objects=[SourceObject(name=name) for name in names],
    )
    info = VideoInfo(path="v.mp4", duration=10, fps=25, n_frames=250, width=320, height=240, keyframes=[0])
    sizes = {i: Image.open(root / f"f{i}.jpg").size for i in frames}
    return SampleWork(
        sample=sample,
        video=info,
        frames=[Frame(idx=i, time=i / 25, path=f"f{i}.jpg", width=sizes[i][0], height=sizes[i][1]) for i in frames],
    )


@pytest.mark.slow  # runs YOLOE over many batches
def test_detect_step_gives_each_sample_the_same_boxes_whatever_its_batch(files):
    """Samples with different phrase sets share frames: detected together, one by one and in
    reverse (other class switches, other companions), every sample gets byte-identical rows."""
    detector = make_detector(_config("yoloe", batch=3), files)

    def detections(batch_of: list[list[SampleWork]]) -> dict[str, str]:
        out = {}
        for batch in batch_of:
            step = DetectStep(detector, files, batch_size=len(batch))
            for work in step.process_batch([w.model_copy(deep=True) for w in batch]):
                assert isinstance(work, SampleWork)
                out[work.sample.id] = json.dumps([d.model_dump(mode="json") for d in work.detections])
        return out

    works = [
        _work(files, "1", ["red car", "door"], [0, 1, 4]),
        _work(files, "2", ["man"], [1, 2, 3, 5]),
        _work(files, "3", ["door", "red car"], [0, 3]),  # the same phrase set as 1: batched with it
        _work(files, "4", ["dog", "man"], [0, 1, 2, 3, 4, 5]),
    ]
    together = detections([works])
    assert detections([[w] for w in works]) == together
    assert detections([works[::-1]]) == together
    assert detections([works[2:], works[:2]]) == together
    for work in works:
        labels = {d["label"] for d in json.loads(together[work.sample.id])}
        assert labels and labels <= {o.name for o in work.sample.objects}  # the sample's own phrases


@pytest.mark.slow  # a small build (~30 s)
def test_a_build_detects_each_samples_own_phrases(files, tmp_path_factory):
    """The small demo built with YOLOE: every stored detection of a sample is labelled with one of
    that sample's object phrases (the detect stage's entries), and the rows name the detector."""
    from stgr_builder.pipeline import build, load_config
    from stgr_builder.sources import ingest

    from helpers.small_demo import small_source, write_config

    detector = _config("yoloe", weights=str(files / "yoloe-11n.pt"), text_encoder=str(files / ENCODER["yoloe"]))
    config = write_config(small_source(tmp_path_factory), "yoloe", detector=detector.model_dump(mode="json"))
    out = tmp_path_factory.mktemp("yoloe-build") / "out"
    manifest = build(config, out)
    samples, _, _ = ingest(load_config(config), config.parent)
    phrase_sets = [{o.name for o in sample.objects} for sample in samples]
    entries = [json.loads(p.read_text()) for p in (out / "_cache" / "stages" / "detect").rglob("*.json")]
    labelled = [
        {d["label"] for d in entry["work"]["detections"] if not d["gold"]} for entry in entries if entry.get("work")
    ]
    assert len(labelled) == len(samples) and all(labelled)  # a random model at conf 0 boxes every sample
    assert all(any(labels <= phrases for phrases in phrase_sets) for labels in labelled)
    assert set().union(*labelled) == set().union(*phrase_sets)  # every phrase asked for is detected
    assert manifest.detector["name"] == "yoloe:yoloe-11n"
