"""The ``stgr`` command: the only module that prints.

    stgr demo [--out DIR] [--overwrite] | stgr demo --write-config FILE
    stgr build CONFIG.yaml|RECIPE [--out DIR] [--overwrite] [--data-root DIR] [--source NAME=PATH[,MEDIA]] [--scale F]
    stgr plan CONFIG.yaml|RECIPE [--data-root DIR] [--price-in P] [--price-out P] [--json FILE]
    stgr reannotate DIR --where SQL --prompt NAME [--model M] [--out DIR2]
    stgr audit DIR [--brief] [--sql QUERY [--limit N] [--timeout S]] [--compare OLD_DIR] [--gallery OUT.html]
    stgr verify DIR [--fast]
    stgr export open-o3 DIR --to DIR2 [--overwrite]
    stgr serve-llm [--port P] [--latency-ms N] [--fault-rate F] [--rpm N] [--tpm N]

Exit status 0 on success; non-zero with a one-line reason on failure (2: a problem the user
can fix, named in that line). Rejected samples are not a failure: they are rows of ``rejects/``.
``--debug`` (anywhere on the line) shows Prefect's logs and the traceback of a failure.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Annotated, Any, NoReturn, TextIO

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from stgr_builder import stopping
from stgr_builder.errors import StgrError, StgrWarning

#: What ``stgr --help`` tells a user (the module docstring above is for the code's readers).
USER_HELP = """Build grounded chain-of-thought datasets (STGR-CoT, STGR-RL) for video reasoning models.

From video and image QA annotations you already have, stgr samples frames, detects the objects
the questions name, has an annotator (a template, or an LLM) write reasoning tied to key frames,
times and boxes, checks every row, and writes Parquet shards with a manifest. A sample that fails
a check becomes a row of rejects/ with a code saying why.

Start here: `stgr demo` builds a small dataset from generated clips and prints its audit. Then
`stgr build CONFIG.yaml`, `stgr audit DIR` and `stgr reannotate DIR --where SQL --prompt NAME`.

Exit status 0 on success; otherwise one line says why (2: something you can fix). Add --debug
anywhere for the traceback."""

app = typer.Typer(add_completion=False, no_args_is_help=True, help=USER_HELP)
console = Console()
err_console = Console(stderr=True)

DEFAULT_DEMO_OUT = Path("outputs/demo")
DEBUG_FLAG = "--debug"
_debug = False
#: The dataset folder the running command writes (for the line a signal prints), and the
#: progress bar's stop event and thread (stopped before that line).
_writing: list[Path] = []
_bar: list[tuple[threading.Event, threading.Thread]] = []


def _quiet_orchestrator() -> None:
    # No telemetry from an offline build. Prefect logs a failed task or flow at ERROR with its
    # traceback; the contract is one line, so below --debug only CRITICAL gets through (the
    # failure itself still reaches main(), which prints its one line).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if _debug:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
        os.environ.setdefault("YOLO_VERBOSE", "True")
    else:
        os.environ["PREFECT_LOGGING_LEVEL"] = "CRITICAL"
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Dask's own log lines too: a worker reached by a terminal's Ctrl-C logs its cancelled task,
    # and workers outliving a stopped build for a moment log the lost connection (tornado).
    for logger in ("DISTRIBUTED", "TORNADO", "ASYNCIO"):
        os.environ.setdefault(f"DASK_LOGGING__{logger}", "warning" if _debug else "critical")
    # Prefect's temporary server gets 20 s to start; on a busy machine (its first start creates
    # its database) that was not always enough, and the build failed before any work.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # The temporary Prefect server (and Dask workers) must not outlive a killed command.
    from stgr_builder import reaper

    reaper.start()


@app.callback()
def _options(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="show Prefect's logs and the traceback of a failure (anywhere on the command line)"
        ),
    ] = False,
) -> None:
    global _debug
    _debug = _debug or debug


_DataRoot = Annotated[
    Path | None,
    typer.Option(help="folder of the sources: fills ${STGR_DATA} in a recipe (default: the STGR_DATA variable)"),
]
_Sources = Annotated[
    list[str] | None,
    typer.Option("--source", help="NAME=PATH[,MEDIA_ROOT]: one source's annotation file (and media folder)"),
]
_Scale = Annotated[float | None, typer.Option(help="multiply every source's `sample` (rounded up, at least 1)")]
_SkipMissing = Annotated[bool, typer.Option(help="leave out sources whose annotation file is missing")]


def _resolve(config: str, data_root, source, scale, skip_missing):
    """A recipe name or CONFIG.yaml with the flags applied: (config, config_dir, skipped)."""
    from stgr_builder.recipes import parse_source_overrides, resolve_config

    resolved = resolve_config(
        config,
        data_root=data_root,
        sources=parse_source_overrides(source or []),
        scale=scale,
        skip_missing=skip_missing,
    )
    if resolved[2]:
        err_console.print(f"skipped (annotation file missing): {', '.join(resolved[2])}", markup=False)
    return resolved


@app.command()
def build(
    config: Annotated[str, typer.Argument(help="CONFIG.yaml, or a recipe name (stgr-cot-30k, stgr-rl-36k)")],
    out: Annotated[Path | None, typer.Option(help="dataset folder; default outputs/<config name>")] = None,
    data_root: _DataRoot = None,
    source: _Sources = None,
    scale: _Scale = None,
    skip_missing: _SkipMissing = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="build into a folder that holds another build or files a build did not make (none of those "
            "files is deleted unless the folder's records list it)"
        ),
    ] = False,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="batch mode: return once the batches are submitted; run again to collect")
    ] = False,
    keep_unconfirmed_gold: Annotated[
        bool,
        typer.Option(
            "--keep-unconfirmed-gold",
            help="write gold boxes the track gate cannot confirm as evidence anyway (flagged confirmed: false), "
            "for a source you trust (config: gold.keep_unconfirmed)",
        ),
    ] = False,
) -> None:
    """Build the datasets a config (or recipe) describes. Run again on the same --out to resume."""
    from stgr_builder.recipes import is_recipe, write_config

    if is_recipe(config) or data_root or source or scale is not None or skip_missing or keep_unconfirmed_gold:
        resolved, _, _ = _resolve(config, data_root, source, scale, skip_missing)
        if keep_unconfirmed_gold:
            resolved = resolved.model_copy(update={"gold": resolved.gold.model_copy(update={"keep_unconfirmed": True})})
        out = out or Path("outputs") / resolved.name
        path = write_config(resolved, out / "_recipe" / "CONFIG.yaml")
    else:
        from stgr_builder.pipeline import load_config

        path = Path(config)
        out = out or Path("outputs") / load_config(path.resolve()).name
    _run_build(path, out, overwrite=overwrite, wait=not no_wait)
    _print_audit(out, brief=True)


@app.command("plan")
def plan_cmd(
    config: Annotated[str, typer.Argument(help="CONFIG.yaml, or a recipe name (stgr-cot-30k, stgr-rl-36k)")],
    data_root: _DataRoot = None,
    source: _Sources = None,
    scale: _Scale = None,
    skip_missing: _SkipMissing = False,
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

    resolved, config_dir, _ = _resolve(config, data_root, source, scale, skip_missing)
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
    _print_plan(plan)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="dataset folder")] = DEFAULT_DEMO_OUT,
    write_config: Annotated[
        Path | None,
        typer.Option(help="only write the demo's CONFIG.yaml (and its generated media beside it), then stop"),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="build into a folder that holds another build (e.g. a demo of an earlier version)")
    ] = False,
    corrupt_spans: Annotated[
        float, typer.Option(min=0, max=1, help="share of temporal-QA spans to corrupt (shift, stretch, shrink)")
    ] = 0.0,
    corrupt_boxes: Annotated[
        float, typer.Option(min=0, max=1, help="share of gold boxes to corrupt (shift, wrong object)")
    ] = 0.0,
    gold_boxes: Annotated[
        bool, typer.Option(help="give spatio-temporal and visual-QA items gold boxes (implied by --corrupt-boxes)")
    ] = False,
    noise_seed: Annotated[int, typer.Option(help="seed of the corruption")] = 0,
) -> None:
    """Build the embedded demo set end to end, offline. With --corrupt-spans/--corrupt-boxes the
    source's labels are corrupted first; corruptions.json beside truth.json says which."""
    from stgr_builder.sources.demo_config import write_demo_config
    from stgr_builder.sources.demo_noise import DemoNoise

    noise = DemoNoise(span_share=corrupt_spans, box_share=corrupt_boxes, gold_boxes=gold_boxes, seed=noise_seed)
    if write_config is not None:
        path = write_demo_config(write_config, noise=noise)
        console.print(Text(f"wrote {path} (media beside it); build it with: stgr build {path}"))
        return
    config = write_demo_config(out / "_source" / "CONFIG.yaml", noise=noise)
    _run_build(config, out, overwrite=overwrite)
    _print_audit(out, brief=True)


@app.command()
def audit(
    root: Annotated[Path, typer.Argument(help="dataset folder")],
    sql: Annotated[str | None, typer.Option(help="read-only query over the views cot, rl, rejects")] = None,
    compare: Annotated[
        Path | None,
        typer.Option(help="an earlier version to compare with (default: the version's parent, when it has one)"),
    ] = None,
    gallery: Annotated[Path | None, typer.Option(help="write an HTML gallery of sampled rows here")] = None,
    n: Annotated[int, typer.Option(min=1, max=10_000, help="rows in the gallery")] = 24,
    where: Annotated[str | None, typer.Option(help="gallery: only rows this SQL predicate selects")] = None,
    embed: Annotated[bool, typer.Option(help="gallery: embed the images in the page")] = False,
    brief: Annotated[
        bool, typer.Option(help="only what was built, rejects, cost and checks (what `stgr demo` shows)")
    ] = False,
    limit: Annotated[int, typer.Option(min=0, help="--sql: rows shown at most (the rest are counted)")] = 1000,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="--sql: seconds the query may run before it is interrupted")
    ] = 60.0,
) -> None:
    """The canned audit summary (and the comparison with the parent version), any read-only
    query over the shards, or an HTML gallery of sampled rows."""
    from stgr_builder.audit import query

    if gallery is not None:
        from stgr_builder.audit.gallery import write_gallery

        shown = write_gallery(root, gallery, n=n, where=where, embed=embed)
        console.print(Text(f"wrote {gallery} ({shown} rows)"))
        return
    if sql is not None:
        # Ctrl-C during the query: ``stopping`` ends the process with one line and 130.
        _print_query(query(root, sql, limit=limit, timeout_s=timeout))
        return
    _print_audit(root, brief=brief)
    _print_comparison(root, compare)


@app.command()
def reannotate(
    root: Annotated[Path, typer.Argument(help="dataset folder (a finished build or version)")],
    where: Annotated[
        str,
        typer.Option(
            help="SQL predicate over the rows (views cot, rl) or the rejects (id, stage, code, message, source) "
            "selecting what to redo"
        ),
    ],
    prompt: Annotated[str, typer.Option(help="prompt name under prompts/ (or a .yaml path)")],
    model: Annotated[str | None, typer.Option(help="annotator model (LLM prompts)")] = None,
    out: Annotated[Path | None, typer.Option(help="the new version's folder; default DIR-v2, -v3, ...")] = None,
) -> None:
    """Re-annotate the rows or rejected samples a SQL predicate selects; write a new version beside the old one."""
    _quiet_orchestrator()
    from stgr_builder.flows.build import flow_runner
    from stgr_builder.reannotate import reannotate as reannotate_rows

    _writing[:] = [out] if out is not None else []

    target, manifest = reannotate_rows(root, where=where, prompt=prompt, model=model, out=out, runner=flow_runner)
    assert manifest.reannotation is not None  # a re-annotation's manifest records it
    console.print(
        f"[bold green]re-annotated[/] {manifest.reannotation.selected} rows of {escape(str(root))} "
        f"into {escape(str(target))} (build {escape(manifest.build_id)})"
    )
    _print_rejects_fixed(target, manifest)
    if not manifest.complete:
        console.print(f"[bold yellow]{_pending_line(manifest)}[/]", highlight=False)
    _print_comparison(target, None)


def _print_query(table) -> None:
    """A query's rows, then how many rows the cap left out."""
    _print_table("query", table.columns, table.rows)
    if table.left_out:
        more = "at least " if table.left_out_partial else ""
        stopped = " (counting stopped at the timeout)" if table.left_out_partial else ""
        console.print(Text(f"{more}{table.left_out} more rows left out{stopped}: raise --limit, or narrow the query"))


def _print_rejects_fixed(target: Path, manifest) -> None:
    """One line when the selection held rejected samples: how many are rows now."""
    selected = manifest.reannotation.rejects_selected
    if selected:
        from stgr_builder.audit.compare import rejects_fixed

        console.print(
            f"of them {selected} were rejected samples: {rejects_fixed(target)} fixed (now rows)", highlight=False
        )


@app.command("verify")
def verify_cmd(
    root: Annotated[Path, typer.Argument(help="dataset folder")],
    fast: Annotated[bool, typer.Option(help="skip hashing the key-frame JPEGs (only check that they exist)")] = False,
) -> None:
    """Check a dataset folder against its manifest: files, checksums, row counts, key frames
    (each JPEG's bytes against its content-addressed name, unless --fast)."""
    from stgr_builder.shards.check import verify_dataset

    problems = verify_dataset(root, key_frame_content=not fast)
    if problems:
        for problem in problems:
            err_console.print(f"  {problem}", markup=False, highlight=False, soft_wrap=True)
        raise StgrError(f"{root}: {len(problems)} problems (first: {problems[0]})")
    console.print(
        f"[bold green]ok[/] {escape(str(root))} matches its manifest"
        + (" (key-frame contents not checked: --fast)" if fast else "")
    )


export_app = typer.Typer(no_args_is_help=True, help="Write a dataset in another project's layout.")
app.add_typer(export_app, name="export")


@export_app.command("open-o3")
def export_open_o3(
    root: Annotated[Path, typer.Argument(help="dataset folder")],
    to: Annotated[Path, typer.Option(help="target folder (json_data/ and videos/.../kfs/ are written in it)")],
    overwrite: Annotated[
        bool,
        typer.Option(
            help="export into a folder holding another export or other files (replaces only files an export wrote)"
        ),
    ] = False,
) -> None:
    """The released Open-o3 Video training code's JSON files and key-frame layout; refuses a
    non-empty folder it did not write."""
    from stgr_builder.shards.export import export_open_o3 as run

    written = run(root, to, overwrite=overwrite)
    console.print(Text(f"wrote {to}: " + ", ".join(f"{name} {count} rows" for name, count in written.items())))


@app.command("serve-llm")
def serve_llm(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port (0: any free port)")] = 8088,
    latency_ms: Annotated[float, typer.Option(help="milliseconds from a request's arrival to its reply")] = 0.0,
    fault_rate: Annotated[float, typer.Option(help="share of requests answered with a fault")] = 0.0,
    faults: Annotated[
        str, typer.Option(help="fault kinds: 429,500,timeout,malformed,schema,truncated,dropped,html,huge,hang")
    ] = "429,500,timeout,malformed,schema,truncated,dropped,html,huge,hang",
    seed: Annotated[int, typer.Option(help="seed of the fault draws")] = 0,
    retry_after: Annotated[float, typer.Option(help="seconds in the Retry-After of a 429")] = 0.1,
    hang_s: Annotated[
        float,
        typer.Option(help="seconds a 'timeout' fault waits before replying, and a 'hang' before closing unanswered"),
    ] = 30.0,
    crop_deny: Annotated[str, typer.Option(help="labels the crop check answers 'no' for, comma-separated")] = "",
    rpm: Annotated[
        float | None,
        typer.Option(
            help="requests per minute; past them a 429 with Retry-After (and x-ratelimit-* headers on every reply)"
        ),
    ] = None,
    tpm: Annotated[float | None, typer.Option(help="tokens per minute (prompt tokens + max_tokens), likewise")] = None,
    batch_delay: Annotated[float, typer.Option(help="seconds before a submitted batch is answered (Batch API)")] = 0.2,
    policy: Annotated[
        str, typer.Option(help="oracle: always right; noisy: a VLM's mistakes at seeded rates (see --mistake-rate)")
    ] = "oracle",
    mistake_rate: Annotated[
        float, typer.Option(help="noisy: the rate of each mistake kind (fence, wrong_object, prose_time, ...)")
    ] = 0.15,
    mistakes: Annotated[
        str, typer.Option(help="noisy: per-kind rates overriding --mistake-rate, e.g. 'fence=0.3,length=0'")
    ] = "",
    fix_rate: Annotated[float, typer.Option(help="noisy: chance a re-ask that names a slip fixes it")] = 0.6,
    refuse_json_schema: Annotated[
        bool, typer.Option(help="noisy: answer response_format json_schema with a 400")
    ] = True,
    list_batches: Annotated[
        bool, typer.Option(help="answer GET /v1/batches (--no-list-batches: 404, as some providers do)")
    ] = True,
) -> None:
    """A local OpenAI-compatible server with a deterministic policy, for dry runs and tests."""
    from stgr_builder.dryrun.noisy import MISTAKE_KINDS, options_from
    from stgr_builder.dryrun.server import DryRunServer

    kinds = [k.strip() for k in faults.split(",") if k.strip()]
    try:
        rates = dict.fromkeys(MISTAKE_KINDS, mistake_rate)
        for item in (part.strip() for part in mistakes.split(",") if part.strip()):
            kind, _, rate = item.partition("=")
            rates[kind.strip()] = float(rate)
        noisy = options_from(rates, fix_rate=fix_rate, seed=seed, refuse_json_schema=refuse_json_schema)
        server = DryRunServer(
            policy=policy,
            noisy=noisy,
            host=host,
            port=port,
            latency_ms=latency_ms,
            fault_rate=fault_rate,
            faults=kinds,
            seed=seed,
            retry_after_s=retry_after,
            hang_s=hang_s,
            crop_deny=[d.strip() for d in crop_deny.split(",") if d.strip()],
            rpm=rpm,
            tpm=tpm,
            batch_delay_s=batch_delay,
            list_batches=list_batches,
        )
    except (ValueError, OSError) as exc:
        raise StgrError(f"serve-llm: {exc}") from exc
    console.print(
        f"listening on {server.base_url}  (export OPENAI_BASE_URL={server.base_url} "
        f"OPENAI_API_KEY=anything; GET /stats counts requests)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


@app.command(hidden=True)
def schemas(write: Annotated[bool, typer.Option(help="rewrite schemas/ from the models")] = False) -> None:
    """Check (or rewrite) the JSON Schemas under schemas/."""
    from stgr_builder.core.data import data_folder
    from stgr_builder.models import json_schemas

    folder = data_folder("stgr_builder.schemas")
    stale = []
    for name, text in json_schemas().items():
        path = folder / f"{name}.json"
        if not path.is_file() or path.read_text() != text:
            stale.append(name)
            if write:
                path.write_text(text)
    if stale and not write:
        raise StgrError(f"stale schemas: {', '.join(stale)} (run stgr schemas --write)")
    console.print(f"schemas: {len(stale)} rewritten" if write else "schemas are current", markup=False)


@app.command(hidden=True)
def docs(
    write: Annotated[bool, typer.Option(help="rewrite the generated pages under docs/reference/")] = False,
) -> None:
    """Check (or rewrite) the reference pages generated from the code (config keys, reject codes)."""
    from stgr_builder.reference import reference_pages

    root = Path(__file__).resolve().parents[1]
    stale = []
    for rel, text in reference_pages().items():
        path = root / rel
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(rel)
            if write:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    if stale and not write:
        raise StgrError(f"stale reference pages: {', '.join(stale)} (run stgr docs --write)")
    console.print(f"reference pages: {len(stale)} rewritten" if write else "reference pages are current", markup=False)


def _run_build(config: Path, out: Path, overwrite: bool = False, wait: bool = True) -> None:
    _quiet_orchestrator()
    from stgr_builder.flows.build import flow_runner
    from stgr_builder.pipeline import build as build_dataset

    stop = threading.Event()
    watcher = threading.Thread(target=_watch_progress, args=(out, stop), daemon=True)
    _writing[:] = [out]
    _bar[:] = [(stop, watcher)]
    watcher.start()
    try:
        manifest = build_dataset(config, out, overwrite=overwrite, wait=wait, runner=flow_runner)
    except OSError as exc:
        if exc.filename is None:  # ENOSPC from a write says nothing of where: the dataset folder
            exc.filename = str(out)
        raise
    finally:
        stop.set()
        watcher.join()
    counts = ", ".join(f"{name} {count}" for name, count in manifest.counts.items())
    console.print(f"[bold green]built[/] {escape(str(out))} ({escape(counts)})")
    if not manifest.complete:
        # Not a failure: run the same command again to finish (received replies are cached).
        console.print(f"[bold yellow]{_pending_line(manifest)}[/]", highlight=False)
        _print_pending_batches(out)


def _print_pending_batches(out: Path) -> None:
    """Batch mode: ``N requests in K batches pending; run again to collect``."""
    from stgr_builder.annotate import pending_batches

    requests, batches = pending_batches(out)
    if batches:
        console.print(f"{requests} requests in {batches} batches pending; run again to collect", highlight=False)


def _pending_line(manifest) -> str:
    """``12 samples left for the next run (budget reached)`` or ``(pending: server_error 2,
    timeout 1; run the build again)``."""
    reasons = dict(manifest.pending_reasons)
    if not reasons or set(reasons) == {"budget"}:
        return f"{manifest.pending} samples left for the next run (budget reached)"
    listed = ", ".join(f"{reason} {count}" for reason, count in reasons.items())
    return f"{manifest.pending} samples left for the next run (pending: {listed}; run the build again)"


def _watch_progress(out: Path, stop: threading.Event) -> None:
    """Count finished shard records while the flow runs (the flow itself stays print-free)."""
    from stgr_builder.annotate import batch_progress
    from stgr_builder.shards.writer import progress

    # The bar appears once the build is planned: a command that fails before (a config error)
    # prints its one line and nothing else.
    while progress(out)[1] is None:
        if stop.wait(0.5):
            return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task("shards", total=None)
        batches = None
        while not stop.wait(0.5):
            done, total = progress(out)
            bar.update(task, completed=done, total=total)
            answered, submitted = batch_progress(out)  # batch mode: requests answered in the batches
            if submitted:
                if batches is None:
                    batches = bar.add_task("batch requests", total=submitted)
                bar.update(batches, completed=answered, total=submitted)


def _print_plan(plan) -> None:
    _print_table(
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
    _print_table(
        "Plan: rows per dataset, source and task",
        ["dataset", "source", "task", "rows"],
        [(c.dataset.value, c.source, c.task.value, c.rows) for c in plan.counts]
        + [
            (d.value, "(all)", "(all)", plan.rows(d))
            for d in sorted({c.dataset for c in plan.counts}, key=lambda d: d.value)
        ],
    )
    e = plan.estimate
    _print_table(
        "Plan: estimate",
        ["key", "value"],
        [
            ("annotator backend", e.backend),
            ("LLM requests", e.requests),
            ("judge requests (crops)", e.crop_requests),
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
                f"{e.detect_seconds / 3600:.2f} core-hours on the CPU ({e.detector_frames} frames through the "
                f"detector, padding included; {e.assumptions.get('detect_s_per_frame_cpu')} s per frame and "
                f"{e.assumptions.get('detect_startup_s')} s start-up; a GPU takes a fraction)",
            ),
            (
                "span check",
                f"{e.span_checks} inherited spans read by the detector ({e.span_probe_frames} probe frames, "
                f"in the decode and detect time above; no LLM request)",
            ),
            ("assumptions", f"text {e.assumptions.get('text_tokens')}; image {e.assumptions.get('image_tokens')}"),
        ],
    )
    _print_table(
        "Plan: media (referenced files found under media_root; missing ones by upstream dataset)",
        ["source", "referenced", "resolved", "upstream", "missing", "examples", "get them from"],
        [(s.source, s.media_referenced, s.media_resolved, "", 0, "", "") for s in plan.sources if not s.missing_media]
        + [
            (s.source, s.media_referenced, s.media_resolved, m.upstream, m.files, ", ".join(m.examples), m.get or "?")
            for s in plan.sources
            for m in s.missing_media
        ],
    )


#: The tables of the brief audit (``stgr demo``, ``stgr audit --brief``): what was built, what
#: was lost and why, what it cost, whether it holds together. The rest waits for ``stgr audit``.
_BRIEF_TABLES = (
    "Rows by task and source",
    "Rejects by stage and code",
    "Reject examples",
    "Evidence against truth",
    "LLM cost",
    "Annotation checks",
    "Checks",
)


def _print_audit(root: Path, *, brief: bool = False) -> None:
    """The audit's tables, leaving out those with no rows (nothing to say); ``brief``: only
    ``_BRIEF_TABLES``, the checks in one line when they all pass, and how to see the rest."""
    from stgr_builder.audit import summary
    from stgr_builder.audit.compare import distributions

    tables = summary(root) if brief else summary(root) + distributions(root)
    for table in tables:
        if not table.rows or (brief and table.title.split(" (")[0] not in _BRIEF_TABLES):
            continue
        if brief and table.title == "Checks" and all(row[-1] is True for row in table.rows):
            console.print(Text(f"Checks: all {len(table.rows)} pass (ids, boxes, key frames, counts, files)"))
            continue
        _print_table(table.title, table.columns, table.rows)
    if brief:
        console.print(Text(f"Every table (provenance, key frames, traces, distributions): stgr audit {root}"))


def _print_comparison(root: Path, old: Path | None) -> None:
    """The version comparison: with ``old``, or with the version's parent when it has one."""
    from stgr_builder.audit.compare import compare
    from stgr_builder.core.layout import load_manifest

    if old is None:
        try:
            if load_manifest(root).parent is None:
                return
        except StgrError:
            return
    for table in compare(root, old):
        _print_table(table.title, table.columns, table.rows)


#: A column is "readable" at this many characters; a table whose columns cannot all have
#: that much (or their whole content, when shorter) is folded into key/value rows.
_READABLE = 32


def _cell(value) -> str:
    return "" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _print_table(title: str, columns: list[str], rows: list, width: int | None = None) -> None:
    """A table, every value shown literally (``Text``, never rich markup); folded into one
    key/value block per row when it is too wide for the terminal."""
    cells = [[_cell(value) for value in row] for row in rows]
    heads = [str(column) for column in columns]
    natural = [
        max([len(head)] + [max((len(line) for line in row[i].splitlines()), default=0) for row in cells])
        for i, head in enumerate(heads)
    ]
    needed = sum(min(n, _READABLE) for n in natural) + 3 * len(heads) + 1  # borders and padding
    if len(heads) > 2 and needed > (width or console.width):
        console.print(Text(f"{title} (one block per row)", style="italic"))
        table = Table(show_header=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for number, row in enumerate(cells):
            for i, (head, value) in enumerate(zip(heads, row, strict=False)):
                table.add_row(Text(head), Text(value), end_section=i == len(heads) - 1 and number < len(cells) - 1)
        console.print(table)
        return
    table = Table(title=Text(title), title_justify="left")
    for head in heads:
        table.add_column(Text(head), overflow="fold")
    for row in cells:
        table.add_row(*(Text(value) for value in row))
    console.print(table)


#: errno -> what the user should do about it, for file-system failures of a command.
_OS_FIXES = {
    errno.ENOSPC: "free space there, or choose another --out; run the same command again to resume",
    errno.EDQUOT: "raise the quota or free space, or choose another --out; run the same command again to resume",
    errno.EROFS: "choose another --out",
    errno.EACCES: "no permission to write there: choose another --out, or fix the folder's permissions",
    errno.EPERM: "no permission to write there: choose another --out, or fix the folder's permissions",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) or lower sharding.workers",
}


def _os_error_line(exc: OSError) -> str:
    """Every file-system failure of a command: what, where, and what to do (one line)."""
    where = f" ({exc.filename})" if exc.filename else ""
    reason = os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc) or type(exc).__name__)
    fix = _OS_FIXES.get(exc.errno or 0, "check the path and its permissions, or choose another location")
    return f"{reason}{where}: {fix}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _stopped_line(signum: int) -> str:
    """The one line a signal prints: what finished, what is pending, and to run again."""
    name = signal.Signals(signum).name
    if not _writing:
        return f"stopped by {name}"
    from stgr_builder.annotate import pending_batches
    from stgr_builder.shards.writer import progress

    out = _writing[0]
    done, total = progress(out)
    if total is None:
        finished = "before the build was planned (nothing built yet)"
    else:
        finished = f"{done} of {total} shards finished, {total - done} pending"
    requests, batches = pending_batches(out)
    if batches:
        finished += f" ({requests} requests in {batches} submitted batches, kept to collect)"
    return f"stopped by {name}: {out}: {finished}; run again to resume"


def _on_signal(signum: int) -> None:
    """On the stopping thread: take the progress bar down, print the one line."""
    for stop, watcher in _bar:
        stop.set()
        watcher.join(1.0)
    try:
        line = _stopped_line(signum)
    except Exception:  # noqa: BLE001 - the folder half-written: the line without the counts
        line = f"stopped by {signal.Signals(signum).name}; run again to resume"
    err_console.print(line, markup=False, highlight=False, soft_wrap=True)


def _wait_if_stopping() -> None:
    """A signal is ending the process (``stopping``): its thread prints and exits; the main
    thread, whose work the signal broke, says nothing of its own."""
    if stopping.received() is not None:
        while True:
            time.sleep(1.0)


def _fail(message: str, code: int) -> NoReturn:
    _wait_if_stopping()
    err_console.print(f"error: {_one_line(message)}", markup=False, highlight=False, soft_wrap=True)
    if _debug:
        import traceback

        traceback.print_exc()
    sys.exit(code)


#: Warnings printed in full; past them one line says that more were not shown.
_MAX_WARNINGS = 20
_warned = [0]
_show_other_warning = warnings.showwarning


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """A ``StgrWarning`` as one line ``warning: ...`` (the first ``_MAX_WARNINGS``); others as Python shows them."""
    if not issubclass(category, StgrWarning):
        _show_other_warning(message, category, filename, lineno, file, line)
        return
    _warned[0] += 1
    if _warned[0] <= _MAX_WARNINGS:
        err_console.print(f"warning: {_one_line(str(message))}", markup=False, highlight=False, soft_wrap=True)
    elif _warned[0] == _MAX_WARNINGS + 1:
        err_console.print("warning: more warnings like these are not shown", markup=False, highlight=False)


def _take_debug(argv: list[str]) -> list[str]:
    """Remove ``--debug`` from anywhere on the command line (after ``--``, it is a value)."""
    global _debug
    head, sep, tail = (
        (argv[: argv.index("--")], ["--"], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [], [])
    )
    _debug = DEBUG_FLAG in head
    return [arg for arg in head if arg != DEBUG_FLAG] + sep + tail


def main() -> None:
    args = _take_debug(sys.argv[1:])
    stopping.install(_on_signal)
    warnings.showwarning = _show_warning
    try:
        app(args=args, prog_name="stgr", standalone_mode=False)
        _wait_if_stopping()
    except StgrError as exc:
        _fail(str(exc), 2)
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted", 130)
    except typer.Exit as exc:
        _wait_if_stopping()
        sys.exit(exc.exit_code)
    except MemoryError:
        _fail("out of memory: lower sharding.workers, detector.batch or detector.imgsz", 2)
    except OSError as exc:
        _fail(_os_error_line(exc), 2)
    except Exception as exc:  # noqa: BLE001 - the contract is a one-line reason, not a traceback
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        _fail(f"{type(exc).__name__}: {exc} (run again with --debug for the traceback)", 1)


if __name__ == "__main__":
    main()
