"""Kill a build at random moments in every stage, resume it, compare with an uninterrupted one.

Used by ``tests/test_resume.py`` (one round of five kills) and ``bench/chaos.py`` (the long
version). A kill point is a stage and a moment inside it: the build (a subprocess) is SIGKILLed
once the stage store holds a few more results of that stage than before the run (``probe``,
``sample``, ``detect``, ``annotate``), or once a shard file is being written (``write``: a temp
file of a shard, or the next completion record), after a seeded random delay of a few ms.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from stgr_builder.core.layout import STAGES_DIR

KILL_STAGES = ("probe", "sample", "detect", "annotate", "write")
_SCRIPT = (
    "import sys; from pathlib import Path; from stgr_builder.pipeline import build; "
    "build(Path(sys.argv[1]), Path(sys.argv[2]))"
)
_WRITE_FOLDERS = ("stgr_cot", "stgr_rl", "rejects", "_progress")


def digests(out: Path) -> dict[str, str]:
    """Path -> sha256 of every shard file the manifest lists."""
    return {f["path"]: f["sha256"] for f in json.loads((out / "manifest.json").read_text())["shards"]}


def stored(out: Path, stage: str) -> int:
    folder = out / STAGES_DIR / stage
    return sum(1 for _ in folder.glob("*/*.json")) if folder.is_dir() else 0


def records(out: Path) -> int:
    return sum(1 for _ in (out / "_progress").glob("shard-*.json")) if (out / "_progress").is_dir() else 0


def _writing(out: Path) -> bool:
    return any(
        name.startswith(".") and name.endswith(".tmp")
        for folder in _WRITE_FOLDERS
        if (out / folder).is_dir()
        for name in os.listdir(out / folder)
    )


def remaining(out: Path, reference: Path, stage: str) -> int:
    """How much of ``stage`` the build in ``out`` has still to do (shards, for ``write``)."""
    if stage == "write":
        return records(reference) - records(out)
    return stored(reference, stage) - stored(out, stage)


def kill_plan(reference: Path, rng: random.Random, kills: int = 5) -> list[str]:
    """The stages of one round's kills: every stage once (in a seeded order), then random ones."""
    stages = list(KILL_STAGES)
    rng.shuffle(stages)
    return (stages + [rng.choice(KILL_STAGES) for _ in range(kills)])[:kills]


def run_and_kill(
    config: Path, out: Path, stage: str, reference: Path, rng: random.Random, timeout: float = 120.0
) -> str:
    """Start the build, SIGKILL it at a random moment of ``stage`` (or, when that stage has no
    work left, of the next one that has); what happened, in words (``killed in detect at
    14/40``, or ``finished before the kill``)."""
    if remaining(out, reference, stage) <= 0:
        order = KILL_STAGES[KILL_STAGES.index(stage) :] + KILL_STAGES[: KILL_STAGES.index(stage)]
        stage = next((s for s in order if remaining(out, reference, s) > 0), stage)
    if stage == "write":
        start = records(out)
        done = lambda: _writing(out) or records(out) > start  # noqa: E731
        where = f"shard records {start}"
    else:
        start, total = stored(out, stage), stored(reference, stage)
        target = start + rng.randint(1, max(1, (total - start) // 2)) if total > start else start + 1
        done = lambda: stored(out, stage) >= target  # noqa: E731
        where = f"{target}/{total}"
    proc = subprocess.Popen([sys.executable, "-c", _SCRIPT, str(config), str(out)], env=os.environ.copy())
    deadline = time.monotonic() + timeout
    while not done() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    time.sleep(rng.uniform(0, 0.02))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
        return f"finished before the kill in {stage} ({where})"
    return f"killed in {stage} at {where}"
