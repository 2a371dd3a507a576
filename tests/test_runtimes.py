"""Exported runtimes (detector.runtime): boxes agree with torch within a stated tolerance, the
export is cached once per weights hash and runtime, and what cannot run here says so."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from stgr_builder.detect import make_detector
from stgr_builder.detect.runtime import exported_model
from stgr_builder.detect.yolo import resolve_weights
from stgr_builder.errors import StgrError
from stgr_builder.models import DetectorConfig

#: The tolerance docs/detection.md states. Measured on the demo frames below, worst case: onnx
#: IoU 0.999999 and equal scores (4 decimals), openvino IoU 0.993 and scores 0.0042 apart. The
#: exports take dynamic shapes, so they see the same letterboxed input as torch; what differs is
#: the engines' arithmetic (another order of sums, fused kernels).
MIN_IOU = 0.98
MAX_SCORE_DIFF = 0.01
BATCH, IMGSZ = 4, 320


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory):
    """Exports made once per test session, in a private cache (never the user's)."""
    folder = tmp_path_factory.mktemp("export-cache")
    before = os.environ.get("STGR_CACHE_DIR")
    os.environ["STGR_CACHE_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("STGR_CACHE_DIR", None)
    else:
        os.environ["STGR_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def demo_frames(tmp_path_factory) -> list[Path]:
    """Frames of a demo video (every 7th) and a demo still, as JPEGs like the sampler writes."""
    import cv2

    from stgr_builder.dryrun.demo import generate_demo

    folder = tmp_path_factory.mktemp("runtime-demo")
    generate_demo(folder, seed=0, n_videos=1, n_images=1)
    frames = []
    for video in sorted(folder.rglob("*.mp4")):
        capture = cv2.VideoCapture(str(video))
        ok, index = True, 0
        while ok and len(frames) < 10:
            ok, image = capture.read()
            if ok and index % 7 == 0:
                frames.append(folder / f"{video.stem}-{index}.jpg")
                cv2.imwrite(str(frames[-1]), image)
            index += 1
        capture.release()
    return frames + sorted(p for p in folder.rglob("*.jpg") if p.parent != folder)[:1]


def _iou(a: list[float], b: list[float]) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@pytest.mark.slow  # exports the demo model (~10 s each) and detects with two engines
@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_exported_boxes_agree_with_torch(runtime, export_cache, demo_frames, tmp_path, monkeypatch):
    # OpenVINO's converter reports to Google Analytics and writes ~/intel unless CI=true is set or
    # the user opted out: an offline build must do neither (the report also forks the process).
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    torch_boxes = make_detector(DetectorConfig(batch=BATCH, imgsz=IMGSZ, device="cpu"), Path(".")).detect(demo_frames)
    exported = make_detector(DetectorConfig(batch=BATCH, imgsz=IMGSZ, device="cpu", runtime=runtime), Path("."))
    assert exported.name == f"ultralytics:stgr-demo-yolo11n:{runtime}"  # provenance tells the engines apart
    runtime_boxes = exported.detect(demo_frames)
    assert sum(map(len, torch_boxes)) >= len(demo_frames)  # the demo model finds the demo objects
    worst_iou, worst_score = 1.0, 0.0
    for want, got in zip(torch_boxes, runtime_boxes, strict=True):
        assert len(got) == len(want)
        for det in want:  # each torch box has its counterpart: same label, nearly the same box
            match = max(got, key=lambda g: _iou(det.box, g.box) if g.label == det.label else -1.0)
            assert match.label == det.label
            worst_iou = min(worst_iou, _iou(det.box, match.box))
            worst_score = max(worst_score, abs(det.score - match.score))
    assert worst_iou >= MIN_IOU and worst_score <= MAX_SCORE_DIFF, (worst_iou, worst_score)
    assert list(export_cache.glob(f"detector/*-{runtime}-{IMGSZ}-dynamic-*/weights*"))
    assert not (tmp_path / "intel").exists()


@pytest.mark.slow  # one ONNX export
def test_concurrent_callers_export_once(tmp_path):
    """Shards starting together wait on one export and read the finished model: one folder,
    nothing half-written left, and a later call does not export again."""
    weights = resolve_weights("builtin:stgr-demo-yolo11n", Path("."))
    paths: list[Path] = []

    def export() -> None:
        paths.append(exported_model(weights, "h" * 16, "onnx", 160, 2, "cpu", cache=tmp_path))

    threads = [threading.Thread(target=export) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(paths) == 3 and len(set(paths)) == 1 and paths[0].is_file()
    assert [p.name for p in (tmp_path / "detector").iterdir() if p.is_dir()] == [paths[0].parent.name]
    stamp = paths[0].stat().st_mtime_ns
    assert exported_model(weights, "h" * 16, "onnx", 160, 2, "cpu", cache=tmp_path) == paths[0]
    assert paths[0].stat().st_mtime_ns == stamp


def test_tensorrt_without_a_gpu_fails_with_one_line():
    with pytest.raises(StgrError, match="needs an NVIDIA GPU") as caught:
        make_detector(DetectorConfig(runtime="tensorrt", device="cpu"), Path("."))
    assert "\n" not in str(caught.value)


def test_tensorrt_without_the_package_says_so(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not importable, as on this machine
    with pytest.raises(StgrError, match="TensorRT is not available"):
        from stgr_builder.detect.runtime import check_runtime

        check_runtime("tensorrt", "cuda:0")


def test_a_runtime_is_for_the_ultralytics_backend_only():
    with pytest.raises(ValueError, match="runtime onnx is for the ultralytics backend"):
        DetectorConfig(backend="groundingdino", runtime="onnx")


def test_the_runtime_is_in_the_build_id_unless_torch(tmp_path):
    from stgr_builder.dryrun.demo import demo_config
    from stgr_builder.executor import BuildContext

    config = demo_config()
    ids = {
        runtime: BuildContext(
            config.model_copy(update={"detector": config.detector.model_copy(update={"runtime": runtime})}),
            tmp_path,
            tmp_path,
        ).build_id
        for runtime in ("torch", "onnx", "openvino")
    }
    assert ids["torch"] == BuildContext(config, tmp_path, tmp_path).build_id == "638011dce23d"
    assert len(set(ids.values())) == 3


def _one_video_rows(tmp_path):
    from stgr_builder.models import SourceSample, Task, VideoInfo, sample_id

    sample = SourceSample(
        id=sample_id("STR_x", "1", "q"),
        source="STR_x",
        source_id="1",
        task=Task.VIDEO_MCQ,
        question="q",
        answer="A",
        video_path="v.mp4",
        media_root=str(tmp_path),
    )
    info = VideoInfo(path="v.mp4", duration=60, fps=30, n_frames=1800, width=640, height=360, keyframes=[0, 900])
    return [(sample, info)]


@pytest.mark.parametrize(("detector", "faster"), [({"runtime": "openvino"}, True), ({"runtime": "onnx"}, False)])
def test_the_plan_prices_detection_by_runtime(tmp_path, detector, faster):
    """The plan's detect seconds follow the configured runtime's measured constant, and it lists
    every measured setting for the same frames, so a user can choose before paying."""
    from stgr_builder.models import BuildConfig
    from stgr_builder.planning import estimate

    source = {"sources": [{"name": "STR_x", "adapter": "demo", "path": "x.jsonl", "media_root": "."}]}
    rows = _one_video_rows(tmp_path)
    torch = estimate(BuildConfig.model_validate({**source, "detector": {"device": "cpu"}}), rows)
    other = estimate(BuildConfig.model_validate({**source, "detector": {"device": "cpu", **detector}}), rows)
    assert other.detector_frames == torch.detector_frames > 0
    assert (other.detect_seconds < torch.detect_seconds) is faster
    assert other.assumptions["detect_setting"] == f"ultralytics/{detector['runtime']}/cpu"
    hours = torch.assumptions["detect_hours_by_setting"]
    assert set(hours) >= {"ultralytics/torch/cpu", "ultralytics/openvino/cpu", "ultralytics/onnx/cpu"}
    assert hours["ultralytics/torch/cpu"] == pytest.approx(torch.detect_seconds / 3600, abs=1e-3)
    assert hours["groundingdino/torch/cpu"] > 100 * hours["ultralytics/torch/cpu"]


def test_a_gpu_without_a_measured_constant_is_planned_at_the_cpus_and_says_so():
    from stgr_builder.detect.costs import detect_cost

    cost = detect_cost("ultralytics", "tensorrt", "cuda:0")
    assert not cost.measured and cost.source.startswith("not measured")
    assert cost.s_per_frame == detect_cost("ultralytics", "torch", "cpu").s_per_frame
