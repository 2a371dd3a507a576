"""Every record that crosses a stage boundary, in one module.

The build flows through these models::

    SourceSample --probe--> VideoInfo --sample--> Frame --detect--> Detection
        --annotate--> Annotation --verify--> CotRow / RlRow   (or a Reject at any stage)

Boxes are always normalized ``[x_min, y_min, x_max, y_max]`` floats in [0, 1] inside the
pipeline; only the visual-QA answer and trace write integer pixels, as the released
Open-o3 Video data does.

The build configuration (``BuildConfig``) lives here too: configs forbid unknown keys, so a
typo is an error naming the key's path instead of a silently ignored setting.
"""

from __future__ import annotations

import hashlib
import math
import re
from enum import Enum
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Box = Annotated[list[float], Field(min_length=4, max_length=4)]
"""``[x_min, y_min, x_max, y_max]``, normalized to [0, 1] unless a field says pixels."""

Span = Annotated[list[float], Field(min_length=2, max_length=2)]
"""``[start, end]`` in seconds."""

#: Bounds on what a source record may hold (a longer one is a MALFORMED_ROW naming the field):
#: each text goes into every prompt and row, so one runaway field must not cost a fortune.
MAX_QUESTION_CHARS = 4000
MAX_ANSWER_CHARS = 4000
MAX_CAPTION_CHARS = 8000
MAX_OPTIONS = 26  # lettered A..Z
MAX_OPTION_CHARS = 1000
MAX_OBJECTS = 32
MAX_NAME_CHARS = 200
MAX_GOLD_BOXES = 1000

PROMPT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
"""A prompt *name* (``prompts/<name>.yaml``): letters, digits, ``_ . -``; no path parts."""


def check_prompt(value: str) -> str:
    """A prompt is a name under ``prompts/`` or an explicit ``.yaml``/``.yml`` file path;
    anything else (``../../etc/passwd``) is refused before any file is read.

    >>> check_prompt("stgr-cot-llm"), check_prompt("my/prompts/v2.yaml")
    ('stgr-cot-llm', 'my/prompts/v2.yaml')
    """
    text = str(value)
    if re.fullmatch(PROMPT_NAME, text) and not text.endswith((".yaml", ".yml")) and ".." not in text:
        return text
    if text.endswith((".yaml", ".yml")) and "\x00" not in text:
        return text
    raise ValueError(
        f"prompt {text!r} is neither a prompt name (letters, digits, '_', '.', '-': a file "
        f"prompts/NAME.yaml) nor an explicit .yaml file path"
    )


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class _Config(BaseModel):
    # NaN passes every comparison-free check and fails every filter silently (a NaN bound
    # filters nothing); inf is no setting either: both refused in every float field of a config.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ---------------------------------------------------------------------------------------
# Closed vocabularies
# ---------------------------------------------------------------------------------------


class Task(str, Enum):
    """The task types of the released data, spelled exactly as the trainers expect."""

    SPATIO_TEMPORAL = "temporal-spatial free-form QA"
    TEMPORAL = "temporal QA"
    TEMPORAL_MCQ = "temporal QA (MCQ)"
    VISUAL = "visual QA"
    VIDEO_MCQ = "General video QA MCQ"
    VIDEO_FREE = "General video QA Free-form"


class DatasetName(str, Enum):
    COT = "cot"  # STGR-CoT: supervised fine-tuning rows, with reasoning traces
    RL = "rl"  # STGR-RL: reinforcement-learning rows, with gold evidence


class Stage(str, Enum):
    INGEST = "ingest"
    PROBE = "probe"
    SAMPLE = "sample"
    DETECT = "detect"
    TRACK = "track"
    ANNOTATE = "annotate"
    VERIFY = "verify"
    WRITE = "write"


class RejectCode(str, Enum):
    """Why a sample did not become a row (``REJECT_CODE_HELP`` says what each means and what to
    do; docs/reference/reject-codes.md lists them); audits group by them."""

    # ingest
    MALFORMED_ROW = "malformed_row"
    DUPLICATE = "duplicate"
    DUPLICATE_ID = "duplicate_id"
    UNSAFE_PATH = "unsafe_path"
    # probe
    MEDIA_MISSING = "media_missing"
    MEDIA_EMPTY = "media_empty"
    MEDIA_CORRUPT = "media_corrupt"
    NOT_AN_IMAGE = "not_an_image"
    MEDIA_TOO_LARGE = "media_too_large"
    NO_FRAMES = "no_frames"
    SPAN_OUTSIDE_VIDEO = "span_outside_video"
    FILTERED_DURATION = "filtered_duration"
    FILTERED_ACTION_FRACTION = "filtered_action_fraction"
    FILTERED_ANSWER_FRACTION = "filtered_answer_fraction"
    # sample
    DECODE_FAILED = "decode_failed"
    # track (the evidence gate; inherited labels checked: verify/spans.py, verify/tracks.py)
    EVIDENCE_UNTRACKED = "evidence_untracked"
    SPAN_IMPRECISE = "span_imprecise"
    QUERY_NOT_UNIQUE = "query_not_unique"
    GOLD_UNCONFIRMED = "gold_unconfirmed"
    # detect / annotate
    NO_EVIDENCE = "no_evidence"
    ANNOTATION_FAILED = "annotation_failed"
    LLM_ERROR = "llm_error"
    LLM_INVALID_REPLY = "llm_invalid_reply"
    LLM_REPLY_TOO_LARGE = "llm_reply_too_large"
    CROPS_REJECTED = "crops_rejected"
    # annotate: the semantic checks of an LLM reply (each re-asked first, with the error)
    WRONG_OBJECT_NAME = "wrong_object_name"
    PROSE_TIME_OR_BOX = "prose_time_or_box"
    KEY_FRAME_OFF_SPAN = "key_frame_off_span"
    CONCLUSION_MISMATCH = "conclusion_mismatch"
    # verify
    TRACE_GRAMMAR = "trace_grammar"
    TAGS_UNBALANCED = "tags_unbalanced"
    EVIDENCE_NOT_IN_KEY_ITEMS = "evidence_not_in_key_items"
    KEY_ITEM_NOT_IN_TRACE = "key_item_not_in_trace"
    BOX_OUT_OF_RANGE = "box_out_of_range"
    BOX_EMPTY = "box_empty"
    BOX_TOO_LARGE = "box_too_large"
    TIME_OUTSIDE_VIDEO = "time_outside_video"
    TIME_OUTSIDE_SPAN = "time_outside_span"
    TIME_NOT_KEY_FRAME = "time_not_key_frame"
    KEY_FRAMES_INVALID = "key_frames_invalid"
    ANSWER_FORM = "answer_form"
    ANSWER_MISMATCH = "answer_mismatch"
    # Never written: a sample a transient failure (transport, 429, 5xx, timeout, a broken
    # reply) left for the next run. Its message starts with the reason (``PENDING_REASONS``).
    PENDING = "pending"


#: Why a sample is pending (the reason before the colon in a PENDING message; ``budget``: the
#: run's LLM budget stopped its shard).
PENDING_REASONS = ("budget", "rate_limited", "server_error", "timeout", "connection", "bad_reply", "batch")


class RejectHelp(NamedTuple):
    """A reject code's line in the documentation."""

    stage: str  # the stage that writes it
    meaning: str
    what_to_do: str


#: What each reject code means and what to do about it, by the stage that writes it: the source
#: of docs/reference/reject-codes.md (``stgr docs --write``; a test fails when they drift).
REJECT_CODE_HELP: dict[RejectCode, RejectHelp] = {
    RejectCode.MALFORMED_ROW: RejectHelp(
        "ingest",
        "a source record could not be parsed, lacks a required field, or a field is out of bounds (the message "
        "names it)",
        "fix the record, or let it go",
    ),
    RejectCode.DUPLICATE: RejectHelp(
        "ingest",
        "the same record again, or the same media and question as an earlier item",
        "nothing: the first is kept",
    ),
    RejectCode.DUPLICATE_ID: RejectHelp(
        "ingest",
        "the source's id (for one task) is used by two records with different content; the message names both origins",
        "give each record its own id (the first is kept)",
    ),
    RejectCode.UNSAFE_PATH: RejectHelp(
        "ingest",
        "a media path escapes the source's media root",
        "make the path relative to `media_root`, without `..`",
    ),
    RejectCode.MEDIA_MISSING: RejectHelp(
        "probe",
        "the video or image file does not exist",
        "fix the path or `media_root`, or add the file",
    ),
    RejectCode.MEDIA_EMPTY: RejectHelp(
        "probe",
        "the file has zero bytes",
        "download or copy it again",
    ),
    RejectCode.MEDIA_CORRUPT: RejectHelp(
        "probe",
        "the file cannot be opened or decoded (truncated, damaged, a codec the decoders lack)",
        "re-download or re-encode it (e.g. to H.264)",
    ),
    RejectCode.NOT_AN_IMAGE: RejectHelp(
        "probe",
        "an image path whose bytes are no image (a text or HTML file, a video); the message says what they look like",
        "point the record at the real image (JPEG, PNG, GIF, BMP, TIFF, WebP, AVIF; convert HEIC)",
    ),
    RejectCode.MEDIA_TOO_LARGE: RejectHelp(
        "probe",
        "an image or video frame over 8192 x 8192 pixels",
        "downscale it",
    ),
    RejectCode.NO_FRAMES: RejectHelp(
        "probe",
        "the video has no decodable frame",
        "replace the file",
    ),
    RejectCode.SPAN_OUTSIDE_VIDEO: RejectHelp(
        "probe",
        "the annotated span is not inside the video",
        "fix the span, or the video the record points at",
    ),
    RejectCode.FILTERED_DURATION: RejectHelp(
        "probe",
        "video length outside the source's filter",
        "nothing (the paper's filter), or change `filters`",
    ),
    RejectCode.FILTERED_ACTION_FRACTION: RejectHelp(
        "probe",
        "annotated span too large a share of the video",
        "nothing, or change `filters.max_action_fraction`",
    ),
    RejectCode.FILTERED_ANSWER_FRACTION: RejectHelp(
        "probe",
        "answer span too large a share of the video",
        "nothing, or change `filters.max_answer_fraction`",
    ),
    RejectCode.DECODE_FAILED: RejectHelp(
        "sample",
        "a wanted frame could not be decoded",
        "re-encode the video; try `sampler.decoder: opencv`",
    ),
    RejectCode.EVIDENCE_UNTRACKED: RejectHelp(
        "track",
        "a grounded sample had boxes of its objects, and the track gate confirmed none (wrong label or place on its "
        "neighbouring frames)",
        "look at it in the gallery; a better detector, or a wider `track.window`",
    ),
    RejectCode.SPAN_IMPRECISE: RejectHelp(
        "track",
        "the source's span is off the detector's evidence by more than `span_check.tolerance_s` (in refine mode: "
        "and the probes could not pin the true ends)",
        "nothing, if the source is noisy; `span_check.mode: refine` keeps corrected rows; raise `reach_s` for "
        "large errors",
    ),
    RejectCode.QUERY_NOT_UNIQUE: RejectHelp(
        "track",
        "the object is also seen apart from the span: the question does not pick one stretch of the video",
        "drop or rephrase the source item; raise `span_check.min_elsewhere_s` if your detector hallucinates",
    ),
    RejectCode.GOLD_UNCONFIRMED: RejectHelp(
        "track",
        "no gold box of an object is confirmed by the detector or a track, or overlapped by a tracked box",
        "check the source's boxes (time base, pixels vs normalized, wrong object); `--keep-unconfirmed-gold` if "
        "you trust them",
    ),
    RejectCode.NO_EVIDENCE: RejectHelp(
        "annotate",
        "no named object could be grounded on an eligible frame",
        "a detector that knows the objects (`detector.weights`, GroundingDINO), or lower `detector.conf`",
    ),
    RejectCode.ANNOTATION_FAILED: RejectHelp(
        "annotate",
        "the annotator gave no usable annotation",
        "see the message; often the same cure as `no_evidence`",
    ),
    RejectCode.LLM_ERROR: RejectHelp(
        "annotate",
        "the endpoint refused the request (a 4xx other than 408/409/429), or the model refused or gave no content; "
        "transient failures (429, 5xx, timeouts, broken replies) are never rejects: the sample is pending "
        "(see docs/guide/resume.md)",
        "check the model name and the request in the message; re-annotate these rejects with another prompt or model",
    ),
    RejectCode.LLM_REPLY_TOO_LARGE: RejectHelp(
        "annotate",
        "the reply body was over 1 MiB on every try (never cached)",
        "lower `annotator.max_tokens`; check the endpoint",
    ),
    RejectCode.LLM_INVALID_REPLY: RejectHelp(
        "annotate",
        "the LLM's replies broke the schema, or named unknown frames or boxes, after every re-ask",
        "a stronger model, or more `annotator.max_invalid_retries`",
    ),
    RejectCode.CROPS_REJECTED: RejectHelp(
        "annotate",
        "the independent judge (`annotator.judge`, crop only) confirmed none of the boxes the annotator chose",
        "look at the crops in the gallery; a judge model that cannot see small objects; lower `judge.threshold`",
    ),
    RejectCode.WRONG_OBJECT_NAME: RejectHelp(
        "annotate",
        "after the re-asks the model still named a box for another object than its detector label",
        "look at the messages; add a missing synonym to `annotator.checks.aliases`; or a stronger model",
    ),
    RejectCode.PROSE_TIME_OR_BOX: RejectHelp(
        "annotate",
        "the reasoning kept stating a time or coordinates in prose, outside the citations",
        "usually an edited prompt that invites it; raise `max_invalid_retries`, or a stronger model",
    ),
    RejectCode.KEY_FRAME_OFF_SPAN: RejectHelp(
        "annotate",
        "a temporal task's key frame stayed outside the annotated span after the re-asks",
        "check the source's spans; widen `annotator.checks.key_frame_tolerance` if its times are coarse",
    ),
    RejectCode.CONCLUSION_MISMATCH: RejectHelp(
        "annotate",
        "an MCQ reasoning kept concluding another option than the gold answer",
        "check the gold answer of those rows (a wrong gold letter shows up here); otherwise a stronger model",
    ),
    RejectCode.TRACE_GRAMMAR: RejectHelp(
        "verify",
        "a trace element is malformed (number format, `at`, tags out of place)",
        "fix the prompt (LLM) or the template",
    ),
    RejectCode.TAGS_UNBALANCED: RejectHelp(
        "verify",
        "an opening tag without its closing tag, or the reverse",
        "as `trace_grammar`",
    ),
    RejectCode.EVIDENCE_NOT_IN_KEY_ITEMS: RejectHelp(
        "verify",
        "a box in the trace is not a key item at a key frame of that time",
        "as `trace_grammar`",
    ),
    RejectCode.KEY_ITEM_NOT_IN_TRACE: RejectHelp(
        "verify",
        "a key item is never mentioned in the trace",
        "as `trace_grammar`",
    ),
    RejectCode.BOX_OUT_OF_RANGE: RejectHelp(
        "verify",
        "a box coordinate outside [0, 1]",
        "check the source's box format (adapter options)",
    ),
    RejectCode.BOX_EMPTY: RejectHelp(
        "verify",
        "a box with no area",
        "as `box_out_of_range`",
    ),
    RejectCode.BOX_TOO_LARGE: RejectHelp(
        "verify",
        "a box covering more than 80% of the frame",
        "nothing (the spec's rule), or `verify.max_box_area`",
    ),
    RejectCode.TIME_OUTSIDE_VIDEO: RejectHelp(
        "verify",
        "a key frame outside the video's duration",
        "check the source's times (seconds, not frames?)",
    ),
    RejectCode.TIME_OUTSIDE_SPAN: RejectHelp(
        "verify",
        "a key frame outside the row's temporal span",
        "as `time_outside_video`",
    ),
    RejectCode.TIME_NOT_KEY_FRAME: RejectHelp(
        "verify",
        "a spatio-temporal trace states a `<t>` that is no key frame's time (the released reward reads each as a "
        "point claim)",
        "fix the prompt or template: state spans without tags",
    ),
    RejectCode.KEY_FRAMES_INVALID: RejectHelp(
        "verify",
        "key frames unsorted, duplicated idx, or key items at unknown frames",
        "report it: the annotator should never produce this",
    ),
    RejectCode.ANSWER_FORM: RejectHelp(
        "verify",
        "the answer lacks its task's exact form",
        "fix the source's answer, or the adapter's options",
    ),
    RejectCode.ANSWER_MISMATCH: RejectHelp(
        "verify",
        "the answer disagrees with the source's gold answer",
        "a stronger model (LLM), or check the gold answer",
    ),
}


# ---------------------------------------------------------------------------------------
# Stage records
# ---------------------------------------------------------------------------------------


def sample_id(source: str, source_id: str, question: str) -> str:
    """Stable id: the same (source, source's id, question) always gives the same id.

    >>> sample_id("STR_demo", "v001#3", "When does the ball appear?")
    '710cbdac4177b040'
    """
    digest = hashlib.sha256("\x1f".join((source, source_id, question)).encode("utf-8"))
    return digest.hexdigest()[:16]


class TimedBox(_Record):
    """A gold box that a source annotates at a time (e.g. HC-STVG tubes, VideoEspresso)."""

    time: float = Field(ge=0)
    box: Box


class SourceObject(_Record):
    """An object phrase the sample is about: what the detector is asked to ground."""

    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    boxes: list[TimedBox] = Field(
        default_factory=list, max_length=MAX_GOLD_BOXES, description="gold boxes from the source, if any"
    )


class SourceSample(_Record):
    """One QA item, normalized from any source format by its adapter (stage: ingest)."""

    id: str = Field(description="sample_id(source, source_id, question)")
    source: str = Field(description="output source name, e.g. STR_activitynet")
    source_id: str = Field(description="the source's own id for the item")
    task: Task
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS, description="the question without its options")
    options: list[Annotated[str, Field(max_length=MAX_OPTION_CHARS)]] = Field(
        default_factory=list, max_length=MAX_OPTIONS, description="MCQ option texts, lettered A, B, ... in order"
    )
    answer: str = Field(max_length=MAX_ANSWER_CHARS, description="gold answer in the exact form the task requires")
    video_path: str | None = Field(None, description="relative to media_root")
    image_path: str | None = Field(None, description="relative to media_root")
    media_root: str = Field(description="folder that media paths are relative to (absolute at build time)")
    span: Span | None = Field(None, description="annotated temporal span in seconds, if the source has one")
    objects: list[SourceObject] = Field(default_factory=list, max_length=MAX_OBJECTS)
    caption: str | None = Field(
        None, max_length=MAX_CAPTION_CHARS, description="source annotation text the annotator may use"
    )
    datasets: list[DatasetName] = Field(default_factory=lambda: [DatasetName.COT, DatasetName.RL])
    origin: str = Field("", description="file:line the item came from, for error messages")
    gold_evidence: bool = Field(
        False, description="the objects' gold boxes are offered as evidence at frames at their times (core/gold.py)"
    )

    @model_validator(mode="after")
    def _one_media(self) -> SourceSample:
        if (self.video_path is None) == (self.image_path is None):
            raise ValueError("exactly one of video_path and image_path must be set")
        return self


class VideoInfo(_Record):
    """What probing a video once tells (stage: probe)."""

    path: str = Field(description="relative to the sample's media_root")
    duration: float = Field(gt=0, description="seconds")
    fps: float = Field(gt=0)
    n_frames: int = Field(gt=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    keyframes: list[int] = Field(description="frame indices of the key frames (GOP starts), ascending")

    def frame_at(self, t: float) -> int:
        """The frame shown at time ``t`` on the nominal clock: the last frame starting at or
        before it (the sampler plans with it, gold evidence finds its frames with it).

        >>> VideoInfo(path="v", duration=10, fps=25, n_frames=250, width=2, height=2, keyframes=[0]).frame_at(2.0)
        50
        """
        return min(self.n_frames - 1, max(0, math.floor(t * self.fps + 1e-6)))


class ImageInfo(_Record):
    """What probing a still image tells (stage: probe)."""

    path: str
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class Frame(_Record):
    """A decoded frame, stored as a content-addressed JPEG (stage: sample)."""

    idx: int = Field(ge=0, description="frame index in the video (0 for a still image)")
    time: float = Field(ge=0, description="presentation timestamp in seconds")
    path: str = Field(description="JPEG path relative to the dataset root, e.g. kfs/ab/abcd....jpg")
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    view: Literal["mirror", "zoom"] | None = Field(
        None, description="a still image's altered view for the track gate (core/geometry.py), else None"
    )


class Detection(_Record):
    """One detector box on one frame (stage: detect)."""

    frame_idx: int = Field(ge=0)
    label: str
    score: float = Field(ge=0, le=1)
    box: Box
    gold: bool = Field(
        False, description="a source's gold box offered as evidence (core/gold.py), not a detector output"
    )


class Evidence(_Record):
    """One grounded claim: this object is in this box at this key frame."""

    frame_idx: int = Field(ge=0)
    time: float = Field(ge=0)
    name: str
    box: Box
    score: float = Field(ge=0, le=1, description="detector confidence of the chosen box")


class EvidenceTrack(_Record):
    """How the track gate saw one evidence box: the boxes linked to it on neighbouring frames."""

    idx: int = Field(ge=0, description="the key frame's index")
    box: Box
    label: str = Field(description="the box's label (the detector's, or the gold object's name)")
    track_id: str = Field(description="a short hash of the linked boxes (same track, same id)")
    length: int = Field(ge=1, description="frames the track spans, the box's own included")
    label_agreement: float = Field(ge=0, le=1, description="share of the track's frames whose label is the box's")
    gold: bool = False
    confirmed: bool = Field(description="the track passed the gate (a gold box that did not is kept, flagged)")


class PromptRef(_Record):
    name: str
    version: str = Field(description="content hash of the prompt template")


class Annotation(_Record):
    """What an annotator returns for one sample (stage: annotate)."""

    key_frames: list[Frame]
    evidence: list[Evidence]
    reasoning: str = Field(description="the trace, in the spec's grammar, without <think> tags")
    answer: str
    prompt: PromptRef
    model: str = Field(description="annotator model name ('template' for the offline annotator)")


class Reject(_Record):
    """A sample that did not become a row, and why. A value, never an escaping exception."""

    id: str
    stage: Stage
    code: RejectCode
    message: str
    source: str = ""
    origin: str = ""


class SampleWork(_Record):
    """A sample on its way through the stages; each stage fills in its part."""

    sample: SourceSample
    video: VideoInfo | None = None
    image: ImageInfo | None = None
    frames: list[Frame] = Field(default_factory=list, description="candidate frames")
    track_frames: list[Frame] = Field(
        default_factory=list, description="neighbours of the candidate frames, decoded for the track gate"
    )
    span_frames: list[Frame] = Field(
        default_factory=list, description="probes around an inherited span's ends, decoded for the span check"
    )
    detections: list[Detection] = Field(default_factory=list, description="on the candidate frames")
    track_detections: list[Detection] = Field(default_factory=list, description="on the track frames")
    span_detections: list[Detection] = Field(default_factory=list, description="on the span-check probes")
    lineage: Lineage | None = Field(None, description="set by the span check and the gold check")
    refined_boxes: list[Detection] = Field(
        default_factory=list, description="gold boxes the gold check replaced by the tracked box (lineage refined)"
    )
    tracks: list[EvidenceTrack] = Field(
        default_factory=list, description="the track gate's verdict on each candidate box it kept or flagged"
    )
    annotation: Annotation | None = None
    votes: int | None = Field(None, description="crop-verifier yes votes, when that check ran")
    cot_row: CotRow | None = Field(None, description="set by verify when the sample passes")
    rl_row: RlRow | None = Field(None, description="set by verify when the sample passes")

    def reject(self, stage: Stage, code: RejectCode, message: str) -> Reject:
        return Reject(
            id=self.sample.id,
            stage=stage,
            code=code,
            message=message,
            source=self.sample.source,
            origin=self.sample.origin,
        )


# ---------------------------------------------------------------------------------------
# Output rows (the contract: SPEC section 1). Parquet schemas are derived from these.
# ---------------------------------------------------------------------------------------


class KeyFrame(_Record):
    idx: int = Field(ge=0)
    time: float = Field(ge=0, description="seconds")
    path: str = Field(description="JPEG path relative to the dataset root")


class KeyItem(_Record):
    """Boxes of one object at one key frame; the export turns a row's list of these into
    ``{str(idx): {name: [[x1, y1, x2, y2], ...]}}``."""

    idx: int = Field(ge=0, description="the key frame's idx")
    name: str
    boxes: list[Box] = Field(min_length=1, description="normalized boxes, one per instance")


FieldSource = Literal["gold", "refined", "generated"]
"""Where a row's field came from: the source as it was (``gold``), the source corrected by a
check (``refined``), or made by the pipeline (``generated``: the detector's or annotator's)."""


class Lineage(_Record):
    """Per inherited field: gold, refined or generated, and what the checks found."""

    answer: FieldSource = Field("gold", description="the answer: the source's, or its span refined")
    span: FieldSource | None = Field(None, description="the sample's span (None: it has none)")
    boxes: list[FieldSource] = Field(
        default_factory=list, description="one per evidence box, in key_items order (boxes flattened)"
    )
    span_check: Literal["ok", "refined", "unverified", "unchecked"] | None = Field(
        None,
        description="ok: the evidence agrees; refined: corrected (span_check.mode refine); unverified: no "
        "evidence either way; unchecked: an event span and no judge; None: no span check ran",
    )
    original_span: Span | None = Field(None, description="the source's span, when it was refined")
    span_offset_s: float | None = Field(
        None, description="largest distance (s) between a stated span end and the evidence's, when measured"
    )
    gold_confirmed: int = Field(0, description="gold boxes the track gate confirmed")
    gold_replaced: int = Field(0, description="unconfirmed gold boxes replaced by the tracked box they overlap")
    gold_unconfirmed: int = Field(0, description="unconfirmed gold boxes kept (--keep-unconfirmed-gold)")


class Provenance(_Record):
    prompt_name: str
    prompt_version: str
    annotator_model: str
    detector_name: str
    detector_weights_hash: str
    build_id: str
    detector_agreement_iou: float | None = Field(
        None, description="mean IoU of chosen boxes against the source's gold boxes, where the source has them"
    )
    detector_score: float | None = Field(None, description="mean detector confidence of the chosen boxes")
    verifier_votes: int | None = Field(None, description="crop-verifier yes votes, when that check ran")
    evidence_tracks: list[EvidenceTrack] = Field(
        default_factory=list, description="the track gate's verdict on each evidence box of the row"
    )
    replaces: str | None = Field(
        None, description="re-annotated rows: the build_id of the row version this row replaces"
    )
    lineage: Lineage = Field(default_factory=Lineage, description="gold, refined or generated, per inherited field")


class _RowBase(_Record):
    id: str
    task: Task
    source: str
    question: str = Field(description="MCQ options are written into it, one per line ('A. ...')")
    answer: str
    video_path: str | None = None
    image_path: str | None = None
    image_size: list[int] | None = Field(None, description="[W, H] for image rows")
    key_frames: list[KeyFrame]
    key_items: list[KeyItem]
    provenance: Provenance


class CotRow(_RowBase):
    """A row of STGR-CoT (fine-tuning): the reasoning trace is the training target."""

    reasoning_process: str


class RlRow(_RowBase):
    """A row of STGR-RL (reinforcement learning): the key frames and items are the gold
    evidence that the rewards score against."""


# ---------------------------------------------------------------------------------------
# Build bookkeeping
# ---------------------------------------------------------------------------------------


class StepStats(_Record):
    """Where samples went in one step of one shard."""

    step: str
    seen: int = 0
    kept: int = 0
    rejected: dict[str, int] = Field(default_factory=dict, description="reject code -> count")
    seconds: float = 0.0
    resumed: int = Field(0, description="of the samples seen, those whose result came from the stage store")

    def merge(self, other: StepStats) -> StepStats:
        rejected = dict(self.rejected)
        for code, count in other.rejected.items():
            rejected[code] = rejected.get(code, 0) + count
        return StepStats(
            step=self.step,
            seen=self.seen + other.seen,
            kept=self.kept + other.kept,
            rejected=rejected,
            seconds=self.seconds + other.seconds,
            resumed=self.resumed + other.resumed,
        )


class ShardPlan(_Record):
    """The samples (and ingest rejects) one shard task owns; assignment hashes the id."""

    shard: int = Field(ge=0)
    samples: list[SourceSample]
    rejects: list[Reject] = Field(default_factory=list)

    @property
    def item_ids(self) -> list[str]:
        return sorted([s.id for s in self.samples] + [r.id for r in self.rejects])


class BuildPlan(_Record):
    shards: list[ShardPlan]
    ingest: StepStats


class ShardFile(_Record):
    path: str = Field(description="relative to the dataset root")
    rows: int
    sha256: str


class LlmUsage(_Record):
    """LLM requests behind a shard (or a build): the replies its rows used and their cost.

    ``requests`` counts every reply used (fresh or from the request cache), so a finished
    build reports the same totals however often it was interrupted; ``cached`` says how many
    of them an earlier run had already paid for.
    """

    requests: int = 0
    cached: int = Field(0, description="of the requests, those answered from the request cache")
    failed: int = Field(0, description="requests that ended in an error after the client's retries")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = Field(0, description="images sent (frames and crops)")
    judge_requests: int = Field(0, description="of the requests, those of the judge (crops put to the judge model)")
    checks: dict[str, int] = Field(
        default_factory=dict,
        description="the annotation checks at work, by event: '<check>.caught' (replies it caught), "
        "'<check>.fixed' (re-asks that fixed them); 'judge.yes' / 'judge.no' (the judge's verdicts)",
    )

    def merge(self, other: LlmUsage | None) -> LlmUsage:
        if other is None:
            return self.model_copy(deep=True)
        return LlmUsage.total([self, other]) or LlmUsage()

    @classmethod
    def total(cls, usages: list[LlmUsage | None]) -> LlmUsage | None:
        """The sum of the usages that are not None; None when all are."""
        found = [usage for usage in usages if usage is not None]
        if not found:
            return None
        out = cls()
        for usage in found:
            out.add(usage)
        return out

    def add(self, other: LlmUsage) -> None:
        """Add ``other`` into this one, in place."""
        for name in type(self).model_fields:
            if name == "checks":
                for event, count in other.checks.items():
                    self.checks[event] = self.checks.get(event, 0) + count
                self.checks = dict(sorted(self.checks.items()))
            else:
                setattr(self, name, getattr(self, name) + getattr(other, name))

    def count(self, event: str) -> None:
        """One more ``event`` of the annotation checks (``checks``)."""
        self.checks[event] = self.checks.get(event, 0) + 1


class ShardResult(_Record):
    """What one finished shard task wrote; stored beside the shards so a resumed build
    can skip it. ``complete=False``: the LLM budget ran out, or a transient failure left samples
    pending (``pending``); nothing was written and the next run finishes it."""

    shard: int
    sample_ids: list[str]
    files: list[ShardFile]
    stats: list[StepStats]
    complete: bool = True
    pending: dict[str, int] = Field(
        default_factory=dict, description="unfinished shard: samples left for the next run, by reason"
    )
    llm: LlmUsage | None = Field(None, description="LLM requests of this shard (openai backend)")
    build_id: str | None = Field(None, description="the build that wrote the shard; another build rewrites it")
    inputs: str | None = Field(
        None,
        description="digest of the shard's samples and of their media's content fingerprints: changed "
        "annotations or media rewrite the shard",
    )


class Manifest(_Record):
    build_id: str
    code_version: str
    config: dict
    config_hash: str
    prompts: list[PromptRef]
    detector: dict
    counts: dict[str, int] = Field(description="rows per dataset, and rejects")
    shards: list[ShardFile]
    stats: list[StepStats]
    complete: bool = Field(True, description="false while samples are left for the next run (LLM budget reached)")
    pending: int = Field(0, description="samples of unfinished shards, left for the next run")
    pending_reasons: dict[str, int] = Field(
        default_factory=dict,
        description="why: samples by reason (budget, rate_limited, server_error, timeout, "
        "connection, bad_reply); the other samples of those shards wait with them",
    )
    llm: LlmUsage | None = Field(None, description="LLM requests and tokens, summed over the shards")
    config_dir: str | None = Field(
        None,
        description="absolute folder the config's relative paths were resolved against (re-annotation "
        "reads the sources from there)",
    )
    parent: ParentRef | None = Field(None, description="the version this one was derived from (re-annotation)")
    reannotation: Reannotation | None = Field(None, description="what re-annotation made this version")


class ParentRef(_Record):
    """The dataset version a re-annotated version was derived from."""

    path: str = Field(description="the parent's dataset folder (absolute)")
    build_id: str
    manifest_sha256: str = Field(description="sha256 of the parent's manifest.json when this version was made")


class Reannotation(_Record):
    """How a version was made from its parent: which rows, with which prompt and model."""

    where: str = Field(description="the SQL predicate that selected the rows")
    prompt: PromptRef
    model: str
    selected: int = Field(description="samples (ids) selected and re-annotated: rows and rejected samples")
    rejects_selected: int = Field(0, description="of them, samples the parent had rejected (the rejects view)")


# ---------------------------------------------------------------------------------------
# Build configuration (CONFIG.yaml)
# ---------------------------------------------------------------------------------------

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


class FilterConfig(_Config):
    """The paper's per-source filters; set a field to null to turn that filter off."""

    min_video_s: float | None = Field(10.0, description="drop videos shorter than this")
    max_video_s: float | None = Field(180.0, description="drop videos longer than this")
    max_action_fraction: float | None = Field(
        0.5, description="drop samples whose annotated span covers this fraction of the video or more"
    )
    max_answer_fraction: float | None = Field(
        0.7, description="drop temporal samples whose answer span covers this fraction of the video or more"
    )


class Upstream(_Config):
    """Where a source's media come from: files under ``prefix`` (relative to the media root;
    "" = every file) belong to the upstream dataset ``name``, got as ``get`` says."""

    name: str = Field(min_length=1, description="the upstream dataset, e.g. Charades")
    prefix: str = Field("", description="media paths starting with this belong to it (longest prefix wins)")
    get: str = Field(min_length=1, description="where and how to download it")


class SourceConfig(_Config):
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


class SamplerConfig(_Config):
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


class TrackConfig(_Config):
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


class SpanCheckConfig(_Config):
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
    events: Literal["skip", "judge"] = Field(
        "skip",
        description="event spans: skip (lineage span_check: unchecked), or judge (needs an event judge; none "
        "is configured in this version, so it is a config error)",
    )

    @model_validator(mode="after")
    def _judge_available(self) -> SpanCheckConfig:
        re.compile(self.presence_pattern)
        if self.events == "judge":
            raise ValueError(
                "span_check.events: judge needs an event judge (an OpenAI-compatible VLM asked 'is <event> "
                "happening in this frame?'), which this version does not configure; use events: skip"
            )
        return self


class GoldConfig(_Config):
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


class DetectorConfig(_Config):
    backend: Literal["ultralytics", "groundingdino"] = "ultralytics"
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
        "text_encoder_type, so nothing is fetched",
    )
    text_threshold: float = Field(0.25, ge=0, le=1, description="groundingdino: least phrase-token score of a box")
    conf: float = Field(0.25, ge=0, le=1, description="least box score (groundingdino: the box threshold)")
    iou: float = Field(0.5, ge=0, le=1)
    imgsz: int = Field(320, ge=32, le=4096, description="inference size in pixels (memory grows with its square)")
    batch: int = Field(16, ge=1, le=1024)
    device: str = Field("auto", description="auto (GPU when present), cpu, cuda:0, ...")

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


class ChecksConfig(_Config):
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


class JudgeConfig(_Config):
    """The independent judge: each chosen box's crop, 'Is this a {object}?', to its own model."""

    enabled: bool | None = Field(
        None, description="None: on when annotator.crop_verify is true (the judge replaces that switch)"
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

    @field_validator("prompt")
    @classmethod
    def _prompt_is_a_name(cls, value: str) -> str:
        return check_prompt(value)

    @model_validator(mode="after")
    def _threshold_fits(self) -> JudgeConfig:
        if self.threshold > self.votes:
            raise ValueError(f"judge.threshold ({self.threshold}) is more than judge.votes ({self.votes})")
        return self


class AnnotatorConfig(_Config):
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
    def _prompt_follows_backend(self) -> AnnotatorConfig:
        if self.prompt is None:
            self.prompt = DEFAULT_PROMPTS[self.backend]
        return self

    @property
    def judge_on(self) -> bool:
        """Whether the judge runs (``judge.enabled``, or ``crop_verify`` when that is None)."""
        return self.crop_verify if self.judge.enabled is None else self.judge.enabled


class VerifyConfig(_Config):
    max_box_area: float = Field(0.8, gt=0, le=1, description="largest share of the frame a box may cover")
    time_tolerance: float = Field(0.05, ge=0, le=1, description="seconds between a trace time and its key frame")


class ShardingConfig(_Config):
    samples_per_shard: int = Field(64, ge=1, le=100_000)
    workers: int = Field(
        2, ge=1, le=256, description="shard tasks in flight (threads, or LocalCluster worker processes)"
    )
    runner: Literal["thread", "dask"] = Field(
        "thread", description="thread: a bounded thread pool in this process; dask: prefect-dask's DaskTaskRunner"
    )
    dask_address: str | None = Field(
        None,
        description="scheduler address of an existing Dask cluster (tcp://host:8786); "
        "None with runner dask: a LocalCluster of `workers` processes",
    )


class EstimateConfig(_Config):
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


class BuildConfig(_Config):
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


# ---------------------------------------------------------------------------------------
# Ground truth of generated media (the demo source)
# ---------------------------------------------------------------------------------------


class TruthObject(_Record):
    name: str
    colour: str
    boxes: list[list[int] | None] = Field(
        description="per frame: [x1, y1, x2, y2] pixels (clipped), or null when absent"
    )


class TruthVideo(_Record):
    path: str = Field(description="relative to media/")
    fps: float
    n_frames: int
    width: int
    height: int
    gop: int
    objects: list[TruthObject]

    @property
    def duration(self) -> float:
        return self.n_frames / self.fps


class TruthImageObject(_Record):
    name: str
    colour: str
    box: list[int]


class TruthImage(_Record):
    path: str = Field(description="relative to media/")
    width: int
    height: int
    objects: list[TruthImageObject]


class DemoTruth(_Record):
    """``truth.json``: what the demo generator drew, frame by frame (written by the demo source,
    read by tests and by the audit's evidence-against-truth table)."""

    seed: int
    classes: list[str]
    videos: list[TruthVideo]
    images: list[TruthImage]


# ---------------------------------------------------------------------------------------
# The plan of a build (``stgr plan``; ``plan.json`` beside the shards)
# ---------------------------------------------------------------------------------------


class PlanMissing(_Record):
    """The missing media of one source from one upstream dataset."""

    upstream: str = Field(description="the upstream dataset (source.upstreams), or 'unknown (FOLDER/)'")
    files: int
    examples: list[str] = Field(default_factory=list, description="up to 3 missing paths, relative to media_root")
    get: str | None = Field(None, description="where to get them (source.upstreams), None when unknown")


class PlanSource(_Record):
    """What the plan expects of one source."""

    source: str
    adapter: str
    read: int = Field(description="items read from the file (after limit)")
    ingest_rejects: int = Field(description="malformed, unsafe-path and duplicate items")
    probed: int = Field(description="samples probed (a sampled source: until `sample` passed)")
    filtered: dict[str, int] = Field(default_factory=dict, description="probe-time reject code -> count")
    media_missing: int = 0
    media_referenced: int = Field(0, description="distinct media files the source's items reference")
    media_resolved: int = Field(0, description="of them, those found under media_root")
    missing_media: list[PlanMissing] = Field(
        default_factory=list, description="the missing files grouped by upstream dataset, with where to get them"
    )
    wanted: int | None = Field(None, description="the source's `sample`, if set")
    rows: int = Field(description="samples that go on to annotation")
    shortfall: int = Field(0, description="wanted - rows, when fewer samples passed than wanted")


class PlanCount(_Record):
    dataset: DatasetName
    source: str
    task: Task
    rows: int


class PlanEstimate(_Record):
    """Estimated LLM work of the build (zero requests with the template annotator)."""

    backend: str
    requests: int = 0
    crop_requests: int = 0
    frames: int = Field(0, description="candidate frames decoded (all backends)")
    images: int = Field(0, description="images sent to the LLM")
    pixels: int = Field(0, description="pixels of the images as sent (downscaled to image_max_side)")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = Field(0.0, description="at estimate.price_in / price_out per million tokens")
    seconds: float = Field(0.0, description="requests / concurrency x estimate.latency_s")
    decoded_frames: int = Field(
        0,
        description="frames the sampler decodes: each needed GOP from its key frame "
        "to its last needed frame, once per video",
    )
    decode_seconds: float = Field(
        0.0,
        description="CPU seconds of probing, decoding and storing key frames "
        "(per-pixel costs measured by bench/full_size.py --per-sample)",
    )
    detector_frames: int = Field(
        0,
        description="frames through the detector, padding to detector.batch included (each frame once per "
        "process; the staged track gate's neighbours estimated)",
    )
    detect_seconds: float = Field(
        0.0,
        description="seconds of detection on the CPU: a start-up, then each frame through the detector (a GPU "
        "takes a fraction)",
    )
    span_checks: int = Field(0, description="temporal samples whose inherited span the span check reads")
    span_probe_frames: int = Field(
        0, description="probe frames decoded and detected around span ends for the span check (in decoded_frames)"
    )
    assumptions: dict[str, Any] = Field(default_factory=dict)


class Plan(_Record):
    """``stgr plan``: rows per source and task, what is filtered and why, and the estimate,
    before any model runs; a build writes it as ``plan.json``."""

    name: str
    seed: int
    sources: list[PlanSource]
    counts: list[PlanCount]
    estimate: PlanEstimate

    def rows(self, dataset: DatasetName | str) -> int:
        return sum(c.rows for c in self.counts if c.dataset.value == DatasetName(dataset).value)


SampleWork.model_rebuild()
Manifest.model_rebuild()

#: Models whose JSON Schemas are exported to schemas/ (tests fail when one is stale).
SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "build_config": BuildConfig,
    "source_sample": SourceSample,
    "video_info": VideoInfo,
    "image_info": ImageInfo,
    "frame": Frame,
    "detection": Detection,
    "evidence": Evidence,
    "annotation": Annotation,
    "reject": Reject,
    "cot_row": CotRow,
    "rl_row": RlRow,
    "shard_result": ShardResult,
    "manifest": Manifest,
    "plan": Plan,
}


def json_schemas() -> dict[str, str]:
    """The JSON Schema text of every exported model, as checked in under ``schemas/``.

    >>> sorted(json_schemas())[:2]
    ['annotation', 'build_config']
    """
    import json

    return {
        name: json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n"
        for name, model in SCHEMA_MODELS.items()
    }
