"""The independent judge: each box the annotator chose, cut out of its frame, is put to a
second model with "Is this a {object}?" and nothing else (the paper's Qwen2.5-VL check).

The question names the object the annotator named for the box; the detector's label, the
sample's question and the annotator's reasoning are not in it, so the verdict is the judge's
own. ``votes`` asks of each crop (vote k > 1 differs from the first by its number in the system
message, so it is a request of its own in the cache); a box keeps its place in the evidence
with ``threshold`` "yes" votes. The LLM annotator runs it after the semantic checks, before it
writes the trace; a sample left without evidence is rejected (``crops_rejected``).

>>> messages = judge_messages(parse_judge_prompt(load_prompt("judge")), "dog", jpeg, vote=1)  # doctest: +SKIP
"""

from __future__ import annotations

import string
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from stgr_builder.annotate.crops import data_url
from stgr_builder.annotate.jsontext import extract_json
from stgr_builder.annotate.prompts import Prompt
from stgr_builder.errors import StgrError

SCHEMA_NAME = "crop_verdict"


class CropVerdict(BaseModel):
    """The judge's answer about one crop."""

    model_config = ConfigDict(extra="forbid")

    answer: Literal["yes", "no"]


class JudgePromptContent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["judge"]
    description: str
    system: str
    user: str


def parse_judge_prompt(prompt: Prompt) -> JudgePromptContent:
    """The judge prompt's fields, checked: its question may use ``{name}`` and nothing else (a
    label or the sample's question would make the verdict less than independent).

    >>> from stgr_builder.annotate.prompts import load_prompt
    >>> parse_judge_prompt(load_prompt("judge")).kind
    'judge'
    """
    try:
        content = JudgePromptContent.model_validate(prompt.content)
        fields = {field for _, field, _, _ in string.Formatter().parse(content.user) if field is not None}
        if fields != {"name"}:
            raise ValueError(f"its question must use {{name}} and no other placeholder, not {sorted(fields)}")
    except (ValidationError, ValueError) as exc:
        raise StgrError(f"prompt {prompt.path} is not a judge prompt (kind: judge): {exc}") from exc
    return content


def judge_messages(content: JudgePromptContent, name: str, jpeg: bytes, vote: int = 1) -> list[dict]:
    """The chat messages that ask whether the crop shows ``name`` (vote ``vote``)."""
    system = content.system if vote == 1 else f"{content.system} (Judgement {vote}.)"
    return [
        {"role": "system", "content": system},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": content.user.format(name=name)},
                {"type": "image_url", "image_url": {"url": data_url(jpeg)}},
            ],
        },
    ]


def parse_verdict(text: str) -> CropVerdict:
    """Read a reply (however wrapped); raises ``ValueError`` (a pydantic ``ValidationError``)."""
    return CropVerdict.model_validate_json(extract_json(text))


def kept_by_votes(yes: int, asked: int, votes: int, threshold: int) -> bool | None:
    """True once ``threshold`` yes votes are in, False once they cannot be, None: ask again.

    >>> kept_by_votes(1, 1, 3, 2), kept_by_votes(0, 2, 3, 2), kept_by_votes(1, 2, 3, 2)
    (None, False, None)
    """
    if yes >= threshold:
        return True
    if yes + (votes - asked) < threshold:
        return False
    return None
