"""Exported runtimes of the Ultralytics backend (``detector.runtime``).

``torch`` runs the ``.pt`` weights as they are. ``onnx`` (ONNX Runtime), ``openvino`` and
``tensorrt`` run the same weights exported by Ultralytics (``model.export(format=...)``) and
loaded back with ``YOLO(exported_path)``: the same pre- and post-processing code, another
engine for the network. The export is made once per weights hash, runtime, input size and
batch, and cached under ``$STGR_CACHE_DIR/detector/`` (default ``~/.cache/stgr-builder``):
shards in other processes wait on a file lock, the export is written to a private folder and
renamed into place, so nobody reads a half-written model.

ONNX and OpenVINO are exported with dynamic shapes, so they see the same letterboxed input as
torch; their engines sum in another order, so boxes differ from torch's in the last digits
(tests/test_runtimes.py states the tolerance). The runtime is therefore part of the detector's
identity: a non-default runtime enters the build id and the detector's name.
"""

from __future__ import annotations

import fcntl
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Literal

from stgr_builder.core.files import cache_home
from stgr_builder.errors import StgrError, require

Runtime = Literal["torch", "openvino", "onnx", "tensorrt"]

#: Ultralytics' export format of each exported runtime.
EXPORT_FORMAT: dict[str, str] = {"onnx": "onnx", "openvino": "openvino", "tensorrt": "engine"}
#: Runtimes exported with dynamic input shapes: Ultralytics then letterboxes each batch to its
#: own size, as in torch (a 640x272 frame at imgsz 320 runs as 320x160, not 320x320: half the
#: pixels, and the same input as torch, so the same boxes but for the engine's arithmetic).
#: TensorRT keeps a fixed input (its dynamic profiles are not measured: no GPU here).
DYNAMIC = frozenset({"onnx", "openvino"})
#: The file (or folder) Ultralytics writes next to ``weights.pt``, per runtime.
EXPORTED_NAME: dict[str, str] = {
    "onnx": "weights.onnx",
    "openvino": "weights_openvino_model",
    "tensorrt": "weights.engine",
}


def check_runtime(runtime: str, device: str) -> None:
    """Fail with one line when ``runtime`` cannot run here (its package, or TensorRT's GPU)."""
    if runtime == "torch":
        return
    if runtime == "tensorrt" and not device.startswith("cuda"):
        raise StgrError(
            f"detector.runtime tensorrt needs an NVIDIA GPU (detector.device is {device!r}): "
            "use runtime torch, onnx or openvino on the CPU"
        )
    if runtime == "tensorrt":
        try:
            require("tensorrt")
        except StgrError as exc:
            raise StgrError(
                "detector.runtime tensorrt: TensorRT is not available (pip install tensorrt, matching the "
                f"GPU's CUDA; it is in no extra of stgr-builder): {exc}"
            ) from exc
    elif runtime == "openvino":
        _decline_openvino_telemetry()  # before the import: importing openvino starts its reporter
        require("openvino", extra="runtimes")
    else:
        require("onnxruntime", extra="runtimes")
    # The export goes through ONNX except for OpenVINO (which converts the torch model itself).
    if runtime != "openvino":
        require("onnx", extra="runtimes")
        require("onnxslim", extra="runtimes")


def export_key(weights_hash: str, runtime: str, imgsz: int, batch: int) -> str:
    """The cache folder's name: what decides the exported model (the exporter's version too:
    a newer Ultralytics may not load an older export).

    >>> export_key("ab12", "onnx", 320, 16)  # doctest: +ELLIPSIS
    'ab12-onnx-320-dynamic-u8...'
    >>> export_key("ab12", "tensorrt", 320, 16)  # doctest: +ELLIPSIS
    'ab12-tensorrt-320-b16-u8...'
    """
    from importlib.metadata import version

    shape = "dynamic" if runtime in DYNAMIC else f"b{batch}"
    return f"{weights_hash}-{runtime}-{imgsz}-{shape}-u{version('ultralytics')}"


def exported_model(
    weights: Path, weights_hash: str, runtime: str, imgsz: int, batch: int, device: str, cache: Path | None = None
) -> Path:
    """The exported model of ``weights`` for ``runtime`` (a file or an OpenVINO folder),
    exported on first use; concurrent callers (threads or processes) export it once."""
    folder = (cache or cache_home()) / "detector" / export_key(weights_hash, runtime, imgsz, batch)
    target = folder / EXPORTED_NAME[runtime]
    if target.exists():
        return target
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not target.exists():  # another process exported it while this one waited
            _export_into(folder, weights, runtime, imgsz, batch, device)
    return target


def _export_into(folder: Path, weights: Path, runtime: str, imgsz: int, batch: int, device: str) -> None:
    """Export in a private folder beside ``folder``, then rename it into place (atomic)."""
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    work.chmod(0o755)  # a shared cache: readable like the folders around it
    try:
        # Ultralytics writes the export next to the weights: a copy keeps the shipped package
        # (perhaps read-only) untouched and gives the output a fixed name.
        shutil.copyfile(weights, work / "weights.pt")
        _export(work / "weights.pt", runtime, imgsz, batch, device)
        if not (work / EXPORTED_NAME[runtime]).exists():
            raise StgrError(f"exporting {weights.name} to {runtime} wrote no {EXPORTED_NAME[runtime]}")
        (work / "weights.pt").unlink()
        if folder.exists():  # a leftover without the model: replaced
            shutil.rmtree(folder)
        work.rename(folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _export(weights: Path, runtime: str, imgsz: int, batch: int, device: str) -> None:
    """Ultralytics' export, for a fixed input of ``batch`` frames of ``imgsz`` squared."""
    if runtime == "openvino":
        _decline_openvino_telemetry()  # also when called without check_runtime
    model = require("ultralytics").YOLO(str(weights))
    # Only what a format accepts (Ultralytics refuses other arguments); onnxslim simplifies the
    # ONNX graph; GPU half precision is not measured yet (docs/detection.md).
    extra: dict[str, bool] = {"simplify": True} if runtime in ("onnx", "tensorrt") else {}
    if runtime in DYNAMIC:
        extra["dynamic"] = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notices: never printed
            fmt = EXPORT_FORMAT[runtime]
            model.export(format=fmt, imgsz=imgsz, batch=batch, device=device, half=False, verbose=False, **extra)
    except Exception as exc:  # Ultralytics raises many kinds; the user needs the one line
        raise StgrError(f"exporting the detector to {runtime} failed: {type(exc).__name__}: {exc}") from exc


def _decline_openvino_telemetry() -> None:
    """Answer "no" to OpenVINO's usage reporting for this process.

    OpenVINO starts a reporter on import that writes a client id under ``~/intel`` and reports each
    conversion to Google Analytics, unless the user opted out there or ``CI=true`` is set. An offline build sends
    nothing (as it sets ``YOLO_OFFLINE`` and Prefect's analytics off); and the reporter forks the
    threaded build process to send, a child that can hang after the fork holding the export lock's
    file, so the shards waiting on that lock would wait forever (seen in the tests).
    """
    try:
        from openvino_telemetry import Telemetry
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:  # openvino without its reporter: nothing to decline
        return

    def declined(*args: object, **kwargs: object) -> ConsentCheckResult:
        return ConsentCheckResult.DECLINED

    OptInChecker.check = declined  # asked on every (re)start of the reporter
    started = getattr(Telemetry, "_SingletonMetaClass__single_instance", None)  # a reporter already running
    if started is not None:
        started.consent = False
