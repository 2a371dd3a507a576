"""Random-weight YOLOE / YOLO-World models and text encoders in the real files' formats, built
offline: the models from Ultralytics' own yaml, the encoders as a TorchScript text encoder
(``mobileclip_blt.ts``'s interface: CLIP tokens in, unit 512-d rows out) and an OpenAI CLIP
state dict (``ViT-B-32.pt``'s layout, tiny widths) that ``clip.load`` rebuilds."""

from __future__ import annotations

from pathlib import Path

import torch

EMBED_DIM = 512  # what YOLOE and YOLO-World take
CLIP_VOCAB = 49408  # CLIP's BPE vocabulary (the tokenizer's ids)


class _TokenMeanEncoder(torch.nn.Module):
    """Mean of the tokens' embeddings (padding 0 left out), projected and unit-normalized."""

    def __init__(self, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.tokens = torch.nn.Parameter(torch.randn(CLIP_VOCAB, 32, generator=generator))
        self.project = torch.nn.Parameter(torch.randn(32, EMBED_DIM, generator=generator))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).float().unsqueeze(-1)
        mean = (self.tokens[ids] * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(mean @ self.project, dim=-1)


def write_torchscript_encoder(path: Path, seed: int = 0) -> Path:
    """A random ``.ts`` text encoder with MobileCLIP's interface (what YOLOE loads)."""
    torch.jit.save(torch.jit.script(_TokenMeanEncoder(seed).eval()), str(path))
    return path


def write_clip_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random, tiny OpenAI-CLIP state dict (what YOLO-World's ``clip.load`` reads)."""
    from clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(
        embed_dim=EMBED_DIM,
        image_resolution=32,
        vision_layers=1,
        vision_width=64,
        vision_patch_size=16,
        context_length=77,
        vocab_size=CLIP_VOCAB,
        transformer_width=64,
        transformer_heads=1,
        transformer_layers=1,
    )
    torch.save(model.state_dict(), path)
    return path


def write_model(path: Path, backend: str, scale: str = "n") -> Path:
    """A random YOLOE-11 or YOLOv8-World v2 (``scale``: n, s, m, l, x) from Ultralytics' yaml,
    saved like user weights."""
    from ultralytics import YOLOE, YOLOWorld
    from ultralytics.nn.modules.block import BNContrastiveHead, ContrastiveHead

    model = YOLOE(f"yoloe-11{scale}.yaml") if backend == "yoloe" else YOLOWorld(f"yolov8{scale}-worldv2.yaml")
    for head in model.model.modules():
        if isinstance(head, (ContrastiveHead, BNContrastiveHead)):
            # An untrained head's bias of -10 scores every class ~0: the phrases would not matter.
            with torch.no_grad():
                head.bias.fill_(0.0)
    _calibrate_batch_norms(model.model)
    model.save(str(path))
    return path


def _calibrate_batch_norms(net: torch.nn.Module) -> None:
    """Running statistics of every BatchNorm from one batch of noise, as training would set
    them: with the initial ones (mean 0, var 1) an untrained network's features shrink to ~1e-7
    by the class head, and every box scores 0.5 whatever the phrases."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.momentum = 1.0  # the statistics of this one batch
    net.train()
    with torch.no_grad():
        net(torch.rand(4, 3, 96, 96, generator=torch.Generator().manual_seed(0)))
    net.eval()
    for norm in norms:
        norm.momentum = 0.03  # Ultralytics' own
