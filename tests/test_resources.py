"""Per-process resources: one loaded model and one lock per model, memos bounded in bytes, one
budget per run, and a pickled Resources that comes back as the worker's own instance."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stgr_builder.core.cache import BoundedCache
from stgr_builder.core.resources import Resources
from stgr_builder.detect import make_detector
from stgr_builder.models import DetectorConfig


@pytest.mark.slow  # loads detectors in threads
def test_detectors_of_one_process_share_one_model_and_its_one_lock(tmp_path):
    resources = Resources()
    config = DetectorConfig(weights="builtin:stgr-demo-yolo11n", device="cpu")
    first, second = make_detector(config, tmp_path, resources), make_detector(config, tmp_path, resources)
    assert first._loaded is second._loaded  # loaded once, one lock for every caller
    other = make_detector(config, tmp_path, Resources())
    assert other._loaded is not first._loaded  # another process (another Resources) loads its own

    # Threads calling the shared model take turns on the lock: two detectors, four threads,
    # and every thread gets the boxes a lone call gives.
    frame = tmp_path / "f.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(frame)
    alone = first.detect([frame])
    results, errors = [], []

    def call(detector):
        try:
            results.append(detector.detect([frame]))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(d,)) for d in (first, second, first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [alone] * 4


def test_memos_are_bounded_in_bytes_and_evict_the_least_recently_used():
    memo = BoundedCache(max_bytes=1000, weigh=len)
    for key in range(5):
        memo.put(key, "x" * 300)
    assert memo.bytes <= 1000 and len(memo) == 3
    assert memo.get(0) is None and memo.get(4) == "x" * 300
    memo.get(2)  # now the most recently used
    memo.put(5, "y" * 300)
    assert memo.get(2) is not None and memo.get(3) is None
    memo.put("huge", "z" * 5000)  # heavier than the bound: not kept, nothing else lost
    assert memo.get("huge") is None and memo.bytes <= 1000 and len(memo) == 3


def test_a_run_has_one_budget_and_a_later_run_a_new_one():
    resources = Resources()
    budget = resources.budget("run-1", max_requests=2, max_tokens=None)
    assert resources.budget("run-1", max_requests=2, max_tokens=None) is budget
    assert [budget.acquire() for _ in range(3)] == [True, True, False]
    assert resources.budget("run-2", max_requests=2, max_tokens=None).acquire()


def test_a_pickled_resources_is_rebuilt_empty_with_its_token_outside_a_worker():
    resources = Resources()
    resources.memo("detections").put("k", [1, 2, 3])
    back = pickle.loads(pickle.dumps(resources))
    assert back.token == resources.token and back is not resources
    assert back.memo("detections").get("k") is None  # models and memos never travel


def test_nothing_of_a_stage_keeps_state_in_module_globals():
    # The process-wide memos and model caches of earlier versions must not come back.
    root = Path(__file__).resolve().parents[1] / "stgr_builder"
    offenders = []
    for path in root.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for marker in ("lru_cache(maxsize=2)", "lru_cache(maxsize=4)", "_MEMO = ", "_RUNS: dict"):
            if marker in text:
                offenders.append(f"{path.relative_to(root)}: {marker}")
    assert offenders == []


def test_one_budget_ledger_holds_across_budget_objects_and_threads(tmp_path):
    from stgr_builder.core.resources import Budget

    ledger = tmp_path / "_cache" / "budget" / "run1.json"
    # Two Budget objects on one ledger stand for two worker processes of one run.
    budgets = [Budget(10, None, ledger), Budget(10, None, ledger)]
    granted = []

    def draw(budget):
        for _ in range(20):
            if budget.acquire():
                granted.append(1)

    threads = [threading.Thread(target=draw, args=(budgets[i % 2],)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 10
    assert not Budget(10, None, ledger).acquire()  # a third process of the run finds it spent
    assert Budget(10, None, tmp_path / "run2.json").acquire()  # another run has its own


def test_a_media_fingerprint_sees_content_not_place_or_time(tmp_path):
    import os
    import shutil

    from stgr_builder.core.hashing import media_fingerprint

    memo = BoundedCache(1 << 20)
    for size in (1000, 1 << 20):  # read whole, and sampled at three places
        path = tmp_path / f"v{size}.mp4"
        data = bytearray(np.random.default_rng(size).integers(0, 255, size, dtype=np.uint8).tobytes())
        path.write_bytes(data)
        before = media_fingerprint(path, memo)
        copy = tmp_path / "elsewhere" / path.name
        copy.parent.mkdir(exist_ok=True)
        shutil.copy(path, copy)
        assert media_fingerprint(copy, memo) == before  # another folder, another mtime: the same
        stat = path.stat()
        data[size // 2] ^= 0xFF  # same size, other content, mtime restored
        path.write_bytes(data)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
        assert media_fingerprint(path, memo) != before
