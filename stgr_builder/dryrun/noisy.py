"""The ``noisy`` policy of ``stgr serve-llm``: an endpoint that, like a real VLM, is usually
well-formed and sometimes wrong.

Each kind of mistake strikes a sample at its own rate, drawn from a hash of the seed, the kind
and the sample's prompt (so the same build meets the same mistakes, however its requests
interleave):

- ``fence``: the JSON in a ```json fence or wrapped in prose, on every reply of that sample
  (a habit: asking again does not change it);
- ``wrong_object``: a box of another object, named with the question's object name;
- ``prose_time``: a time stated in prose: a sentence of its own ("At 99.5s the scene
  changes.") or inside a sentence that cites a box ("... visible [B3] at 2.0s.");
- ``off_span``: a temporal task's key frame outside the answer's span;
- ``conclusion``: an MCQ reasoning that concludes another option than the gold one;
- ``length``: the reply cut by ``max_tokens`` (``finish_reason: length``) unless the request
  allows ``needed_max_tokens``.

A semantic slip (the four in the middle) is fixed by a re-ask that names it (its words appear
in the re-ask) with probability ``fix_rate``, drawn again per re-ask; a re-ask that does not name
it fixes nothing. ``refuse_json_schema`` answers every ``response_format: json_schema`` with a
400, as several vLLM, Ollama and proxy versions do.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MISTAKE_KINDS = ("fence", "wrong_object", "prose_time", "off_span", "conclusion", "length")
SLIPS = ("wrong_object", "prose_time", "off_span", "conclusion")
#: Words of a re-ask that names each slip (the client's check messages).
_NAMES_SLIP = {
    "wrong_object": "detector label",
    "prose_time": "never write a time",
    "off_span": "outside the answer's span",
    "conclusion": "concludes option",
}
_CANDIDATE_RE = re.compile(r"^B(\d+): (.+?) \(([\d.]+)\) on frame (\d+)", re.MULTILINE)
_FRAME_RE = re.compile(r"^Frame (\d+) at t=([\d.]+)s", re.MULTILINE)
_SPAN_RE = re.compile(r"^Annotated span: ([\d.]+)s to ([\d.]+)s", re.MULTILINE)
_GOLD_RE = re.compile(r"^Correct answer: ([A-Z])\b", re.MULTILINE)
_OPTION_RE = re.compile(r"^([A-Z])\. ", re.MULTILINE)
_OBJECTS_RE = re.compile(r"^Objects to ground: (.*)$", re.MULTILINE)


@dataclass(frozen=True)
class NoisyOptions:
    rates: Mapping[str, float] = field(default_factory=lambda: dict.fromkeys(MISTAKE_KINDS, 0.15))
    fix_rate: float = 0.6
    seed: int = 0
    refuse_json_schema: bool = True
    needed_max_tokens: int = 2000


def draw(seed: int, *parts: object) -> float:
    """A uniform number in [0, 1) from the seed and ``parts`` (stable across processes)."""
    data = json.dumps([seed, *[str(p) for p in parts]]).encode()
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big") / 2**64


def _struck(options: NoisyOptions, kind: str, sample: str) -> bool:
    return draw(options.seed, kind, sample) < options.rates.get(kind, 0.0)


def _turns(messages: list[dict]) -> list[str]:
    """The texts of the re-asks (user turns after the first assistant reply), in order."""
    out, answered = [], False
    for message in messages:
        if message.get("role") == "assistant":
            answered = True
        elif message.get("role") == "user" and answered and isinstance(message.get("content"), str):
            out.append(message["content"])
    return out


def _still_wrong(options: NoisyOptions, kind: str, sample: str, reasks: list[str]) -> bool:
    """Whether a slip survives the re-asks so far: each one that names it fixes it at ``fix_rate``."""
    return not any(
        _NAMES_SLIP[kind] in text and draw(options.seed, kind, sample, turn) < options.fix_rate
        for turn, text in enumerate(reasks, start=1)
    )


def annotation_content(
    good: dict[str, Any], user_text: str, messages: list[dict], max_tokens: int | None, options: NoisyOptions
) -> tuple[str, str]:
    """(content, finish_reason) of the noisy policy's reply to an annotation prompt."""
    sample = hashlib.sha256(user_text.encode()).hexdigest()
    reasks = _turns(messages)
    reply = copy.deepcopy(good)
    for kind, slip in (
        ("wrong_object", _wrong_object),
        ("off_span", _off_span),
        ("prose_time", _prose_time),
        ("conclusion", _conclusion),
    ):
        if _struck(options, kind, sample) and _still_wrong(options, kind, sample, reasks):
            slip(reply, user_text, draw(options.seed, kind, sample, "how"))
    content = json.dumps(reply)
    if _struck(options, "length", sample) and (max_tokens is None or max_tokens < options.needed_max_tokens):
        return content[: len(content) // 2], "length"
    if _struck(options, "fence", sample):
        if draw(options.seed, "fence", sample, "how") < 0.5:
            content = f"```json\n{content}\n```"
        else:
            content = (
                f"Here is the annotation you asked for:\n{content}\nI hope this helps; ask if anything is unclear."
            )
    return content, "stop"


def _candidates(user_text: str) -> list[tuple[int, str, int]]:
    return [(int(i), label, int(frame)) for i, label, _, frame in _CANDIDATE_RE.findall(user_text)]


def _cite(reply: dict[str, Any], sentence: str) -> None:
    reply["reasoning"] = f"{reply['reasoning']} {sentence}".strip()


def _wrong_object(reply: dict[str, Any], user_text: str, how: float) -> None:
    """Replace the first chosen box by a box of another object, named as the question's object."""
    chosen = [(kf["frame"], box) for kf in reply["key_frames"] for box in kf["boxes"]]
    if not chosen:
        return
    frame_no, box = chosen[0]
    labels = {cid: label for cid, label, _ in _candidates(user_text)}
    others = [c for c in _candidates(user_text) if c[1].lower() != labels.get(box["id"], "").lower()]
    if not others:
        return
    cid, _, other_frame = others[int(how * len(others))]
    if any(b["id"] == cid for _, b in chosen):
        return
    old = box["id"]
    for kf in reply["key_frames"]:
        kf["boxes"] = [b for b in kf["boxes"] if b["id"] != old]
    reply["key_frames"] = [kf for kf in reply["key_frames"] if kf["boxes"]]
    target = next((kf for kf in reply["key_frames"] if kf["frame"] == other_frame), None)
    if target is None:
        target = {"frame": other_frame, "boxes": []}
        reply["key_frames"] = sorted([*reply["key_frames"], target], key=lambda kf: kf["frame"])
    target["boxes"].append({"id": cid, "name": box["name"]})
    reply["reasoning"] = reply["reasoning"].replace(f"[B{old}]", f"[B{cid}]")


def _prose_time(reply: dict[str, Any], user_text: str, how: float) -> None:
    """A time in prose: a sentence of its own (half the time), or in a sentence that cites a box."""
    time_s = round(1 + how * 98, 1)
    if how < 0.5 or "]." not in reply["reasoning"]:
        _cite(reply, f"At {time_s}s the scene changes.")
    else:
        reply["reasoning"] = reply["reasoning"].replace("].", f"] at {time_s}s.", 1)


def _off_span(reply: dict[str, Any], user_text: str, how: float) -> None:
    """Add a key frame outside the answer's span, with a box on it (temporal tasks only)."""
    span = _SPAN_RE.search(user_text)
    if span is None or "as [SPAN]" not in user_text:
        return
    low, high = float(span.group(1)), float(span.group(2))
    outside = {int(n) for n, t in _FRAME_RE.findall(user_text) if not low <= float(t) <= high}
    chosen = {b["id"] for kf in reply["key_frames"] for b in kf["boxes"]}
    picks = [c for c in _candidates(user_text) if c[2] in outside and c[0] not in chosen]
    if not picks:
        return
    cid, label, frame_no = picks[int(how * len(picks))]
    target = next((kf for kf in reply["key_frames"] if kf["frame"] == frame_no), None)
    if target is None:
        target = {"frame": frame_no, "boxes": []}
        reply["key_frames"] = sorted([*reply["key_frames"], target], key=lambda kf: kf["frame"])
    target["boxes"].append({"id": cid, "name": label})
    _cite(reply, f"Earlier the {label} is seen [B{cid}].")


def _conclusion(reply: dict[str, Any], user_text: str, how: float) -> None:
    gold = _GOLD_RE.search(user_text)
    letters = [letter for letter in _OPTION_RE.findall(user_text) if not gold or letter != gold.group(1)]
    if gold is None or not letters:
        return
    _cite(reply, f"So the answer is ({letters[int(how * len(letters))]}).")


def options_from(rates: Mapping[str, float], **kwargs: Any) -> NoisyOptions:
    """``NoisyOptions`` with ``rates`` checked (known kinds, each in [0, 1])."""
    for kind, rate in rates.items():
        if kind not in MISTAKE_KINDS:
            raise ValueError(f"unknown mistake kind {kind!r} (known: {', '.join(MISTAKE_KINDS)})")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"mistake rate of {kind} must be in [0, 1], not {rate}")
    return NoisyOptions(rates=dict(rates), **kwargs)
