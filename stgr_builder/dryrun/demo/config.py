"""The demo's CONFIG.yaml: the generated demo source, built like any user's source."""

from __future__ import annotations

from pathlib import Path

import yaml

from stgr_builder.dryrun.demo.generate import DEMO_FILE, MEDIA_DIR, TRUTH_FILE, generate_demo, load_truth
from stgr_builder.dryrun.demo.noise import CORRUPTIONS_FILE, DemoNoise
from stgr_builder.models import (
    AnnotatorConfig,
    BuildConfig,
    DetectorConfig,
    FilterConfig,
    SamplerConfig,
    ShardingConfig,
    SourceConfig,
)


def demo_config(seed: int = 0) -> BuildConfig:
    """The demo build: paper filters except video length (demo clips run 4 s to a minute)."""
    return BuildConfig(
        name="demo",
        seed=seed,
        sources=[
            SourceConfig(
                name="STR_demo",
                adapter="demo",
                path=DEMO_FILE,
                media_root=MEDIA_DIR,
                filters=FilterConfig(min_video_s=3.0),
            )
        ],
        sampler=SamplerConfig(strategy="uniform", num_frames=8, span_frames=4, max_frames=16),
        detector=DetectorConfig(weights="builtin:stgr-demo-yolo11n", imgsz=320),
        annotator=AnnotatorConfig(backend="template", prompt="template-cot"),
        sharding=ShardingConfig(samples_per_shard=16, workers=2),
    )


def write_demo_config(path: Path, seed: int = 0, noise: DemoNoise | None = None, *, event_spans: bool = False) -> Path:
    """Write CONFIG.yaml at ``path`` with the demo media generated beside it; return ``path``.

    Media already generated with the same seed (and no noise) are reused (generation is
    deterministic); ``noise`` corrupts a share of the inherited labels (``noise.py``);
    ``event_spans`` adds the event questions a judge checks (``generate_demo``).

    >>> write_demo_config(Path("demo/CONFIG.yaml"))  # doctest: +SKIP
    PosixPath('demo/CONFIG.yaml')
    """
    folder = path.parent
    truth = folder / TRUTH_FILE
    noisy = noise is not None and noise.active
    reuse = truth.is_file() and (folder / DEMO_FILE).is_file() and load_truth(truth).seed == seed
    if noisy or event_spans or not reuse or (folder / CORRUPTIONS_FILE).exists():
        generate_demo(folder, seed=seed, noise=noise, event_spans=event_spans)
    config = demo_config(seed).model_dump(mode="json")
    header = "# stgr-builder demo build: edit and run with `stgr build CONFIG.yaml`\n"
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path
