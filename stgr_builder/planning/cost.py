"""The estimate of a build's work without calling any model: requests, images, pixels, tokens,
cost, and the seconds of decoding and detection from constants measured on this kind of machine."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from stgr_builder.detect.costs import TORCH_CPU_S_PER_FRAME, DetectCost, detect_cost, detect_options
from stgr_builder.models import (
    BuildConfig,
    ImageInfo,
    PlanEstimate,
    SourceSample,
    TrackConfig,
    VideoInfo,
)
from stgr_builder.planning.selection import shard_of


def _prompt_chars(config: BuildConfig) -> tuple[int, int]:
    """Characters of the CoT prompt's fixed text and of one frame line."""
    from stgr_builder.annotate.prompts import load_prompt

    if config.annotator.backend != "openai":
        return 0, 0
    from stgr_builder.annotate.llm import parse_llm_prompt

    assert config.annotator.prompt is not None  # AnnotatorConfig fills in the backend's default
    content = parse_llm_prompt(load_prompt(config.annotator.prompt))
    fixed = (
        len(content.system)
        + len(content.user)
        + len(content.reask) // 4
        + max(len(content.span_rule_temporal), len(content.span_rule_other))
    )
    return fixed, len(content.frame) + 16


def image_tokens(width: int, height: int, base: int, tile: int) -> int:
    """Tokens of one image: ``base + tile`` per 512x512 tile (OpenAI's high-detail rule,
    without its 2048/768 rescaling).

    >>> image_tokens(640, 272, 85, 170)
    425
    """
    return base + tile * math.ceil(width / 512) * math.ceil(height / 512)


# CPU costs of the media stages on this kind of machine (2 cores shared with other work, no
# GPU), from bench/full_size.py --per-sample 300 (360 samples, each its own 320x240 video or
# still; with the track gate: 14,655 frames planned (11,915 distinct after identical frames
# share a file), 54,724 decoded; probe 2.4 s, sample 27.9 s, detect 234.6 s on 2 shard threads
# sharing one model) and bench/sample_frames.py (decoding per pixel at 640x360 and 720p);
# seconds of a thread. Decoding scales with the pixels decoded; storing a frame (RGB
# conversion, JPEG at quality 90, write) with its pixels; detection is per frame through the
# model (letterboxed to detector.imgsz; the builtin yolo11n at 320 px, batch 16), padding
# included, as the detect step reports it: the seconds of each shard thread, waiting for the
# model's lock included.
DECODE_S_PER_MPX = 0.003
STORE_S_PER_MPX = 0.0125
PROBE_S_PER_VIDEO = 0.012
DETECT_S_PER_FRAME = TORCH_CPU_S_PER_FRAME  # other backends, runtimes, devices: detect/costs.py
#: The detector's first call in a process (Ultralytics sets up its predictor: fuses the model,
#: warms it up): 76 frames' worth of one thread (bench/detect_startup.py: 6.3 s against 83 ms
#: per frame on the loaded 2-core machine), at DETECT_S_PER_FRAME's scale (per frame of two
#: threads that wait on each other: both count the start-up too).
DETECT_STARTUP_S = 1.2
#: Staged track gate (``track.staged``), which depends on the detector's boxes: the share of
#: candidate frames that hold a box (each gets one neighbour first), and the share of
#: the rest of the window detected because a box there was not confirmed by one neighbour
#: (demo sets, bench/track_gate.py: 1.94 frames detected per candidate frame in all).
STAGED_HOLDING = 0.8
STAGED_UNDECIDED = 0.1


def span_probes(config: BuildConfig, sample: SourceSample, info: VideoInfo) -> list[int]:
    """The probe frames the sampler decodes for the span check of ``sample`` (none when its
    span is not one the check reads: ``video/steps.py`` decides the same way)."""
    from stgr_builder.core.spans import checks_span, presence_name, probe_indices

    check = config.resolved_span_check()
    if sample.span is None or not checks_span(sample, check):
        return []
    if presence_name(sample, check) is None and check.events != "judge":
        return []
    return probe_indices(info, sample.span, check)


def media_seconds(
    config: BuildConfig, rows: list[tuple[SourceSample, VideoInfo | ImageInfo]], n_shards: int = 1
) -> tuple[int, float, float, int]:
    """(frames decoded, decode seconds, detect seconds, frames through the detector) of
    ``rows``: the union of the frames that the samples of one video want, each needed GOP
    decoded once from its key frame; the frames through the detector as ``detector_frames``
    counts them."""
    from stgr_builder.core.geometry import IMAGE_VIEWS
    from stgr_builder.video.plan import plan_decode
    from stgr_builder.video.steps import track_neighbours

    wanted: dict[str, tuple[VideoInfo, set[int]]] = {}
    probes: dict[str, set[int]] = defaultdict(set)
    images: dict[str, ImageInfo] = {}
    for sample, info in rows:
        if isinstance(info, VideoInfo):
            key = _media_key(sample, info)
            entry = wanted.setdefault(key, (info, set()))
            entry[1].update(_candidates(config, sample, info))
            probes[key].update(span_probes(config, sample, info))
        else:
            images[_media_key(sample, info)] = info
    # The track gate decodes and stores the frames around each candidate frame too (a still:
    # altered views of it), in the same pass over each GOP; the detector sees only those the
    # gate asks for (``detector_frames``).
    window = config.track.window if config.track.enabled else 0
    views = 1 + min(window, len(IMAGE_VIEWS))
    decoded, seconds = 0, 0.0
    for key, (info, indices) in wanted.items():
        mpx = info.width * info.height / 1e6
        shown = sorted(indices | set(track_neighbours(sorted(indices), info.n_frames, window)) | probes[key])
        n = sum(read.frames[-1] + 1 - read.key for read in plan_decode(info.keyframes, shown))
        decoded += n
        seconds += PROBE_S_PER_VIDEO + n * mpx * DECODE_S_PER_MPX + len(shown) * mpx * STORE_S_PER_MPX
    seconds += sum(i.width * i.height / 1e6 * STORE_S_PER_MPX * views for i in images.values())
    inferred = detector_frames(config, rows, n_shards)
    return decoded, seconds, detect_seconds(inferred, planned_detect_cost(config).s_per_frame), inferred


def detect_seconds(frames: int, s_per_frame: float) -> float:
    """Seconds of detecting ``frames``: the start-up, then each frame."""
    return (DETECT_STARTUP_S if frames else 0.0) + frames * s_per_frame


def planned_detect_cost(config: BuildConfig) -> DetectCost:
    """The cost per frame of the configured detector on the device it would pick here."""
    from stgr_builder.detect.base import pick_device

    detector = config.detector
    return detect_cost(detector.backend, detector.runtime, pick_device(detector.device))


def _media_key(sample: SourceSample, info: VideoInfo | ImageInfo) -> str:
    return f"{sample.media_root}/{info.path}"


def _candidates(config: BuildConfig, sample: SourceSample, info: VideoInfo) -> list[int]:
    from stgr_builder.core.gold import gold_times
    from stgr_builder.video.plan import plan_frames

    return plan_frames(info, config.sampler, sample.span, gold_times(sample)).indices


def detector_frames(
    config: BuildConfig, rows: list[tuple[SourceSample, VideoInfo | ImageInfo]], n_shards: int = 1
) -> int:
    """Frames the detector runs on, padding included, counted the way the build sends them:
    shard by shard (``shard_of``), in batches of ``detector.batch`` samples; in each
    batch and round of the track gate every frame not detected before in the process (the
    detections memo) once, grouped by frame size, each group padded to ``detector.batch`` (a
    staged round's padding taken by frames of the next round)
    (``detect/yolo.py``: a frame's boxes then never depend on its batch). What the plan used to
    leave out: the padding (a batch's frames of each size fill whole detector batches, a still
    of its own size one batch to itself) and that the samples of one video are dealt into many
    shards (each frame is still detected once per process).

    The staged gate's rounds depend on the detector's boxes, which the plan cannot know: it
    counts one neighbour for ``STAGED_HOLDING`` of the candidate frames and ``STAGED_UNDECIDED``
    of the rest of their windows."""
    size = config.detector.batch
    gate = config.track if config.track.enabled else None
    shards: dict[int, list[tuple[SourceSample, VideoInfo | ImageInfo]]] = defaultdict(list)
    for sample, info in rows:
        shards[shard_of(sample.id, n_shards) if n_shards > 1 else 0].append((sample, info))
    seen: set[tuple[str, int]] = set()
    inferred = 0
    for shard in sorted(shards):
        members = shards[shard]
        for start in range(0, len(members), size):
            rounds = _gate_rounds(config, members[start : start + size], gate)
            for number, round_ in enumerate(rounds):
                fresh = {frame: shape for frame, shape in round_.items() if frame not in seen}
                seen.update(fresh)
                per_size = Counter(fresh.values())
                inferred += sum(math.ceil(n / size) * size for n in per_size.values())
                if gate is not None and gate.staged and number + 1 < len(rounds):
                    # The staged rounds fill their padding with the next round's frames (detect/base.py).
                    empty = {shape: -n % size for shape, n in per_size.items()}
                    for frame, shape in rounds[number + 1].items():
                        if empty.get(shape, 0) > 0 and frame not in seen:
                            seen.add(frame)
                            empty[shape] -= 1
    return inferred


#: A detector call's group: frame width, height and the phrases it is prompted with ("" closed-set).
_Group = tuple[int, int, str]

#: Backends that prompt each frame with its sample's object phrases (``uses_phrases``).
PHRASE_BACKENDS = frozenset({"groundingdino", "yolo_world", "yoloe"})


def _phrases(config: BuildConfig, sample: SourceSample) -> str:
    """The phrase set a sample's frames are detected with, as text ("" for a closed-set detector)."""
    if config.detector.backend not in PHRASE_BACKENDS:
        return ""
    return "\x1f" + "\x1f".join(sorted({obj.name for obj in sample.objects}))


def _gate_rounds(
    config: BuildConfig, batch: list[tuple[SourceSample, VideoInfo | ImageInfo]], gate: TrackConfig | None
) -> list[dict[tuple[str, int], _Group]]:
    """The frames of one detect batch per detector round (frame -> its size): the candidates,
    with the gate's whole window unless staged; staged: the first neighbours, then the rest of
    the windows, each the share that ``STAGED_HOLDING`` / ``STAGED_UNDECIDED`` expect."""
    from stgr_builder.video.steps import track_neighbours

    rounds: list[dict[tuple[str, int], _Group]] = [{}, {}, {}]
    first: dict[_Group, list[tuple[str, int]]] = defaultdict(list)
    undecided: dict[_Group, list[tuple[str, int]]] = defaultdict(list)
    for sample, info in batch:
        phrases = _phrases(config, sample)
        # A frame is detected once per phrase set it is asked with, in groups of one size and
        # phrase set (detect/base.py ``_detect``): both are part of the frame and of its group.
        key, shape = _media_key(sample, info) + phrases, (info.width, info.height, phrases)
        if isinstance(info, ImageInfo):
            rounds[0][(key, 0)] = shape
            if gate is not None:
                views = list(range(1, 1 + min(gate.window, 2)))
                if not gate.staged:
                    rounds[0].update({(key, k): shape for k in views})
                else:
                    first[shape] += [(key, k) for k in views[:1]]
                    undecided[shape] += [(key, k) for k in views[1:]]
            continue
        indices = _candidates(config, sample, info)
        rounds[0].update({(key, idx): shape for idx in indices})
        # The span check's probe frames go through the detector with the candidates.
        rounds[0].update({(key, idx): shape for idx in span_probes(config, sample, info)})
        if gate is None:
            continue
        around = track_neighbours(indices, info.n_frames, gate.window)
        if not gate.staged:  # the whole window with the candidates, in one call
            rounds[0].update({(key, idx): shape for idx in around})
            continue
        mine = set(indices)
        for idx in indices:
            if idx - 1 in mine or idx + 1 in mine:
                continue
            pick = idx + 1 if idx + 1 < info.n_frames else idx - 1
            if pick >= 0:
                first[shape].append((key, pick))
        undecided[shape] += [(key, idx) for idx in around]
    # Expected counts, per frame size (a share of one frame rounds to none: no call at all).
    for shape, frames in first.items():
        picks = list(dict.fromkeys(frames))
        rounds[1].update({frame: shape for frame in picks[: round(len(picks) * STAGED_HOLDING)]})
    for shape, frames in undecided.items():
        rest = [frame for frame in dict.fromkeys(frames) if frame not in rounds[1]]
        rounds[2].update({frame: shape for frame in rest[: round(len(rest) * STAGED_UNDECIDED)]})
    return [r for r in rounds if r]


def estimate(
    config: BuildConfig, rows: list[tuple[SourceSample, VideoInfo | ImageInfo]], n_shards: int = 1
) -> PlanEstimate:
    """Requests, images, pixels, tokens, cost and time of annotating ``rows``.

    One CoT request per sample (openai backend) with its candidate frames inside the sample's
    span as images (the sampler's frame plan on the probed video, gold-box times included; every
    frame when the sample has no span), downscaled to
    ``annotator.image_max_side``; prompt tokens = characters / 4 + image tokens; with
    the judge on (``annotator.judge``), one crop per source object (an assumption: one chosen
    box each; two with ``judge.per_sentence``, its sentence's claim too), ``judge.crops_per_request``
    crops to a request, ``judge.votes`` times (votes past the settled outcome are not asked). An
    event span the judge checks (``span_check.events``) costs one request per probe and candidate
    frame (``core/spans.event_frames``), each with that frame as its one image.
    """
    from stgr_builder.core.gold import gold_times
    from stgr_builder.core.spans import judges_event
    from stgr_builder.video.plan import nominal_time, plan_frames

    est, ann = config.estimate, config.annotator
    llm = ann.backend == "openai"
    fixed_chars, frame_chars = _prompt_chars(config)
    frames = images = pixels = prompt_tokens = completion_tokens = crops = 0
    event_requests = event_prompt = event_completion = 0  # the event judge's (online, at full price)
    check = config.resolved_span_check()
    for sample, info in rows:
        if isinstance(info, VideoInfo):
            indices = plan_frames(info, config.sampler, sample.span, gold_times(sample)).indices
            frames += len(indices)
            # The LLM is shown the frames inside the sample's span (all of them without one).
            n = (
                len(indices)
                if sample.span is None
                else sum(1 for i in indices if sample.span[0] - 1e-4 <= nominal_time(info, i) <= sample.span[1] + 1e-4)
            )
        else:
            frames, n = frames + 1, 1
        if not llm:
            continue
        scale = min(1.0, ann.image_max_side / max(info.width, info.height))
        w, h = max(1, round(info.width * scale)), max(1, round(info.height * scale))
        images += n
        pixels += n * w * h
        chars = (
            fixed_chars
            + len(sample.question)
            + len(sample.answer)
            + len(sample.caption or "")
            + sum(len(o) + 4 for o in sample.options)
            + n * frame_chars
            + int(n * est.candidates_per_frame * 40)
        )
        prompt_tokens += chars // 4 + n * image_tokens(w, h, est.image_tokens_base, est.image_tokens_tile)
        completion_tokens += est.completion_tokens
        if ann.judge_on:
            items = max(1, len(sample.objects)) * (2 if ann.judge.per_sentence else 1)
            k = items * ann.judge.votes
            crops += -(-items // ann.judge.crops_per_request) * ann.judge.votes
            images += k
            pixels += k * 224 * 224
            prompt_tokens += k * (30 + image_tokens(224, 224, est.image_tokens_base, est.image_tokens_tile))
            completion_tokens += k * est.crop_completion_tokens
        if isinstance(info, VideoInfo) and judges_event(sample, check):
            # One request per frame the judge is asked about: the probes and the candidate frames.
            k = len(set(span_probes(config, sample, info)) | set(indices))
            event_requests += k
            images += k
            pixels += k * w * h
            tokens = 40 + len(sample.question) // 4 + image_tokens(w, h, est.image_tokens_base, est.image_tokens_tile)
            event_prompt += k * tokens
            event_completion += k * est.crop_completion_tokens
    requests = len(rows) if llm else 0
    decoded, decode_seconds, detect_s, inferred = media_seconds(config, rows, n_shards)
    detect_setting = planned_detect_cost(config)
    probed = [len(span_probes(config, s, i)) for s, i in rows if isinstance(i, VideoInfo)]
    cost = (prompt_tokens * est.price_in + completion_tokens * est.price_out) / 1e6
    if ann.mode == "batch":
        # The first requests and the judge's go in batches at the batch price.
        cost *= est.batch_discount
    cost += (event_prompt * est.price_in + event_completion * est.price_out) / 1e6
    prompt_tokens, completion_tokens = prompt_tokens + event_prompt, completion_tokens + event_completion
    seconds = (requests + crops + event_requests) / (ann.concurrency * config.sharding.workers) * est.latency_s
    return PlanEstimate(
        backend=ann.backend,
        requests=requests,
        crop_requests=crops,
        frames=frames,
        images=images,
        pixels=pixels,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        cost=round(cost, 4),
        seconds=round(seconds, 1),
        decoded_frames=decoded,
        decode_seconds=round(decode_seconds, 1),
        detector_frames=inferred,
        detect_seconds=round(detect_s, 1),
        span_checks=sum(1 for n in probed if n),
        span_probe_frames=sum(probed),
        event_judge_requests=event_requests,
        assumptions={
            "decode_s_per_mpx": DECODE_S_PER_MPX,
            "store_s_per_mpx": STORE_S_PER_MPX,
            "probe_s_per_video": PROBE_S_PER_VIDEO,
            "detect_s_per_frame_cpu": DETECT_S_PER_FRAME,
            "detect_startup_s": DETECT_STARTUP_S,
            "detect_setting": detect_setting.key,  # backend/runtime/device
            "detect_s_per_frame": detect_setting.s_per_frame,
            "detect_constant": detect_setting.source,
            # The same frames on every measured setting (detect/costs.py), to choose before paying.
            "detect_hours_by_setting": {
                option.key: round(detect_seconds(inferred, option.s_per_frame) / 3600, 5) for option in detect_options()
            },
            "detector_frames": "padded to detector.batch per frame size, once per process",
            "text_tokens": "characters / 4",
            "image_tokens": f"{est.image_tokens_base} + {est.image_tokens_tile} per 512x512 tile",
            "completion_tokens": est.completion_tokens,
            "price_in": est.price_in,
            "price_out": est.price_out,
            "latency_s": est.latency_s,
            "mode": ann.mode,
            **({"batch_discount": est.batch_discount} if ann.mode == "batch" else {}),
            "concurrency": ann.concurrency * config.sharding.workers,
            "image_max_side": ann.image_max_side,
        },
    )
