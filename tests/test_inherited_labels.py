"""Inherited labels are checked, not trusted (issue 24): the demo generator's noise, the span
check, the gold-box confirmation, and what the audit and the plan say about them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stgr_builder.core import geometry, grammar
from stgr_builder.models import Task
from stgr_builder.sources.demo import CORRUPTIONS_FILE, DEMO_FILE, generate_demo, load_truth
from stgr_builder.sources.demo_noise import DemoNoise, load_corruptions


@pytest.fixture(scope="module")
def noisy_demo(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("noisy")
    generate_demo(folder, seed=0, n_videos=6, n_images=3, noise=DemoNoise(span_share=0.4, box_share=0.3, seed=3))
    return folder


def _records(folder: Path) -> dict[str, dict]:
    lines = (folder / DEMO_FILE).read_text().splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


def test_noise_corrupts_the_chosen_share_and_says_so(noisy_demo):
    report = load_corruptions(noisy_demo)
    records = _records(noisy_demo)
    n_spans = len(report.spans) + len(report.intact_spans)
    assert len(report.spans) == round(0.4 * n_spans) > 0
    for corruption in report.spans:
        record = records[corruption.id]
        assert record["span"] == corruption.corrupted != corruption.truth
        # The answer states the corrupted span, as a wrong source would.
        assert grammar.parse_answer(Task(record["task"]), record["answer"]).span == tuple(corruption.corrupted)
        moved = max(abs(a - b) for a, b in zip(corruption.truth, corruption.corrupted, strict=True))
        assert moved >= 0.5, corruption
    n_boxes = len(report.boxes) + len(report.intact_boxes)
    assert len(report.boxes) == round(0.3 * n_boxes) > 0
    assert {b.kind for b in report.boxes} <= {"shift", "wrong_object"}
    for corruption in report.boxes:
        assert geometry.box_iou(corruption.truth, corruption.corrupted) < 0.5
        record = records[corruption.id]
        gold = [tb["box"] for obj in record["objects"] for tb in obj["boxes"] if tb["time"] == corruption.time]
        assert gold == [corruption.corrupted]


def test_noise_is_seeded_and_leaves_media_and_truth_alone(noisy_demo, tmp_path):
    generate_demo(tmp_path, seed=0, noise=DemoNoise(span_share=0.4, box_share=0.3, seed=3))
    assert (tmp_path / DEMO_FILE).read_bytes() == (noisy_demo / DEMO_FILE).read_bytes()
    assert (tmp_path / CORRUPTIONS_FILE).read_bytes() == (noisy_demo / CORRUPTIONS_FILE).read_bytes()
    assert load_truth(tmp_path) == load_truth(noisy_demo)
    generate_demo(tmp_path, seed=0, noise=DemoNoise(span_share=0.4, box_share=0.3, seed=4))
    assert (tmp_path / DEMO_FILE).read_bytes() != (noisy_demo / DEMO_FILE).read_bytes()


def test_default_demo_has_no_corruption_report(tmp_path):
    generate_demo(tmp_path, seed=0, noise=DemoNoise(span_share=0.5, seed=1))
    assert (tmp_path / CORRUPTIONS_FILE).exists()
    generate_demo(tmp_path, seed=0)
    assert not (tmp_path / CORRUPTIONS_FILE).exists()
    records = _records(tmp_path)
    assert all(isinstance(o, str) for r in records.values() for o in r["objects"])
