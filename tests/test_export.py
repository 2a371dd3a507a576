"""The Open-o3 export (JSON files and key-frame layout of the released training code), and our
Parquet shards loaded by `datasets` with no cast error."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from stgr_builder.audit import query
from stgr_builder.cli import app
from stgr_builder.models import Task

from helpers.small_demo import small_build

pytestmark = pytest.mark.slow

SPEC_FIELDS = {"id", "task", "source", "question", "answer", "key_frames", "key_items"}


def test_export_open_o3_writes_the_released_layout(tmp_path_factory, tmp_path):
    _, out = small_build(tmp_path_factory)
    target = tmp_path / "open-o3"
    result = CliRunner().invoke(app, ["export", "open-o3", str(out), "--to", str(target)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    for name, view, count in (
        ("STGR-SFT.json", "cot", manifest["counts"]["stgr_cot"]),
        ("STGR-RL.json", "rl", manifest["counts"]["stgr_rl"]),
    ):
        records = json.loads((target / "json_data" / name).read_text())
        assert len(records) == count > 0
        for record in records:
            assert record.keys() >= SPEC_FIELDS and "provenance" not in record
            assert ("reasoning_process" in record) == (name == "STGR-SFT.json")
            assert Task(record["task"])
            assert ("image_path" in record) != ("video_path" in record)
            if "image_path" in record:
                assert len(record["image_size"]) == 2
            frames = {kf["idx"]: kf for kf in record["key_frames"]}
            assert [kf["time"] for kf in record["key_frames"]] == sorted(kf["time"] for kf in record["key_frames"])
            # key_items: {str(idx): {name: [[x1, y1, x2, y2], ...]}} at key frames, normalized
            for idx, objects in record["key_items"].items():
                assert int(idx) in frames
                for boxes in objects.values():
                    for box in boxes:
                        assert len(box) == 4 and 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
            for kf in record["key_frames"]:
                # the trainer joins videos/stgr/temporal_grounding/kfs with the frame's path
                path = target / "videos" / "stgr" / "temporal_grounding" / "kfs" / kf["path"]
                assert path.is_file(), path
        # the same row, field for field, as in the shards
        first = records[0]
        row = query(out, f"SELECT answer, question, len(key_frames) FROM {view} WHERE id = '{first['id']}'").rows[0]
        assert row == (first["answer"], first["question"], len(first["key_frames"]))

    from datasets import Dataset

    sft = Dataset.from_json(str(target / "json_data" / "STGR-SFT.json"))  # how the trainer reads it
    assert sft.num_rows == manifest["counts"]["stgr_cot"]


def test_datasets_loads_the_shards_without_a_cast_error(tmp_path_factory, tmp_path):
    from datasets import load_dataset

    from stgr_builder.shards.export import data_files

    _, out = small_build(tmp_path_factory)
    manifest = json.loads((out / "manifest.json").read_text())
    for folder in ("stgr_cot", "stgr_rl"):
        files = sorted(str(p) for p in (out / folder).glob("part-*.parquet"))
        assert len(files) >= 2  # several shards, one schema
        for listed in (files, data_files(out, folder)):
            dataset = load_dataset("parquet", data_files={"train": listed}, cache_dir=str(tmp_path / "hf"))["train"]
            assert dataset.num_rows == manifest["counts"][folder]
            assert set(dataset.features) >= {"id", "key_frames", "key_items", "provenance"}
            assert dataset[0]["key_items"][0]["boxes"]
    # rejects: many shards hold none; the manifest's non-empty files load (none at all here is fine)
    rejects = data_files(out, "rejects")
    assert len(rejects) == sum(1 for f in manifest["shards"] if f["path"].startswith("rejects/") and f["rows"])
    if rejects:
        loaded = load_dataset("parquet", data_files={"train": rejects}, cache_dir=str(tmp_path / "hf"))["train"]
        assert loaded.num_rows == manifest["counts"]["rejects"]
