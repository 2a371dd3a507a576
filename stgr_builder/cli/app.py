"""The Typer application, its consoles and what one command's run holds (shared by the commands)."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

#: What ``stgr --help`` tells a user (the package docstring is for the code's readers).
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

DEBUG_FLAG = "--debug"


@dataclass
class Session:
    """What the running command holds for the handlers of signals and failures."""

    #: --debug was given (Prefect's logs and a failure's traceback are shown)
    debug: bool = False
    #: The dataset folder the running command writes (for the line a signal prints).
    writing: list[Path] = field(default_factory=list)
    #: The progress bar's stop event and thread (stopped before that line).
    bar: list[tuple[threading.Event, threading.Thread]] = field(default_factory=list)


session = Session()


def quiet_orchestrator() -> None:
    # No telemetry from an offline build. Prefect logs a failed task or flow at ERROR with its
    # traceback; the contract is one line, so below --debug only CRITICAL gets through (the
    # failure itself still reaches main(), which prints its one line).
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if session.debug:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
        os.environ.setdefault("YOLO_VERBOSE", "True")
    else:
        os.environ["PREFECT_LOGGING_LEVEL"] = "CRITICAL"
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Dask's own log lines too: a worker reached by a terminal's Ctrl-C logs its cancelled task,
    # and workers outliving a stopped build for a moment log the lost connection (tornado).
    for logger in ("DISTRIBUTED", "TORNADO", "ASYNCIO"):
        os.environ.setdefault(f"DASK_LOGGING__{logger}", "warning" if session.debug else "critical")
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
    session.debug = session.debug or debug
