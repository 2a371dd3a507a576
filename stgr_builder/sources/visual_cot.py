"""Visual-CoT (``metadata/*_cot_train.jsonl``): one image question per line, with the box of
the region that answers it, in pixels.

::

    {"question_id": 1234, "dataset": "gqa", "image": "2354786.jpg",
     "question": "What is on the white table?", "answer": "laptop",
     "bboxs": [[84, 110, 244, 206]], "width": 500, "height": 333}

Each line is a ``visual QA`` sample: the answer is ``<obj>NAME</obj><box>[x1, y1, x2, y2]</box>``
with the first box; NAME is the answer when it is a short phrase (at most
``options.max_name_words`` words), else the first object phrase of the answer, then of the
question, else ``region``.
The box is the gold evidence. Without ``width``/``height`` the image header is read.
``options.image`` names the file (``{image}``; ``{dataset}/{image}`` for the released layout).
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import Field

from stgr_builder.core import grammar
from stgr_builder.core.images import open_image
from stgr_builder.errors import SampleError
from stgr_builder.models import SourceObject, Task, TimedBox
from stgr_builder.sources import AdapterContext, iter_json_lines, register
from stgr_builder.sources.common import (
    AdapterOptions,
    Item,
    Record,
    normalize_xyxy,
    parse_options,
    validate,
    video_name,
)
from stgr_builder.sources.phrases import object_phrases


class VisualCotOptions(AdapterOptions):
    image: str = "{image}"
    max_name_words: int = Field(3, ge=1)


class VisualCotItem(Record):
    question_id: int | str
    dataset: str = ""
    image: str = Field(min_length=1)
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    bboxs: list[list[float]] = Field(min_length=1)
    width: int | None = Field(None, gt=0)
    height: int | None = Field(None, gt=0)


def image_size(ctx: AdapterContext, rel: str) -> tuple[int, int] | None:
    """(W, H) from the image file's header, or None when it cannot be read."""
    try:
        with ctx.local_media(rel) as path, open_image(path) as image:  # never PIL.Image.open: core/images.py
            return image.size
    except (SampleError, OSError):  # OSError: an image in a bucket that is not there
        return None  # the probe rejects the sample with its reason


def name_of(answer: str, question: str, max_words: int) -> str:
    """The object name an answer box is labelled with.

    >>> name_of("laptop", "What is on the table?", 3), name_of("A grey bag hangs there.", "What hangs here?", 3)
    ('laptop', 'grey bag')
    """
    short = grammar.clean_text(answer).rstrip(".").strip()
    if short and len(short.split()) <= max_words:
        return short.lower()
    phrases = object_phrases(answer, limit=1) or object_phrases(question, limit=1)
    return phrases[0] if phrases else "region"


@register("visual_cot")
def read_visual_cot(ctx: AdapterContext) -> Iterator[Item]:
    opts = parse_options(ctx, VisualCotOptions)
    for line, data in iter_json_lines(ctx.path):
        origin = ctx.origin(line)
        item = validate(ctx, origin, VisualCotItem, data)
        if not isinstance(item, VisualCotItem):
            yield item
            continue
        box = item.bboxs[0]
        if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
            yield ctx.malformed(origin, f"bbox {box} is not [x1, y1, x2, y2] with positive area")
            continue
        rel = video_name(opts.image, image=item.image, dataset=item.dataset)
        size = (item.width, item.height) if item.width and item.height else image_size(ctx, rel)
        if size is None:
            yield ctx.malformed(origin, f"no width/height and the image {rel!r} cannot be read for its size")
            continue
        name = name_of(item.answer, item.question, opts.max_name_words)
        box_px = [int(round(v)) for v in box]
        gold = normalize_xyxy(box_px, *size)
        yield ctx.sample(
            origin,
            source_id=f"{item.dataset}:{item.question_id}",
            question=item.question.strip(),
            task=Task.VISUAL,
            answer=grammar.visual_answer(name, box_px),
            image_path=rel,
            objects=[SourceObject(name=name, boxes=[TimedBox(time=0.0, box=gold)])],
            caption=grammar.clean_text(item.answer),
            gold_evidence=ctx.source.gold_evidence,
        )
