"""Message preparation in a process pool draws the same bytes as in a thread, so request keys
and cached replies do not depend on where a frame was drawn."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from stgr_builder.annotate import prepare
from stgr_builder.annotate.cache import image_digest
from stgr_builder.annotate.crops import data_url
from stgr_builder.annotate.llm import Candidate, FrameImages
from stgr_builder.annotate.prepare import PreparePool, default_processes, draw_frame, render_frame
from stgr_builder.core.resources import Resources
from stgr_builder.models import Detection, Frame


def test_the_pool_draws_what_a_thread_draws(tmp_path):
    frames = []
    for index, size in enumerate(((320, 240), (480, 360), (900, 500))):
        path = tmp_path / f"f{index}.jpg"
        rng = np.random.default_rng(index)
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)
        frame = Frame(idx=index, time=float(index), path=path.name, width=size[0], height=size[1])
        cands = [
            Candidate(
                k + 1,
                index + 1,
                frame,
                Detection(frame_idx=index, label="dog", score=0.9, box=[0.1 * k, 0.2, 0.1 * k + 0.3, 0.7]),
            )
            for k in range(2)
        ]
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


def test_a_worker_keeps_a_frame_from_its_second_use_and_never_draws_on_the_kept_one(tmp_path):
    """A worker draws a frame's first use on the decoded pixels themselves (no copy), keeps the
    frame once it is asked again, and from then on draws on copies: every use gives the bytes a
    fresh decode gives, whatever the order, and the kept pixels stay clean."""
    paths = []
    for index, (mode, suffix) in enumerate((("RGB", "jpg"), ("L", "png"), ("RGB", "png"))):
        rng = np.random.default_rng(index)
        path = tmp_path / f"f{index}.{suffix}"
        Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).convert(mode).save(path)
        paths.append(str(path))
    boxes = [((1, (0.1, 0.2, 0.4, 0.7)),), ((2, (0.5, 0.1, 0.9, 0.5)), (3, (0.0, 0.0, 1.0, 1.0)))]

    def fresh(path, drawn):
        cands = [SimpleNamespace(id=cid, det=SimpleNamespace(box=list(box))) for cid, box in drawn]
        jpeg = draw_frame(path, cands, 640)
        return data_url(jpeg), image_digest(jpeg)

    for path in paths:
        key = (path, 640)
        assert render_frame((path, boxes[0], 640)) == fresh(path, boxes[0])
        assert prepare._WORKER_BASES.get(key) is None  # seen once: not kept
        assert render_frame((path, boxes[1], 640)) == fresh(path, boxes[1])
        kept = prepare._WORKER_BASES.get(key)
        assert kept is not None
        pixels = kept.tobytes()
        for drawn in (boxes[0], boxes[1], boxes[0]):
            assert render_frame((path, drawn, 640)) == fresh(path, drawn)
        assert prepare._WORKER_BASES.get(key).tobytes() == pixels


def test_waiting_for_the_pool_holds_no_thread_of_the_event_loop(tmp_path):
    """Requests being prepared wait for the pool without a thread each: the loop's other thread
    work (the reply cache's writes, the openai client's own) does not queue behind them."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    jobs = []
    for index in range(12):
        path = tmp_path / f"f{index}.jpg"
        rng = np.random.default_rng(index)
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(path, quality=90)
        frame = Frame(idx=index, time=float(index), path=path.name, width=640, height=480)
        jobs.append(
            [
                (
                    path,
                    [
                        Candidate(
                            1, 1, frame, Detection(frame_idx=index, label="dog", score=0.9, box=[0.1, 0.2, 0.4, 0.7])
                        )
                    ],
                )
            ]
        )
    pool = PreparePool(1)
    pool.start()

    async def prepare_while_probing():
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
        images = FrameImages(Resources(), pool)
        preparing = [asyncio.create_task(images.get_many_async(frames, 640)) for frames in jobs]
        await asyncio.sleep(0)  # every preparation under way
        await asyncio.to_thread(time.sleep, 0)  # the loop's one thread is free at once
        done_when_probed = sum(task.done() for task in preparing)
        return done_when_probed, await asyncio.gather(*preparing)

    try:
        done_when_probed, drawn = asyncio.run(prepare_while_probing())
        assert not pool.broken
    finally:
        pool.shutdown()
    assert done_when_probed < len(jobs)  # the probe did not wait for the preparations
    assert drawn == [FrameImages(Resources()).get_many(frames, 640) for frames in jobs]  # same bytes


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


@pytest.mark.slow  # starts and kills a process
def test_a_killed_process_leaves_no_pool_worker_behind(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(_KILLED)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "x.jpg")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        timeout=60,
    )
    assert result.returncode == -9
    workers = [int(pid) for pid in result.stdout.split()]
    assert workers
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


def test_a_request_body_is_the_bytes_the_openai_client_would_write(tmp_path):
    """The body is serialized with the image data URLs spliced in, not escaped byte by byte;
    the bytes are those of the openai client's own serializer, for every kind of part (a URL
    that needs escaping, and text holding the splice's marker, go the plain way)."""
    from openai._utils._json import openapi_dumps

    from stgr_builder.annotate.llm import json_body

    jpeg = tmp_path / "f.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(jpeg)
    url = data_url(jpeg.read_bytes())
    text = 'Where is the "dog"? Ünïcode, a tab\t, a newline\n and \\ a backslash'
    bodies = [
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "You annotate."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": text},
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "text", "text": "B1"},
                        {"type": "image_url", "image_url": {"url": url[:-8]}},
                    ],
                },
            ],
            "temperature": 0.0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": True}},
        },
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": 'data:image/jpeg;base64,"AA\\'}},
                        {"type": "image_url", "image_url": {"url": "https://example.invalid/a.jpg", "detail": "low"}},
                    ],
                }
            ],
        },
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a \ue000stgr-image\ue000 marker"},
                        {"type": "image_url", "image_url": {"url": url}},
                    ],
                }
            ],
        },
    ]
    for body in bodies:
        assert json_body(body) == openapi_dumps(body)
