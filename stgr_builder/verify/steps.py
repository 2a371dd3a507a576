"""The verify step: build a sample's rows and keep them only if they break no rule.

>>> step = VerifyStep(VerifyConfig(), {"detector_name": "yolo", "detector_weights_hash": "ab12",
...                                    "build_id": "b1"})          # doctest: +SKIP
>>> [item] = step([work]); item.cot_row.id                           # doctest: +SKIP
'710cbdac4177b040'
"""

from __future__ import annotations

from stgr_builder.core import grammar
from stgr_builder.core.geometry import image_size
from stgr_builder.core.steps import Step
from stgr_builder.errors import SampleError
from stgr_builder.models import DatasetName, RejectCode, SampleWork, Stage, TrackConfig, VerifyConfig
from stgr_builder.verify.rows import build_rows
from stgr_builder.verify.rules import Violation, check_row
from stgr_builder.verify.tracks import gate, sample_names


def verify_work(work: SampleWork, config: VerifyConfig, provenance_base: dict) -> list[Violation]:
    """Build the rows of ``work`` and check both; the violations of the CoT row first, then
    those of the RL row that the CoT row did not already report."""
    cot, rl = build_rows(work, provenance_base)
    sample = work.sample
    context = dict(
        duration=work.video.duration if work.video is not None else None,
        span=sample.span if sample.video_path is not None else None,
        gold_answer=sample.answer,
        image_size=image_size(work),
        config=config,
    )
    violations = check_row(cot, **context)
    violations += [v for v in check_row(rl, **context) if v not in violations]
    work.cot_row, work.rl_row = cot, rl
    return violations


class VerifyStep(Step):
    """Reject a sample whose rows break a consistency rule (code of the first violation, a
    message listing all of them); otherwise set ``work.cot_row`` and ``work.rl_row`` for the
    datasets the sample goes to (``sample.datasets``; the other stays None)."""

    stage = Stage.VERIFY

    def __init__(self, config: VerifyConfig, provenance_base: dict):
        super().__init__()
        self.config = config
        self.provenance_base = dict(provenance_base)

    def process(self, work: SampleWork) -> SampleWork:
        violations = verify_work(work, self.config, self.provenance_base)
        if violations:
            work.cot_row = work.rl_row = None
            raise SampleError(violations[0].code, "; ".join(str(v) for v in violations))
        datasets = set(work.sample.datasets)
        if DatasetName.COT not in datasets:
            work.cot_row = None
        if DatasetName.RL not in datasets:
            work.rl_row = None
        return work


class TrackGateStep(Step):
    """The evidence gate (``verify/tracks.py``), before any annotator: drop every candidate box
    whose track on the neighbouring frames disagrees with it, keep the verdicts in
    ``work.tracks`` (rows carry those of their evidence in ``provenance.evidence_tracks``).

    A grounded sample (spatio-temporal or visual QA) that had boxes of its objects and lost them
    all here is rejected as ``evidence_untracked``: no annotator gets to guess instead.
    ``boxes_checked`` / ``boxes_dropped`` count the detector's boxes for the bench and the audit.
    """

    stage = Stage.TRACK

    def __init__(self, config: TrackConfig):
        super().__init__()
        self.config = config
        self.boxes_checked = 0
        self.boxes_dropped = 0

    def process(self, work: SampleWork) -> SampleWork:
        names = sample_names(work)
        had = {d.label for d in work.detections} & names
        verdicts = gate(work, self.config, self.config.window)
        self.boxes_checked += sum(1 for v in verdicts if not v.gold)
        self.boxes_dropped += sum(1 for v in verdicts if not v.gold and not v.confirmed)
        work.tracks = [v for v in verdicts if v.confirmed or v.gold]
        left = {d.label for d in work.detections} & names
        if work.sample.task in grammar.GROUNDED_TASKS and had and not left:
            dropped = sorted({v.label for v in verdicts if not v.confirmed and v.label in names})
            raise SampleError(
                RejectCode.EVIDENCE_UNTRACKED,
                f"every box of {', '.join(dropped)} failed the track gate (label or place "
                f"not confirmed by the {self.config.window} neighbouring frames on each side)",
            )
        return work
