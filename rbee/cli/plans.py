"""`rbee plan`, `rbee show` and `rbee graph`: the plan the queen makes from the YAML, shown,
saved, and a saved plan printed again."""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rbee.cli.console import out
from rbee.cli.options import DEFAULT_CONFIG, ConfigFile, Prune, Targets
from rbee.cli.reach import connect
from rbee.errors import RbeeError

if TYPE_CHECKING:
    from rbee.wire.plan import Plan

__all__ = ["PlanFormat", "graph", "plan", "read_plan", "show"]


def plan(
    file: ConfigFile = DEFAULT_CONFIG,
    as_json: Annotated[bool, typer.Option("--json", help="print the plan as JSON")] = False,
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="save the plan as JSON for `rbee apply FILE`"),
    ] = None,
    detailed_exitcode: Annotated[
        bool,
        typer.Option(
            "--detailed-exitcode", help="exit 0 when no changes, 2 when changes, 1 on error"
        ),
    ] = False,
    target: Targets = None,
    refresh_only: Annotated[
        bool, typer.Option("--refresh-only", help="report drift from the YAML; plan no action")
    ] = False,
    prune: Prune = None,
) -> None:
    """Observe the cluster and show the actions that would make it match the YAML.

    Exit codes: 0 success (with --detailed-exitcode: no changes), 2 changes present (only with
    --detailed-exitcode), 1 error (bad YAML, queen unreachable, a hive that cannot be observed).
    """
    from rbee.config.load import load_cluster
    from rbee.plan.render import plan_json, plan_text
    from rbee.wire import PlanRequest

    cluster = load_cluster(file)
    request = PlanRequest(
        cluster=cluster.model_dump(mode="json"),
        targets=target or [],
        refresh_only=refresh_only,
        prune=prune,
    )
    the_plan = connect(cluster.queen).plan(request)
    if out_file is not None:
        out_file.write_text(plan_json(the_plan))
    if as_json:
        sys.stdout.write(plan_json(the_plan))
    else:
        sys.stdout.write(plan_text(the_plan, colour=out.is_terminal))
        if out_file is not None:
            out.print(
                f"\nSaved the plan to {out_file}; apply exactly it with `rbee apply {out_file}`."
            )
    if the_plan.errors:
        raise RbeeError(f"{len(the_plan.errors)} hives could not be observed; see the errors above")
    if detailed_exitcode and the_plan.has_changes:
        raise typer.Exit(2)


class PlanFormat(enum.StrEnum):
    text = "text"
    markdown = "markdown"
    json = "json"


def show(
    plan_file: Annotated[Path, typer.Argument(help="a plan saved by `rbee plan --out`")],
    format_: Annotated[
        PlanFormat,
        typer.Option("--format", help="text (as `rbee plan`), markdown (a PR comment) or json"),
    ] = PlanFormat.text,
) -> None:
    """Print a saved plan: as text, as Markdown for a pull request's comment, or as JSON.
    Needs no queen."""
    from rbee.plan.render import plan_json, plan_markdown, plan_text
    from rbee.wire.plan import Plan

    the_plan = Plan.model_validate(read_plan(plan_file))
    render = {
        PlanFormat.text: lambda p: plan_text(p, colour=out.is_terminal),
        PlanFormat.markdown: plan_markdown,
        PlanFormat.json: plan_json,
    }[format_]
    sys.stdout.write(render(the_plan))


def graph(
    plan_file: Annotated[
        Path | None,
        typer.Argument(help="a plan saved by `rbee plan --out` (default: plan the YAML now)"),
    ] = None,
    file: ConfigFile = DEFAULT_CONFIG,
) -> None:
    """Print the apply graph as Graphviz DOT (`rbee graph plan.json | dot -Tsvg > plan.svg`):
    an edge from each action to those that wait for it."""
    from rbee.plan.render import plan_dot

    if plan_file is not None:
        the_plan = read_plan(plan_file)
    else:
        from rbee.config.load import load_cluster
        from rbee.wire import PlanRequest

        cluster = load_cluster(file)
        the_plan = connect(cluster.queen).plan(PlanRequest(cluster=cluster.model_dump(mode="json")))
    sys.stdout.write(plan_dot(the_plan))


def read_plan(path: Path) -> Plan:
    """The saved plan in `path` as the queen takes it back, or why it is none."""
    import json

    from pydantic import ValidationError

    from rbee.wire.plan import Plan

    try:
        saved = json.loads(path.read_text())
    except OSError as exc:
        raise RbeeError(f"cannot read saved plan {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise RbeeError(f"{path} is not a saved plan (invalid JSON: {exc})") from None
    if not isinstance(saved, dict) or "observed_digest" not in saved or "cluster" not in saved:
        raise RbeeError(f"{path} is not a plan saved by `rbee plan --out`")
    try:
        return Plan.model_validate(saved)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise RbeeError(f"{path} is not a valid saved plan: {where}: {first['msg']}") from None
