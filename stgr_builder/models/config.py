"""The build configuration (``CONFIG.yaml``): configs forbid unknown keys, so a typo is an
error naming the key's path instead of a silently ignored setting."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from stgr_builder.models._base import (
    ConfigModel,
    check_prompt,
)
from stgr_builder.models.codes import (
    DatasetName,
)

AdapterName = Literal[
    "activitynet_captions",
    "charades_sta",
    "qvhighlights",
    "didemo",
    "tacos",
    "plm_rdcap",
    "hcstvg",
    "videor1",
    "gqa",
    "visual_cot",
    "videoespresso",
    "coin",
    "generic",
    "demo",
]


class FilterConfig(ConfigModel):
    """The paper's per-source filters; set a field to null to turn that filter off."""

    min_video_s: float | None = Field(10.0, description="drop videos shorter than this")
    max_video_s: float | None = Field(180.0, description="drop videos longer than this")
    max_action_fraction: float | None = Field(
        0.5, description="drop samples whose annotated span covers this fraction of the video or more"
    )
    max_answer_fraction: float | None = Field(
        0.7, description="drop temporal samples whose answer span covers this fraction of the video or more"
    )


class Upstream(ConfigModel):
    """Where a source's media come from: files under ``prefix`` (relative to the media root;
    "" = every file) belong to the upstream dataset ``name``, got as ``get`` says."""

    name: str = Field(min_length=1, description="the upstream dataset, e.g. Charades")
    prefix: str = Field("", description="media paths starting with this belong to it (longest prefix wins)")
    get: str = Field(min_length=1, description="where and how to download it")


class SourceConfig(ConfigModel):
    name: str = Field(description="output source name written into every row, e.g. STR_activitynet")
    adapter: AdapterName
    path: str = Field(description="annotation file, relative to the config file")
    media_root: str = Field(description="folder the media paths are relative to, relative to the config file")
    filters: FilterConfig = Field(default_factory=FilterConfig)
    datasets: list[DatasetName] = Field(default_factory=lambda: [DatasetName.COT, DatasetName.RL])
    limit: int | None = Field(None, ge=1, description="take at most this many items")
    sample: int | None = Field(
        None,
        ge=0,
        description="draw this many samples (seeded by the build seed and the source name) among those "
        "that pass ingest and the probe-time checks and filters; fewer when fewer pass (the plan reports the "
        "shortfall). Unlike limit, which truncates reading, sample draws from the whole file",
    )
    gold_evidence: bool = Field(
        True,
        description="sources with boxes (hcstvg, plm_rdcap, videoespresso, gqa, visual_cot): their boxes are "
        "the evidence, at frames sampled at the boxes' times; the detector still runs and "
        "provenance.detector_agreement_iou measures it against them",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="adapter options, validated by the adapter (unknown keys are errors); see docs/guide/sources.md",
    )
    upstreams: list[Upstream] = Field(
        default_factory=list,
        description="the upstream datasets the media come from and where to get them: `stgr plan` groups "
        "missing media by them (no entry: by the path's first folder)",
    )


class SamplerConfig(ConfigModel):
    """Candidate frames per sample: a fixed rate or uniform N, denser inside annotated spans."""

    strategy: Literal["fixed_rate", "uniform"] = "uniform"
    fps: float = Field(1.0, gt=0, le=60, description="fixed_rate: frames per second over the whole video")
    num_frames: int = Field(8, ge=1, le=256, description="uniform: frames over the whole video")
    span_frames: int = Field(4, ge=0, le=256, description="extra frames spread uniformly inside the annotated span")
    max_frames: int = Field(16, ge=1, le=256)
    decoder: Literal["pyav", "decord", "opencv"] = Field(
        "pyav",
        description="pyav (FFmpeg through PyAV, the default: fastest measured, bench/sample_frames.py), "
        "decord, or opencv (fallback)",
    )
    jpeg_quality: int = Field(90, ge=50, le=100)


class TrackConfig(ConfigModel):
    """The track gate: every candidate box is checked against its neighbouring frames before
    any annotator sees it (a signal independent of the one detection that proposed it)."""

    enabled: bool = True
    window: int = Field(
        2,
        ge=1,
        le=8,
        description="frames decoded and detected on each side of a candidate frame (a still "
        "image: altered views of it, at most 2)",
    )
    link_iou: float = Field(
        0.3,
        gt=0,
        le=1,
        description="least IoU linking a box to one on the next frame (loose: the stability "
        "check below is what catches a misplaced box)",
    )
    min_length: int = Field(3, ge=1, description="least frames a track spans (clipped to the frames there are)")
    min_agreement: float = Field(
        0.5,
        gt=0,
        le=1,
        description="least share of the track's frames labelled with the box's own label "
        "(each frame votes with its best-scoring box on the track)",
    )
    stability_iou: float = Field(
        0.5, gt=0, le=1, description="least IoU between the box and its place predicted from its neighbours"
    )
    staged: bool = Field(
        True,
        description="detect one neighbour of each candidate frame holding a box first, the rest of the window "
        "only around a box that one does not confirm with every vote (false: the whole window of every candidate "
        "frame; about twice the frames)",
    )


#: What the span check reads as a question about an object's presence: its span is when the
#: object is in view, and the detector's tracks are the evidence (else: an event).
PRESENCE_PATTERN = r"\b(visible|appears?|seen|shown|on screen|in view|present)\b"


class SpanCheckConfig(ConfigModel):
    """The span check of temporal tasks (``verify/spans.py``): inherited spans are checked
    against the detector (an object's presence) or a judge (an event) before any annotation."""

    mode: Literal["off", "check", "refine"] = Field(
        "check",
        description="check: a span the evidence contradicts is rejected (span_imprecise, query_not_unique); "
        "refine: it is corrected (provenance.lineage.span: refined, the old span kept); off: trusted",
    )
    step_s: float = Field(0.5, gt=0, le=5, description="seconds between probe frames around each span end")
    reach_s: float = Field(
        4.5, ge=0, le=60, description="probes reach this far on each side of each span end (frames decoded)"
    )
    tolerance_s: float = Field(
        0.5, ge=0, le=30, description="a span end further than this from the evidence's is imprecise"
    )
    min_elsewhere_s: float = Field(
        1.0, ge=0, description="the object (event) seen this long outside the span, apart: query_not_unique"
    )
    presence_pattern: str = Field(
        PRESENCE_PATTERN, description="regex (case-insensitive) on the question: a presence span (detector)"
    )
    events: Literal["auto", "off", "judge"] = Field(
        "auto",
        description="event spans: judge (the annotate stage asks annotator.judge's model, or the annotator's, "
        "'Is this happening here: <event>?' about the probes and candidate frames, before the annotation "
        "request; openai backend only), off (kept, lineage span_check: unchecked), or auto: judge when the "
        "openai backend's judge is on (annotator.judge), else off",
    )

    @model_validator(mode="after")
    def _pattern_compiles(self) -> SpanCheckConfig:
        re.compile(self.presence_pattern)
        return self


class GoldConfig(ConfigModel):
    """Gold boxes (a source's own) confirmed before they become reward targets."""

    keep_unconfirmed: bool = Field(
        False,
        description="keep a gold box the track gate cannot confirm, as before (flagged confirmed: false); "
        "otherwise it is replaced by the tracked box that overlaps it, or the sample is rejected gold_unconfirmed",
    )
    support_iou: float = Field(
        0.5,
        gt=0,
        le=1,
        description="least IoU of the detector's box of the object on the gold box's frame confirming it",
    )
    replace_iou: float = Field(
        0.3, gt=0, le=1, description="least IoU of a track-confirmed detector box replacing an unconfirmed gold box"
    )


#: The most pixels one detector batch may hold (batch x imgsz^2): 64 frames at 1280.
MAX_DETECTOR_BATCH_PIXELS = 64 * 1280**2


class DetectorConfig(ConfigModel):
    backend: Literal["ultralytics", "groundingdino", "yolo_world", "yoloe"] = Field(
        "ultralytics",
        description="ultralytics (closed set), or open vocabulary prompted with each sample's object phrases: "
        "groundingdino, yolo_world, yoloe (Ultralytics, with a local text encoder)",
    )
    weights: str = Field(
        "builtin:stgr-demo-yolo11n",
        description="a .pt path (relative to the config file), or builtin:NAME for a shipped model; groundingdino: "
        "the IDEA .pth checkpoint (format idea) or a Hugging Face model folder (format hf)",
    )
    format: Literal["idea", "hf"] = Field(
        "idea", description="groundingdino checkpoint format: idea (groundingdino-py) or hf (transformers)"
    )
    model_config_file: str | None = Field(
        None, description="groundingdino idea: the model's config .py (e.g. GroundingDINO_SwinT_OGC.py)"
    )
    text_encoder: str | None = Field(
        None,
        description="groundingdino idea: a local BERT folder (config, weights, vocab.txt) replacing "
        "text_encoder_type, so nothing is fetched; yolo_world: the CLIP checkpoint (ViT-B-32.pt); yoloe: the "
        "MobileCLIP TorchScript text encoder (mobileclip_blt.ts)",
    )
    text_threshold: float = Field(0.25, ge=0, le=1, description="groundingdino: least phrase-token score of a box")
    conf: float = Field(0.25, ge=0, le=1, description="least box score (groundingdino: the box threshold)")
    iou: float = Field(0.5, ge=0, le=1)
    imgsz: int = Field(320, ge=32, le=4096, description="inference size in pixels (memory grows with its square)")
    batch: int = Field(16, ge=1, le=1024)
    device: str = Field("auto", description="auto (GPU when present), cpu, cuda:0, ...")
    runtime: Literal["torch", "openvino", "onnx", "tensorrt"] = Field(
        "torch",
        description="ultralytics: the engine that runs the weights; openvino, onnx, tensorrt (GPU) use "
        "Ultralytics' export, cached by weights hash (docs/detection.md). Boxes differ from torch's in the "
        "last digits, so a non-default runtime changes the build id",
    )

    @model_validator(mode="after")
    def _bounded_memory(self) -> DetectorConfig:
        # Memory of one batch grows with batch x imgsz^2 (yolo11n on CPU, measured: +1.3 GB at
        # 16 x 1280^2, +1.8 GB at 8 x 2048^2); imgsz 100000 was an OOM kill at 23 GB.
        pixels = self.batch * self.imgsz**2
        if pixels > MAX_DETECTOR_BATCH_PIXELS:
            raise ValueError(
                f"batch x imgsz^2 is {self.batch} x {self.imgsz}^2 = {pixels:,} pixels, over "
                f"{MAX_DETECTOR_BATCH_PIXELS:,} (e.g. batch 64 at imgsz 1280, 6 at 4096): "
                f"lower detector.batch or detector.imgsz"
            )
        if self.runtime != "torch" and self.backend != "ultralytics":
            raise ValueError(
                f"detector.runtime {self.runtime} is for the ultralytics backend; {self.backend} runs torch"
            )
        return self


#: The prompt an annotator backend uses when the config names none.
DEFAULT_PROMPTS = {"template": "template-cot", "openai": "stgr-cot-llm"}


#: Words a model may name a box with, in the detector's vocabulary (``checks.aliases``).
DEFAULT_ALIASES: dict[str, str] = {
    "man": "person",
    "woman": "person",
    "child": "person",
    "kid": "person",
    "boy": "person",
    "girl": "person",
    "people": "person",
    "human": "person",
    "puppy": "dog",
    "kitten": "cat",
    "automobile": "car",
}


class ChecksConfig(ConfigModel):
    """The semantic checks of an LLM reply (each re-asked with its error, then a reject code)."""

    enabled: bool = Field(True, description="run the checks (wrong object, prose times, off-span frames, conclusion)")
    aliases: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_ALIASES),
        description="a name the model may use -> the detector's label it means (lower case); names neither "
        "here nor in the detector's vocabulary are open-vocabulary phrases, left to the judge",
    )
    key_frame_tolerance: float = Field(
        0.0, ge=0, le=60, description="seconds a temporal task's key frame may lie outside the answer's span"
    )


class JudgeConfig(ConfigModel):
    """The independent judge: each chosen box's crop, 'Is this a {object}?', to its own model."""

    enabled: bool | None = Field(
        None,
        description="None: on for the openai backend (set to true when the config is read), else when "
        "annotator.crop_verify is true; false: off",
    )
    model: str | None = Field(None, description="the judge's model; None: the annotator's")
    base_url_env: str = Field(
        "STGR_JUDGE_BASE_URL", description="environment variable of the judge's endpoint; unset: OPENAI_BASE_URL"
    )
    api_key_env: str = Field(
        "STGR_JUDGE_API_KEY", description="environment variable of the judge's key; unset: OPENAI_API_KEY"
    )
    prompt: str = Field("judge", description="the judge's prompt under prompts/")
    votes: int = Field(1, ge=1, le=9, description="times each crop is asked (samples differ by the vote's number)")
    threshold: int = Field(1, ge=1, le=9, description="'yes' votes a box needs to stay evidence")
    crops_per_request: int = Field(
        8,
        ge=1,
        le=32,
        description="crops put to the judge in one request, each with its own question (1: one crop a request)",
    )
    per_sentence: bool = Field(
        False,
        description="also judge each sentence that cites a box: its claim asked of each crop it cites; a "
        "sentence not confirmed rejects the sample (sentence_rejected)",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_is_a_name(cls, value: str) -> str:
        return check_prompt(value)

    @model_validator(mode="after")
    def _threshold_fits(self) -> JudgeConfig:
        if self.threshold > self.votes:
            raise ValueError(f"judge.threshold ({self.threshold}) is more than judge.votes ({self.votes})")
        return self


class AnnotatorConfig(ConfigModel):
    """The annotator. ``openai``: any OpenAI-compatible endpoint, from the OPENAI_BASE_URL and
    OPENAI_API_KEY environment variables (never from this file)."""

    backend: Literal["template", "openai"] = "template"
    model: str | None = Field(None, description="model name for the openai backend")
    prompt: str | None = Field(
        None,
        description="prompt name under prompts/ (or an explicit .yaml path); default follows the backend: "
        "template-cot (template), stgr-cot-llm (openai)",
    )
    concurrency: int = Field(8, ge=1, le=1024, description="LLM requests in flight per shard task")
    budget: int | None = Field(
        None, ge=0, description="max new (uncached) LLM requests per run; the rest is left for the next run"
    )
    budget_tokens: int | None = Field(
        None, ge=0, description="max prompt+completion tokens of new LLM requests per run"
    )
    timeout: float = Field(60.0, gt=0, le=3600, description="seconds per LLM request")
    max_retries: int = Field(3, ge=0, le=20, description="client retries on 429 (honouring Retry-After), 5xx, timeouts")
    dead_endpoint_s: float = Field(
        60.0,
        gt=0,
        le=86_400,
        description="seconds of connection failures and timeouts, before the endpoint has ever answered, "
        "after which the build stops (an endpoint that has answered once is retried patiently)",
    )
    max_invalid_retries: int = Field(
        2, ge=0, le=10, description="re-asks, with the error, after a schema-invalid reply"
    )
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000, description="max completion tokens per reply")
    image_max_side: int = Field(640, ge=64, le=4096, description="frames sent to the LLM are downscaled to this side")
    max_candidates_per_frame: int = Field(8, ge=1, le=100, description="detector boxes offered per frame, best scores")
    crop_verify: bool = Field(False, description="turn the judge on (judge.enabled: None follows this switch)")
    crop_prompt: str = Field("crop-verify", description="unused: the judge's prompt is judge.prompt")
    checks: ChecksConfig = Field(default_factory=ChecksConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    rpm: int | None = Field(
        None,
        ge=1,
        description="requests per minute, shared by every shard task and worker of a build; "
        "None: keep to the server's x-ratelimit headers and 429s",
    )
    tpm: int | None = Field(
        None,
        ge=1,
        description="tokens per minute (estimated: prompt text / 4, 85 an image, max_tokens), shared likewise",
    )
    mode: Literal["online", "batch"] = Field(
        "online",
        description="batch: first requests through the Batch API (files, batches) at the batch price; "
        "the rows are the online mode's",
    )
    batch_max_requests: int = Field(50_000, ge=1, description="requests per batch file (the provider's limit)")
    batch_max_bytes: int = Field(200 << 20, ge=1024, description="bytes per batch file (the provider's limit)")
    batch_poll_s: float = Field(30.0, gt=0, description="seconds between polls of unfinished batches")
    batch_reask: Literal["batch", "online"] = Field(
        "batch", description="batch mode: re-ask an unusable reply in a follow-up batch round, or online"
    )
    prepare_processes: int | None = Field(
        None,
        ge=0,
        description="processes that draw and encode the frames of LLM requests (off the event loop); "
        "None: min(4, cores - 1); 0: threads",
    )

    @field_validator("prompt", "crop_prompt")
    @classmethod
    def _prompt_is_a_name(cls, value: str | None) -> str | None:
        return None if value is None else check_prompt(value)

    @model_validator(mode="after")
    def _judge_follows_backend(self) -> AnnotatorConfig:
        # The judge is on by default for the openai backend (as the paper judges every
        # annotation); resolved here so that it enters the build id of such a config. The
        # template backend has no judge: its None stays (and out of the demo's build id).
        if self.backend == "openai" and self.judge.enabled is None:
            self.judge = self.judge.model_copy(update={"enabled": True})
        return self

    @model_validator(mode="after")
    def _prompt_follows_backend(self) -> AnnotatorConfig:
        if self.prompt is None:
            self.prompt = DEFAULT_PROMPTS[self.backend]
        return self

    @property
    def judge_on(self) -> bool:
        """Whether the judge runs (``judge.enabled``, or ``crop_verify`` when that is None)."""
        return self.crop_verify if self.judge.enabled is None else self.judge.enabled


class VerifyConfig(ConfigModel):
    max_box_area: float = Field(0.8, gt=0, le=1, description="largest share of the frame a box may cover")
    time_tolerance: float = Field(0.05, ge=0, le=1, description="seconds between a trace time and its key frame")


class ShardingConfig(ConfigModel):
    samples_per_shard: int = Field(64, ge=1, le=100_000)
    workers: int = Field(
        2, ge=1, le=256, description="shard tasks in flight (threads, or LocalCluster worker processes)"
    )
    runner: Literal["thread", "dask", "ray"] = Field(
        "thread",
        description="thread: a bounded thread pool in this process; dask: prefect-dask's DaskTaskRunner; "
        "ray: prefect-ray's RayTaskRunner",
    )
    dask_address: str | None = Field(
        None,
        description="scheduler address of an existing Dask cluster (tcp://host:8786); "
        "None with runner dask: a LocalCluster of `workers` processes",
    )
    ray_address: str | None = Field(
        None,
        description="address of an existing Ray cluster (ray://host:10001, or auto); "
        "None with runner ray: ray.init() on this machine with `workers` CPUs",
    )


class CacheConfig(ConfigModel):
    """Local copies of media read from object storage (``media_root: s3://...``); they change no row."""

    local_dir: str | None = Field(
        None,
        description="folder of the local copies of remote media (probe and decoders read them); "
        "None: media/ in $STGR_CACHE_DIR, else $XDG_CACHE_HOME/stgr-builder, else ~/.cache/stgr-builder",
    )
    local_max_bytes: int = Field(
        20 << 30,
        gt=0,
        description="largest total size of the local copies; the least recently used are removed first",
    )


class EstimateConfig(ConfigModel):
    """Assumptions of the plan's cost and time estimate (``stgr plan``); they change no row."""

    price_in: float = Field(0.0, ge=0, description="price per million prompt tokens")
    price_out: float = Field(0.0, ge=0, description="price per million completion tokens")
    batch_discount: float = Field(
        0.5, gt=0, le=1, description="share of the price paid for requests sent in batches (annotator.mode: batch)"
    )
    completion_tokens: int = Field(400, ge=0, description="completion tokens per CoT reply")
    crop_completion_tokens: int = Field(5, ge=0, description="completion tokens per crop-verification reply")
    latency_s: float = Field(8.0, gt=0, description="seconds per LLM request; time = requests / concurrency x this")
    image_tokens_base: int = Field(85, ge=0, description="tokens per image, plus image_tokens_tile per 512x512 tile")
    image_tokens_tile: int = Field(170, ge=0, description="tokens per 512x512 tile of an image as sent")
    candidates_per_frame: float = Field(
        3.0, ge=0, description="detector candidates listed per frame in the prompt (for its text length)"
    )


class BuildConfig(ConfigModel):
    """CONFIG.yaml: what to build. Paths are relative to the config file's folder."""

    name: str = "stgr"
    seed: int = 0
    sources: list[SourceConfig] = Field(min_length=1)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    annotator: AnnotatorConfig = Field(default_factory=AnnotatorConfig)
    track: TrackConfig = Field(default_factory=TrackConfig)
    span_check: SpanCheckConfig = Field(default_factory=SpanCheckConfig)
    gold: GoldConfig = Field(default_factory=GoldConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    sharding: ShardingConfig = Field(default_factory=ShardingConfig)
    estimate: EstimateConfig = Field(default_factory=EstimateConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)

    @model_validator(mode="after")
    def _event_judge_available(self) -> BuildConfig:
        if self.span_check.events == "judge" and self.annotator.backend != "openai":
            raise ValueError(
                "span_check.events: judge asks a VLM 'Is this happening here: <event>?' through the openai "
                f"annotator's client (annotator.judge); backend {self.annotator.backend!r} has none: use "
                "events: off (or auto), or annotator.backend: openai"
            )
        return self

    def resolved_span_check(self) -> SpanCheckConfig:
        """``span_check`` with ``events: auto`` decided: ``judge`` for the openai backend with its
        judge on (a second model the user already pays per image to check the annotator), else
        ``off``. The config itself keeps ``auto``, so the build id of a config that does not set
        it does not change."""
        if self.span_check.events != "auto":
            return self.span_check
        judged = self.annotator.backend == "openai" and self.annotator.judge_on
        return self.span_check.model_copy(update={"events": "judge" if judged else "off"})
