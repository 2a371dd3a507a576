"""Reproduce the shipped demo detector (``builtin:stgr-demo-yolo11n``).

Renders a YOLO-format dataset of demo scenes (train + val) under a temporary folder, trains a
randomly initialised Ultralytics YOLO11n on the CPU, offline and seeded, and saves the
stripped (fp16, no optimizer state) weights::

    python -m stgr_builder.dryrun.demo.train --out stgr_builder/detect/weights/stgr-demo-yolo11n.pt

It knows only ``DEMO_CLASSES``; for real video point ``detector.weights`` at your own model.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from stgr_builder.dryrun.demo.scenes import render_training_frame
from stgr_builder.dryrun.demo.sprites import DEMO_CLASSES

log = logging.getLogger("stgr.train_demo")


def offline_ultralytics_env(config_dir: Path) -> None:
    """Point Ultralytics at a private config folder with a font, and keep it offline.

    ``train()`` and ``plot()`` otherwise try to download Arial.ttf; any TTF will do, and
    matplotlib ships DejaVuSans. Call before importing ultralytics.
    """
    import matplotlib

    font_dir = config_dir / "Ultralytics"
    font_dir.mkdir(parents=True, exist_ok=True)
    font = Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if not (font_dir / name).exists():
            shutil.copyfile(font, font_dir / name)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"


def write_yolo_split(root: Path, split: str, n: int, seed: int) -> Path:
    """Render ``n`` frames into ``root/images/<split>`` with YOLO labels in ``root/labels/<split>``.

    Frames are stored as JPEG at varied quality, like the decoded (lossy) video frames the
    detector will see.

    >>> write_yolo_split(Path("/tmp/ds"), "val", 10, seed=1)  # doctest: +SKIP
    PosixPath('/tmp/ds/images/val')
    """
    rng = np.random.default_rng([seed, 7919])
    images, labels = root / "images" / split, root / "labels" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rgb, objects = render_training_frame(rng)
        h, w = rgb.shape[:2]
        quality = int(rng.integers(60, 96))
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        (images / f"{i:05d}.jpg").write_bytes(data.tobytes())
        lines = [
            f"{DEMO_CLASSES.index(cls)} {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} "
            f"{(b[2] - b[0]) / w:.6f} {(b[3] - b[1]) / h:.6f}"
            for cls, b in objects
        ]
        (labels / f"{i:05d}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    return images


def write_data_yaml(root: Path, train: str = "images/train", val: str = "images/val") -> Path:
    """The Ultralytics dataset file for a folder made by ``write_yolo_split``."""
    names = "\n".join(f"  {i}: {name}" for i, name in enumerate(DEMO_CLASSES))
    path = root / "data.yaml"
    path.write_text(f"path: {root}\ntrain: {train}\nval: {val}\nnames:\n{names}\n")
    return path


def train(
    out: Path,
    *,
    seed: int = 0,
    n_train: int = 1500,
    n_val: int = 160,
    epochs: int = 12,
    imgsz: int = 320,
    batch: int = 16,
    workers: int = 1,
    model_cfg: str = "yolo11n.yaml",
    lr0: float = 0.002,
    workdir: Path | None = None,
) -> dict[str, float]:
    """Render the data, train, copy the stripped best weights to ``out``; return the val metrics."""
    own_tmp = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="stgr-train-")) if workdir is None else workdir
    offline_ultralytics_env(workdir / "yolo-config")
    started = time.perf_counter()
    data_root = workdir / "data"
    write_yolo_split(data_root, "train", n_train, seed)
    write_yolo_split(data_root, "val", n_val, seed + 1)
    data = write_data_yaml(data_root)
    log.info("rendered %d train + %d val frames in %.1f s", n_train, n_val, time.perf_counter() - started)

    from ultralytics import YOLO

    model = YOLO(model_cfg)
    fit_started = time.perf_counter()
    model.train(
        data=str(data),
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        device="cpu",
        workers=workers,
        seed=seed,
        deterministic=True,
        pretrained=False,
        amp=False,
        plots=False,
        cache="ram",
        # A short run from random init: AdamW at a fixed rate, one warm-up epoch, and
        # the last quarter without mosaic so it ends on whole frames like the videos.
        optimizer="AdamW",
        lr0=lr0,
        warmup_epochs=1,
        close_mosaic=max(1, epochs // 4),
        project=str(workdir / "runs"),
        name="train",
        exist_ok=True,
        patience=epochs,
        verbose=False,
    )
    log.info("trained %d epochs in %.1f min", epochs, (time.perf_counter() - fit_started) / 60)
    best = workdir / "runs" / "train" / "weights" / "best.pt"  # already stripped (fp16, no optimizer)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, out)
    metrics = YOLO(str(out)).val(
        data=str(data),
        imgsz=imgsz,
        batch=batch,
        device="cpu",
        workers=0,
        plots=False,
        verbose=False,
        project=str(workdir / "runs"),
        name="val",
    )
    result = {
        "mAP50": float(metrics.box.map50),
        "mAP50-95": float(metrics.box.map),
        "minutes": (time.perf_counter() - started) / 60,
        "bytes": out.stat().st_size,
    }
    log.info("saved %s (%d bytes): %s", out, out.stat().st_size, result)
    if own_tmp:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=1500)
    parser.add_argument("--n-val", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--model", default="yolo11n.yaml")
    parser.add_argument("--lr0", type=float, default=0.002)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the data and runs here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(
        args.out,
        seed=args.seed,
        n_train=args.n_train,
        n_val=args.n_val,
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        workers=args.workers,
        model_cfg=args.model,
        lr0=args.lr0,
        workdir=args.workdir,
    )


if __name__ == "__main__":
    main()
