"""`rbee history` and `rbee force-unlock`: the apply lock and the record of applies."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rbee.cli.console import err, out

if TYPE_CHECKING:
    from rbee.clients import QueenClient
    from rbee.config.models import Queen
    from rbee.errors import RbeeError
    from rbee.wire import ApplyRecord

__all__ = [
    "connect",
    "connect_yaml",
    "force_unlock",
    "history",
    "parse_duration",
    "print_error",
    "register",
]


ConfigFile = Annotated[
    Path,
    typer.Option("--file", "-f", envvar="RBEE_CONFIG", help="cluster YAML (env RBEE_CONFIG)"),
]
DEFAULT_CONFIG = Path("cluster.yaml")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PIPE_WIDTH = 1000
_RESULT_STYLE = {"ok": "green", "failed": "red", "interrupted": "yellow", "running": "cyan"}


def parse_duration(text: str | float) -> float:
    """Seconds in `30s`, `2m`, `500ms`, `1h` or a bare number of seconds (for --lock-timeout)."""
    if isinstance(text, int | float):  # the option's default arrives already parsed
        return float(text)
    match = _DURATION.match(text)
    if match is None:
        raise typer.BadParameter(f"{text!r} is not a duration like 30s, 2m or 500ms")
    return float(match[1]) * _UNIT_S[match[2] or "s"]


def print_error(exc: RbeeError) -> None:
    """`exc` as the keeper shows an expected failure: a red line, and its hint dimmed. The
    message is printed as written: it may quote the YAML, where `[/red]` is no markup."""
    from rich.markup import escape

    err.print(f"[red]Error:[/red] {escape(exc.message)}", highlight=False, soft_wrap=True)
    if exc.hint:
        err.print(f"[dim]hint: {escape(exc.hint)}[/dim]", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add `history` and `force-unlock` to the keeper's app (those it has not got yet)."""
    have = {command.name for command in app.registered_commands}
    if "history" not in have:
        app.command("history")(history)
    if "force-unlock" not in have:
        app.command("force-unlock")(force_unlock)


def connect(queen: Queen) -> QueenClient:
    """A client for the queen the keeper reaches; a local queen that is down is started (and
    said so on stderr)."""
    from rbee.cli.local_queen import ensure_queen

    client, started = ensure_queen(queen)
    if started is not None:
        err.print(f"[dim]started local queen (pid {started}) at {queen.url}[/dim]")
    return client


def connect_yaml(file: Path) -> QueenClient:
    """`connect` to the queen of the cluster YAML in `file`."""
    from rbee.config.load import load_cluster

    return connect(load_cluster(file).queen)


def history(
    file: ConfigFile = DEFAULT_CONFIG,
    as_json: Annotated[bool, typer.Option("--json", help="print the entries as JSON")] = False,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=1000, help="how many applies to show")
    ] = 20,
) -> None:
    """Show the last applies, newest first: who ran them, when, the plan and the result."""
    applies = connect_yaml(file).history(limit)
    if as_json:
        sys.stdout.write(json.dumps([a.model_dump(mode="json") for a in applies], indent=2) + "\n")
        return
    if not applies:
        out.print("no applies yet")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("#", "started", "took", "by", "plan", "result", "details"):
        table.add_column(column, overflow="fold")
    for entry in applies:
        table.add_row(
            str(entry.id),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.started_at)),
            "-" if entry.duration_s is None else f"{entry.duration_s:.1f} s",
            entry.holder,
            _counts(entry.summary),
            _result(entry.result),
            _details(entry),
        )
    # Piped output is for grep: one line per apply, however wide, not wrapped at 80 columns.
    (out if out.is_terminal else Console(width=_PIPE_WIDTH)).print(table)


def force_unlock(
    lock_id: Annotated[str, typer.Argument(help="the lock ID, as the lock error names it")],
    file: ConfigFile = DEFAULT_CONFIG,
) -> None:
    """Remove the apply lock left by an apply that died; only the lock with this ID is removed."""
    lock = connect_yaml(file).force_unlock(lock_id)
    out.print(f"Lock {lock.id} removed (it was held by {lock.holder} since {lock.since_text}).")
    if not lock.stale:
        err.print(
            "[yellow]warning:[/yellow] its queen still runs, so that apply may still be running; "
            "a new apply can now start beside it",
            highlight=False,
        )


def _counts(summary: dict[str, int]) -> str:
    if not summary:
        return "-"
    return f"+{summary.get('add', 0)} ~{summary.get('change', 0)} -{summary.get('destroy', 0)}"


def _result(result: str) -> str:
    style = _RESULT_STYLE.get(result, "white")
    return f"[{style}]{result}[/{style}]"


def _details(entry: ApplyRecord) -> str:
    """What failed and why, one line per address; the apply's own error first. A self-heal
    says what set it off and what it did, and why."""
    lines = [entry.error] if entry.error else []
    if entry.kind == "self-heal":
        lines.append(f"trigger: {entry.trigger}")
        lines += [
            f"{address}: {why}"
            for address, why in entry.reasons.items()
            if address not in entry.failed
        ]
    lines += [f"{address}: {cause}" for address, cause in entry.failed.items()]
    if entry.skipped:
        lines.append(f"{len(entry.skipped)} skipped")
    if not lines and entry.result == "ok":
        lines.append(f"{len(entry.done)} actions")
    return "\n".join(lines)
