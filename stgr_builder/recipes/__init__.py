"""Recipes: build configs shipped with the package that reproduce the released mixes.

``stgr plan stgr-cot-30k`` and ``stgr build stgr-rl-36k`` take a recipe name where a
CONFIG.yaml is expected. A recipe names its files with placeholders, ``${STGR_DATA}`` for
the folder holding every source (``--data-root DIR`` or the ``STGR_DATA`` environment
variable); ``--source NAME=PATH[,MEDIA_ROOT]`` points one source elsewhere.

>>> available_recipes()
['stgr-cot-30k', 'stgr-rl-36k']
>>> config, config_dir, skipped = resolve_config("stgr-cot-30k", data_root="/data")  # doctest: +SKIP
>>> config.sources[0].path  # doctest: +SKIP
'/data/plm_rdcap/rdcap_train.jsonl'
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from stgr_builder.core.data import data_folder
from stgr_builder.errors import StgrError
from stgr_builder.models import BuildConfig

RECIPES_DIR = data_folder("stgr_builder.recipes")
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def is_recipe(spec: str | Path) -> bool:
    """A name of a shipped recipe (and not an existing file)."""
    return not Path(spec).is_file() and str(spec) in available_recipes()


def _load(spec: str | Path) -> tuple[dict, Path, bool]:
    if is_recipe(spec):
        path, recipe = RECIPES_DIR / f"{spec}.yaml", True
    else:
        path, recipe = Path(spec), False
        if not path.is_file():
            raise StgrError(f"{spec}: neither a config file nor a recipe (recipes: {', '.join(available_recipes())})")
    return read_config_mapping(path), path.resolve().parent, recipe


def read_config_mapping(path: Path) -> dict[str, Any]:
    """CONFIG.yaml's top-level mapping, with one line naming the file for anything else: not
    UTF-8 text (a binary file), not YAML, empty, a list or a scalar, no sources, a source that
    is not a mapping.

    >>> read_config_mapping(Path("list.yaml"))  # doctest: +SKIP
    StgrError: list.yaml holds a YAML list, not a config: a mapping of keys (name, sources, ...)
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StgrError(
            f"{path} is not a text file (byte {exc.object[exc.start]:#04x} at offset {exc.start} is not UTF-8): "
            f"give a YAML config"
        ) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StgrError(f"{path} is not valid YAML: {exc}") from exc
    if raw is None:
        raise StgrError(
            f"{path} is empty: a config needs at least `sources:` (stgr demo --write-config FILE writes one)"
        )
    if not isinstance(raw, dict):
        kind = "list" if isinstance(raw, list) else type(raw).__name__
        raise StgrError(f"{path} holds a YAML {kind}, not a config: a mapping of keys (name, sources, ...)")
    sources = raw.get("sources")
    if not sources:
        raise StgrError(f"{path}: sources: no source given (each needs name, adapter, path, media_root)")
    if not isinstance(sources, list):
        raise StgrError(f"{path}: sources: expected a list of sources, not a {type(sources).__name__}")
    for index, source in enumerate(sources):
        if not isinstance(source, dict):
            raise StgrError(f"{path}: sources.{index}: expected a mapping (name, adapter, path, media_root)")
    return raw


def _substitute(value: str, variables: Mapping[str, str], where: str) -> str:
    def one(match: re.Match) -> str:
        name = match.group(1)
        if name not in variables:
            hint = " (give --data-root DIR or set STGR_DATA)" if name == "STGR_DATA" else f" (set {name})"
            raise StgrError(f"{where}: {match.group(0)} is not set{hint}")
        return variables[name]

    return _PLACEHOLDER.sub(one, value)


def resolve_config(
    spec: str | Path,
    *,
    data_root: str | Path | None = None,
    sources: Mapping[str, tuple[str, str | None]] | None = None,
    scale: float | None = None,
    skip_missing: bool = False,
    env: Mapping[str, str] | None = None,
) -> tuple[BuildConfig, Path, list[str]]:
    """The config a recipe name or CONFIG.yaml describes, with placeholders filled in,
    per-source paths overridden, ``sample`` counts scaled (rounded up, at least 1) and, with
    ``skip_missing``, the sources whose annotation file is missing left out (their names are
    returned). Paths come back absolute, so the config can be written anywhere."""
    raw, config_dir, recipe = _load(spec)
    variables = dict(os.environ if env is None else env)
    if data_root is not None:
        variables["STGR_DATA"] = str(Path(data_root).expanduser().resolve())
    base = Path.cwd() if recipe else config_dir
    overrides = dict(sources or {})
    unknown = set(overrides) - {s.get("name") for s in raw.get("sources", [])}
    if unknown:
        raise StgrError(f"--source: no source named {', '.join(sorted(unknown))} in {spec}")
    kept, skipped = [], []
    for source in raw.get("sources", []):
        name = source.get("name", "?")
        if name in overrides:
            path, media_root = overrides[name]
            source["path"] = path
            if media_root is not None:
                source["media_root"] = media_root
        for key in ("path", "media_root"):
            if isinstance(source.get(key), str):
                value = _substitute(source[key], variables, f"{spec}: source {name!r} {key}")
                source[key] = str((base / Path(value).expanduser()).resolve())
        if skip_missing and not Path(source["path"]).is_file():
            skipped.append(name)
            continue
        if scale is not None and source.get("sample") is not None:
            source["sample"] = max(1, math.ceil(source["sample"] * scale))
        kept.append(source)
    if not kept:
        raise StgrError(f"{spec}: no source left (every annotation file is missing)")
    raw["sources"] = kept
    detector = raw.get("detector") or {}
    for key in ("weights", "model_config_file", "text_encoder"):
        setting = detector.get(key)
        if isinstance(setting, str) and not setting.startswith("builtin:"):
            setting = _substitute(setting, variables, f"{spec}: detector.{key}")
            detector[key] = str((base / Path(setting).expanduser()).resolve())
    try:
        config = BuildConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors())
        raise StgrError(f"{spec}: {problems}") from exc
    return config, config_dir, skipped


def write_config(config: BuildConfig, path: Path) -> Path:
    """Write a resolved config as CONFIG.yaml (what ``stgr build`` runs for a recipe)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = config.model_dump(mode="json")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def parse_source_overrides(values: list[str]) -> dict[str, tuple[str, str | None]]:
    """``NAME=PATH[,MEDIA_ROOT]`` flags.

    >>> parse_source_overrides(["TVG_tacos=/d/tacos.json,/d/videos"])
    {'TVG_tacos': ('/d/tacos.json', '/d/videos')}
    """
    out: dict[str, tuple[str, str | None]] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise StgrError(f"--source {value!r}: expected NAME=PATH[,MEDIA_ROOT]")
        path, _, media = rest.partition(",")
        out[name] = (path, media or None)
    return out
