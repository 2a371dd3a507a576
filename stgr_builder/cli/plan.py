"""``stgr plan``: what a build would do, printed as tables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from stgr_builder.cli.build import DataRoot, Scale, SkipMissing, Sources, resolve
from stgr_builder.cli.output import print_table


def plan_cmd(
    config: Annotated[str, typer.Argument(help="CONFIG.yaml, or a recipe name (stgr-cot-30k, stgr-rl-36k)")],
    data_root: DataRoot = None,
    source: Sources = None,
    scale: Scale = None,
    skip_missing: SkipMissing = False,
    price_in: Annotated[float | None, typer.Option(help="price per million prompt tokens")] = None,
    price_out: Annotated[float | None, typer.Option(help="price per million completion tokens")] = None,
    latency: Annotated[float | None, typer.Option(help="seconds per LLM request")] = None,
    concurrency: Annotated[int | None, typer.Option(help="LLM requests in flight per shard task")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the plan as JSON here")] = None,
    batch_discount: Annotated[
        float | None,
        typer.Option(help="estimate at batch prices: the share of the price a batch request costs (0.5: half)"),
    ] = None,
) -> None:
    """What a build would do, without calling any model or writing a dataset: rows per
    source and task, what is filtered and why, missing media, and the LLM work's estimate."""
    from stgr_builder.planning import make_plan

    resolved, config_dir, _ = resolve(config, data_root, source, scale, skip_missing)
    est = {
        k: v
        for k, v in (
            ("price_in", price_in),
            ("price_out", price_out),
            ("latency_s", latency),
            ("batch_discount", batch_discount),
        )
        if v is not None
    }
    updates = {"estimate": resolved.estimate.model_copy(update=est)}
    annotator: dict[str, Any] = {"concurrency": concurrency} if concurrency is not None else {}
    if batch_discount is not None:
        annotator["mode"] = "batch"
    if annotator:
        updates["annotator"] = resolved.annotator.model_copy(update=annotator)
    resolved = resolved.model_copy(update=updates)
    plan = make_plan(resolved, config_dir)
    if json_out is not None:
        json_out.write_text(plan.model_dump_json(indent=2))
    print_plan(plan)


def print_plan(plan) -> None:
    print_table(
        f"Plan {plan.name}: sources",
        [
            "source",
            "adapter",
            "read",
            "ingest rejects",
            "probed",
            "filtered",
            "media missing",
            "wanted",
            "rows",
            "shortfall",
        ],
        [
            (
                s.source,
                s.adapter,
                s.read,
                s.ingest_rejects,
                s.probed,
                ", ".join(f"{code} {n}" for code, n in s.filtered.items()),
                s.media_missing,
                s.wanted,
                s.rows,
                s.shortfall,
            )
            for s in plan.sources
        ],
    )
    print_table(
        "Plan: rows per dataset, source and task",
        ["dataset", "source", "task", "rows"],
        [(c.dataset.value, c.source, c.task.value, c.rows) for c in plan.counts]
        + [
            (d.value, "(all)", "(all)", plan.rows(d))
            for d in sorted({c.dataset for c in plan.counts}, key=lambda d: d.value)
        ],
    )
    e = plan.estimate
    print_table(
        "Plan: estimate",
        ["key", "value"],
        [
            ("annotator backend", e.backend),
            ("LLM requests", e.requests),
            ("judge requests (crops)", e.crop_requests),
            ("judge requests (event spans)", e.event_judge_requests),
            ("candidate frames", e.frames),
            ("images sent", e.images),
            ("pixels sent", e.pixels),
            ("prompt tokens", e.prompt_tokens),
            ("completion tokens", e.completion_tokens),
            ("cost", f"{e.cost:.2f} (at {e.assumptions.get('price_in')} / {e.assumptions.get('price_out')} per M)"),
            (
                "time",
                f"{e.seconds:.0f} s = {e.seconds / 3600:.2f} h (at {e.assumptions.get('concurrency')} in flight, "
                f"{e.assumptions.get('latency_s')} s each)",
            ),
            (
                "decode",
                f"{e.decode_seconds / 3600:.2f} core-hours ({e.decoded_frames} frames decoded; probe, decode, "
                f"store key frames)",
            ),
            (
                "detect",
                f"{e.detect_seconds / 3600:.2f} core-hours as {e.assumptions.get('detect_setting')} "
                f"({e.detector_frames} frames through the detector, padding included; "
                f"{e.assumptions.get('detect_s_per_frame')} s per frame, {e.assumptions.get('detect_constant')}; "
                f"{e.assumptions.get('detect_startup_s')} s start-up)",
            ),
            (
                "detect, by setting",
                "; ".join(f"{k} {h:.3g} h" for k, h in e.assumptions.get("detect_hours_by_setting", {}).items()),
            ),
            (
                "span check",
                f"{e.span_checks} inherited spans checked ({e.span_probe_frames} probe frames, in the decode and "
                f"detect time above; the event spans' judge requests are in the row above)",
            ),
            ("assumptions", f"text {e.assumptions.get('text_tokens')}; image {e.assumptions.get('image_tokens')}"),
        ],
    )
    print_table(
        "Plan: media (referenced files found under media_root; missing ones by upstream dataset)",
        ["source", "referenced", "resolved", "upstream", "missing", "examples", "get them from"],
        [(s.source, s.media_referenced, s.media_resolved, "", 0, "", "") for s in plan.sources if not s.missing_media]
        + [
            (s.source, s.media_referenced, s.media_resolved, m.upstream, m.files, ", ".join(m.examples), m.get or "?")
            for s in plan.sources
            for m in s.missing_media
        ],
    )
