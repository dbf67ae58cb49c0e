"""`rbee hive …`: the hives the queen manages, and their health."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from rbee.cli.ops import DEFAULT_CONFIG, ConfigFile
from rbee.clients import QueenClient
from rbee.config.load import load_cluster

__all__ = ["hive_app"]

hive_app = typer.Typer(help="The hives the queen manages.", no_args_is_help=True)
out = Console()

AsJson = Annotated[bool, typer.Option("--json", help="print JSON")]


def _client(file: Path) -> QueenClient:
    cluster = load_cluster(file)
    return QueenClient(cluster.queen.url, cluster.queen.token)


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "never"
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def _show(records: list[dict[str, Any]]) -> None:
    table = Table(box=None, header_style="bold")
    for column in ("hive", "mode", "url", "state", "version", "checked", "error"):
        table.add_column(column)
    for record in records:
        colour = {"online": "green", "offline": "red"}.get(record["state"], "yellow")
        table.add_row(
            record["name"],
            record["mode"],
            record["url"],
            f"[{colour}]{record['state']}[/{colour}]",
            record["version"] or "-",
            _when(record["checked_at"]),
            record["error"] or "",
        )
    out.print(table)


@hive_app.command("list")
def list_hives(file: ConfigFile = DEFAULT_CONFIG, as_json: AsJson = False) -> None:
    """List registered hives with their last health check (every 15 s)."""
    records = _client(file).hives()
    if as_json:
        sys.stdout.write(json.dumps(records, indent=2) + "\n")
    elif not records:
        out.print("no hives registered yet; `rbee apply` registers the YAML's hives")
    else:
        _show(records)


@hive_app.command("get")
def get_hive(
    name: Annotated[str, typer.Argument(help="hive name")],
    file: ConfigFile = DEFAULT_CONFIG,
    as_json: AsJson = False,
) -> None:
    """Show one hive as the queen last saw it."""
    record = _client(file).hive(name)
    if as_json:
        sys.stdout.write(json.dumps(record, indent=2) + "\n")
    else:
        _show([record])


@hive_app.command("status")
def hive_status(
    name: Annotated[str, typer.Argument(help="hive name")],
    file: ConfigFile = DEFAULT_CONFIG,
    as_json: AsJson = False,
) -> None:
    """Check one hive's health now; exit 1 when it is offline."""
    record = _client(file).hive(name, refresh=True)
    if as_json:
        sys.stdout.write(json.dumps(record, indent=2) + "\n")
    else:
        _show([record])
    if record["state"] != "online":
        raise typer.Exit(1)
