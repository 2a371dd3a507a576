"""Inherited labels: how many corrupted spans and gold boxes a build lets through (issue 24).

    python bench/inherited_labels.py [--seeds 1 2 3] [--span-share 0.33] [--box-share 0.3]
                                     [--mode check|refine|off] [--videos 6] [--images 3] [--out DIR]
                                     [--events]

For each seed the demo generator (``generate_demo``, media of that seed) corrupts a share of the
temporal spans (shift 2-4 s, stretch x2, shrink to half) and of the gold boxes (shift, wrong
object) and writes ``corruptions.json``; the demo config (with ``--mode`` as
``span_check.mode``) is built in this process (``pipeline.build``, no orchestrator). Then:

- a corrupted span is *caught* when its sample is rejected, or its row's answer span is within
  0.5 s of the truth at both ends (``caught_by_check``: rejected by ``span_imprecise`` /
  ``query_not_unique`` or refined, i.e. by the span check rather than another rule);
- a corrupted gold box is caught when its sample is rejected, or no row holds a box of its
  object at its time with IoU < 0.5 against the truth (a visual-QA answer box included);
- an intact span is *kept* when its sample became a row whose answer span is within 0.5 s of
  the truth; an intact gold box when its sample became a row and no row box of its object at
  its time is off the truth (IoU < 0.5).

Each seed prints its shares; the last line is the worst seed (the goal: caught >= 90%,
kept >= 95%). ``--mode off`` is the baseline: the same sources with the checks off.

``--events`` adds the demo's event questions (one per video object, "When does the red dog run
from the left to the right of the frame?", corrupted like the others) and builds with the
openai backend against the dry-run server on 127.0.0.1 with ``span_check.events: judge`` (its
judge answers from the frames' pixels): ``event_spans_caught``, ``intact_event_spans_kept`` and
``event_judge_requests_per_sample`` (the judge's requests per event sample) are those spans'.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from stgr_builder.testing.inherited_eval import build_noisy, score  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--span-share", type=float, default=1 / 3)
    parser.add_argument("--box-share", type=float, default=0.3)
    parser.add_argument("--mode", choices=["check", "refine", "off"], default="check")
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--events", action="store_true", help="event spans too, judged through the dry-run server")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="stgr-inherited-"))
    results = []
    for seed in args.seeds:
        started = time.perf_counter()
        folder = root / f"{args.mode}-seed{seed}"
        build_noisy(
            folder,
            seed,
            mode=args.mode,
            span_share=args.span_share,
            box_share=args.box_share,
            videos=args.videos,
            images=args.images,
            events=args.events,
        )
        figures = score(folder)
        results.append(figures)
        shown = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())
        print(f"seed {seed} ({time.perf_counter() - started:.0f}s): {shown}", flush=True)
    worst = {key: min(r[key] for r in results) for key in results[0] if key.endswith(("caught", "kept", "by_check"))}
    if args.events:
        worst["event_judge_requests_per_sample (most)"] = max(r["event_judge_requests_per_sample"] for r in results)
    print(f"worst of {len(results)} seeds, mode {args.mode}: " + ", ".join(f"{k} {v:.3f}" for k, v in worst.items()))


if __name__ == "__main__":
    main()
