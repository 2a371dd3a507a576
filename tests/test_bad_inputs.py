"""Bad inputs mixed into a source each end as a reject with their own reason code, and the
rest of the build completes exactly as it would have without them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stgr_builder.audit import query
from stgr_builder.sources.demo import DEMO_FILE, generate_demo, load_truth
from stgr_builder.sources.demo_config import demo_config

pytestmark = pytest.mark.slow


def _stgr(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stgr_builder.cli", *args], cwd=cwd, env=os.environ.copy(),
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad")
    generate_demo(folder, seed=3, n_videos=2, n_images=1)
    config = demo_config(seed=3).model_dump(mode="json")
    (folder / "CONFIG.yaml").write_text(yaml.safe_dump(config))
    return folder


def _add_bad_inputs(folder: Path) -> dict[str, str]:
    """Append one bad item per kind; return source id -> the reject code it must get."""
    media = folder / "media"
    (media / "videos" / "corrupt.mp4").write_bytes(os.urandom(50_000))
    (media / "videos" / "empty.mp4").write_bytes(b"")
    good = [json.loads(line) for line in (folder / DEMO_FILE).read_text().splitlines()]
    template = next(item for item in good if item["task"] == "temporal QA")
    duration = next(v.duration for v in load_truth(folder).videos if v.path == template["video"])
    late = [round(duration + 5, 1), round(duration + 9, 1)]

    def item(source_id: str, **changes) -> str:
        return json.dumps({**template, "id": source_id, "question": f"{template['question']} ({source_id})",
                           **changes})

    lines = [
        item("bad#corrupt", video="videos/corrupt.mp4"),
        item("bad#empty", video="videos/empty.mp4"),
        item("bad#missing", video="videos/missing.mp4"),
        item("bad#late", span=late, answer=json.dumps(late)),
        item("bad#escape", video="../../outside.mp4"),
        '{"id": "bad#json", "task": "temporal QA", "question": ',
        json.dumps({"id": "bad#fields", "task": "temporal QA"}),
    ]
    with (folder / DEMO_FILE).open("a") as handle:
        handle.write("\n".join(lines) + "\n")
    return {"bad#corrupt": "media_corrupt", "bad#empty": "media_empty", "bad#missing": "media_missing",
            "bad#late": "span_outside_video", "bad#escape": "unsafe_path"}


def test_each_bad_input_gets_its_own_reason_and_the_rest_is_built(source, tmp_path):
    clean = _stgr("build", "CONFIG.yaml", "--out", str(tmp_path / "clean"), cwd=source)
    assert clean.returncode == 0, clean.stderr
    expected = _add_bad_inputs(source)
    dirty = _stgr("build", "CONFIG.yaml", "--out", str(tmp_path / "dirty"), cwd=source)
    assert dirty.returncode == 0, dirty.stderr  # rejected samples are not a failure

    rejects = query(tmp_path / "dirty", "SELECT origin, stage, code, message FROM rejects").rows
    by_line = {}
    lines = (source / DEMO_FILE).read_text().splitlines()
    for origin, stage, code, message in rejects:
        line = int(origin.rsplit(":", 1)[1])
        by_line[lines[line - 1]] = (stage, code, message)
    got = {}
    for text, (stage, code, message) in by_line.items():
        try:
            got[json.loads(text)["id"]] = code
        except json.JSONDecodeError:
            got["bad#json"] = code
    assert {k: got.get(k) for k in expected} == expected
    assert got["bad#json"] == "malformed_row" and got["bad#fields"] == "malformed_row"
    assert len(rejects) == len(expected) + 2
    assert all(message for _, _, message in by_line.values())

    # the good items become exactly the rows of the clean build
    sql = "SELECT id, reasoning_process, answer FROM cot ORDER BY id"
    assert query(tmp_path / "dirty", sql).rows == query(tmp_path / "clean", sql).rows


def test_a_config_typo_is_a_one_line_error_naming_the_key(source, tmp_path):
    config = yaml.safe_load((source / "CONFIG.yaml").read_text())
    config["sampler"]["num_frame"] = 4
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(config))
    result = _stgr("build", str(tmp_path / "typo.yaml"), "--out", str(tmp_path / "o"), cwd=source)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "sampler.num_frame" in lines[0], result.stderr
    assert not (tmp_path / "o").exists()  # nothing started
