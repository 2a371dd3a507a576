"""Versioned prompts: ``prompts/<name>.yaml`` files (shipped in the package as
``stgr_builder.prompts``) or any ``.yaml`` file by path, each identified by its content hash.

The loader is generic: it reads any prompt file (the offline annotator's sentence templates,
an LLM annotator's instructions) and leaves the meaning of its content to the annotator that
uses it. The version recorded in every row is a hash of the file's bytes, so editing a prompt
changes the version of every row built with it afterwards.

>>> prompt = load_prompt("template-cot")
>>> prompt.name, len(prompt.version), prompt.content["kind"]
('template-cot', 12, 'template')
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stgr_builder.core.data import data_folder
from stgr_builder.errors import StgrError
from stgr_builder.models import PromptRef, check_prompt

#: The shipped prompts: the repository's prompts/ folder, installed as ``stgr_builder.prompts``.
PROMPTS_DIR = data_folder("stgr_builder.prompts")


@dataclass(frozen=True)
class Prompt:
    """A loaded prompt: its name, its version (short sha256 of the file) and its content."""

    name: str
    version: str
    path: Path
    content: dict[str, Any]

    @property
    def ref(self) -> PromptRef:
        """What rows record about the prompt.

        >>> load_prompt("template-cot").ref.name
        'template-cot'
        """
        return PromptRef(name=self.name, version=self.version)


@dataclass(frozen=True)
class AnnotatorPrompts:
    """The prompts an annotator config names, read and hashed once per build
    (``annotate.resolve_prompts``) and handed to every shard's annotator: the annotation
    prompt, the judge's when the judge is on, the event judge's with ``span_check.events: judge``."""

    main: Prompt
    judge: Prompt | None = None
    events: Prompt | None = None

    @property
    def refs(self) -> list[PromptRef]:
        """What the manifest records: the annotation prompt first, then the judge's."""
        return [self.main.ref] + ([self.judge.ref] if self.judge is not None else [])

    @property
    def used(self) -> list[PromptRef]:
        """Every prompt the annotators use, the event judge's last (the annotate stage's fingerprint)."""
        return self.refs + ([self.events.ref] if self.events is not None else [])


def available_prompts(directory: Path = PROMPTS_DIR) -> list[str]:
    """Names of the prompts shipped in ``directory``.

    >>> "template-cot" in available_prompts()
    True
    """
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.yaml"))


def _looks_like_path(name: str) -> bool:
    return name.endswith((".yaml", ".yml"))


def load_prompt(name: str | Path, directory: Path = PROMPTS_DIR) -> Prompt:
    """Load a prompt by name (``prompts/<name>.yaml``) or from an explicit ``.yaml``/``.yml``
    file path (relative to the current folder). Anything else, e.g. ``../../etc/passwd``, is
    refused before a file is read.

    Unknown names raise ``StgrError`` listing the available prompts.

    >>> load_prompt("no-such-prompt")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    stgr_builder.errors.StgrError: unknown prompt 'no-such-prompt': available prompts are ...template-cot...
    """
    text_name = str(name)
    try:
        check_prompt(text_name)  # a name, or an explicit .yaml path: never any other file
    except ValueError as exc:
        raise StgrError(str(exc)) from exc
    if isinstance(name, Path) or _looks_like_path(text_name):
        path = Path(name)
        if not path.is_file():
            raise StgrError(f"prompt file {path} does not exist")
    else:
        path = directory / f"{text_name}.yaml"
        if not path.is_file():
            shown = ", ".join(available_prompts(directory)) or "none"
            raise StgrError(f"unknown prompt {text_name!r}: available prompts are {shown} (in {directory})")
    raw = path.read_bytes()
    try:
        content = yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise StgrError(f"prompt file {path} is not valid YAML: {exc}") from exc
    if not isinstance(content, dict):
        raise StgrError(f"prompt file {path} must hold a mapping (name, description, ...)")
    declared = content.get("name", path.stem)
    if path.parent == directory and declared != path.stem:
        # A shipped prompt is selected by file name; its rows must say the same name.
        raise StgrError(f"prompt file {path} declares name {declared!r}; rename one of them to match")
    return Prompt(name=str(declared), version=hashlib.sha256(raw).hexdigest()[:12], path=path, content=content)
