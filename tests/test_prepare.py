"""Message preparation in a process pool draws the same bytes as in a thread, so request keys
and cached replies do not depend on where a frame was drawn."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from stgr_builder.annotate.llm import Candidate, FrameImages
from stgr_builder.annotate.prepare import PreparePool, default_processes
from stgr_builder.core.resources import Resources
from stgr_builder.models import Detection, Frame


def test_the_pool_draws_what_a_thread_draws(tmp_path):
    frames = []
    for index, size in enumerate(((320, 240), (480, 360), (900, 500))):
        path = tmp_path / f"f{index}.jpg"
        rng = np.random.default_rng(index)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)
        frame = Frame(idx=index, time=float(index), path=path.name, width=size[0], height=size[1])
        cands = [Candidate(k + 1, index + 1, frame, Detection(frame_idx=index, label="dog", score=0.9,
                                                              box=[0.1 * k, 0.2, 0.1 * k + 0.3, 0.7]))
                 for k in range(2)]
        frames.append((path, cands))
    pool = PreparePool(1)
    try:
        pooled = FrameImages(Resources(), pool).get_many(frames, 640)
        assert not pool.broken
    finally:
        pool.shutdown()
    threaded = FrameImages(Resources()).get_many(frames, 640)
    assert pooled == threaded and len({url for url, _ in pooled}) == 3
    assert default_processes(0) == 0 and default_processes(3) == 3


_KILLED = """
import os, signal, sys
from PIL import Image
from stgr_builder.annotate.prepare import PreparePool

if __name__ == "__main__":
    Image.new("RGB", (64, 48)).save(sys.argv[1])
    pool = PreparePool(1)
    assert pool.render_many([(sys.argv[1], ((1, (0.1, 0.1, 0.5, 0.5)),), 640)])
    print(*pool._pool._processes, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_process_leaves_no_pool_worker_behind(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(_KILLED)
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "x.jpg")], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}, timeout=60)
    assert result.returncode == -9
    workers = [int(pid) for pid in result.stdout.split()]
    assert workers
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
