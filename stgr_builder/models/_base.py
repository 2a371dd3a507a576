"""What every model of the package stands on: box and span types, the bounds on a source
record, and the two base classes (records forbid unknown fields; configs refuse NaN and inf)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Box = Annotated[list[float], Field(min_length=4, max_length=4)]
"""``[x_min, y_min, x_max, y_max]``, normalized to [0, 1] unless a field says pixels."""

Span = Annotated[list[float], Field(min_length=2, max_length=2)]
"""``[start, end]`` in seconds."""

#: Bounds on what a source record may hold (a longer one is a MALFORMED_ROW naming the field):
#: each text goes into every prompt and row, so one runaway field must not cost a fortune.
MAX_QUESTION_CHARS = 4000
MAX_ANSWER_CHARS = 4000
MAX_CAPTION_CHARS = 8000
MAX_OPTIONS = 26  # lettered A..Z
MAX_OPTION_CHARS = 1000
MAX_OBJECTS = 32
MAX_NAME_CHARS = 200
MAX_GOLD_BOXES = 1000

PROMPT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
"""A prompt *name* (``prompts/<name>.yaml``): letters, digits, ``_ . -``; no path parts."""


def check_prompt(value: str) -> str:
    """A prompt is a name under ``prompts/`` or an explicit ``.yaml``/``.yml`` file path;
    anything else (``../../etc/passwd``) is refused before any file is read.

    >>> check_prompt("stgr-cot-llm"), check_prompt("my/prompts/v2.yaml")
    ('stgr-cot-llm', 'my/prompts/v2.yaml')
    """
    text = str(value)
    if re.fullmatch(PROMPT_NAME, text) and not text.endswith((".yaml", ".yml")) and ".." not in text:
        return text
    if text.endswith((".yaml", ".yml")) and "\x00" not in text:
        return text
    raise ValueError(
        f"prompt {text!r} is neither a prompt name (letters, digits, '_', '.', '-': a file "
        f"prompts/NAME.yaml) nor an explicit .yaml file path"
    )


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class ConfigModel(BaseModel):
    # NaN passes every comparison-free check and fails every filter silently (a NaN bound
    # filters nothing); inf is no setting either: both refused in every float field of a config.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
