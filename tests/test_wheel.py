"""Installable: a wheel built from the project, installed (not editable) into a fresh environment
and run from an unrelated folder, builds a demo with the rows a source checkout builds; it installs
one top-level package, with its data inside; an editable install finds the same modules and data;
every extra an error message names exists.

A fresh environment gets the wheel only (``--no-deps``); the dependencies (torch, Ultralytics,
Prefect, ...) come from this environment's site-packages through a ``.pth`` line, which puts the
folder on ``sys.path`` without running the ``.pth`` files in it (so the editable install of this
checkout stays off)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from stgr_builder.core.codehash import code_digest
from stgr_builder.core.hashing import sha256_file

from helpers.small_demo import small_build

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("stgr_builder", "flows", "prompts", "schemas")
DATASETS = ("stgr_cot", "stgr_rl", "rejects")
PROBE = """
import importlib.util, sys
import stgr_builder, stgr_builder.flows.build as flows_build
from stgr_builder.core.codehash import code_digest
from stgr_builder.core.data import data_folder
print(stgr_builder.__file__)
print(flows_build.__file__)
for package in ("stgr_builder.prompts", "stgr_builder.schemas", "stgr_builder.recipes"):
    print(data_folder(package))
print(importlib.util.find_spec("flows"))
print(code_digest("stgr_builder.executor"))
"""


def _copy_project(target: Path) -> Path:
    """What a source distribution holds: the build reads only these."""
    for name in SOURCES:
        shutil.copytree(ROOT / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, target)
    return target


def _environment(folder: Path) -> Path:
    """A new virtual environment whose own site-packages comes first; this one's after it."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "_stgr_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python


def _pip_install(python: Path, *args: str) -> None:
    # This environment's pip, run on the new environment's interpreter (it has no pip of its own).
    command = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def _run(command: list[str], cwd: Path) -> str:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    # A loaded machine can take longer than Prefect's 20 s to start the flow's local API server.
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-3000:])
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = _copy_project(tmp_path_factory.mktemp("sdist") / "stgr-builder")
    out = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(source)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (found,) = out.glob("stgr_builder-*.whl")
    return found


def test_the_wheel_installs_one_package_with_its_data_and_every_module(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"stgr_builder", wheel.name.split("-py3")[0] + ".dist-info"}
    modules = {name for name in names if name.endswith(".py")}
    expected = {f"stgr_builder/{path.relative_to(ROOT / 'stgr_builder')}" for path in ROOT.glob("stgr_builder/**/*.py")}
    for folder in ("flows", "prompts", "schemas"):
        expected |= {f"stgr_builder/{path.relative_to(ROOT)}" for path in (ROOT / folder).glob("**/*.py")}
    assert modules == expected  # a package missing from pyproject's list fails here
    data = {
        *(f"stgr_builder/prompts/{p.name}" for p in (ROOT / "prompts").glob("*.yaml")),
        *(f"stgr_builder/schemas/{p.name}" for p in (ROOT / "schemas").glob("*.json")),
        *(f"stgr_builder/recipes/{p.name}" for p in (ROOT / "stgr_builder" / "recipes").glob("*.yaml")),
        "stgr_builder/detect/weights/stgr-demo-yolo11n.pt",
    }
    assert data <= set(names)


@pytest.mark.slow
def test_the_installed_wheel_builds_the_checkouts_rows_from_any_folder(wheel, tmp_path, tmp_path_factory):
    python = _environment(tmp_path / "venv")
    _pip_install(python, str(wheel))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lines = _run([str(python), "-c", PROBE], cwd=elsewhere).splitlines()
    site = Path(lines[0]).parents[1]
    assert site.is_relative_to(tmp_path / "venv") and not site.is_relative_to(ROOT)  # the wheel's, not the checkout's
    assert all(Path(line).is_relative_to(site / "stgr_builder") for line in lines[1:5])
    assert lines[5] == "None"  # no top-level `flows` in site-packages
    assert lines[6] == code_digest("stgr_builder.executor")  # stage keys do not depend on where the code is
    _run([str(python.parent / "stgr"), "schemas"], cwd=elsewhere)  # the shipped schemas are current

    config, reference = small_build(tmp_path_factory)
    out = elsewhere / "out"
    _run([str(python.parent / "stgr"), "build", str(config), "--out", "out"], cwd=elsewhere)
    for dataset in DATASETS:
        built = {p.name: sha256_file(p) for p in sorted((out / dataset).glob("*.parquet"))}
        assert built and built == {p.name: sha256_file(p) for p in sorted((reference / dataset).glob("*.parquet"))}


def test_an_editable_install_finds_the_flows_and_data_in_the_checkout(tmp_path):
    source = _copy_project(tmp_path / "checkout")
    python = _environment(tmp_path / "venv")
    _pip_install(python, "--no-build-isolation", "-e", str(source))
    lines = _run([str(python), "-c", PROBE], cwd=tmp_path).splitlines()
    assert lines[:5] == [
        str(source / "stgr_builder" / "__init__.py"),
        str(source / "flows" / "build.py"),
        str(source / "prompts"),
        str(source / "schemas"),
        str(source / "stgr_builder" / "recipes"),
    ]
    assert lines[5] == "None"
    assert lines[6] == code_digest("stgr_builder.executor")


def test_every_extra_an_error_message_names_exists():
    with open(ROOT / "pyproject.toml", "rb") as file:
        extras = set(tomllib.load(file)["project"]["optional-dependencies"])
    named: set[str] = set()
    for path in [*ROOT.glob("stgr_builder/**/*.py"), *ROOT.glob("flows/**/*.py")]:
        text = path.read_text(encoding="utf-8")
        named |= set(re.findall(r"""require\(\s*["'][\w.]+["'],\s*extra=["']([\w-]+)["']""", text))
        for group in re.findall(r"stgr-builder\[([\w,-]+)\]", text):
            named |= set(group.split(","))
    assert named and named <= extras, named - extras
