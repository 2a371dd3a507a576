"""Per-process resources: one loaded model and one lock per model, memos bounded in bytes, one
budget per run, and a pickled Resources that comes back as the worker's own instance."""

from __future__ import annotations

import pickle
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from stgr_builder.core.cache import BoundedCache
from stgr_builder.core.resources import Resources
from stgr_builder.detect import make_detector
from stgr_builder.models import DetectorConfig


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
