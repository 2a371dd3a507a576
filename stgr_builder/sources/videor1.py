"""Video-R1 (``Video-R1-260k.json``, ``Video-R1-COT-165k.json``): a JSON list of QA items.

::

    [{"problem_id": 2, "problem": "What is the man holding?", "data_type": "video",
      "problem_type": "multiple choice", "options": ["A. A cup", "B. A phone"],
      "process": "<think>...</think>", "solution": "<answer>B</answer>",
      "path": "./LLaVA-Video-178K/ytb_7nRmsEw7nsE.mp4", "data_source": "LLaVA-Video-178K"}]

``multiple choice`` -> ``General video QA MCQ`` (option texts without their ``A.`` prefixes,
the answer its letter); every other ``problem_type`` (numerical, OCR, free-form, regression)
-> ``General video QA Free-form`` with the solution's text. ``data_type: image`` items become
image rows unless ``options.include_images`` is false; ``options.tasks`` (``mcq``, ``free``)
keeps only those kinds. The source id is
``data_source:problem_id``. A leading ``./`` of ``path`` is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Literal

from pydantic import Field

from stgr_builder.core import grammar
from stgr_builder.models import Task
from stgr_builder.sources import AdapterContext, register
from stgr_builder.sources.common import AdapterOptions, Item, Record, json_entries, parse_options, validate

_ANSWER = re.compile(r"\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_OPTION = re.compile(r"\s*\(?([A-Z])[.):]\s*(.*)", re.DOTALL)


VideoR1Task = Literal["mcq", "free"]


class VideoR1Options(AdapterOptions):
    include_images: bool = True
    tasks: list[VideoR1Task] = Field(
        default_factory=lambda: list[VideoR1Task](["mcq", "free"]),
        description="mcq: multiple-choice items; free: every other type",
    )


class VideoR1Item(Record):
    problem_id: int | str
    problem: str = Field(min_length=1)
    data_type: str = "video"
    problem_type: str
    options: list[str] = Field(default_factory=list)
    solution: str = Field(min_length=1)
    path: str = Field(min_length=1)
    data_source: str = ""


@register("videor1")
def read_videor1(ctx: AdapterContext) -> Iterator[Item]:
    opts = parse_options(ctx, VideoR1Options)
    for origin, _, data in json_entries(ctx):
        item = validate(ctx, origin, VideoR1Item, data)
        if not isinstance(item, VideoR1Item):
            yield item
            continue
        if item.data_type == "image" and not opts.include_images:
            continue
        if ("mcq" if item.problem_type == "multiple choice" else "free") not in opts.tasks:
            continue
        match = _ANSWER.fullmatch(item.solution)
        answer = (match.group(1) if match else item.solution).strip()
        path = item.path.removeprefix("./")
        media = {"image_path": path} if item.data_type == "image" else {"video_path": path}
        source_id = f"{item.data_source}:{item.problem_id}" if item.data_source else str(item.problem_id)
        if item.problem_type == "multiple choice":
            options, letters = [], []
            for text in item.options:
                opt = _OPTION.fullmatch(text)
                letters.append(opt.group(1) if opt else None)
                options.append((opt.group(2) if opt else text).strip())
            expected = [grammar.option_letter(i) for i in range(len(options))]
            if len(options) < 2 or letters != expected:
                yield ctx.malformed(origin, f"options {item.options!r} are not 'A. ...', 'B. ...' in order")
                continue
            if answer not in expected:
                yield ctx.malformed(origin, f"solution {item.solution!r} is not one of the letters {expected}")
                continue
            yield ctx.sample(
                origin,
                source_id=source_id,
                question=item.problem.strip(),
                task=Task.VIDEO_MCQ,
                options=options,
                answer=answer,
                **media,
            )
        else:
            if not answer:
                yield ctx.malformed(origin, f"empty solution {item.solution!r}")
                continue
            yield ctx.sample(
                origin,
                source_id=source_id,
                question=item.problem.strip(),
                task=Task.VIDEO_FREE,
                answer=grammar.clean_text(answer),
                **media,
            )
