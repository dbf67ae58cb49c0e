"""The options that several commands share, as typer `Annotated` types: the cluster YAML
(`--file`), `--json`, `--target`, `--prune`, and the parser of durations (`30s`, `2m`).

Only typer is imported here: every command module imports this one when `rbee` starts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["DEFAULT_CONFIG", "AsJson", "ConfigFile", "Prune", "Targets", "parse_duration"]

ConfigFile = Annotated[
    Path,
    typer.Option("--file", "-f", envvar="RBEE_CONFIG", help="cluster YAML (env RBEE_CONFIG)"),
]
DEFAULT_CONFIG = Path("cluster.yaml")

AsJson = Annotated[bool, typer.Option("--json", help="print JSON")]

Targets = Annotated[
    list[str] | None,
    typer.Option(
        "--target",
        help="limit to this resource address (and what it depends on); repeatable, "
        "a prefix such as worker.gpu1 selects everything under it",
    ),
]
Prune = Annotated[
    bool | None,
    typer.Option(
        "--prune/--no-prune",
        help="remove (or keep) models and hives the YAML no longer lists; default: its `prune`",
    ),
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | float) -> float:
    """Seconds in `30s`, `2m`, `500ms`, `1h` or a bare number of seconds (for --lock-timeout)."""
    if isinstance(text, int | float):  # the option's default arrives already parsed
        return float(text)
    match = _DURATION.match(text)
    if match is None:
        raise typer.BadParameter(f"{text!r} is not a duration like 30s, 2m or 500ms")
    return float(match[1]) * _UNIT_S[match[2] or "s"]
