"""Full-size rehearsal: a synthetic recipe of the released datasets' size and task mix, built
end to end with the template annotator.

    python bench/full_size.py [--scale 1.0] [--out DIR] [--plain] [--profile FILE]

1. A pool of demo videos and stills (``generate_demo``, default 40 videos and 20 stills) is
   generated under ``DIR/pool`` and *calibrated*: its own QA items are built once, and only the
   items that came out as rows are used below (so the rehearsal's category shares are exact).
   Both are cached: reruns skip them.
2. ``DIR/recipe-x<scale>/`` gets a config and one demo-format source file per dataset
   membership (both datasets, CoT only, RL only), replicating the pool's items task by task up
   to ``RECIPE`` x scale. A replica keeps its item's media, span, objects and answer (so it
   stays true to the generator's ground truth) and gets a distinct source id and question
   (so a distinct sample id).
3. The recipe is built in a fresh child process (the Prefect flow on the thread runner, as
   ``stgr build`` does; ``--plain``: ``pipeline.build`` in a loop), and the bench prints wall
   time, the time in the detector ("model time", the detect step's seconds in the manifest),
   rows per second outside model time, per-step seconds, peak RSS, and the rows per task
   against the recipe.

Goal (issue #6): the whole rehearsal (``--scale 1``) under 10 minutes and under 2 GB peak RSS
on 2 cores. ``--scale 0.05`` is a smoke test of a couple of minutes. ``--check`` holds every
written row against the consistency rules again, outside the build.

Measured (2 cores shared with other work, CPU only, flow on 2 threads, 40 shards of 1,000):
39,070 samples -> 31,166 CoT + 37,231 RL rows, 0 rejects, shares exactly the recipe's; all
68,397 rows pass ``check_row`` again. Wall 170 s incl. ~15 s of Prefect and torch start-up;
peak RSS 1.68 GiB; detect 42 s (summed over the threads), ~460 rows/s outside model time.
Step seconds summed over shards: ingest 6.5, probe 7.3, sample 24.4, detect 42.2, annotate
10.9, verify 16.9; the rest of the wall time is per-sample bookkeeping (stage-store keys and
entries: a JSON dump and sha256 of the sample per stored stage, one small file per sample and
stage), Parquet writing, and the GIL (two threads of mostly Python).
Measured 2026-11-30 on branch issue-11 (2 cores shared with other work, load ~3, PyAV decoder):
``--scale 1``: 39,070 samples -> 31,166 CoT + 37,231 RL rows in 118.8 s wall, peak RSS
1,629 MiB (the bench process 1,668 MiB); step seconds ingest 5.8, probe 6.5, sample 21.5,
detect 29.4, annotate 6.5, verify 13.3.

``--per-sample 300`` (every sample its own media: 300 generated 320x240 videos of 6-48 s and
60 stills), 2026-11-30 on main, load ~1: 360 samples -> 360 + 360 rows in 152.3 s wall, peak
RSS 1,587 MiB; 3,121 candidate frames, 11,915 frames stored and detected with the track gate's
neighbours, 54,724 decoded; per stored frame: sample (decode + RGB + JPEG) 2.3 ms, detect
20.7 ms (yolo11n at 320 px on the CPU, two shard threads sharing the model); probe 8 ms per
file. ``stgr plan``: 30.4 s probe + decode + store (actual 29.9 s), 234.5 s detect (actual
246.8 s), from its per-pixel and per-frame constants (stgr_builder/planning/cost.py, calibrated on
this run). At 39,070 samples with their own media: ~0.9 h of probe + decode and ~7.4 h of
detection (thread time here).

Before the process-level memos (detections per frame, decoded frames, probes) and the
fsync-free stage store: 0.05 scale took 277 s with 455 s in the detector; the pool's ~800
distinct frames were detected again in every batch of every shard. Caveat: the pool is small
(40 videos, 20 stills), so the memos hit far more than on real sources, where model time
grows with the distinct frames (yolo11n ~50 ms per frame on this CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stgr_builder import __version__  # noqa: E402
from stgr_builder.dryrun.demo import (  # noqa: E402
    DEMO_FILE,
    MEDIA_DIR,
    demo_config,  # noqa: E402
    generate_demo,
)
from stgr_builder.models import SourceConfig, Task  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

#: Samples per (task, datasets they go to): STGR-CoT 31,166 rows and STGR-RL 37,231 rows.
#: CoT: spatio-temporal 7,047; temporal 4,119; visual 5,000; video MCQ 13,000; video free-form 2,000.
#: RL: spatio-temporal 12,047; temporal 2,280; temporal MCQ 2,904; visual 5,000; video MCQ 13,000;
#: video free-form 2,000. Shared samples go to both; the rest to one.
BOTH, COT, RL = ("cot", "rl"), ("cot",), ("rl",)
RECIPE: dict[tuple[Task, tuple[str, ...]], int] = {
    (Task.SPATIO_TEMPORAL, BOTH): 7_047,
    (Task.SPATIO_TEMPORAL, RL): 5_000,
    (Task.TEMPORAL, BOTH): 2_280,
    (Task.TEMPORAL, COT): 1_839,
    (Task.TEMPORAL_MCQ, RL): 2_904,
    (Task.VISUAL, BOTH): 5_000,
    (Task.VIDEO_MCQ, BOTH): 13_000,
    (Task.VIDEO_FREE, BOTH): 2_000,
}
SOURCE_NAMES = {BOTH: "STR_rehearsal", COT: "STR_rehearsal_cot", RL: "STR_rehearsal_rl"}
SAMPLES_PER_SHARD = 1000


def scaled_recipe(scale: float) -> dict[tuple[Task, tuple[str, ...]], int]:
    """Samples per (task, datasets) at ``scale`` (at least one of each)."""
    return {key: max(1, round(count * scale)) for key, count in RECIPE.items()}


def expected_rows(scale: float) -> dict[str, Counter]:
    """Rows per task in each dataset that a build of the scaled recipe must write."""
    rows = {"cot": Counter(), "rl": Counter()}
    for (task, datasets), count in scaled_recipe(scale).items():
        for dataset in datasets:
            rows[dataset][task.value] += count
    return rows


# ---------------------------------------------------------------------------------------
# The pool: generated media and their calibrated QA items
# ---------------------------------------------------------------------------------------


def _child_env() -> dict:
    env = dict(os.environ)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    env.setdefault("YOLO_OFFLINE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def make_pool(folder: Path, n_videos: int = 40, n_images: int = 20, seed: int = 0) -> Path:
    """Generate and calibrate the pool under ``folder`` (reused when already there); returns
    the calibrated items file (demo records that build into rows with this code version)."""
    folder = Path(folder)
    stamp = {"n_videos": n_videos, "n_images": n_images, "seed": seed, "version": __version__}
    calibrated = folder / "calibrated.jsonl"
    stamp_file = folder / "pool.json"
    if calibrated.is_file() and stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return calibrated
    generate_demo(folder, seed=seed, n_videos=n_videos, n_images=n_images)
    config = demo_config(seed).model_dump(mode="json")
    config["sharding"]["samples_per_shard"] = 256
    (folder / "CONFIG.yaml").write_text(yaml.safe_dump(config))
    out = folder / "calibration"
    from stgr_builder.pipeline import build

    build(folder / "CONFIG.yaml", out)
    import duckdb

    passed = {
        source_id
        for (source_id,) in duckdb.sql(f"SELECT DISTINCT id FROM read_parquet('{out}/stgr_cot/*.parquet')").fetchall()
    }
    from stgr_builder.pipeline import context
    from stgr_builder.sources import ingest

    samples, _, _ = ingest(context(folder / "CONFIG.yaml", out).config, folder)
    kept_ids = {sample.source_id for sample in samples if sample.id in passed}
    lines = [
        line
        for line in (folder / DEMO_FILE).read_text().splitlines()
        if line.strip() and json.loads(line)["id"] in kept_ids
    ]
    calibrated.write_text("\n".join(lines) + "\n")
    stamp_file.write_text(json.dumps(stamp))
    return calibrated


def write_recipe(pool: Path, folder: Path, scale: float, samples_per_shard: int = SAMPLES_PER_SHARD) -> Path:
    """Write the scaled recipe's sources and CONFIG.yaml under ``folder``; return the config."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    items: dict[str, list[dict]] = {}
    for line in (pool / "calibrated.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            items.setdefault(record["task"], []).append(record)
    per_source: dict[tuple[str, ...], list[str]] = {BOTH: [], COT: [], RL: []}
    # Copies are counted per pool item over the whole recipe: ingest drops a second sample
    # with the same media and question, even in another source.
    used: Counter = Counter()
    for (task, datasets), count in scaled_recipe(scale).items():
        base = items.get(task.value)
        if not base:
            raise SystemExit(f"the pool has no calibrated item of task {task.value!r}: enlarge it")
        for k in range(count):
            record = dict(base[k % len(base)])
            copy = used[record["id"]]
            used[record["id"]] += 1
            record["id"] = f"{record['id']}~{copy}"
            if copy:
                record["question"] = f"{record['question']} (take {copy})"
            per_source[datasets].append(json.dumps(record, ensure_ascii=False))
    config = demo_config().model_dump(mode="json")
    template = config["sources"][0]
    sources = []
    media = os.path.relpath(pool / MEDIA_DIR, folder)
    for datasets, lines in per_source.items():
        name = SOURCE_NAMES[datasets]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        source = SourceConfig.model_validate(
            {**template, "name": name, "path": f"{name}.jsonl", "media_root": media, "datasets": list(datasets)}
        )
        sources.append(source.model_dump(mode="json"))
    config["name"] = f"rehearsal-x{scale:g}"
    config["sources"] = sources
    config["sharding"]["samples_per_shard"] = samples_per_shard
    path = folder / "CONFIG.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------
# The build, measured in a child process
# ---------------------------------------------------------------------------------------

_CHILD = """
import cProfile, json, os, resource, sys, tempfile
from pathlib import Path
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp())
config, out, mode, profile = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
if mode == "flow":
    from stgr_builder.flows.build import flow_runner as runner
else:
    from stgr_builder.executor import in_process as runner
from stgr_builder.pipeline import build
profiler = cProfile.Profile() if profile else None
if profiler:
    profiler.enable()
manifest = build(Path(config), Path(out), runner=runner)
if profiler:
    profiler.disable()
    profiler.dump_stats(profile)
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def run_build_measured(config: Path, out: Path, flow: bool = True, profile: Path | None = None) -> dict:
    """Build in a child process; wall seconds, peak RSS (KiB) and the manifest."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(config), str(out), "flow" if flow else "plain", str(profile or "")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_child_env(),
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"build failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["seconds"] = seconds
    result["children_peak_kib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["manifest"] = json.loads((out / "manifest.json").read_text())
    return result


def rows_per_task(out: Path) -> dict[str, Counter]:
    import duckdb

    counts = {}
    for dataset, folder in (("cot", "stgr_cot"), ("rl", "stgr_rl")):
        rows = duckdb.sql(f"SELECT task, count(*) FROM read_parquet('{out}/{folder}/*.parquet') GROUP BY task")
        counts[dataset] = Counter(dict(rows.fetchall()))
    return counts


def check_rows(config: Path, out: Path, pool: Path) -> tuple[int, list]:
    """Hold every written row against every consistency rule again, outside the build:
    (rows checked, the first violations found)."""
    import duckdb

    from stgr_builder.core.arrow import table_to_rows
    from stgr_builder.dryrun.demo import load_truth
    from stgr_builder.models import CotRow, RlRow
    from stgr_builder.pipeline import context
    from stgr_builder.sources import ingest
    from stgr_builder.verify import check_row

    ctx = context(config, out)
    samples, _, _ = ingest(ctx.config, ctx.config_dir)
    by_id = {sample.id: sample for sample in samples}
    durations = {video.path: video.duration for video in load_truth(pool).videos}
    checked, bad = 0, []
    for model, folder in ((CotRow, "stgr_cot"), (RlRow, "stgr_rl")):
        for shard in sorted((out / folder).glob("*.parquet")):
            table = duckdb.sql(f"SELECT * FROM read_parquet('{shard}')").to_arrow_table()
            for row in table_to_rows(table, model):
                sample = by_id[row.id]
                violations = check_row(
                    row, duration=durations.get(row.video_path), span=sample.span, gold_answer=sample.answer
                )
                checked += 1
                if violations and len(bad) < 10:
                    bad.append((folder, row.id, violations))
    return checked, bad


# ---------------------------------------------------------------------------------------
# Per-sample media: every sample its own generated video or still
# ---------------------------------------------------------------------------------------


def write_per_sample(folder: Path, n_videos: int, n_images: int, seed: int = 11, samples_per_shard: int = 100) -> Path:
    """Generate ``n_videos`` short videos and ``n_images`` stills (cached under ``folder``),
    keep one QA item per media file (tasks taken in turn), write the config; return it.
    No two samples share a file, so probe, decode and detect are paid for every sample."""
    folder = Path(folder)
    stamp = {"n_videos": n_videos, "n_images": n_images, "seed": seed, "version": __version__}
    stamp_file = folder / "media.json"
    if not (stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp):
        generate_demo(folder, seed=seed, n_videos=n_videos, n_images=n_images)
        stamp_file.write_text(json.dumps(stamp))
    by_media: dict[str, list[dict]] = {}
    for line in (folder / DEMO_FILE).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_media.setdefault(record.get("video") or record.get("image"), []).append(record)
    lines = [
        json.dumps(items[k % len(items)], ensure_ascii=False) for k, (_, items) in enumerate(sorted(by_media.items()))
    ]
    (folder / "per_sample.jsonl").write_text("\n".join(lines) + "\n")
    config = demo_config().model_dump(mode="json")
    config["name"] = f"per-sample-{n_videos}v{n_images}i"
    config["sources"][0].update({"path": "per_sample.jsonl", "media_root": MEDIA_DIR})
    config["sharding"]["samples_per_shard"] = samples_per_shard
    path = folder / "CONFIG.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def per_sample(args) -> None:
    """Build ``--per-sample N`` own-media samples; per-frame costs; the plan's estimate beside."""
    from stgr_builder.pipeline import context
    from stgr_builder.planning import make_plan

    started = time.perf_counter()
    folder = args.out / f"per-sample-{args.per_sample}"
    config = write_per_sample(folder, args.per_sample, max(1, args.per_sample // 5))
    print(
        f"media: {args.per_sample} videos + {max(1, args.per_sample // 5)} stills, one sample each "
        f"({time.perf_counter() - started:.0f} s incl. generation)",
        flush=True,
    )
    out = folder / "out"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    planning = time.perf_counter()
    plan = make_plan(context(config, out).config, folder)  # reads the sources and probes every file once
    planning = time.perf_counter() - planning
    result = run_build_measured(config, out, flow=not args.plain, profile=args.profile)
    manifest = result["manifest"]
    counts, seconds = manifest["counts"], step_seconds(manifest)
    est = plan.estimate
    # Every frame stored (candidates and the track gate's neighbours; identical frames share a
    # file) is detected once: the per-frame costs are over these.
    frames = sum(1 for _ in out.glob("kfs/**/*.jpg"))
    videos = args.per_sample
    print(
        f"per-sample x{args.per_sample}: {counts.get('samples')} samples -> {counts.get('stgr_cot')} CoT, "
        f"{counts.get('stgr_rl')} RL rows, {counts.get('rejects')} rejects; {est.frames} candidate frames, "
        f"{frames} frames stored and detected with the track gate's ({est.decoded_frames} decoded)"
    )
    print(
        f"wall {result['seconds']:.1f} s (child process, incl. start-up); peak RSS {result['peak_kib'] / 1024:.0f} MiB"
    )
    print("step seconds (summed over shards): " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    probe, sample, detect = seconds.get("probe", 0.0), seconds.get("sample", 0.0), seconds.get("detect", 0.0)
    # The build plans before its shards (plan.json), probing every file then; its probe step
    # finds them in the process's probe memo. Probe cost: from stgr plan's run, here.
    probe = max(probe, planning)
    print(
        f"per frame: sample (decode + JPEG) {sample / max(frames, 1) * 1000:.1f} ms, detect "
        f"{detect / max(frames, 1) * 1000:.1f} ms; probe {probe / max(videos, 1) * 1000:.1f} ms per file "
        f"(stgr plan's whole run, {planning:.1f} s)"
    )
    print(
        f"stgr plan's estimate for this build: probe+decode+store {est.decode_seconds:.1f} s (actual "
        f"{probe + sample:.1f} s), detect {est.detect_seconds:.1f} s (actual {detect:.1f} s)"
    )
    scale = sum(RECIPE.values()) / max(counts.get("samples", 1), 1)
    print(
        f"at the rehearsal's 39,070 samples, each with its own media (x{scale:.0f}): probe+decode "
        f"{(probe + sample) * scale / 3600:.2f} h, detect {detect * scale / 3600:.2f} h of thread time here "
        f"(the LLM's: see stgr plan)"
    )


def step_seconds(manifest: dict) -> dict[str, float]:
    seconds: Counter = Counter()
    for stats in manifest["stats"]:
        seconds[stats["step"]] += stats["seconds"]
    return dict(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "full-size")
    parser.add_argument("--videos", type=int, default=40)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--plain", action="store_true", help="pipeline.build in a loop, not the Prefect flow")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the build child here")
    parser.add_argument("--check", action="store_true", help="check every written row against the rules again")
    parser.add_argument(
        "--keep", action="store_true", help="keep an earlier build's output (resume) instead of a fresh one"
    )
    parser.add_argument(
        "--per-sample",
        type=int,
        metavar="N",
        help="instead: N generated videos (and N/5 stills), one sample each, so probe, decode and "
        "detect are paid per sample; prints per-frame costs and stgr plan's estimate beside them",
    )
    args = parser.parse_args()
    if args.per_sample:
        per_sample(args)
        return

    started = time.perf_counter()
    pool = make_pool(args.out / "pool", args.videos, args.images)
    print(
        f"pool: {args.videos} videos, {args.images} stills, "
        f"{sum(1 for _ in pool.open())} calibrated items ({time.perf_counter() - started:.0f} s incl. generation)"
    )
    recipe_dir = args.out / f"recipe-x{args.scale:g}"
    config = write_recipe(args.out / "pool", recipe_dir, args.scale)
    out = recipe_dir / "out"
    if out.exists() and not args.keep:
        import shutil

        shutil.rmtree(out)
    result = run_build_measured(config, out, flow=not args.plain, profile=args.profile)
    manifest = result["manifest"]
    counts = manifest["counts"]
    seconds = step_seconds(manifest)
    model = seconds.get("detect", 0.0)
    rows = counts.get("stgr_cot", 0) + counts.get("stgr_rl", 0)
    print(
        f"recipe x{args.scale:g}: {counts.get('samples')} samples -> {counts.get('stgr_cot')} CoT rows, "
        f"{counts.get('stgr_rl')} RL rows, {counts.get('rejects')} rejects, {len(manifest['shards'])} shard files"
    )
    # The flow runs shards on `workers` threads at once: its detect seconds (summed over shards)
    # overlap in wall time, so the wall time spent in the model is estimated as their sum over
    # the threads; --plain gives it exactly.
    threads = 1 if args.plain else max(1, min(manifest["config"]["sharding"]["workers"], len(manifest["shards"])))
    outside = max(result["seconds"] - model / threads, 1e-9)
    print(
        f"wall {result['seconds']:.1f} s (child process, incl. start-up), model (detector) time {model:.1f} s "
        f"summed over {threads} thread(s)"
    )
    print(
        f"rows/s outside model time: {rows / outside:.0f} (samples/s {counts.get('samples', 0) / outside:.0f}; "
        f"{outside:.1f} s outside the model{' (estimate)' if threads > 1 else ''})"
    )
    print("step seconds (summed over shards): " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    print(
        f"peak RSS: build process {result['peak_kib'] / 1024:.0f} MiB, "
        f"largest child of the bench {result['children_peak_kib'] / 1024:.0f} MiB"
    )
    got, want = rows_per_task(out), expected_rows(args.scale)
    for dataset in ("cot", "rl"):
        total_got, total_want = sum(got[dataset].values()), sum(want[dataset].values())
        print(f"{dataset}: {total_got} rows (recipe {total_want})")
        for task in sorted(set(got[dataset]) | set(want[dataset])):
            g, w = got[dataset][task], want[dataset][task]
            print(f"  {task:32s} {g:6d} {g / max(total_got, 1):6.1%}   recipe {w:6d} {w / max(total_want, 1):6.1%}")
    if args.check:
        started = time.perf_counter()
        checked, bad = check_rows(config, out, args.out / "pool")
        print(
            f"consistency rules, checked again outside the build: {checked} rows, "
            f"{'all pass' if not bad else f'violations: {bad}'} ({time.perf_counter() - started:.0f} s)"
        )
    print(
        "goal: < 600 s and < 2048 MiB at --scale 1: "
        f"{'met' if result['seconds'] < 600 and result['peak_kib'] < 2 * 1024 * 1024 else 'not met'} at this scale"
    )


if __name__ == "__main__":
    main()
