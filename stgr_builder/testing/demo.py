"""A config file for a build over a generated demo source (``dryrun.demo.generate_demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from stgr_builder.dryrun.demo import demo_config


def write_config(source: Path, name: str = "small", **overrides: dict[str, Any]) -> Path:
    """``demo_config()`` over the demo source in ``source``, with top-level sections updated;
    written to ``source / f"{name}.yaml"``.

    >>> write_config(source, "chaos", sharding={"samples_per_shard": 12})  # doctest: +SKIP
    PosixPath('.../source/chaos.yaml')
    """
    config = demo_config().model_dump(mode="json")
    for section, values in overrides.items():
        config[section].update(values)
    path = source / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
