"""The ``stgr`` command: the only package that prints.

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

The modules: ``app`` (the Typer app, consoles, the running command's state), one module per
group of commands (``build``, ``plan``, ``dataset``, ``serve``, ``docs``), ``output`` (tables
and the audit) and ``entry`` (``main``: failures, signals and warnings as one line). The
commands are registered here, in the order ``stgr --help`` lists them.
"""

from __future__ import annotations

from stgr_builder.cli import build, dataset, docs, plan, serve
from stgr_builder.cli.app import app
from stgr_builder.cli.entry import main

app.command()(build.build)
app.command("plan")(plan.plan_cmd)
app.command()(build.demo)
app.command()(dataset.audit)
app.command()(dataset.reannotate)
app.command("verify")(dataset.verify_cmd)
app.add_typer(dataset.export_app, name="export")
dataset.export_app.command("open-o3")(dataset.export_open_o3)
app.command("serve-llm")(serve.serve_llm)
app.command(hidden=True)(docs.schemas)
app.command(hidden=True)(docs.docs)

__all__ = ["app", "main"]
