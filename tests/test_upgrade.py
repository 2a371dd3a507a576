"""Upgrade-safe stage results: a stored result is reused only while the code that made it would
make it again. A build resumed with a changed line of one stage's code re-runs that stage and
those after it and reuses the earlier ones; a change to comments or docstrings re-runs nothing.

The builds run in subprocesses on a copy of the project's code, so the changed module is the one
imported, as after an upgrade."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stgr_builder.audit import query
from stgr_builder.core.codehash import code_digest, code_modules, module_digest
from stgr_builder.models import Manifest

from helpers.small_demo import small_source, write_config

ROOT = Path(__file__).resolve().parents[1]
BUILD = "import sys; from pathlib import Path; from stgr_builder.pipeline import build; build(*map(Path, sys.argv[1:]))"
TEMPLATE = Path("stgr_builder") / "annotate" / "template.py"


def test_comments_docstrings_and_layout_do_not_change_a_module_digest():
    source = 'def f(x):\n    """Twice."""\n    return 2 * x\n'
    assert module_digest(source) == module_digest('"""Module."""\n\n\ndef f(x):  # doubled\n    return (2 * x)\n')
    assert module_digest(source) != module_digest("def f(x):\n    return 3 * x\n")
    assert module_digest(source) != module_digest("def f(y):\n    return 2 * y\n")
    assert module_digest("x = 1") != module_digest("x = 1.0") != module_digest("x = True")


def test_a_stage_digest_holds_its_package_and_all_it_imports():
    modules = code_modules("stgr_builder.annotate")
    assert {"stgr_builder.annotate.template", "stgr_builder.annotate.llm", "stgr_builder.models"} <= set(modules)
    assert "stgr_builder.core.hashing" in modules  # imported by core modules the stage imports: transitively
    assert not any(name.startswith(("stgr_builder.detect", "stgr_builder.verify")) for name in modules)
    assert all(path.is_file() and path.suffix == ".py" for path in modules.values())
    assert len({code_digest(f"stgr_builder.{stage}") for stage in ("video", "detect", "annotate")}) == 3


def _copy_code(target: Path) -> Path:
    """The project's code as a source checkout elsewhere (what a PYTHONPATH build imports)."""
    for name in ("stgr_builder", "flows", "prompts", "schemas"):
        shutil.copytree(ROOT / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", target)
    return target


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new), encoding="utf-8")


def _build(code: Path, config: Path, out: Path) -> Manifest:
    # No .pyc: an edit of the same size within the second of the last import would go unseen.
    env = {**os.environ, "PYTHONPATH": str(code), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", BUILD, str(config), str(out)],
        env=env,
        cwd=code.parent,  # `python -c` puts the working folder first on sys.path: not a checkout's
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return Manifest.model_validate_json((out / "manifest.json").read_text())


def _files(out: Path, folder: str) -> dict[str, int]:
    """Relative path -> mtime in ns of every file under a folder of the dataset."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in sorted((out / folder).rglob("*")) if p.is_file()}


def _most_key_frames(out: Path) -> int:
    return query(out, "SELECT max(len(key_frames)) FROM cot").rows[0][0]


@pytest.mark.slow
def test_a_changed_stage_reruns_from_that_stage_on_and_a_comment_reruns_nothing(tmp_path, tmp_path_factory):
    code = _copy_code(tmp_path / "code")
    config, out = write_config(small_source(tmp_path_factory)), tmp_path / "out"
    first = _build(code, config, out)
    assert _most_key_frames(out) > 2  # the cap below would change these rows
    earlier = {stage: _files(out, f"_cache/stages/{stage}") for stage in ("probe", "sample", "detect")}
    annotated = _files(out, "_cache/stages/annotate")

    # An upgrade changes one line of the template annotator: its default cap of key frames.
    _edit(code / TEMPLATE, "max_key_frames: int = 4,", "max_key_frames: int = 2,")
    second = _build(code, config, out)
    assert second.build_id == first.build_id  # the same build of the same config: resumed in place
    assert _most_key_frames(out) <= 2  # the rows come from the new code
    steps = {s.step: s for s in second.stats}
    for stage in ("probe", "sample", "detect"):
        assert steps[stage].resumed == steps[stage].seen > 0, stage  # reused: detection not paid again
        assert _files(out, f"_cache/stages/{stage}") == earlier[stage], stage  # nothing of it written
    assert steps["annotate"].seen > 0 and steps["annotate"].resumed == 0
    assert len(_files(out, "_cache/stages/annotate")) == 2 * len(annotated)  # a new result per sample

    # Comments, docstrings and layout are not code: nothing runs again, no file is rewritten.
    _edit(code / TEMPLATE, "max_key_frames: int = 2,", "max_key_frames: int = (2),  # fewer, shorter traces")
    _edit(code / TEMPLATE, '"""Up to ``max_key_frames`` frames:', '"""At most ``max_key_frames`` frames:')
    written = {folder: _files(out, folder) for folder in ("stgr_cot", "stgr_rl", "rejects", "_cache/stages")}
    _build(code, config, out)
    assert {folder: _files(out, folder) for folder in written} == written
