"""Message preparation in a process pool draws the same bytes as in a thread, so request keys
and cached replies do not depend on where a frame was drawn."""

from __future__ import annotations

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
