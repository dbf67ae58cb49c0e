"""`rbee logs queen | hive NAME | worker ID`: logs fetched through the queen, from local and
network hives alike (the keeper never opens SSH)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import typer

from rbee.cli.options import DEFAULT_CONFIG, parse_duration
from rbee.cli.reach import client_for_yaml
from rbee.errors import UnavailableError

__all__ = ["logs_app"]

logs_app = typer.Typer(
    help="Logs of the queen, a hive or a worker, fetched through the queen. Here -f is "
    "--follow, as in `tail -f`: name the cluster YAML with --file (or RBEE_CONFIG).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

_DEFAULT_LINES = 50

File = Annotated[
    Path, typer.Option("--file", envvar="RBEE_CONFIG", help="cluster YAML (env RBEE_CONFIG)")
]
Follow = Annotated[
    bool, typer.Option("--follow", "-f", help="then print new lines as they come, until Ctrl-C")
]
Since = Annotated[
    float | None,
    typer.Option(
        "--since",
        parser=parse_duration,
        metavar="DURATION",
        help="only what was logged within this long (30s, 10m, 2h)",
    ),
]
Lines = Annotated[
    int | None,
    typer.Option(
        "--lines",
        "-n",
        min=1,
        help=f"the last N lines (default {_DEFAULT_LINES}; with --since, all of them)",
    ),
]


@logs_app.command("queen")
def queen(
    file: File = DEFAULT_CONFIG, follow: Follow = False, since: Since = None, lines: Lines = None
) -> None:
    """The queen's log."""
    try:
        _show(file, "/v1/logs/queen", follow, since, lines)
    except UnavailableError as exc:
        from rbee.cli.local_queen import queen_log
        from rbee.cli.reach import QUEEN_URL_ENV, is_local
        from rbee.config.load import load_cluster

        if os.environ.get(QUEEN_URL_ENV) or not is_local(load_cluster(file).queen):
            raise
        hint = f"the queen is down; its log on this machine is {queen_log()}"
        raise UnavailableError(exc.message, hint=hint) from None


@logs_app.command("hive")
def hive(
    name: Annotated[str, typer.Argument(help="the hive's name, as the YAML has it")],
    file: File = DEFAULT_CONFIG,
    follow: Follow = False,
    since: Since = None,
    lines: Lines = None,
) -> None:
    """A hive's own log, from its machine (its log file, or its systemd unit's journal)."""
    _show(file, f"/v1/logs/hives/{quote(name, safe='')}", follow, since, lines)


@logs_app.command("worker")
def worker(
    worker_id: Annotated[
        str, typer.Argument(help="the worker's id, as `rbee status` lists it (HIVE.MODEL.N)")
    ],
    file: File = DEFAULT_CONFIG,
    follow: Follow = False,
    since: Since = None,
    lines: Lines = None,
) -> None:
    """A worker's log, from its hive; the log of a worker that died is kept there too."""
    _show(file, f"/v1/logs/workers/{quote(worker_id, safe='')}", follow, since, lines)


def _show(file: Path, path: str, follow: bool, since: float | None, lines: int | None) -> None:
    """Print the log at the queen's `path`; with `follow`, until Ctrl-C (which ends it, exit 0)."""
    from rbee.wire.logs import MAX_LINES, LogQuery

    wanted = lines or (MAX_LINES if since is not None else _DEFAULT_LINES)
    try:
        query = LogQuery.parse({"lines": wanted, "since": since, "follow": follow})
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    client = client_for_yaml(file)
    try:
        for text in client.logs(path, query):
            sys.stdout.write(text)
            sys.stdout.flush()
    except KeyboardInterrupt:
        if not follow:
            raise
