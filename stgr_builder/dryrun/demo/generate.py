"""The embedded demo source: seeded synthetic videos, stills, QA items and their ground truth.

``generate_demo`` writes, under ``out_dir``::

    media/videos/v000.mp4 ...   H.264, 320x240, 6-48 s, 10-25 fps, GOPs of 10-120 frames
    media/images/i000.jpg ...   stills drawn by the same renderer
    demo_source.jsonl           the QA items, one ``DemoRecord`` per line (the ``demo`` adapter's format)
    truth.json                  every object's box in every frame (``DemoTruth``), for tests

Objects of ``DEMO_CLASSES`` pop into view, move across the frame and vanish; each is visible
(whole, never cut by the frame edge) for 18-42% of its video, so the spans pass the paper's
filters (annotated span < 50%, answer span < 70% of the video). The same seed gives the same
bytes.

>>> generate_demo(Path("demo"), seed=0)  # doctest: +SKIP
PosixPath('demo/demo_source.jsonl')
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from stgr_builder.core.encode import encode_h264
from stgr_builder.dryrun.demo.noise import CORRUPTIONS_FILE, DemoNoise, apply_noise
from stgr_builder.dryrun.demo.scenes import Background, make_background, object_size, overlap, place
from stgr_builder.dryrun.demo.sprites import (
    CLASS_COLOURS,
    DEMO_CLASSES,
    FLYING,
    Sprite,
    make_sprites,
    paste,
    sprite_box,
)
from stgr_builder.models import (
    DemoTruth,
    Task,
    TruthImage,
    TruthImageObject,
    TruthObject,
    TruthVideo,
)
from stgr_builder.sources.demo import OPTION_LETTERS, DemoRecord

DEMO_FILE = "demo_source.jsonl"
MEDIA_DIR = "media"
TRUTH_FILE = "truth.json"
WIDTH, HEIGHT = 320, 240

#: (duration s, fps, GOP frames, objects) of the default videos, cycled for more videos.
#: Two are shorter than the paper's 10 s minimum, so a build with default filters rejects them.
VIDEO_TABLE: tuple[tuple[float, float, int, int], ...] = (
    (12.0, 25.0, 50, 3),
    (6.0, 10.0, 10, 2),
    (10.5, 15.0, 30, 2),
    (14.0, 20.0, 120, 3),
    (8.0, 12.5, 25, 2),
    (48.0, 12.0, 60, 3),
)

IMAGE_SIZES: tuple[tuple[int, int], ...] = ((320, 240), (480, 360), (400, 300))

_VERBS = {"car": "drives", "ball": "bounces", "person": "walks", "bird": "flies", "dog": "runs"}


def _looks(cls: str, colour: str) -> str:
    """'a red car'; a person is described by the shirt ('a person in a red shirt')."""
    article = "an" if colour[0] in "aeiou" else "a"
    return f"a person in {article} {colour} shirt" if cls == "person" else f"{article} {colour} {cls}"


def _colour_question(cls: str) -> str:
    return "What colour is the person's shirt?" if cls == "person" else f"What colour is the {cls}?"


# ---------------------------------------------------------------------------------------
# The ground truth
# ---------------------------------------------------------------------------------------


def load_truth(path: Path) -> DemoTruth:
    """Read ``truth.json`` (or the demo folder that holds it).

    >>> load_truth(Path("demo")).videos[0].objects[0].name  # doctest: +SKIP
    'car'
    """
    path = path / TRUTH_FILE if path.is_dir() else path
    return DemoTruth.model_validate_json(path.read_text())


# ---------------------------------------------------------------------------------------
# Planning a video: who appears when, and where they go
# ---------------------------------------------------------------------------------------


@dataclass
class _Actor:
    cls: str
    colour: str
    poses: list[Sprite]
    first: int  # first and last frame index in view
    last: int
    x0: float  # top-left x at first and last frame
    x1: float
    base_y: float  # top-left y (ground objects: standing; birds: mid-flight)
    lift: float  # bounce or bob amplitude in pixels
    cycles: float  # bounces or bobs over the whole visit
    pose_every: int  # frames per pose step (walk cycle, wing flap)

    def at(self, frame: int) -> tuple[Sprite, int, int]:
        """Sprite pose and top-left position at ``frame`` (which must be in view)."""
        u = (frame - self.first) / max(1, self.last - self.first)
        x = self.x0 + (self.x1 - self.x0) * u
        if self.cls == "ball":
            y = self.base_y - self.lift * abs(np.sin(np.pi * self.cycles * u))
        elif self.cls in FLYING:
            y = self.base_y + self.lift * np.sin(2 * np.pi * self.cycles * u)
        else:
            y = self.base_y
        sprite = self.poses[(frame // self.pose_every) % len(self.poses)]
        return sprite, int(round(x)), int(round(y))

    def box_at(self, frame: int) -> list[int]:
        sprite, x, y = self.at(frame)
        bx1, by1, bx2, by2 = sprite_box(sprite)
        return [x + bx1, y + by1, x + bx2, y + by2]

    @property
    def moves_right(self) -> bool:
        return self.x1 > self.x0


def _plan_actor(rng: np.random.Generator, cls: str, first: int, last: int, fps: float, bg: Background) -> _Actor:
    colour = str(rng.choice(CLASS_COLOURS[cls]))
    poses = make_sprites(rng, cls, colour, object_size(rng, cls, WIDTH, HEIGHT), n_poses=4)
    sh, sw = poses[0].alpha.shape
    room = WIDTH - sw
    # Cross at least 40% of the room there is, so "moves from left to right" is plain to see.
    travel = rng.uniform(0.4, 1.0) * room
    start = rng.uniform(0, room - travel)
    x0, x1 = (start, start + travel) if rng.random() < 0.5 else (start + travel, start)
    _, y = place(rng, cls, sw, sh, bg, ground_from=0.35)
    lift = 0.0
    if cls == "ball":
        lift = float(rng.uniform(0.15, 0.3) * HEIGHT)
        y = max(y, int(lift) + 1)
    elif cls in FLYING:
        lift = float(min(rng.uniform(4, 14), y, HEIGHT - sh - y))
    if x1 < x0:  # sprites face right; turn them to face where they go
        poses = [pose.flipped() for pose in poses]
    return _Actor(
        cls=cls,
        colour=colour,
        poses=poses,
        first=first,
        last=last,
        x0=float(x0),
        x1=float(x1),
        base_y=float(min(max(y, 0), HEIGHT - sh)),
        lift=max(lift, 0.0),
        cycles=float(rng.integers(1, 4)),
        pose_every=max(1, int(round(fps / 6))),
    )


def _intervals(rng: np.random.Generator, n: int, n_frames: int, fps: float) -> list[tuple[int, int]]:
    """Visit intervals (first, last frame) of 18-42% of the video, with starts >= ~1 s apart."""
    gap = max(fps, 0.08 * n_frames)
    while True:
        spans = []
        for _ in range(n):
            length = int(rng.uniform(0.18, 0.42) * n_frames)
            first = int(rng.uniform(0.03, 0.97) * n_frames - length / 2)
            first = min(max(first, int(0.03 * n_frames)), int(0.97 * n_frames) - length)
            spans.append((first, first + length - 1))
        starts = sorted(s for s, _ in spans)
        if all(b - a >= gap for a, b in zip(starts, starts[1:], strict=False)):
            return spans


def _plan_video(rng: np.random.Generator, n_objects: int, n_frames: int, fps: float, bg: Background) -> list[_Actor]:
    """Actors with distinct classes whose boxes never cover more than 25% of each other."""
    for _attempt in range(200):
        classes = [str(c) for c in rng.choice(DEMO_CLASSES, size=n_objects, replace=False)]
        spans = _intervals(rng, n_objects, n_frames, fps)
        actors = [
            _plan_actor(rng, cls, first, last, fps, bg) for cls, (first, last) in zip(classes, spans, strict=False)
        ]
        if not _crowded(actors):
            return actors
    raise RuntimeError("could not plan a demo video without heavy overlap")  # never seen in practice


def _crowded(actors: list[_Actor]) -> bool:
    for i, a in enumerate(actors):
        for b in actors[i + 1 :]:
            lo, hi = max(a.first, b.first), min(a.last, b.last)
            for frame in range(lo, hi + 1, 2):
                if overlap(a.box_at(frame), b.box_at(frame)) > 0.25:
                    return True
    return False


def _render(bg: Background, actors: list[_Actor], n_frames: int, boxes: list[list[list[int] | None]]):
    """Yield RGB frames; record each actor's visible box per frame into ``boxes``."""

    def depth(actor: _Actor) -> float:  # birds behind, then by where the feet are
        return -1.0 if actor.cls in FLYING else actor.base_y + actor.poses[0].alpha.shape[0]

    order = sorted(range(len(actors)), key=lambda i: depth(actors[i]))
    for frame_idx in range(n_frames):
        frame = bg.rgb.copy()
        for i in order:
            actor = actors[i]
            if actor.first <= frame_idx <= actor.last:
                sprite, x, y = actor.at(frame_idx)
                boxes[i][frame_idx] = paste(frame, sprite, x, y)
        yield np.clip(frame, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------
# Questions
# ---------------------------------------------------------------------------------------


def _fmt_span(span: tuple[float, float]) -> str:
    return f"[{span[0]:.1f}, {span[1]:.1f}]"


def _region(box: list[int], width: int, height: int) -> str:
    cx, cy = (box[0] + box[2]) / 2 / width, (box[1] + box[3]) / 2 / height
    horizontal = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "centre"
    vertical = "upper" if cy < 1 / 3 else "lower" if cy > 2 / 3 else "middle"
    if vertical == "middle":
        return "In the centre" if horizontal == "centre" else f"On the {horizontal} side"
    return f"In the {vertical} {'middle' if horizontal == 'centre' else horizontal}"


def _shuffled_options(rng: np.random.Generator, right: str, wrong: list[str], n: int = 4) -> tuple[list[str], str]:
    """Options with ``right`` among up to n-1 of ``wrong``, in random order; and its letter."""
    picked = [str(w) for w in rng.permutation(wrong)[: n - 1]]
    options = [right, *picked]
    options = [options[i] for i in rng.permutation(len(options))]
    return options, OPTION_LETTERS[options.index(right)]


def _video_items(
    rng: np.random.Generator,
    vid: str,
    path: str,
    actors: list[_Actor],
    fps: float,
    boxes: list[list[list[int] | None]],
    events: bool = False,
) -> list[DemoRecord]:
    spans = {a.cls: (round(a.first / fps, 1), round(a.last / fps, 1)) for a in actors}
    present = [a.cls for a in actors]
    absent = [c for c in DEMO_CLASSES if c not in present]
    by_start = sorted(actors, key=lambda a: a.first)
    items: list[DemoRecord] = []

    def add(task: Task, question: str, answer: str, *, options=(), span=None, objects=(), caption=None):
        items.append(
            DemoRecord(
                id=f"{vid}#{len(items)}",
                task=task,
                question=question,
                options=list(options),
                answer=answer,
                video=path,
                span=list(span) if span else None,
                objects=list(objects),
                caption=caption,
            )
        )

    for i, actor in enumerate(actors):
        name, verb = actor.cls, _VERBS[actor.cls]
        direction = "from the left to the right" if actor.moves_right else "from the right to the left"
        caption = f"{_looks(name, actor.colour).capitalize()} appears and {verb} {direction} of the frame."
        add(
            Task.TEMPORAL,
            f"When is the {name} visible in the video?",
            _fmt_span(spans[name]),
            span=spans[name],
            objects=[name],
            caption=caption,
        )
        if i % 2 == 0:
            add(
                Task.SPATIO_TEMPORAL,
                f"What does the {name} do while it is visible?",
                f"The {name} {verb} {direction} of the frame.",
                span=spans[name],
                objects=[name],
                caption=caption,
            )
        else:
            first_box = boxes[i][actor.first]
            assert first_box is not None  # an actor is drawn from its first frame on
            where = _region(first_box, WIDTH, HEIGHT)
            add(
                Task.SPATIO_TEMPORAL,
                f"Where is the {name} when {'they first appear' if name == 'person' else 'it first appears'}?",
                f"{where} of the frame.",
                span=spans[name],
                objects=[name],
                caption=caption,
            )

    target = actors[int(rng.integers(len(actors)))]
    options, letter = _shuffled_options(rng, target.cls, absent)
    add(
        Task.TEMPORAL_MCQ,
        "Which of these objects appears in the video, and when is it visible?",
        f"{letter}\n{_fmt_span(spans[target.cls])}",
        options=options,
        span=spans[target.cls],
        objects=[target.cls],
        caption=f"{_looks(target.cls, target.colour).capitalize()} appears.",
    )

    asked = actors[int(rng.integers(len(actors)))]
    wrong = [c for c in CLASS_COLOURS[asked.cls] if c != asked.colour]
    options, letter = _shuffled_options(rng, asked.colour, wrong)
    add(
        Task.VIDEO_MCQ,
        _colour_question(asked.cls),
        letter,
        options=options,
        objects=[asked.cls],
        caption=f"The video shows {_looks(asked.cls, asked.colour)}.",
    )
    first = by_start[0]
    options, letter = _shuffled_options(rng, first.cls, [c for c in present if c != first.cls] + absent)
    add(
        Task.VIDEO_MCQ,
        "Which object appears first in the video?",
        letter,
        options=options,
        objects=present,
        caption=f"The {first.cls} appears first.",
    )

    other = next((a for a in actors if a is not asked), asked)
    add(
        Task.VIDEO_FREE,
        _colour_question(other.cls),
        other.colour,
        objects=[other.cls],
        caption=f"The video shows {_looks(other.cls, other.colour)}.",
    )
    add(
        Task.VIDEO_FREE,
        "Which object appears last in the video?",
        f"the {by_start[-1].cls}",
        objects=present,
        caption=f"The {by_start[-1].cls} appears last.",
    )
    if events:  # last, so the other items keep their ids; no draw, so the rest keeps its bytes
        for actor in actors:
            args, kwargs = _event_item(actor, spans[actor.cls])
            add(*args, **kwargs)
    return items


def _event_item(actor: _Actor, span: tuple[float, float]) -> tuple[tuple[Task, str, str], dict]:
    """An event question about the actor ("When does the red dog run from the left to the right
    of the frame?"): its span is when it crosses the frame, which is when it is in view; the
    question names no presence (``span_check.presence_pattern``), so a judge checks it."""
    name, direction = actor.cls, "from the left to the right" if actor.moves_right else "from the right to the left"
    looks = _looks(name, actor.colour).split(" ", 1)[1]  # "red dog", "person in a red shirt"
    verb = {"drives": "drive", "bounces": "bounce", "walks": "walk", "flies": "fly", "runs": "run"}[_VERBS[name]]
    question = f"When does the {looks} {verb} {direction} of the frame?"
    return (Task.TEMPORAL, question, _fmt_span(span)), {"span": span, "objects": [name], "caption": None}


# ---------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------


def _make_video(out_media: Path, index: int, seed: int, events: bool = False) -> tuple[TruthVideo, list[DemoRecord]]:
    duration, fps, gop, n_objects = VIDEO_TABLE[index % len(VIDEO_TABLE)]
    rng = np.random.default_rng([seed, 1, index])  # per video: more videos never change earlier ones
    n_frames = int(round(duration * fps))
    bg = make_background(rng, WIDTH, HEIGHT)
    actors = _plan_video(rng, n_objects, n_frames, fps, bg)
    boxes: list[list[list[int] | None]] = [[None] * n_frames for _ in actors]
    rel = f"videos/v{index:03d}.mp4"
    encode_h264(out_media / rel, _render(bg, actors, n_frames, boxes), fps=fps, gop=gop)
    truth = TruthVideo(
        path=rel,
        fps=fps,
        n_frames=n_frames,
        width=WIDTH,
        height=HEIGHT,
        gop=gop,
        objects=[TruthObject(name=a.cls, colour=a.colour, boxes=b) for a, b in zip(actors, boxes, strict=False)],
    )
    return truth, _video_items(rng, f"v{index:03d}", rel, actors, fps, boxes, events=events)


def _make_image(out_media: Path, index: int, seed: int) -> tuple[TruthImage, list[DemoRecord]]:
    rng = np.random.default_rng([seed, 2, index])
    width, height = IMAGE_SIZES[index % len(IMAGE_SIZES)]
    bg = make_background(rng, width, height)
    frame = bg.rgb.copy()
    placed: list[tuple[str, str, Sprite, int, int, list[int]]] = []
    for cls in rng.choice(DEMO_CLASSES, size=int(rng.integers(2, 4)), replace=False):
        cls = str(cls)
        colour = str(rng.choice(CLASS_COLOURS[cls]))
        sprite = make_sprites(rng, cls, colour, object_size(rng, cls, width, height), n_poses=4)[int(rng.integers(4))]
        sprite = sprite.flipped() if rng.random() < 0.5 else sprite
        sh, sw = sprite.alpha.shape
        for _try in range(50):
            x, y = place(rng, cls, sw, sh, bg, ground_from=0.35)
            x, y = min(max(x, 0), width - sw), min(max(y, 0), height - sh)
            bx1, by1, bx2, by2 = sprite_box(sprite)
            box = [x + bx1, y + by1, x + bx2, y + by2]
            if all(overlap(box, other[5]) < 0.1 for other in placed):
                placed.append((cls, colour, sprite, x, y, box))
                break
    objects = []
    for cls, colour, sprite, x, y, _ in sorted(
        placed, key=lambda p: -1 if p[0] in FLYING else p[4] + p[2].alpha.shape[0]
    ):
        objects.append(TruthImageObject(name=cls, colour=colour, box=paste(frame, sprite, x, y)))
    rel = f"images/i{index:03d}.jpg"
    (out_media / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8)).save(out_media / rel, quality=92)
    items = []
    for k, obj in enumerate(objects):
        question = f"Where is the {obj.name} in the image?" if k % 2 == 0 else f"Find {_looks(obj.name, obj.colour)}."
        answer = f"<obj>{obj.name}</obj><box>[{', '.join(str(v) for v in obj.box)}]</box>"
        items.append(
            DemoRecord(
                id=f"i{index:03d}#{k}",
                task=Task.VISUAL,
                question=question,
                answer=answer,
                image=rel,
                objects=[obj.name],
                caption=f"{_looks(obj.name, obj.colour).capitalize()}.",
            )
        )
    return TruthImage(path=rel, width=width, height=height, objects=objects), items


def _record_json(record: DemoRecord) -> dict:
    """The record as written: the unused one of ``video``/``image`` left out, the rest kept."""
    data = record.model_dump(mode="json")
    return {k: v for k, v in data.items() if not (k in ("video", "image") and v is None)}


def generate_demo(
    out_dir: Path,
    seed: int = 0,
    n_videos: int = 6,
    n_images: int = 3,
    noise: DemoNoise | None = None,
    *,
    event_spans: bool = False,
) -> Path:
    """Write the demo media, ``demo_source.jsonl`` and ``truth.json``; return the jsonl's path.

    The media root for a config is ``out_dir / "media"``. With ``noise`` (``noise.py``) a
    share of the spans and gold boxes is corrupted and ``corruptions.json`` says which; the
    media and ``truth.json`` stay what was drawn. ``event_spans`` adds, per video object, an
    event question ("When does the red dog run ...?") after the video's other items (checked by
    a judge, not the detector: ``span_check.events``); off, the output is as before.

    >>> generate_demo(Path("/tmp/demo"), seed=0)  # doctest: +SKIP
    PosixPath('/tmp/demo/demo_source.jsonl')
    """
    out_dir = Path(out_dir)
    media = out_dir / MEDIA_DIR
    videos: list[TruthVideo] = []
    images: list[TruthImage] = []
    records: list[DemoRecord] = []
    for index in range(n_videos):
        video, items = _make_video(media, index, seed, events=event_spans)
        videos.append(video)
        records.extend(items)
    for index in range(n_images):
        image, image_items = _make_image(media, index, seed)
        images.append(image)
        records.extend(image_items)
    rows = [_record_json(r) for r in records]
    corruptions = out_dir / CORRUPTIONS_FILE
    if noise is not None and noise.active:
        report = apply_noise(rows, noise, {v.path: v for v in videos}, {i.path: i for i in images})
        corruptions.write_text(report.model_dump_json(indent=1), encoding="utf-8")
    elif corruptions.exists():
        corruptions.unlink()  # an earlier noisy demo's report would no longer be true
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    source = out_dir / DEMO_FILE
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    demo_truth = DemoTruth(seed=seed, classes=list(DEMO_CLASSES), videos=videos, images=images)
    (out_dir / TRUTH_FILE).write_text(demo_truth.model_dump_json(), encoding="utf-8")
    return source
