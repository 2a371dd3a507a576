"""Randomly initialised GroundingDINO models in both checkpoint formats, small enough for CPU
tests, saved to disk so the tests load them through the real loading code. Nothing is
downloaded: the text encoder is a one-layer BERT over a small vocabulary written here."""

from __future__ import annotations

from pathlib import Path

VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    ".",
    "a",
    "the",
    "in",
    "black",
    "red",
    "grey",
    "shirt",
    "car",
    "bicycle",
    "man",
    "person",
    "cyclist",
    "bus",
    "bag",
    "wall",
    "street",
    "##s",
]
NUM_QUERIES = 20


def _bert_config():
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )


def write_hf(folder: Path, seed: int = 0) -> Path:
    """A ~0.5 M-parameter ``GroundingDinoForObjectDetection`` saved with its processor."""
    import torch
    from transformers import (
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(
            embed_dim=16,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 2, 2],
            window_size=4,
            out_features=["stage2", "stage3", "stage4"],
        ),
        text_config=_bert_config(),
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_queries=NUM_QUERIES,
        encoder_n_points=2,
        decoder_n_points=2,
    )
    torch.manual_seed(seed)
    GroundingDinoForObjectDetection(config).save_pretrained(folder)
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(), tokenizer=BertTokenizer(str(folder / "vocab.txt"))
    )
    processor.save_pretrained(folder)
    return folder


def write_idea(folder: Path, seed: int = 0) -> tuple[Path, Path, Path]:
    """(checkpoint .pth, config .py, text encoder folder) of a small IDEA-format model: the
    shipped SwinT config with one encoder and decoder layer and 20 queries (the SwinT backbone
    and hidden size 256 are fixed by groundingdino-py), weights stored in float16."""
    import importlib.util

    import torch
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig
    from transformers import BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    bert = folder / "bert"
    bert.mkdir(exist_ok=True)
    (bert / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    torch.manual_seed(seed)
    BertModel(_bert_config()).save_pretrained(bert)
    BertTokenizer(str(bert / "vocab.txt")).save_pretrained(bert)
    shipped = Path(importlib.util.find_spec("groundingdino").submodule_search_locations[0])
    overrides = {
        "enc_layers": 1,
        "dec_layers": 1,
        "dim_feedforward": 64,
        "num_queries": NUM_QUERIES,
        "use_checkpoint": False,
        "use_transformer_ckpt": False,
    }
    lines = []
    for line in (shipped / "config" / "GroundingDINO_SwinT_OGC.py").read_text().splitlines():
        key = line.split("=")[0].strip()
        lines.append(f"{key} = {overrides[key]!r}" if key in overrides else line)
    config = folder / "GroundingDINO_tiny.py"
    config.write_text("\n".join(lines) + "\n")
    args = SLConfig.fromfile(str(config))
    args.device = "cpu"
    args.text_encoder_type = str(bert)
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        model = build_model(args)
    checkpoint = folder / "groundingdino_tiny.pth"
    torch.save(
        {"model": {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}}, checkpoint
    )
    return checkpoint, config, bert
