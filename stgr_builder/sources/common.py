"""What the dataset adapters share: options, record readers, boxes, and temporal samples.

Every adapter validates ``SourceConfig.options`` with a Pydantic model of its own
(``parse_options``): an unknown or mistyped key is a config error naming the source and the
key. Records are read with their locator (``file:line`` or ``file:KEY``) so a malformed one
becomes a MALFORMED_ROW reject naming where it came from.

Temporal sources (ActivityNet Captions, Charades-STA, QVHighlights, DiDeMo, TACoS, PLM-RDCap)
turn each (video, sentence, span) into up to three samples, chosen by ``options.tasks``:

- ``temporal``: ``When does "<sentence>" happen in the video?`` -> ``[s, e]``;
- ``temporal_mcq``: the same question with the spans of the video's other sentences as
  options (shuffled with the build seed) -> ``X\\n[s, e]``; needs another distinct span;
- ``spatio_temporal``: ``What happens in the video from <s>s to <e>s?`` -> the sentence
  (free-form), with the sentence's object phrases (``phrases.object_phrases``) as the
  objects the open-vocabulary detector grounds on key frames inside the span.

Spans are rounded to 0.1 s, the precision of the answer form, so key frames chosen inside a
sample's span are inside the answer's span too.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator, Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stgr_builder.core import grammar
from stgr_builder.errors import StgrError
from stgr_builder.models import Reject, SourceObject, SourceSample, Task, TimedBox
from stgr_builder.sources import AdapterContext, describe_error, iter_json_lines
from stgr_builder.sources.phrases import object_phrases

Options = TypeVar("Options", bound=BaseModel)
Item = SourceSample | Reject


class AdapterOptions(BaseModel):
    """Base of every adapter's options: unknown keys are errors, and so are NaN and inf."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Record(BaseModel):
    """Base of a source record's model: the fields an adapter reads; the rest is ignored."""

    model_config = ConfigDict(extra="ignore")


def parse_options(ctx: AdapterContext, model: type[Options]) -> Options:
    """``ctx.source.options`` validated by ``model``; a ``StgrError`` naming the key otherwise.

    >>> parse_options(ctx, TemporalOptions)  # doctest: +SKIP
    TemporalOptions(tasks=['temporal', 'temporal_mcq'], ...)
    """
    try:
        return model.model_validate(ctx.source.options)
    except ValidationError as err:
        problems = "; ".join(f"options.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise StgrError(f"source {ctx.source.name!r} ({ctx.source.adapter}): {problems}") from err


def validate(ctx: AdapterContext, origin: str, model: type[Options], data: Any) -> Options | Reject:
    """``data`` as ``model``, or a MALFORMED_ROW reject at ``origin``."""
    if isinstance(data, ValueError):
        return ctx.malformed(origin, str(data))
    if not isinstance(data, dict):
        return ctx.malformed(origin, f"expected a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        return ctx.malformed(origin, describe_error(err))


# ---------------------------------------------------------------------------------------
# Reading records
# ---------------------------------------------------------------------------------------


#: A whole-file JSON source is parsed in memory (several times its size): past this, JSON Lines.
MAX_JSON_BYTES = 2 << 30


def load_json(ctx: AdapterContext) -> Any:
    """The whole annotation file as JSON; a file that is not JSON (or too large to parse in
    memory: ``MAX_JSON_BYTES``) is a config error."""
    size = ctx.path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise StgrError(
            f"source {ctx.source.name!r}: {ctx.source.path} is {size / 2**30:.1f} GiB of JSON, over the "
            f"{MAX_JSON_BYTES / 2**30:.0f} GiB parsed in memory; write it as JSON Lines (one record per "
            f"line, .jsonl), which is read a line at a time"
        )
    try:
        return json.loads(ctx.path.read_bytes().decode("utf-8-sig"))  # a leading BOM is accepted
    except ValueError as exc:
        raise StgrError(f"source {ctx.source.name!r}: {ctx.source.path} is not a JSON file: {exc}") from exc


def json_entries(ctx: AdapterContext, data: Any | None = None) -> Iterator[tuple[str, str | None, Any]]:
    """``(origin, key, record)`` of a JSON file holding a list (key None, origin ``file:[i]``)
    or an object keyed by id (origin ``file:KEY``)."""
    data = load_json(ctx) if data is None else data
    if isinstance(data, list):
        for i, record in enumerate(data):
            yield ctx.origin(f"[{i}]"), None, record
    elif isinstance(data, dict):
        for key, record in data.items():
            yield ctx.origin(key), str(key), record
    else:
        raise StgrError(
            f"source {ctx.source.name!r}: {ctx.source.path} holds a {type(data).__name__}, "
            "expected a list or an object of records"
        )


def read_records(
    ctx: AdapterContext, fmt: str | None = None, records_key: str | None = None
) -> Iterator[tuple[str, Any]]:
    """``(origin, record)`` of a JSON, JSONL, CSV or Parquet file (format from ``fmt`` or the
    extension). A record that does not parse is a ``ValueError`` in place of the record."""
    fmt = fmt or {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}.get(
        ctx.path.suffix.lower(), "json"
    )
    if fmt == "jsonl":
        for line, data in iter_json_lines(ctx.path):
            yield ctx.origin(line), data
    elif fmt in ("csv", "tsv"):
        with ctx.path.open(newline="", encoding="utf-8-sig") as handle:  # a leading BOM is accepted
            reader = csv.DictReader(handle, delimiter="\t" if fmt == "tsv" else ",")
            for row in reader:
                yield ctx.origin(reader.line_num), row
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(ctx.path).to_pylist()):
            yield ctx.origin(f"row {i}"), row
    else:
        data = load_json(ctx)
        if records_key:
            for part in records_key.split("."):
                data = data.get(part) if isinstance(data, dict) else None
            if data is None:
                raise StgrError(f"source {ctx.source.name!r}: no {records_key!r} in {ctx.source.path}")
        for origin, key, record in json_entries(ctx, data):
            if key is not None and isinstance(record, dict):
                record = {"_key": key, **record}
            yield origin, record


# ---------------------------------------------------------------------------------------
# Boxes and spans
# ---------------------------------------------------------------------------------------


def normalize_xyxy(box: Sequence[float], width: float, height: float) -> list[float]:
    """Pixel ``[x1, y1, x2, y2]`` -> normalized, clipped to [0, 1].

    >>> normalize_xyxy([64, 68, 320, 136], 640, 272)
    [0.1, 0.25, 0.5, 0.5]
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    clip = lambda v: min(max(v, 0.0), 1.0)  # noqa: E731
    return [clip(x1 / width), clip(y1 / height), clip(x2 / width), clip(y2 / height)]


def xywh_to_xyxy(box: Sequence[float]) -> list[float]:
    """``[x, y, w, h]`` (top-left corner) -> ``[x1, y1, x2, y2]``."""
    x, y, w, h = (float(v) for v in box)
    return [x, y, x + w, y + h]


def round_span(start: float, end: float) -> list[float]:
    """A span at the answer's precision (0.1 s).

    >>> round_span(0.83, 19.86)
    [0.8, 19.9]
    """
    return [round(float(start), 1), round(float(end), 1)]


def video_name(template: str, **fields: Any) -> str:
    """The media path of a video from the annotation's id, e.g. ``{vid}.mp4``."""
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise StgrError(f"video name template {template!r}: {exc!r}; fields: {', '.join(fields)}") from exc


def clean_sentence(text: str) -> str:
    """A caption as one line of plain text, without a final full stop."""
    return grammar.clean_text(text).strip().rstrip(".").strip()


# ---------------------------------------------------------------------------------------
# Temporal samples
# ---------------------------------------------------------------------------------------

TemporalTask = Literal["temporal", "temporal_mcq", "spatio_temporal"]


class TemporalOptions(AdapterOptions):
    """Options shared by the temporal-grounding adapters."""

    tasks: list[TemporalTask] = Field(
        default_factory=lambda: list[TemporalTask](["temporal", "temporal_mcq"]),
        description="samples made from each (video, sentence, span); spatio_temporal needs an open-vocabulary detector",
    )
    video: str = Field("{vid}.mp4", description="media path of a video from its id")
    mcq_options: int = Field(4, ge=2, le=10, description="options of a temporal MCQ (the answer and distractors)")
    question: str = 'When does "{sentence}" happen in the video?'
    mcq_question: str = 'Which span of the video shows "{sentence}"?'
    st_question: str = "What happens in the video from {start}s to {end}s?"
    max_objects: int = Field(3, ge=1, description="object phrases per spatio-temporal sample")
    extra_nouns: list[str] = Field(default_factory=list, description="more nouns for the phrase extractor")


def temporal_samples(
    ctx: AdapterContext,
    opts: TemporalOptions,
    *,
    vid: str,
    video_path: str,
    sentences: Sequence[tuple[str, str, Sequence[float]]],
    objects: dict[int, list[SourceObject]] | None = None,
) -> Iterator[Item]:
    """The samples of one video's ``(origin, sentence, span)`` list, as ``opts.tasks`` asks.

    ``objects`` (by sentence position) replaces the extracted phrases of a spatio-temporal
    sample, e.g. with a source's gold boxes.
    """
    spans = [round_span(*span) for _, _, span in sentences]
    for i, (origin, sentence, _) in enumerate(sentences):
        text, span = clean_sentence(sentence), spans[i]
        if not text:
            yield ctx.malformed(origin, "empty sentence")
            continue
        if not span[0] < span[1]:
            yield ctx.malformed(origin, f"span {span} (rounded to 0.1 s) is empty or reversed")
            continue
        source_id = f"{vid}#{i}"
        if "temporal" in opts.tasks:
            yield ctx.sample(
                origin,
                source_id=source_id,
                question=opts.question.format(sentence=text),
                task=Task.TEMPORAL,
                answer=grammar.temporal_answer(span),
                video_path=video_path,
                span=span,
            )
        if "temporal_mcq" in opts.tasks:
            mcq = _mcq(ctx, opts, vid, i, span, spans)
            if mcq is not None:
                options, letter = mcq
                yield ctx.sample(
                    origin,
                    source_id=source_id,
                    question=opts.mcq_question.format(sentence=text),
                    task=Task.TEMPORAL_MCQ,
                    options=options,
                    answer=grammar.temporal_mcq_answer(letter, span),
                    video_path=video_path,
                    span=span,
                )
        if "spatio_temporal" in opts.tasks:
            objs = _inside((objects or {}).get(i), span) or [
                SourceObject(name=p) for p in object_phrases(text, extra_nouns=opts.extra_nouns, limit=opts.max_objects)
            ]
            if objs:
                question = opts.st_question.format(
                    start=grammar.fmt_time(span[0]), end=grammar.fmt_time(span[1]), sentence=text
                )
                yield ctx.sample(
                    origin,
                    source_id=source_id,
                    question=question,
                    task=Task.SPATIO_TEMPORAL,
                    answer=text,
                    video_path=video_path,
                    span=span,
                    objects=objs,
                    gold_evidence=ctx.source.gold_evidence,
                )


def _mcq(
    ctx: AdapterContext, opts: TemporalOptions, vid: str, i: int, span: list[float], spans: list[list[float]]
) -> tuple[list[str], str] | None:
    """Options (span texts) and the answer's letter; None without a distinct other span."""
    others = sorted({tuple(s) for j, s in enumerate(spans) if j != i and s != span and s[0] < s[1]})
    if not others:
        return None
    rng = random.Random(f"{ctx.seed}:{ctx.source.name}:{vid}:{i}")
    chosen = rng.sample(others, min(len(others), opts.mcq_options - 1))
    choices = [tuple(span), *chosen]
    rng.shuffle(choices)
    letter = grammar.option_letter(choices.index(tuple(span)))
    return [grammar.temporal_answer(c) for c in choices], letter


def timed_boxes(pairs: Sequence[tuple[float, Sequence[float]]], limit: int | None) -> list[TimedBox]:
    """Gold boxes at times, thinned evenly to at most ``limit`` (first and last kept)."""
    pairs = sorted(pairs, key=lambda p: p[0])
    if limit is not None and len(pairs) > limit:
        if limit == 1:
            pairs = [pairs[len(pairs) // 2]]
        else:
            step = (len(pairs) - 1) / (limit - 1)
            pairs = [pairs[round(k * step)] for k in range(limit)]
    return [TimedBox(time=round(t, 4), box=list(b)) for t, b in pairs]


def _inside(objects: list[SourceObject] | None, span: Sequence[float]) -> list[SourceObject]:
    """The objects with their gold boxes cut to ``span`` (a span rounded to 0.1 s may start
    after a tube's first box); objects left without a box are dropped."""
    out = []
    for obj in objects or []:
        boxes = [tb for tb in obj.boxes if span[0] - 1e-6 <= tb.time <= span[1] + 1e-6]
        if boxes:
            out.append(obj.model_copy(update={"boxes": boxes}))
    return out


def subject_name(sentence: str, default: str, extra_nouns: Sequence[str] = ()) -> str:
    """The object a caption is about: its first object phrase, else ``default``.

    >>> subject_name("The man in the suit turns around.", "person")
    'man'
    """
    phrases = object_phrases(sentence, extra_nouns=extra_nouns, limit=1)
    return phrases[0] if phrases else default
