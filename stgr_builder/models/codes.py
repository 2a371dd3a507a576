"""Closed vocabularies: tasks, datasets, stages, and the reject codes with their documentation."""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple


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
    SENTENCE_REJECTED = "sentence_rejected"
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
    RejectCode.SENTENCE_REJECTED: RejectHelp(
        "annotate",
        "per-sentence judging (`judge.per_sentence`): the judge did not confirm a sentence's claim in a crop it cites",
        "the reasoning says of a box what the crop does not show; look at the rejects' messages; a judge that "
        "reads long claims poorly: turn `judge.per_sentence` off",
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
