"""`rbee apply`, `rbee history` and `rbee force-unlock`: running the plan, the record of
applies, and the apply lock."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from rbee.cli.console import err, out
from rbee.cli.options import DEFAULT_CONFIG, ConfigFile, Prune, Targets, parse_duration
from rbee.cli.plans import read_plan
from rbee.cli.reach import connect, connect_yaml
from rbee.errors import RbeeError

if TYPE_CHECKING:
    from rbee.wire import ApplyRecord
    from rbee.wire.plan import Plan

__all__ = ["apply", "force_unlock", "history", "register"]

_PIPE_WIDTH = 1000
_RESULT_STYLE = {"ok": "green", "failed": "red", "interrupted": "yellow", "running": "cyan"}


def apply(
    plan_file: Annotated[
        Path | None,
        typer.Argument(
            help="a plan saved by `rbee plan --out`: applied exactly, or refused as stale"
        ),
    ] = None,
    file: ConfigFile = DEFAULT_CONFIG,
    auto_approve: Annotated[
        bool, typer.Option("--auto-approve", help="apply without asking for confirmation")
    ] = False,
    parallelism: Annotated[
        int, typer.Option(min=1, help="how many independent actions run at once")
    ] = 10,
    target: Targets = None,
    prune: Prune = None,
    lock_timeout: Annotated[
        float,
        typer.Option(
            "--lock-timeout",
            parser=parse_duration,
            metavar="DURATION",
            help="wait this long for another apply's lock (30s, 2m)",
        ),
    ] = 0.0,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="stream the apply's events as JSON lines (for CI logs)"),
    ] = False,
) -> None:
    """Make the cluster match the YAML: start hives, add models, spawn and stop workers.

    Runs in the queen; this command shows its progress (with --json: one JSON object per
    event on stdout). Exit 0 when every action succeeded, 1 otherwise (the summary lists what
    failed and why; a rerun converges).
    """
    from rbee.cli.progress import ApplyView
    from rbee.cli.source import applied_source
    from rbee.config.load import load_cluster
    from rbee.config.models import Queen
    from rbee.plan.digest import SENSITIVE
    from rbee.wire import ApplyRequest, ErrorEvent, PlanRequest, SummaryEvent

    run = ApplyRequest(parallelism=parallelism, lock_timeout_s=lock_timeout)
    if plan_file is not None:
        saved = read_plan(plan_file)
        queen = Queen.model_validate(saved.cluster["queen"])
        token = os.environ.get("RBEE_TOKEN") if queen.token == SENSITIVE else queen.token
        client = connect(queen.model_copy(update={"token": token}))
        # The YAML beside the plan (a CI job's checkout of the planned commit) names its commit.
        source = applied_source(file) if Path(file).is_file() else None
        events = client.apply(run.model_copy(update={"plan": saved, "source": source}))
    else:
        cluster = load_cluster(file)
        client = connect(cluster.queen)
        declared = cluster.model_dump(mode="json")
        source = applied_source(file)
        if auto_approve:
            # The queen plans under the lock; the plan it streams first is the plan it runs.
            events = client.apply(
                run.model_copy(
                    update={
                        "cluster": declared,
                        "targets": target or [],
                        "prune": prune,
                        "source": source,
                    }
                )
            )
        else:
            # What the user approves is what runs: the plan shown goes back as a saved plan,
            # executed exactly or refused as stale if the cluster moved while they read it.
            shown = client.plan(PlanRequest(cluster=declared, targets=target or [], prune=prune))
            _confirm(shown)
            events = client.apply(run.model_copy(update={"plan": shown, "source": source}))
    started_at = time.monotonic()
    summary: SummaryEvent | None = None
    if as_json:
        for event in events:
            sys.stdout.write(event.model_dump_json() + "\n")
            sys.stdout.flush()
            if isinstance(event, ErrorEvent):
                raise RbeeError(event.error, hint=event.hint)
            if isinstance(event, SummaryEvent):
                summary = event
    else:
        with ApplyView(out) as view:
            for event in events:
                view.handle(event)
        summary = view.summary
    elapsed = time.monotonic() - started_at
    if summary is None:
        raise RbeeError("the queen ended the apply without a summary")
    if not summary.ok:
        failed = "; ".join(f"{a}: {e}" for a, e in summary.failed.items())
        skipped = f" ({len(summary.skipped)} skipped)" if summary.skipped else ""
        raise RbeeError(
            f"apply failed after {elapsed:.1f} s{skipped}: {failed}",
            hint="fix the cause and run apply again: it picks up where this one stopped",
        )
    if not as_json:
        out.print(f"[green]Apply complete![/green] {len(summary.done)} actions in {elapsed:.1f} s.")


def _confirm(the_plan: Plan) -> None:
    from rbee.plan.render import plan_text

    sys.stdout.write(plan_text(the_plan, colour=out.is_terminal))
    if not the_plan.has_changes:
        raise typer.Exit(0)
    if not sys.stdin.isatty():
        raise RbeeError("apply needs confirmation", hint="pass --auto-approve when not interactive")
    answer = typer.prompt("\nDo you want to perform these actions? Only 'yes' will be accepted")
    if answer != "yes":
        raise RbeeError("apply cancelled")


def register(app: typer.Typer) -> None:
    """Add `history` and `force-unlock` to the keeper's app (those it has not got yet)."""
    have = {command.name for command in app.registered_commands}
    if "history" not in have:
        app.command("history")(history)
    if "force-unlock" not in have:
        app.command("force-unlock")(force_unlock)


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
