"""Open-vocabulary Ultralytics backends: YOLO-World and YOLOE prompted with each sample's phrases.

The detect step sends the frames of one phrase set together (``DetectStep._phrases_of``: the
sample's object names, sorted); the detector sets those phrases as the model's classes, so
every box is labelled with one of the sample's own phrases, exactly as written.

Text embeddings come from a local text-encoder file (``detector.text_encoder``), loaded by
Ultralytics' own text-model classes, never by name (which would download it):

- ``yoloe``: the MobileCLIP TorchScript text encoder ``mobileclip_blt.ts`` (YOLOE v8 / 11;
  ``mobileclip2_b.ts`` for YOLOE-26), through ``ultralytics.nn.text_model.MobileCLIPTS``;
- ``yolo_world``: the OpenAI CLIP checkpoint ``ViT-B-32.pt``, through
  ``ultralytics.nn.text_model.CLIP``.

Each phrase is encoded once, alone (so its embedding does not depend on which phrases were
encoded with it), and cached on disk under ``text-embeddings/<encoder sha256>/`` of the cache
folder (``STGR_CACHE_DIR``, else ``$XDG_CACHE_HOME/stgr-builder``, else
``~/.cache/stgr-builder``): a build whose phrases are all cached never loads the encoder.

>>> config = DetectorConfig(backend="yoloe", weights="yoloe-11s-seg.pt", text_encoder="mobileclip_blt.ts")
>>> det = OpenVocabDetector(config, Path("models"), Resources())  # doctest: +SKIP
>>> det.detect([Path("kfs/ab/ab12.jpg")], phrases=["door", "red car"])[0][0].label  # doctest: +SKIP
'red car'
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from stgr_builder.core.files import cache_home
from stgr_builder.core.hashing import digest
from stgr_builder.core.resources import LoadedModel, Resources
from stgr_builder.detect.base import pick_device, weights_hash
from stgr_builder.detect.yolo import UltralyticsDetector, resolve_weights
from stgr_builder.errors import StgrError, require, warn
from stgr_builder.models import Detection, DetectorConfig

#: Where each backend's real files come from (the error for a missing file names them).
REAL_WEIGHTS = {
    "yoloe": (
        "a YOLOE checkpoint (yoloe-11s-seg.pt, yoloe-v8l-seg.pt, yoloe-26s-seg.pt, ...) and its text encoder "
        "mobileclip_blt.ts (mobileclip2_b.ts for YOLOE-26), from the Ultralytics assets release "
        "(github.com/ultralytics/assets/releases); see docs/detection.md"
    ),
    "yolo_world": (
        "a YOLO-World checkpoint (yolov8s-worldv2.pt, ...) from the Ultralytics assets release and OpenAI "
        "CLIP's ViT-B-32.pt (the file `clip.load('ViT-B/32')` downloads); see docs/detection.md"
    ),
}

#: Bytes of text embeddings the process keeps in memory (2 KB per phrase at 512 floats).
EMBEDDINGS_MEMO_BYTES = 16 << 20


def _missing(what: str, path: Path | None, backend: str) -> StgrError:
    where = f" not found: {path}" if path is not None else " is not set (detector.text_encoder)"
    return StgrError(f"{backend} {what}{where}; nothing is fetched: download {REAL_WEIGHTS[backend]}")


def _load_text_encoder(path: Path, device: str) -> Any:
    """Ultralytics' text model for a local encoder file: a TorchScript MobileCLIP (``.ts``) or
    an OpenAI CLIP checkpoint (anything else)."""
    import warnings

    import torch

    with warnings.catch_warnings():  # clip imports pkg_resources, which warns that it is deprecated
        warnings.simplefilter("ignore", UserWarning)
        require("clip", extra="openvocab")  # Ultralytics' tokenizer; without it Ultralytics pip-installs it
    from ultralytics.nn.text_model import CLIP, MobileCLIPTS

    if path.suffix == ".ts":
        return MobileCLIPTS(torch.device(device), weight=str(path))  # an existing path is never downloaded
    try:
        return CLIP(str(path), torch.device(device))  # clip.load takes a file path as the model name
    except (RuntimeError, KeyError, ValueError) as exc:
        raise StgrError(f"{path} is not a CLIP checkpoint (e.g. ViT-B-32.pt): {exc}") from exc


class TextEmbeddings:
    """Unit-length text embeddings of phrases, by one encoder file: computed once per phrase,
    kept on disk keyed by the encoder's sha256 and the phrase, and in the process's memo."""

    def __init__(self, path: Path, device: str, resources: Resources, folder: Path | None = None):
        self.path = path
        self.device = device
        self.identity = weights_hash(path)  # a different encoder file gives other embeddings
        self.folder = (folder or cache_home()) / "text-embeddings" / self.identity
        self.phrases_encoded = 0  # phrases run through the encoder by this object
        self._resources = resources
        self._memo = resources.memo("text-embeddings", EMBEDDINGS_MEMO_BYTES)

    def of(self, phrases: list[str]) -> np.ndarray:
        """A (len(phrases), dim) float32 array, one row per phrase, in order."""
        return np.stack([self._one(phrase) for phrase in phrases])

    def _one(self, phrase: str) -> np.ndarray:
        key = (self.identity, phrase)
        found = self._memo.get(key)
        if found is None:
            file = self.folder / f"{digest([phrase])[:32]}.npy"
            found = np.load(file) if file.is_file() else self._encode_to(phrase, file)
            self._memo.put(key, found)
        return found

    def _encode_to(self, phrase: str, file: Path) -> np.ndarray:
        import torch

        loaded = self._encoder()
        with loaded.lock, torch.no_grad():
            features = loaded.model.encode_text(loaded.model.tokenize([phrase])).float()
        self.phrases_encoded += 1
        # Ultralytics' CLIP normalizes, the TorchScript encoders normalize inside: once more is
        # a no-op that makes every encoder's rows unit length.
        row = torch.nn.functional.normalize(features, dim=-1)[0].cpu().numpy().astype(np.float32)
        # Another process or thread may write the same file: each its own partial, then an
        # atomic rename (a reader sees the whole file or none).
        partial = file.with_name(f"{file.stem}.{os.getpid()}-{threading.get_ident()}.tmp.npy")
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            np.save(partial, row)
            partial.replace(file)
        except OSError as exc:  # the embedding is still right: only its reuse by a later process is lost
            warn(f"text-embedding cache not writable ({exc}); set STGR_CACHE_DIR to a writable folder")
        return row

    def _encoder(self) -> LoadedModel:
        return self._resources.model(
            ("text-encoder", str(self.path), self.device), lambda: _load_text_encoder(self.path, self.device)
        )


def _load_openvocab(backend: str, weights: Path, device: str) -> Any:
    ultralytics = require("ultralytics")
    from ultralytics.nn.tasks import WorldModel, YOLOEModel

    model: Any = (ultralytics.YOLOE if backend == "yoloe" else ultralytics.YOLOWorld)(str(weights))
    net: Any = model.model
    if not isinstance(net, YOLOEModel if backend == "yoloe" else WorldModel):
        raise StgrError(f"{weights} is not a {backend} model ({type(net).__name__}); {REAL_WEIGHTS[backend]}")
    if hasattr(model.model.model[-1], "lrpc"):
        raise StgrError(
            f"{weights} is a prompt-free YOLOE (-pf): use a text-prompt checkpoint such as yoloe-11s-seg.pt"
        )
    model.to(device)
    return model


class OpenVocabDetector(UltralyticsDetector):
    """YOLO-World / YOLOE detection of each call's ``phrases`` (see the module doc). Frames
    are batched as the closed-set backend does (by shape, padded to ``detector.batch``), so a
    frame's boxes depend on the frame, its phrases and the batch size alone."""

    uses_phrases = True  # open vocabulary: each frame is prompted with its sample's phrases

    def __init__(
        self, config: DetectorConfig, config_dir: Path, resources: Resources, *, known_hash: str | None = None
    ):
        backend = config.backend
        self.config = config
        try:
            self.weights = resolve_weights(config.weights, config_dir)
        except StgrError:
            raise _missing("weights", (config_dir / config.weights).expanduser(), backend) from None
        if not config.text_encoder:
            raise _missing("text encoder", None, backend)
        encoder = (config_dir / config.text_encoder).expanduser()
        if not encoder.is_file():
            raise _missing("text encoder", encoder, backend)
        if (encoder.suffix == ".ts") != (backend == "yoloe"):
            wanted = "a MobileCLIP TorchScript file (.ts)" if backend == "yoloe" else "a CLIP checkpoint (.pt)"
            raise StgrError(f"{backend} was trained with {wanted} as its text encoder, not {encoder.name}")
        self.device = pick_device(config.device)
        self.embeddings = TextEmbeddings(encoder.resolve(), self.device, resources)
        # Both files decide the boxes: the build id and each row's provenance name them together.
        # ``known_hash``: what the build resolved once (the weights are not read again).
        self.weights_hash = known_hash or digest([weights_hash(self.weights), self.embeddings.identity])[:16]
        self.name = f"{backend}:{self.weights.stem}"
        self.frames_inferred = 0
        self._loaded = resources.model(
            (backend, str(self.weights), self.device), lambda: _load_openvocab(backend, self.weights, self.device)
        )

    def detect(self, images: list[Path], phrases: list[str] | None = None) -> list[list[Detection]]:
        if not phrases:
            return [[] for _ in images]  # nothing asked about, nothing to box
        return super().detect(images, phrases)

    def _predict(self, frames: list, phrases: list[str] | None) -> list:
        names = tuple(phrases or ())
        raw = self.embeddings.of(list(names))
        with self._loaded.lock:  # the classes and the prediction together: threads share the model
            self._set_classes(names, raw)
            predictions = self._loaded.model.predict(
                frames,
                imgsz=self.config.imgsz,
                conf=self.config.conf,
                iou=self.config.iou,
                device=self.device,
                verbose=False,
            )
        for prediction in predictions:
            prediction.names = dict(enumerate(names))  # the phrases exactly as given
        return predictions

    def _set_classes(self, names: tuple[str, ...], raw: np.ndarray) -> None:
        """The model's classes (``set_classes`` of each model type, with embeddings from our
        cache instead of its by-name text model). Skipped when already set: a new set rebuilds
        Ultralytics' predictor."""
        model = self._loaded.model
        prompt = (self.embeddings.identity, names)  # detectors with other encoders may share the model
        if getattr(model, "stgr_prompt", None) == prompt:
            return
        import torch

        param = next(model.model.parameters())
        feats = torch.from_numpy(raw)[None].to(device=param.device, dtype=param.dtype)  # (1, n, dim)
        dim = model.model.model[-1].embed if self.config.backend == "yoloe" else model.model.txt_feats.shape[-1]
        if feats.shape[-1] != dim:
            raise StgrError(
                f"text encoder {self.embeddings.path.name} gives {feats.shape[-1]}-d embeddings, "
                f"{self.weights.name} takes {dim}-d: use the encoder the model was trained with"
            )
        with torch.no_grad():
            if self.config.backend == "yoloe":
                model.set_classes(list(names), model.model.model[-1].get_tpe(feats))  # YOLOE's text head
            else:  # YOLOWorld.set_classes without its CLIP: the same three fields
                model.model.txt_feats = feats
                model.model.model[-1].nc = len(names)
                model.model.names = list(names)
                model.predictor = None
        model.stgr_prompt = prompt
