"""GroundingDINO backend: open-vocabulary boxes for the object phrases of the samples.

Two checkpoint formats, chosen by ``detector.format``:

- ``idea``: the original IDEA-Research release through ``groundingdino-py``: ``weights`` is
  the ``.pth`` checkpoint (``groundingdino_swint_ogc.pth``), ``model_config_file`` its config
  ``.py`` (``GroundingDINO_SwinT_OGC.py``), ``text_encoder`` a local ``bert-base-uncased``
  folder (config, weights, ``vocab.txt``), so nothing is fetched at load time;
- ``hf``: the Hugging Face port through ``transformers``: ``weights`` is a folder saved by
  ``save_pretrained`` (``config.json``, weights, tokenizer and preprocessor files), e.g. a
  download of ``IDEA-Research/grounding-dino-tiny``.

The prompt is ``"phrase1 . phrase2 . ..."`` built from the samples' object names (long lists
are split so each prompt fits the text encoder). Each query box gets the phrase whose tokens
score highest; it is kept when that score is above ``conf`` (the box threshold) and
``text_threshold``. Labels are the phrases exactly as given, so they match the sample's
object names. Images are resized to ``imgsz`` on the short side (at most 1333/800 of it on
the long side), as GroundingDINO's own transform does with 800.

>>> det = GroundingDinoDetector(DetectorConfig(backend="groundingdino", format="hf",
...                                             weights="models/grounding-dino-tiny"), Path("."))  # doctest: +SKIP
>>> det.detect([Path("kfs/ab/ab12.jpg")], phrases=["red car", "bicycle"])[0][0]  # doctest: +SKIP
Detection(frame_idx=0, label='red car', score=0.62, box=[0.12, 0.4, 0.35, 0.71], gold=False)
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stgr_builder.core.hashing import digest
from stgr_builder.core.resources import Resources
from stgr_builder.detect.base import pick_device, weights_hash
from stgr_builder.errors import StgrError, require
from stgr_builder.models import Detection, DetectorConfig

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
#: Tokens of one prompt, [CLS] and [SEP] included; the models take 256.
MAX_PROMPT_TOKENS = 250


@dataclass(frozen=True)
class Prompt:
    """A caption and, per phrase, the token positions ``[start, end)`` it occupies."""

    text: str
    phrases: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]


def build_prompts(phrases: Sequence[str], tokenize) -> list[Prompt]:
    """Captions ``"p1 . p2 ."`` with each phrase's token span, split to fit the encoder.

    ``tokenize`` is the tokenizer's ``tokenize`` (word pieces, no special tokens).

    >>> [p.text for p in build_prompts(["car", "red ball"], str.split)]
    ['car . red ball .']
    >>> build_prompts(["car", "red ball"], str.split)[0].spans
    ((1, 2), (3, 5))
    """
    prompts: list[Prompt] = []
    dot = len(tokenize("."))
    texts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 1  # after [CLS]
    for phrase in dict.fromkeys(p.strip().lower() for p in phrases if p.strip()):
        n = len(tokenize(phrase))
        if spans and pos + n + dot + 1 > MAX_PROMPT_TOKENS:
            prompts.append(Prompt(" . ".join(texts) + " .", tuple(texts), tuple(spans)))
            texts, spans, pos = [], [], 1
        texts.append(phrase)
        spans.append((pos, pos + n))
        pos += n + dot
    if texts:
        prompts.append(Prompt(" . ".join(texts) + " .", tuple(texts), tuple(spans)))
    return prompts


def _label_boxes(
    probs, boxes, prompt: Prompt, labels: dict[str, str], box_threshold: float, text_threshold: float
) -> list[Detection]:
    """Query boxes (``probs``: queries x tokens, sigmoid; ``boxes``: cx, cy, w, h normalized)
    -> detections labelled with their best phrase."""
    import torch

    per_phrase = torch.stack([probs[:, s:e].max(dim=1).values for s, e in prompt.spans], dim=1)
    best, which = per_phrase.max(dim=1)
    out = []
    for score, k, (cx, cy, w, h) in zip(best.tolist(), which.tolist(), boxes.tolist(), strict=False):
        if score <= box_threshold or score <= text_threshold:  # as GroundingDINO: kept above the thresholds
            continue
        box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        out.append(
            Detection(
                frame_idx=0,
                label=labels[prompt.phrases[k]],
                score=round(float(score), 4),
                box=[min(max(float(v), 0.0), 1.0) for v in box],
            )
        )
    return out


def _resize(image, short_side: int):
    width, height = image.size
    scale = short_side / min(width, height)
    longest = short_side * 1333 / 800
    if max(width, height) * scale > longest:
        scale = longest / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size) if size != image.size else image


def _resolve(path: str, config_dir: Path, *, folder: bool, what: str) -> Path:
    resolved = (config_dir / path).expanduser()
    ok = resolved.is_dir() if folder else resolved.is_file()
    if not ok:
        kind = "folder" if folder else "file"
        raise StgrError(f"groundingdino {what} not found: {resolved} (a {kind}; download it first, nothing is fetched)")
    return resolved.resolve()


def _folder_hash(folder: Path) -> str:
    files = [
        path
        for path in sorted(folder.iterdir())
        if path.is_file() and path.suffix in {".json", ".safetensors", ".bin", ".txt", ".pth"}
    ]
    return digest([f"{path.name}:{weights_hash(path)}" for path in files])[:16]


# ---------------------------------------------------------------------------------------
# Loading (once per worker process, through Resources: threads share the model and take
# turns on its lock)
# ---------------------------------------------------------------------------------------


def _load_idea(weights: Path, model_config: Path, text_encoder: Path | None, device: str):
    import torch

    require("groundingdino", extra="groundingdino")
    from groundingdino.models import build_model
    from groundingdino.util.misc import clean_state_dict
    from groundingdino.util.slconfig import SLConfig

    args = SLConfig.fromfile(str(model_config))
    args.device = device
    if text_encoder is not None:
        args.text_encoder_type = str(text_encoder)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # groundingdino-py prints while loading
            model = build_model(args)
    except OSError as exc:
        raise StgrError(
            f"groundingdino could not load its text encoder {args.text_encoder_type!r} ({exc}); "
            "set detector.text_encoder to a local bert-base-uncased folder"
        ) from exc
    checkpoint = torch.load(str(weights), map_location="cpu", weights_only=True)
    state = clean_state_dict(checkpoint.get("model", checkpoint))
    result = model.load_state_dict(state, strict=False)
    expected = len(model.state_dict())
    if len(result.missing_keys) > 0.1 * expected:
        raise StgrError(
            f"{weights} does not fit {model_config}: {len(result.missing_keys)} of {expected} "
            f"weights missing (e.g. {result.missing_keys[:3]})"
        )
    return model.to(device).eval()


def _load_hf(folder: Path, device: str):
    require("transformers", extra="groundingdino")
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForZeroShotObjectDetection.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise StgrError(
            f"{folder} is not a Hugging Face GroundingDINO folder (config.json, weights, "
            f"tokenizer, preprocessor_config.json): {exc}"
        ) from exc
    return processor, model.to(device).eval()


class GroundingDinoDetector:
    """Open-vocabulary detection prompted with the samples' object phrases (see module doc)."""

    uses_phrases = True  # open vocabulary: prompted with the samples' object phrases

    def __init__(
        self, config: DetectorConfig, config_dir: Path, resources: Resources, *, known_hash: str | None = None
    ):
        self.config = config
        self.device = pick_device(config.device)
        self.format = config.format
        if config.format == "idea":
            if not config.model_config_file:
                raise StgrError(
                    "detector.format idea needs detector.model_config_file "
                    "(the checkpoint's config .py, e.g. GroundingDINO_SwinT_OGC.py)"
                )
            self.weights = _resolve(config.weights, config_dir, folder=False, what="checkpoint")
            model_config = _resolve(config.model_config_file, config_dir, folder=False, what="config file")
            text_encoder = (
                _resolve(config.text_encoder, config_dir, folder=True, what="text encoder")
                if config.text_encoder
                else None
            )
            self.weights_hash = known_hash or weights_hash(self.weights)
            self._loaded = resources.model(
                ("groundingdino-idea", str(self.weights), str(model_config), str(text_encoder), self.device),
                lambda: _load_idea(self.weights, model_config, text_encoder, self.device),
            )
            self._model = self._loaded.model
            self._tokenizer = self._model.tokenizer
        else:
            self.weights = _resolve(config.weights, config_dir, folder=True, what="model folder")
            self.weights_hash = known_hash or _folder_hash(self.weights)
            self._loaded = resources.model(
                ("groundingdino-hf", str(self.weights), self.device), lambda: _load_hf(self.weights, self.device)
            )
            self._processor, self._model = self._loaded.model
            self._tokenizer = self._processor.tokenizer
        self.name = f"groundingdino-{config.format}:{self.weights.stem}"

    def detect(self, images: list[Path], phrases: list[str] | None = None) -> list[list[Detection]]:
        if not phrases:
            return [[] for _ in images]
        from PIL import Image

        labels = {p.strip().lower(): p for p in phrases if p.strip()}  # lower-cased in the prompt
        # The model's lock covers the tokenizer too: the fast tokenizers are not thread-safe.
        with self._loaded.lock:
            prompts = build_prompts(list(labels), self._tokenizer.tokenize)

        results = []
        for path in images:
            with Image.open(path) as opened:
                image = _resize(opened.convert("RGB"), self.config.imgsz)
            found: list[Detection] = []
            for prompt in prompts:
                with self._loaded.lock:
                    probs, boxes = self._forward(image, prompt)
                found += _label_boxes(probs, boxes, prompt, labels, self.config.conf, self.config.text_threshold)
            results.append(found)
        return results

    def _forward(self, image, prompt: Prompt) -> tuple[Any, Any]:
        """(queries x tokens probabilities, queries x 4 cx-cy-w-h boxes) for one image."""
        import torch

        with torch.no_grad():
            if self.format == "idea":
                import numpy as np

                pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
                pixels = (pixels - torch.tensor(_MEAN)[:, None, None]) / torch.tensor(_STD)[:, None, None]
                outputs = self._model(pixels[None].to(self.device), captions=[prompt.text])
                logits, boxes = outputs["pred_logits"][0], outputs["pred_boxes"][0]
                ids = self._tokenizer(prompt.text)["input_ids"]
            else:
                inputs = self._processor(images=image, text=prompt.text, return_tensors="pt", do_resize=False)
                outputs = self._model(**{k: v.to(self.device) for k, v in inputs.items()})
                logits, boxes = outputs.logits[0], outputs.pred_boxes[0]
                ids = inputs["input_ids"][0].tolist()
        if len(ids) != prompt.spans[-1][1] + len(self._tokenizer.tokenize(".")) + 1:
            raise StgrError(f"tokenizer disagrees with the prompt layout of {prompt.text!r}")
        return logits.float().sigmoid().cpu(), boxes.float().cpu()
