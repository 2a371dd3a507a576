"""The commands that build: ``stgr build`` (a config or a recipe) and ``stgr demo``, with the progress bar."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from stgr_builder.cli.app import console, err_console, quiet_orchestrator, session
from stgr_builder.cli.output import pending_line, print_audit, print_pending_batches

DEFAULT_DEMO_OUT = "outputs/demo"


DataRoot = Annotated[
    Path | None,
    typer.Option(help="folder of the sources: fills ${STGR_DATA} in a recipe (default: the STGR_DATA variable)"),
]
Sources = Annotated[
    list[str] | None,
    typer.Option("--source", help="NAME=PATH[,MEDIA_ROOT]: one source's annotation file (and media folder)"),
]
Scale = Annotated[float | None, typer.Option(help="multiply every source's `sample` (rounded up, at least 1)")]
SkipMissing = Annotated[bool, typer.Option(help="leave out sources whose annotation file is missing")]


def resolve(config: str, data_root, source, scale, skip_missing):
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


def build(
    config: Annotated[str, typer.Argument(help="CONFIG.yaml, or a recipe name (stgr-cot-30k, stgr-rl-36k)")],
    out: Annotated[
        str | None,
        typer.Option(help="dataset folder or bucket URL (s3://, gs://, az://); default outputs/<config name>"),
    ] = None,
    data_root: DataRoot = None,
    source: Sources = None,
    scale: Scale = None,
    skip_missing: SkipMissing = False,
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
    from stgr_builder.storage import beside, local_folder

    if is_recipe(config) or data_root or source or scale is not None or skip_missing or keep_unconfirmed_gold:
        resolved, _, _ = resolve(config, data_root, source, scale, skip_missing)
        if keep_unconfirmed_gold:
            resolved = resolved.model_copy(update={"gold": resolved.gold.model_copy(update={"keep_unconfirmed": True})})
        out = out or str(Path("outputs") / resolved.name)
        path = write_config(resolved, beside(out, "_recipe") / "CONFIG.yaml")
    else:
        from stgr_builder.pipeline import load_config

        path = Path(config)
        out = out or str(Path("outputs") / load_config(path.resolve()).name)
    _run_build(path, out, overwrite=overwrite, wait=not no_wait)
    print_audit(local_folder(out), brief=True, name=out)


def demo(
    out: Annotated[str, typer.Option(help="dataset folder or bucket URL (s3://, gs://, az://)")] = DEFAULT_DEMO_OUT,
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
    event_spans: Annotated[
        bool,
        typer.Option(
            help="add an event question per video object (checked by a judge with span_check.events: judge "
            "and the openai backend; unchecked otherwise)"
        ),
    ] = False,
) -> None:
    """Build the embedded demo set end to end, offline. With --corrupt-spans/--corrupt-boxes the
    source's labels are corrupted first; corruptions.json beside truth.json says which."""
    from stgr_builder.dryrun.demo import DemoNoise, write_demo_config
    from stgr_builder.storage import beside, local_folder

    noise = DemoNoise(span_share=corrupt_spans, box_share=corrupt_boxes, gold_boxes=gold_boxes, seed=noise_seed)
    if write_config is not None:
        path = write_demo_config(write_config, noise=noise, event_spans=event_spans)
        console.print(Text(f"wrote {path} (media beside it); build it with: stgr build {path}"))
        return
    config = write_demo_config(beside(out, "_source") / "CONFIG.yaml", noise=noise, event_spans=event_spans)
    _run_build(config, out, overwrite=overwrite)
    print_audit(local_folder(out), brief=True, name=out)


def _run_build(config: Path, out: str, overwrite: bool = False, wait: bool = True) -> None:
    """Build ``config`` into ``out`` (a folder, or a URL: built on its staging copy, the
    progress bar counting the copy's records) with the progress bar."""
    quiet_orchestrator()
    from stgr_builder.flows.build import flow_runner
    from stgr_builder.pipeline import build as build_dataset
    from stgr_builder.storage import is_url, local_folder

    folder = local_folder(out)
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_progress, args=(folder, stop), daemon=True)
    session.writing[:] = [folder]
    session.bar[:] = [(stop, watcher)]
    watcher.start()
    try:
        target = out if is_url(out) else Path(out)
        manifest = build_dataset(config, target, overwrite=overwrite, wait=wait, runner=flow_runner)
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
        console.print(f"[bold yellow]{pending_line(manifest)}[/]", highlight=False)
        print_pending_batches(folder)


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
