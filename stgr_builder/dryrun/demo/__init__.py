"""The embedded demo: a stand-in for a real dataset and for a real detector's training.

``generate.py`` draws seeded synthetic videos, stills, QA items and their ground truth
(``truth.json``); ``sprites.py`` and ``scenes.py`` draw what they show; ``noise.py`` corrupts a
share of the inherited labels on request; ``config.py`` writes the demo's CONFIG.yaml with the
media beside it; ``train.py`` reproduces the shipped demo detector from the same scenes. The
``demo`` source adapter that reads a generated set is a source like any other
(``stgr_builder.sources.demo``): the stages never import this package.

>>> write_demo_config(Path("demo/CONFIG.yaml"))  # doctest: +SKIP
PosixPath('demo/CONFIG.yaml')
"""

from __future__ import annotations

from stgr_builder.dryrun.demo.config import demo_config, write_demo_config
from stgr_builder.dryrun.demo.generate import DEMO_FILE, MEDIA_DIR, TRUTH_FILE, generate_demo, load_truth
from stgr_builder.dryrun.demo.noise import CORRUPTIONS_FILE, DemoNoise, load_corruptions
from stgr_builder.dryrun.demo.scenes import render_training_frame
from stgr_builder.dryrun.demo.sprites import DEMO_CLASSES

__all__ = [
    "CORRUPTIONS_FILE",
    "DEMO_CLASSES",
    "DEMO_FILE",
    "MEDIA_DIR",
    "TRUTH_FILE",
    "DemoNoise",
    "demo_config",
    "generate_demo",
    "load_corruptions",
    "load_truth",
    "render_training_frame",
    "write_demo_config",
]
