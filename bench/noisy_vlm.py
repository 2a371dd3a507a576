"""Rows from a VLM that makes real mistakes: builds of the demo generator's sets with the openai
backend against ``stgr serve-llm --policy noisy`` (every mistake kind at ``--rate``), the checks
and the judge on, each row judged against the generator's truth.

Per seed, two builds of the same set, the checks and the judge on:

- ``clean``: the oracle policy. Its rows plus the samples the checks and the judge rejected are
  the rows a perfect annotator gives (``right``); the rejected share is what they drop of right
  answers (``clean_drop``);
- ``noisy``: the noisy policy (each mistake kind at ``--rate``).

Printed per seed and for the worst seed (not the mean): wrong evidence boxes against truth
(IoU < 0.5 with every true object of the box's name on that frame), rows with a time or a
coordinate in prose, rows with a key frame outside a temporal answer's span, noisy rows /
right, annotation requests per row, judge requests per row (every judge request a row used,
those another sample's identical request answered included), and the clean drop.

    PYTHONPATH=. python bench/noisy_vlm.py --seeds 0 1 2 --rate 0.15
    PYTHONPATH=. python bench/noisy_vlm.py --seeds 0 --crops-per-request 1   # one crop a request
    PYTHONPATH=. python bench/noisy_vlm.py --seeds 0 --per-sentence          # judge.per_sentence
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import yaml

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stgr_builder.annotate.reply import CHECK_CODES, ReplyError, check_prose  # noqa: E402
from stgr_builder.audit import connect  # noqa: E402
from stgr_builder.audit.evidence import RIGHT_IOU, judge, load_truths  # noqa: E402
from stgr_builder.core import grammar  # noqa: E402
from stgr_builder.dryrun.demo import (
    demo_config,  # noqa: E402
    generate_demo,  # noqa: E402
)
from stgr_builder.dryrun.noisy import MISTAKE_KINDS, options_from  # noqa: E402
from stgr_builder.dryrun.server import serve_llm  # noqa: E402
from stgr_builder.models import Manifest  # noqa: E402
from stgr_builder.pipeline import build  # noqa: E402

#: The reject codes of the checks and of the judge.
CHECK_REJECTS = (*(code.value for code in CHECK_CODES.values()), "crops_rejected", "sentence_rejected")
_TAGGED = re.compile(r"<(t|box)>.*?</\1>")


def write_config(source: Path, name: str, *, checks: bool, judge: dict) -> Path:
    config = demo_config().model_dump(mode="json")
    config["annotator"].update(
        {
            "backend": "openai",
            "model": "stgr-dry-run",
            "prompt": "stgr-cot-llm",
            "timeout": 20.0,
            "max_retries": 2,
            "max_invalid_retries": 2,
            "max_tokens": 1024,
            "checks": {"enabled": checks},
            "judge": judge,
        }
    )
    path = source / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def prose_times(reasoning: str) -> bool:
    """Whether the trace states a time or coordinates outside its grammar's tags."""
    try:
        check_prose(_TAGGED.sub(" ", reasoning))
    except ReplyError:
        return True
    return False


def off_span(task: str, answer: str, key_frames: list[dict], tolerance: float = 0.05) -> bool:
    if task not in {t.value for t in grammar.TEMPORAL_TASKS}:
        return False
    span = grammar.parse_answer(task, answer).span
    return span is not None and any(not span[0] - tolerance <= kf["time"] <= span[1] + tolerance for kf in key_frames)


def measure(out: Path) -> dict[str, float]:
    manifest = Manifest.model_validate_json((out / "manifest.json").read_text())
    with connect(out) as con:
        rows = con.execute("SELECT id, source, video_path, image_path, key_items FROM cot").fetchall()
        traces = con.execute("SELECT task, answer, key_frames, reasoning_process FROM cot").fetchall()
        dropped = con.execute(
            f"SELECT count(*) FROM rejects WHERE code IN ({', '.join(repr(c) for c in CHECK_REJECTS)})"
        ).fetchone()[0]
    judged = judge(load_truths(manifest), rows)
    llm = manifest.llm
    n = len(rows)
    annotation_requests = (llm.requests - llm.judge_requests) if llm else 0
    return {
        "rows": n,
        "dropped": dropped,
        "boxes": len(judged),
        "wrong_boxes": sum(1 for j in judged if j[4] < RIGHT_IOU),
        "prose_rows": sum(prose_times(r[3]) for r in traces),
        "off_span_rows": sum(off_span(r[0], r[1], r[2]) for r in traces),
        "req_per_row": annotation_requests / n if n else float("inf"),
        "judge_per_row": (llm.judge_requests / n) if (llm and n) else 0.0,
        "checks": dict(llm.checks) if llm else {},
    }


def run_seed(seed: int, work: Path, rate: float, n_videos: int, n_images: int, judge: dict) -> dict[str, dict]:
    source = work / f"seed{seed}"
    generate_demo(source, seed=seed, n_videos=n_videos, n_images=n_images)
    rates = dict.fromkeys(MISTAKE_KINDS, rate)
    results = {}
    for name, policy, checks in (("clean", "oracle", True), ("noisy", "noisy", True)):
        options = {"policy": policy, "noisy": options_from(rates, seed=seed, refuse_json_schema=True)}
        with serve_llm(**options) as server:
            os.environ["OPENAI_BASE_URL"] = server.base_url
            started = time.perf_counter()
            out = work / f"out-{seed}-{name}"
            build(write_config(source, name, checks=checks, judge={**judge, "enabled": checks}), out)
            results[name] = {**measure(out), "seconds": round(time.perf_counter() - started, 1)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rate", type=float, default=0.15)
    parser.add_argument("--n-videos", type=int, default=6, help="6 and 3 images: the demo's own size")
    parser.add_argument("--n-images", type=int, default=3)
    parser.add_argument("--crops-per-request", type=int, default=8, help="judge.crops_per_request")
    parser.add_argument("--per-sentence", action="store_true", help="judge.per_sentence on")
    args = parser.parse_args()
    judge = {"crops_per_request": args.crops_per_request, "per_sentence": args.per_sentence}
    os.environ.setdefault("OPENAI_API_KEY", "bench-not-secret")
    worst: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="stgr-noisy-") as tmp, contextlib.chdir(tmp):
        for seed in args.seeds:
            got = run_seed(seed, Path(tmp), args.rate, args.n_videos, args.n_images, judge)
            clean, noisy = got["clean"], got["noisy"]
            right = clean["rows"] + clean["dropped"]
            line = {
                "seed": seed,
                "right": right,
                "noisy_rows": noisy["rows"],
                "rows/right": round(noisy["rows"] / right, 3) if right else 0.0,
                "clean_drop": round(clean["dropped"] / right, 4) if right else 0.0,
                "wrong_boxes": noisy["wrong_boxes"],
                "clean_wrong_boxes": clean["wrong_boxes"],
                "prose_rows": noisy["prose_rows"],
                "off_span_rows": noisy["off_span_rows"],
                "req_per_row": round(noisy["req_per_row"], 3),
                "judge_req_per_row": round(noisy["judge_per_row"], 3),
                "seconds": [clean["seconds"], noisy["seconds"]],
            }
            print(line, flush=True)
            print("  noisy checks:", noisy["checks"], flush=True)
            for key, value in line.items():
                if key in ("seed", "seconds", "right", "noisy_rows"):
                    continue
                better_low = key != "rows/right"
                if key not in worst:
                    worst[key] = value
                else:
                    worst[key] = max(worst[key], value) if better_low else min(worst[key], value)
    print("worst seed per figure:", worst)


if __name__ == "__main__":
    main()
