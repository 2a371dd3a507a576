"""The generic adapter: any JSON, JSONL, CSV/TSV or Parquet file, its fields mapped by config.

::

    - name: TVG_mine
      adapter: generic
      path: moments.csv
      media_root: videos
      options:
        task: temporal QA              # a task of the spec, or fields.task names a column
        fields: {id: clip_id, question: query, video: file, start: t0, end: t1}

``fields`` maps what a sample needs to the file's field names (dotted paths reach into nested
JSON): ``id``, ``question``, ``answer``, ``video`` / ``image``, ``start`` + ``end`` or ``span``,
``options`` (a list, or a JSON list in a CSV cell), ``answer_index`` (0-based, for MCQ),
``objects`` (names, or ``{"name", "boxes": [{"time", "box"}]}``), ``caption``, ``task``.
The answer gets its task's exact form: temporal tasks without an answer field write the
span; MCQ answers given as an option's text or an index become the letter. An answer that
still lacks its form is a MALFORMED_ROW reject naming the record. ``records`` is the JSON key
(dotted) of the list; ``video``/``image`` templates map the field's value to a path, and
``question_format`` the question field's value to the question.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, model_validator

from stgr_builder.core import grammar
from stgr_builder.models import SourceObject, Task
from stgr_builder.sources import AdapterContext, describe_error, register
from stgr_builder.sources.common import AdapterOptions, Item, parse_options, read_records, round_span


class GenericFields(AdapterOptions):
    id: str | None = None
    question: str = "question"
    answer: str | None = "answer"
    video: str | None = None
    image: str | None = None
    start: str | None = None
    end: str | None = None
    span: str | None = None
    options: str | None = None
    answer_index: str | None = None
    objects: str | None = None
    caption: str | None = None
    task: str | None = None

    @model_validator(mode="after")
    def _media(self) -> GenericFields:
        if (self.video is None) == (self.image is None):
            raise ValueError("map exactly one of fields.video and fields.image")
        if (self.start is None) != (self.end is None):
            raise ValueError("map both fields.start and fields.end, or neither")
        return self


class GenericOptions(AdapterOptions):
    format: Literal["json", "jsonl", "csv", "tsv", "parquet"] | None = None
    records: str | None = Field(None, description="JSON: dotted key of the list of records")
    task: Task | None = Field(None, description="the task of every record (else fields.task)")
    fields: GenericFields
    video: str = "{value}"
    image: str = "{value}"
    question_format: str = Field(
        "{value}", description="the question from the field's value, e.g. 'When does \"{value}\" happen in the video?'"
    )

    @model_validator(mode="after")
    def _task(self) -> GenericOptions:
        if (self.task is None) == (self.fields.task is None):
            raise ValueError("set exactly one of options.task and options.fields.task")
        return self


_MISSING = object()
_OBJECTS = TypeAdapter(list[str | SourceObject])


def _get(record: Any, path: str | None) -> Any:
    if path is None:
        return _MISSING
    value = record
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return None if value == "" else value


def _listish(value: Any) -> Any:
    """A CSV cell holding a JSON list, parsed; anything else as is."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        return json.loads(value)
    return value


class _Bad(ValueError):
    pass


def _build(opts: GenericOptions, record: Any) -> dict[str, Any]:
    f = opts.fields
    if not isinstance(record, dict):
        raise _Bad(f"expected a record object, got {type(record).__name__}")

    def need(path: str | None, what: str) -> Any:
        value = _get(record, path)
        if value is _MISSING or value is None:
            raise _Bad(f"field {path!r} ({what}) is missing")
        return value

    task = opts.task or Task(str(need(f.task, "task")))
    question = opts.question_format.format(value=str(need(f.question, "question")).strip().rstrip("."))
    if opts.question_format == "{value}":
        question = str(need(f.question, "question")).strip()
    span = None
    if f.start is not None:
        span = round_span(float(need(f.start, "start")), float(need(f.end, "end")))
    elif f.span is not None:
        raw = _listish(need(f.span, "span"))
        span = round_span(*[float(v) for v in raw])
    options = (
        [str(o).strip() for o in _listish(_get(record, f.options))]
        if f.options and _get(record, f.options) not in (_MISSING, None)
        else []
    )
    answer = _get(record, f.answer)
    answer = None if answer is _MISSING else answer
    index = _get(record, f.answer_index)
    if index not in (_MISSING, None):
        answer = grammar.option_letter(int(index))
    if task in (Task.VIDEO_MCQ, Task.TEMPORAL_MCQ) and isinstance(answer, str) and answer.strip() in options:
        answer = grammar.option_letter(options.index(answer.strip()))
    if task is Task.TEMPORAL and answer is None and span is not None:
        answer = grammar.temporal_answer(span)
    if task is Task.TEMPORAL_MCQ and span is not None and isinstance(answer, str) and len(answer.strip()) == 1:
        answer = grammar.temporal_mcq_answer(answer.strip(), span)
    if answer is None:
        raise _Bad(f"field {f.answer!r} (answer) is missing")
    answer = str(answer).strip() if task is not Task.VISUAL else str(answer)
    try:
        grammar.parse_answer(task, answer)
    except grammar.TraceError as err:
        raise _Bad(f"answer does not have the form of {task.value!r}: {err.message}") from err
    fields: dict[str, Any] = dict(task=task, question=question, answer=answer, options=options, span=span)
    if f.video is not None:
        fields["video_path"] = opts.video.format(value=need(f.video, "video"))
    else:
        fields["image_path"] = opts.image.format(value=need(f.image, "image"))
    objects = _get(record, f.objects)
    if objects not in (_MISSING, None):
        fields["objects"] = [
            SourceObject(name=o) if isinstance(o, str) else o for o in _OBJECTS.validate_python(_listish(objects))
        ]
    caption = _get(record, f.caption)
    if caption not in (_MISSING, None):
        fields["caption"] = str(caption)
    return fields


@register("generic")
def read_generic(ctx: AdapterContext) -> Iterator[Item]:
    opts = parse_options(ctx, GenericOptions)
    for origin, record in read_records(ctx, opts.format, opts.records):
        if isinstance(record, ValueError):
            yield ctx.malformed(origin, str(record))
            continue
        try:
            fields = _build(opts, record)
        except ValidationError as err:
            yield ctx.malformed(origin, describe_error(err))
            continue
        except (_Bad, ValueError, TypeError) as exc:
            yield ctx.malformed(origin, str(exc))
            continue
        sid = _get(record, opts.fields.id)
        source_id = str(sid) if sid not in (_MISSING, None) else origin.rsplit(":", 1)[-1]
        yield ctx.sample(origin, source_id=source_id, gold_evidence=ctx.source.gold_evidence, **fields)
