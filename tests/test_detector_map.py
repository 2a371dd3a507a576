"""The shipped demo detector finds the demo classes: mAP50 >= 0.9 on frames it never saw,
and it finds the objects in decoded frames of the demo videos."""

from __future__ import annotations

import os
from pathlib import Path

import av
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from stgr_builder.dryrun.demo import DEMO_CLASSES, generate_demo, load_truth  # noqa: E402
from stgr_builder.dryrun.demo.train import offline_ultralytics_env, write_data_yaml, write_yolo_split  # noqa: E402

pytestmark = pytest.mark.slow  # trains and evaluates a detector (~20 s)

WEIGHTS = Path(__file__).parents[1] / "stgr_builder" / "detect" / "weights" / "stgr-demo-yolo11n.pt"
HELD_OUT_SEED = 1000  # training renders with seeds 0 (train) and 1 (val)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    saved = {k: os.environ.get(k) for k in ("YOLO_CONFIG_DIR", "YOLO_OFFLINE", "HF_HUB_OFFLINE")}
    offline_ultralytics_env(tmp_path_factory.mktemp("yolo-config"))
    from ultralytics import YOLO

    assert WEIGHTS.is_file(), f"{WEIGHTS} is missing: python -m stgr_builder.dryrun.demo.train --out {WEIGHTS}"
    assert WEIGHTS.stat().st_size <= 8 * 2**20
    yield YOLO(str(WEIGHTS))
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_map50_on_held_out_rendered_frames(model, tmp_path):
    write_yolo_split(tmp_path, "val", 100, seed=HELD_OUT_SEED)
    data = write_data_yaml(tmp_path, train="images/val", val="images/val")
    metrics = model.val(
        data=str(data),
        imgsz=320,
        batch=16,
        device="cpu",
        workers=0,
        plots=False,
        verbose=False,
        project=str(tmp_path / "runs"),
        name="val",
    )
    assert list(model.names.values()) == list(DEMO_CLASSES)
    assert metrics.box.map50 >= 0.9, f"mAP50 {metrics.box.map50:.3f}"


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_finds_the_objects_in_decoded_demo_video(model, tmp_path):
    generate_demo(tmp_path, seed=7, n_videos=2, n_images=0)
    truth = load_truth(tmp_path)
    frames, gold = [], []
    for video in truth.videos:
        with av.open(str(tmp_path / "media" / video.path)) as container:
            for idx, frame in enumerate(container.decode(video=0)):
                boxes = [(o.name, o.boxes[idx]) for o in video.objects if o.boxes[idx] is not None]
                if boxes and idx % 7 == 0:
                    frames.append(frame.to_ndarray(format="bgr24"))
                    gold.append(boxes)
    assert len(frames) >= 20
    found = matched = predicted = correct = 0
    for start in range(0, len(frames), 16):
        for result, boxes in zip(
            model.predict(frames[start : start + 16], imgsz=320, conf=0.25, device="cpu", verbose=False),
            gold[start : start + 16],
            strict=False,
        ):
            preds = [
                (model.names[int(c)], b)
                for c, b in zip(result.boxes.cls.tolist(), result.boxes.xyxy.tolist(), strict=False)
            ]
            found += len(boxes)
            matched += sum(any(n == name and _iou(b, box) >= 0.5 for n, b in preds) for name, box in boxes)
            predicted += len(preds)
            correct += sum(any(n == name and _iou(b, box) >= 0.5 for name, box in boxes) for n, b in preds)
    recall, precision = matched / found, correct / max(1, predicted)
    assert recall >= 0.9 and precision >= 0.9, f"recall {recall:.2f}, precision {precision:.2f} over {found} objects"
