"""GQA (``train_balanced_questions.json`` with ``train_sceneGraphs.json``): questions keyed by
id; the boxes of the objects they refer to live in the scene graphs.

::

    {"201307251": {"imageId": "2354786", "question": "What is on the white table?",
                   "answer": "laptop", "fullAnswer": "The laptop is on the table.",
                   "annotations": {"answer": {"0": "1232132"}, "question": {"5": "1232155"},
                                   "fullAnswer": {"1": "1232132"}}}}

    scene graphs: {"2354786": {"width": 500, "height": 333,
                               "objects": {"1232132": {"name": "laptop", "x": 84, "y": 110,
                                                       "w": 160, "h": 96}}}}

A question whose answer refers to an object (``annotations.answer``, else ``fullAnswer``'s
object named like the answer) becomes a ``visual QA`` sample: the answer is that object,
``<obj>name</obj><box>[x1, y1, x2, y2]</box>`` in integer pixels, and its box is the gold
evidence. Other questions (yes/no, attributes) are not visual QA and are skipped.
``options.scene_graphs`` is relative to the questions file; ``options.image`` names the image
file (``{image_id}.jpg``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from pydantic import Field

from stgr_builder.core import grammar
from stgr_builder.errors import StgrError
from stgr_builder.models import SourceObject, Task, TimedBox
from stgr_builder.sources import AdapterContext, register
from stgr_builder.sources.common import (
    AdapterOptions,
    Item,
    Record,
    json_entries,
    normalize_xyxy,
    parse_options,
    validate,
    video_name,
)


class GqaOptions(AdapterOptions):
    scene_graphs: str = Field(description="scene graphs JSON, relative to the questions file")
    image: str = "{image_id}.jpg"


class GqaQuestion(Record):
    imageId: str = Field(min_length=1)
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    annotations: dict[str, dict[str, str]] = Field(default_factory=dict)


def _answer_object(q: GqaQuestion, objects: dict) -> dict | None:
    refs = list(q.annotations.get("answer", {}).values())
    refs += [
        r
        for r in q.annotations.get("fullAnswer", {}).values()
        if objects.get(r, {}).get("name", "").lower() == q.answer.lower()
    ]
    for ref in refs:
        if ref in objects:
            return objects[ref]
    return None


@register("gqa")
def read_gqa(ctx: AdapterContext) -> Iterator[Item]:
    opts = parse_options(ctx, GqaOptions)
    graphs_path = ctx.path.parent / opts.scene_graphs
    try:
        graphs = json.loads(graphs_path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise StgrError(f"source {ctx.source.name!r}: options.scene_graphs {graphs_path}: {exc}") from exc
    for origin, qid, data in json_entries(ctx):
        q = validate(ctx, origin, GqaQuestion, data)
        if not isinstance(q, GqaQuestion):
            yield q
            continue
        graph = graphs.get(q.imageId)
        if not isinstance(graph, dict) or "width" not in graph or "height" not in graph:
            yield ctx.malformed(origin, f"image {q.imageId} has no scene graph with width and height")
            continue
        obj = _answer_object(q, graph.get("objects", {}))
        if obj is None:
            continue  # not a grounding question
        try:
            x, y, w, h = (int(round(float(obj[k]))) for k in ("x", "y", "w", "h"))
            name = grammar.clean_text(str(obj["name"]))
        except (KeyError, TypeError, ValueError) as exc:
            yield ctx.malformed(origin, f"scene-graph object of the answer lacks name/x/y/w/h: {exc!r}")
            continue
        if w <= 0 or h <= 0 or not name:
            yield ctx.malformed(origin, f"scene-graph object {obj!r} has no area or no name")
            continue
        box_px = [x, y, x + w, y + h]
        gold = normalize_xyxy(box_px, graph["width"], graph["height"])
        yield ctx.sample(
            origin,
            source_id=str(qid),
            question=q.question.strip(),
            task=Task.VISUAL,
            answer=grammar.visual_answer(name, box_px),
            image_path=video_name(opts.image, image_id=q.imageId),
            objects=[SourceObject(name=name, boxes=[TimedBox(time=0.0, box=gold)])],
            caption=grammar.clean_text(q.answer) if q.answer != name else None,
            gold_evidence=ctx.source.gold_evidence,
        )
