"""`rbee`: the keeper CLI's root. It makes the typer app, adds every command and group from
the module of its topic, and turns an expected failure into one red line and an exit code.

Each command imports what it uses when it runs, so `rbee --help` and `rbee validate` start
without the HTTP client, the wire models or the plan renderer.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from rbee.cli import applies
from rbee.cli.console import err, print_error
from rbee.cli.hive import hive_app
from rbee.cli.infer import infer
from rbee.cli.init import init
from rbee.cli.jobs import job_app
from rbee.cli.keys import key_app
from rbee.cli.logs import logs_app
from rbee.cli.plans import graph, plan, show
from rbee.cli.queen import down, queen_app
from rbee.cli.status import status
from rbee.cli.workers import worker_app
from rbee.cli.yaml_file import fmt, schema, validate
from rbee.errors import RbeeError

__all__ = ["app", "main"]

app = typer.Typer(
    name="rbee",
    help="Declarative reconciler for a self-hosted LLM inference cluster.\n\n"
    "Keep the cluster in one YAML file; `rbee plan` shows what would change, "
    "`rbee apply` makes it so.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Plain help: rich's help boxes cost 70 ms of imports on every run.
    rich_markup_mode=None,
)
# `rbee --help` lists the commands in this order, then the groups.
for command in (
    init,
    validate,
    fmt,
    schema,
    plan,
    show,
    graph,
    applies.apply,
    status,
    infer,
    down,
):
    app.command()(command)
applies.register(app)  # history, force-unlock
app.add_typer(queen_app, name="queen")
app.add_typer(hive_app, name="hive")
app.add_typer(worker_app, name="worker")
app.add_typer(key_app, name="key")
app.add_typer(job_app, name="job")
app.add_typer(logs_app, name="logs")


_debug = False


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks on errors")] = False,
) -> None:
    global _debug
    _debug = debug


def main() -> None:
    """Entry point of `rbee`: expected failures print one red line, no traceback."""
    try:
        app()
    except RbeeError as exc:
        if _debug or os.environ.get("RBEE_DEBUG"):
            raise
        print_error(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
