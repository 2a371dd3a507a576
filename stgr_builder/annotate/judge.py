"""The independent judge: each box the annotator chose, cut out of its frame, is put to a
second model with "Is this a {object}?" and nothing else (the paper's Qwen2.5-VL check).

The question names the object the annotator named for the box; the detector's label, the
sample's question and the annotator's reasoning are not in it, so the verdict is the judge's
own. With ``judge.per_sentence`` each sentence of the reasoning that cites a box is judged too:
its claim (the sentence, citations taken out) is asked of each crop it cites ("Does this crop
show: {claim}?").

A request holds up to ``judge.crops_per_request`` crops, each numbered with its own question and
nothing else, and the judge answers each (``CropVerdicts``): one request per row instead of one
per box (``crops_per_request: 1`` is the paper's one crop a request). ``votes`` asks of each
crop (vote k > 1 differs from the first by its number in the system message, so it is a request
of its own in the cache; only the crops whose outcome is not settled are asked again); a box
keeps its place in the evidence with ``threshold`` "yes" votes. The LLM annotator runs it after
the semantic checks, before it writes the trace; a sample left without evidence is rejected
(``crops_rejected``), one with a sentence the judge does not confirm (per-sentence judging)
``sentence_rejected``.

>>> content = parse_judge_prompt(load_prompt("judge"))                          # doctest: +SKIP
>>> messages = judge_messages(content, [JudgeItem("Is this a dog?", jpeg)])     # doctest: +SKIP
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from stgr_builder.annotate.crops import data_url
from stgr_builder.annotate.jsontext import extract_json
from stgr_builder.annotate.prompts import Prompt
from stgr_builder.errors import StgrError

SCHEMA_NAME = "crop_verdicts"


class CropVerdict(BaseModel):
    """One yes/no answer (the event judge's, ``events.py``: one frame a request)."""

    model_config = ConfigDict(extra="forbid")

    answer: Literal["yes", "no"]


def parse_verdict(text: str) -> CropVerdict:
    """Read a one-answer reply (however wrapped); raises ``ValueError`` (a pydantic ``ValidationError``)."""
    return CropVerdict.model_validate_json(extract_json(text))


class CropVerdicts(BaseModel):
    """The judge's answers, one per crop of the request, in order."""

    model_config = ConfigDict(extra="forbid")

    answers: list[Literal["yes", "no"]]


class JudgePromptContent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Literal["judge"]
    description: str
    system: str
    user: str
    claim: str = "Does this crop show: {claim}? Answer yes or no."


@dataclass(frozen=True)
class JudgeItem:
    """One crop and the question asked of it (nothing else goes to the judge)."""

    question: str
    jpeg: bytes


def _placeholders(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


def parse_judge_prompt(prompt: Prompt) -> JudgePromptContent:
    """The judge prompt's fields, checked: its box question may use ``{name}`` and nothing else,
    its sentence question ``{claim}`` and nothing else (a label or the sample's question would
    make the verdict less than independent).

    >>> from stgr_builder.annotate.prompts import load_prompt
    >>> parse_judge_prompt(load_prompt("judge")).kind
    'judge'
    """
    try:
        content = JudgePromptContent.model_validate(prompt.content)
        for field, template in (("name", content.user), ("claim", content.claim)):
            found = _placeholders(template)
            if found != {field}:
                raise ValueError(f"its question must use {{{field}}} and no other placeholder, not {sorted(found)}")
    except (ValidationError, ValueError) as exc:
        raise StgrError(f"prompt {prompt.path} is not a judge prompt (kind: judge): {exc}") from exc
    return content


def judge_messages(content: JudgePromptContent, items: list[JudgeItem], vote: int = 1) -> list[dict]:
    """The chat messages that ask each item's question of its crop (vote ``vote``): the crops
    numbered, each with its own question, in one user message."""
    system = content.system if vote == 1 else f"{content.system} (Judgement {vote}.)"
    parts: list[dict] = []
    for number, item in enumerate(items, 1):
        parts.append({"type": "text", "text": f"Crop {number}: {item.question}"})
        parts.append({"type": "image_url", "image_url": {"url": data_url(item.jpeg)}})
    return [{"role": "system", "content": system}, {"role": "user", "content": parts}]


def verdict_parser(expected: int):
    """A reader of a reply (however wrapped) that must hold ``expected`` answers; raises
    ``ValueError`` (a pydantic ``ValidationError``) with words the judge can act on."""

    def parse(text: str) -> list[bool]:
        verdicts = CropVerdicts.model_validate_json(extract_json(text))
        if len(verdicts.answers) != expected:
            raise ValueError(f"{len(verdicts.answers)} answers for {expected} crops: answer each crop, in order")
        return [answer == "yes" for answer in verdicts.answers]

    return parse


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


T = TypeVar("T")


def chunks(items: list[T], size: int) -> list[list[T]]:
    """``items`` in groups of at most ``size``, in order.

    >>> chunks([1, 2, 3, 4, 5], 2)
    [[1, 2], [3, 4], [5]]
    """
    return [items[start : start + size] for start in range(0, len(items), size)]


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_CITATION = re.compile(r"\[\s*(SPAN|B\d+(?:\s*,\s*B\d+)*)\s*\]")


def sentence_claims(reasoning: str) -> list[tuple[str, list[int]]]:
    """Each sentence of the reasoning that cites a box: its claim (the sentence without its
    citations) and the box numbers it cites.

    >>> sentence_claims("The dog runs [B3]. It stops [SPAN]. The cat [B1, B2] sits.")
    [('The dog runs.', [3]), ('The cat sits.', [1, 2])]
    """
    out = []
    for sentence in _SENTENCE_END.split(reasoning.strip()):
        cited = [
            int(part.strip()[1:])
            for match in _CITATION.finditer(sentence)
            if match.group(1) != "SPAN"
            for part in match.group(1).split(",")
        ]
        if cited:
            claim = " ".join(_CITATION.sub(" ", sentence).split())
            out.append((re.sub(r"\s+([.,;:!?])", r"\1", claim), list(dict.fromkeys(cited))))
    return out
