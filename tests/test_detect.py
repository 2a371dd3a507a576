"""The Ultralytics backend's real loading and prediction path, on a model built offline."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stgr_builder.detect import make_detector
from stgr_builder.errors import StgrError
from stgr_builder.models import DetectorConfig


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> Path:
    """A yolo11n with random weights, saved and reloaded from a .pt path like user weights."""
    from ultralytics import YOLO

    folder = tmp_path_factory.mktemp("weights")
    model = YOLO("yolo11n.yaml")
    path = folder / "my-yolo.pt"
    model.save(str(path))
    return path


def _textured_image(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.slow  # loads a detector
def test_user_weights_load_from_a_path_relative_to_the_config(random_weights, tmp_path):
    # conf=0 makes an untrained model emit boxes, so the conversion path is exercised.
    config = DetectorConfig(weights=random_weights.name, conf=0.0, imgsz=160, batch=2)
    detector = make_detector(config, config_dir=random_weights.parent)
    images = [_textured_image(tmp_path / f"{i}.jpg", i) for i in range(3)]
    per_image = detector.detect(images)
    assert len(per_image) == 3  # batch of 2 then 1, order kept
    boxes = [d for dets in per_image for d in dets]
    assert boxes, "a random model at conf=0 still proposes boxes"
    for det in boxes:
        x1, y1, x2, y2 = det.box
        assert 0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1
        assert det.label in {str(i) for i in range(80)}
    assert detector.name == "ultralytics:my-yolo"
    assert len(detector.weights_hash) == 16


def test_missing_weights_say_what_to_do(tmp_path):
    with pytest.raises(StgrError, match="nothing is fetched"):
        make_detector(DetectorConfig(weights="yolo11x.pt"), config_dir=tmp_path)
    with pytest.raises(StgrError, match="built-in"):
        make_detector(DetectorConfig(weights="builtin:nope"), config_dir=tmp_path)


@pytest.mark.slow  # detects a build's frames at several batch sizes
def test_a_frames_boxes_do_not_depend_on_its_batch(tmp_path_factory):
    """The shipped demo model on real demo frames of two sizes: detected all at once, one by
    one, in reverse, and among other companions, every frame gets the same boxes."""
    from helpers.small_demo import small_build

    _, out = small_build(tmp_path_factory)
    frames = sorted((out / "kfs").rglob("*.jpg"))
    assert len(frames) >= 18
    for i, path in enumerate(frames[-6:]):  # a second frame shape: the same pictures, larger
        with Image.open(path) as image:
            frames[-6 + i] = tmp_path_factory.mktemp("big") / path.name
            image.resize((400, 300)).save(frames[-6 + i])
    detector = make_detector(DetectorConfig(batch=4), config_dir=Path("."))

    def boxes(paths):
        return {path: [d.model_dump() for d in dets] for path, dets in zip(paths, detector.detect(paths), strict=False)}

    picked = frames[:12] + frames[-3:]
    together = boxes(picked)
    assert any(together.values())  # the demo model finds objects on demo frames
    assert boxes(picked[::-1]) == together
    for path in picked[:5]:
        assert boxes([path]) == {path: together[path]}
    assert boxes(picked[5:9] + frames[-6:]) == {**boxes(frames[-6:]), **{p: together[p] for p in picked[5:9]}}
