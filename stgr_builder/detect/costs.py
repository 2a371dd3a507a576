"""What a frame through the detector costs, per backend, runtime and device: the constants
``stgr plan`` estimates detection hours from (docs/detection.md has the table and commands).

Seconds of one shard thread per frame, padding included, at the scale of
``bench/full_size.py --per-sample 300`` on a quiet 2-core machine (two shard threads sharing one
model): the torch figure is measured there; the others are torch's divided by their speed
ratio against torch measured in the same run of ``bench/detector_runtimes.py`` (the median of
3 rounds on 64 distinct real frames, imgsz 320, batch 16). No GPU was lent to any session that
measured: a GPU device has no figure, and the plan then uses the CPU's (an upper bound) and
says so.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The builtin yolo11n at 320 px, batch 16, torch on the CPU (bench/full_size.py --per-sample 300).
TORCH_CPU_S_PER_FRAME = 0.016
#: Speed against torch on the CPU, bench/detector_runtimes.py (load ~7 on the shared 2-core
#: machine): OpenVINO 1.27x median (1.11x worst round), ONNX Runtime 0.67x (slower).
OPENVINO_CPU_SPEEDUP = 1.27
ONNX_CPU_SPEEDUP = 0.67
#: Open-vocabulary models against the demo's yolo11n on the CPU, one phrase set (bench/openvocab.py,
#: random weights at the real architectures' sizes): YOLOE-11s 2.57x, YOLOv8s-World v2 2.69x.
YOLOE_CPU_SLOWDOWN = 2.57
YOLO_WORLD_CPU_SLOWDOWN = 2.69
#: GroundingDINO SwinT on the CPU: 22-30 s per image (NOTES.md, random weights, loaded machine);
#: the middle of that range, not re-measured at the quiet-machine scale above (an upper bound).
GROUNDINGDINO_CPU_S_PER_FRAME = 26.0

#: (backend, runtime, device kind) -> (seconds per frame, where the figure comes from).
DETECT_S_PER_FRAME: dict[tuple[str, str, str], tuple[float, str]] = {
    ("ultralytics", "torch", "cpu"): (TORCH_CPU_S_PER_FRAME, "bench/full_size.py --per-sample 300"),
    ("ultralytics", "openvino", "cpu"): (
        round(TORCH_CPU_S_PER_FRAME / OPENVINO_CPU_SPEEDUP, 4),
        "torch / 1.27 (bench/detector_runtimes.py)",
    ),
    ("ultralytics", "onnx", "cpu"): (
        round(TORCH_CPU_S_PER_FRAME / ONNX_CPU_SPEEDUP, 4),
        "torch / 0.67 (bench/detector_runtimes.py)",
    ),
    ("yoloe", "torch", "cpu"): (
        round(TORCH_CPU_S_PER_FRAME * YOLOE_CPU_SLOWDOWN, 4),
        "torch x 2.57 (bench/openvocab.py, YOLOE-11s)",
    ),
    ("yolo_world", "torch", "cpu"): (
        round(TORCH_CPU_S_PER_FRAME * YOLO_WORLD_CPU_SLOWDOWN, 4),
        "torch x 2.69 (bench/openvocab.py, YOLOv8s-World v2)",
    ),
    ("groundingdino", "torch", "cpu"): (GROUNDINGDINO_CPU_S_PER_FRAME, "NOTES.md: SwinT 22-30 s per image"),
}


@dataclass(frozen=True)
class DetectCost:
    """The cost per frame the plan uses for one detector setting, and whether it was measured."""

    key: str  # backend/runtime/device
    s_per_frame: float
    source: str
    measured: bool


def device_kind(device: str) -> str:
    """``cpu`` or ``cuda`` (any GPU index).

    >>> device_kind("cuda:1"), device_kind("cpu")
    ('cuda', 'cpu')
    """
    return "cuda" if device.startswith("cuda") else "cpu"


def detect_cost(backend: str, runtime: str, device: str) -> DetectCost:
    """The measured cost of ``backend``/``runtime`` on ``device`` (a resolved device: cpu,
    cuda:0); without a figure for it, the CPU's at the same backend and runtime, marked
    unmeasured (no GPU was lent to measure one; TensorRT runs only on a GPU: torch's CPU figure).

    >>> detect_cost("ultralytics", "openvino", "cpu").s_per_frame
    0.0126
    >>> cost = detect_cost("ultralytics", "torch", "cuda:0"); cost.measured, cost.s_per_frame
    (False, 0.016)
    """
    kind = device_kind(device)
    key = f"{backend}/{runtime}/{kind}"
    for candidate in ((backend, runtime, kind), (backend, runtime, "cpu"), (backend, "torch", "cpu")):
        if candidate in DETECT_S_PER_FRAME:
            seconds, source = DETECT_S_PER_FRAME[candidate]
            measured = candidate == (backend, runtime, kind)
            return DetectCost(key, seconds, source if measured else f"not measured: {source} used", measured)
    seconds, source = DETECT_S_PER_FRAME[("ultralytics", "torch", "cpu")]
    return DetectCost(key, seconds, f"not measured: {source} used", False)


def detect_options() -> list[DetectCost]:
    """Every measured setting, for the plan's table of choices."""
    return [detect_cost(backend, runtime, kind) for backend, runtime, kind in DETECT_S_PER_FRAME]
