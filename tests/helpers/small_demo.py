"""A small demo build shared by the test modules that only read it (built once per session)."""

from __future__ import annotations

import shutil
from pathlib import Path

from stgr_builder.dryrun.demo import generate_demo
from stgr_builder.pipeline import build
from stgr_builder.testing.demo import write_config

__all__ = ["copy_build", "small_build", "small_source", "write_config"]

_BUILT: dict[str, tuple[Path, Path]] = {}


def small_source(tmp_path_factory) -> Path:
    if "source" not in _BUILT:
        folder = tmp_path_factory.mktemp("small-demo-source")
        generate_demo(folder, seed=0, n_videos=2, n_images=1)
        _BUILT["source"] = (folder, folder)
    return _BUILT["source"][0]


def small_build(tmp_path_factory) -> tuple[Path, Path]:
    """(config, dataset folder) of a template build of the small demo; do not modify it."""
    if "build" not in _BUILT:
        config = write_config(small_source(tmp_path_factory))
        out = tmp_path_factory.mktemp("small-demo") / "out"
        build(config, out)
        _BUILT["build"] = (config, out)
    return _BUILT["build"]


def copy_build(tmp_path: Path, tmp_path_factory) -> tuple[Path, Path]:
    """A private copy of the small build, to modify."""
    config, out = small_build(tmp_path_factory)
    target = tmp_path / "out"
    shutil.copytree(out, target)
    return config, target
