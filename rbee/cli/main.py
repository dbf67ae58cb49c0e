"""`rbee`: the keeper CLI. Thin: parse, call the queen over HTTP, render.

Each command imports what it uses when it runs, so `rbee --help` and `rbee validate` start
without the HTTP client, the wire models or the plan renderer.
"""

from __future__ import annotations

import enum
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from rbee.cli import ops
from rbee.cli.console import err, out
from rbee.cli.hive import hive_app
from rbee.cli.init import init as init_command
from rbee.cli.jobs import job_app
from rbee.cli.keys import key_app
from rbee.cli.logs import logs_app
from rbee.cli.ops import DEFAULT_CONFIG, ConfigFile, connect
from rbee.cli.workers import worker_app
from rbee.errors import RbeeError, UnavailableError

if TYPE_CHECKING:
    from rbee.config.models import Cluster, Queen
    from rbee.plan.model import Plan
    from rbee.wire import ApplyRecord, SyncStatus

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
queen_app = typer.Typer(
    help="Run the queen on this machine.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(queen_app, name="queen")
app.add_typer(hive_app, name="hive")
app.add_typer(worker_app, name="worker")
app.add_typer(key_app, name="key")
app.add_typer(job_app, name="job")
app.add_typer(logs_app, name="logs")
app.command("init")(init_command)


_debug = False


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks on errors")] = False,
) -> None:
    global _debug
    _debug = debug


@app.command()
def validate(
    file: ConfigFile = DEFAULT_CONFIG,
    env_file: Annotated[
        Path | None,
        typer.Option(
            "--env-file",
            help="KEY=VALUE lines (dotenv) that the YAML's ${VAR}s read, as a CI job's "
            "secrets would set them; checked without a queen",
        ),
    ] = None,
) -> None:
    """Check the cluster YAML without a queen: schema, references between its parts, and that
    every ${VAR} it reads is set. Every error is printed as file:line:col: field: message."""
    from rbee.config.load import load_cluster

    if env_file is not None:
        import dotenv

        if not env_file.is_file():
            raise RbeeError(f"{env_file}: no such env file")
        values = dotenv.dotenv_values(env_file)
        os.environ.update({key: value for key, value in values.items() if value is not None})
    cluster = load_cluster(file)
    sys.stdout.write(
        f"{file}: valid ({len(cluster.hives)} hives, {len(cluster.models)} models, "
        f"{len(cluster.deployments)} deployments)\n"
    )


@app.command()
def fmt(
    files: Annotated[
        list[Path] | None,
        typer.Argument(help="cluster YAML files (default: the -f file, cluster.yaml)"),
    ] = None,
    file: ConfigFile = DEFAULT_CONFIG,
    check: Annotated[
        bool,
        typer.Option("--check", help="change nothing; exit 1 when a file is not formatted"),
    ] = False,
) -> None:
    """Rewrite cluster YAML files in one layout, keeping their comments (for pull requests:
    `rbee fmt --check`). Invalid files are reported as validate reports them, and left as
    they are."""
    from rbee.config.fmt import formatted

    unformatted = []
    for path in files or [Path(file)]:
        text, tidy = formatted(path)
        if text == tidy:
            continue
        unformatted.append(path)
        if check:
            err.print(
                f"{path}: not formatted (run `rbee fmt {path}`)", highlight=False, soft_wrap=True
            )
        else:
            path.write_text(tidy, encoding="utf-8")
            out.print(f"{path}: formatted", highlight=False, soft_wrap=True)
    if check and unformatted:
        raise typer.Exit(1)


@app.command()
def schema(
    what: Annotated[
        str, typer.Argument(help="cluster (the YAML) or plan (`rbee plan --json`)")
    ] = "cluster",
) -> None:
    """Print a JSON Schema: of the cluster YAML (for editors and CI) or of JSON plans."""
    if what == "cluster":
        from rbee.config.schema import schema_text

        sys.stdout.write(schema_text())
    elif what == "plan":
        from rbee.plan.schema import plan_schema_text

        sys.stdout.write(plan_schema_text())
    else:
        raise RbeeError(f"unknown schema {what!r}", hint="choose cluster or plan")


def _desired(cluster: Cluster) -> dict[str, Any]:
    return cluster.model_dump(mode="json")


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


@app.command()
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
    from rbee.plan.model import Plan
    from rbee.plan.render import plan_json, plan_text

    cluster = load_cluster(file)
    body = connect(cluster.queen).plan(
        _desired(cluster), targets=target or [], refresh_only=refresh_only, prune=prune
    )
    the_plan = Plan.model_validate(body)
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


@app.command()
def show(
    plan_file: Annotated[Path, typer.Argument(help="a plan saved by `rbee plan --out`")],
    format_: Annotated[
        PlanFormat,
        typer.Option("--format", help="text (as `rbee plan`), markdown (a PR comment) or json"),
    ] = PlanFormat.text,
) -> None:
    """Print a saved plan: as text, as Markdown for a pull request's comment, or as JSON.
    Needs no queen."""
    from rbee.plan.model import Plan
    from rbee.plan.render import plan_json, plan_markdown, plan_text

    the_plan = Plan.model_validate(_read_plan(plan_file))
    render = {
        PlanFormat.text: lambda p: plan_text(p, colour=out.is_terminal),
        PlanFormat.markdown: plan_markdown,
        PlanFormat.json: plan_json,
    }[format_]
    sys.stdout.write(render(the_plan))


@app.command()
def graph(
    plan_file: Annotated[
        Path | None,
        typer.Argument(help="a plan saved by `rbee plan --out` (default: plan the YAML now)"),
    ] = None,
    file: ConfigFile = DEFAULT_CONFIG,
) -> None:
    """Print the apply graph as Graphviz DOT (`rbee graph plan.json | dot -Tsvg > plan.svg`):
    an edge from each action to those that wait for it."""
    from rbee.plan.model import Plan
    from rbee.plan.render import plan_dot

    if plan_file is not None:
        the_plan = Plan.model_validate(_read_plan(plan_file))
    else:
        from rbee.config.load import load_cluster

        cluster = load_cluster(file)
        the_plan = Plan.model_validate(connect(cluster.queen).plan(_desired(cluster)))
    sys.stdout.write(plan_dot(the_plan))


@app.command()
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
            parser=ops.parse_duration,
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
    from rbee.plan.model import Plan
    from rbee.wire import ErrorEvent, SummaryEvent

    options: dict[str, Any] = {"targets": target or [], "prune": prune}
    lock: dict[str, Any] = {"lock_timeout_s": lock_timeout}
    if plan_file is not None:
        saved = _read_plan(plan_file)
        queen = Queen.model_validate(saved["cluster"]["queen"])
        token = os.environ.get("RBEE_TOKEN") if queen.token == SENSITIVE else queen.token
        client = connect(queen.model_copy(update={"token": token}))
        # The YAML beside the plan (a CI job's checkout of the planned commit) names its commit.
        source = applied_source(file).model_dump() if Path(file).is_file() else None
        events = client.apply(None, parallelism, saved_plan=saved, **lock, source=source)
    else:
        cluster = load_cluster(file)
        client = connect(cluster.queen)
        source = applied_source(file).model_dump()
        if auto_approve:
            # The queen plans under the lock; the plan it streams first is the plan it runs.
            events = client.apply(_desired(cluster), parallelism, **options, **lock, source=source)
        else:
            # What the user approves is what runs: the plan shown goes back as a saved plan,
            # executed exactly or refused as stale if the cluster moved while they read it.
            shown = client.plan(_desired(cluster), **options)
            _confirm(Plan.model_validate(shown))
            events = client.apply(None, parallelism, saved_plan=shown, **lock, source=source)
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


def _read_plan(path: Path) -> dict[str, Any]:
    import json

    try:
        saved: dict[str, Any] = json.loads(path.read_text())
    except OSError as exc:
        raise RbeeError(f"cannot read saved plan {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise RbeeError(f"{path} is not a saved plan (invalid JSON: {exc})") from None
    if not isinstance(saved, dict) or "observed_digest" not in saved or "cluster" not in saved:
        raise RbeeError(f"{path} is not a plan saved by `rbee plan --out`")
    return saved


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


@app.command()
def status(
    file: ConfigFile = DEFAULT_CONFIG,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show the hives and workers the queen knows; exit 1 when the queen is down."""
    from rbee.cli.local_queen import client_for
    from rbee.config.load import load_cluster

    cluster = load_cluster(file)
    client = client_for(cluster.queen)
    if client.health() is None:
        raise UnavailableError(
            f"the queen at {client.url} is down: no request is routed until it is "
            "back (workers and hives keep running)",
            hint=_queen_down_hint(cluster.queen),
        )
    body = client.status()
    if as_json:
        sys.stdout.write(body.model_dump_json(indent=2) + "\n")
        return
    out.print(f"queen  {client.url}  [green]up[/green]")
    if body.applied is not None:
        out.print(f"applied {_applied(body.applied)}", highlight=False, soft_wrap=True)
    _print_sync(body.sync)
    for hive in body.hives:
        colour = "green" if hive.state == "online" else "red"
        out.print(
            f"hive   {hive.name:<12} {hive.mode:<8} [{colour}]{hive.state}[/{colour}]  "
            f"{hive.url}  models: {', '.join(hive.models) or '-'}"
        )
        for gpu in hive.gpus:
            out.print(
                f"  gpu  cuda:{gpu.index} {gpu.name}  "
                f"{gpu.memory_free_mib}/{gpu.memory_total_mib} MiB free",
                highlight=False,
            )
        for name, facts in hive.model_facts.items():
            out.print(f"  model {name}  {facts or 'not a GGUF rbee could read'}", highlight=False)
    for worker in body.workers:
        health = "" if worker.healthy else f"  [red]unhealthy: {worker.unhealthy_reason}[/red]"
        out.print(
            f"worker {worker.worker_id:<24} {worker.state:<8} "
            f"slots {worker.in_flight}/{worker.slots_total}  "
            f"pid {worker.pid}  {worker.url}{health}"
        )
    if not body.workers:
        out.print("no live workers")


@app.command()
def infer(
    prompt: Annotated[str, typer.Argument(help="what to ask")],
    file: ConfigFile = DEFAULT_CONFIG,
    model: Annotated[
        str | None, typer.Option(help="model name (default: the first deployed)")
    ] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="most tokens to generate")] = 128,
    temperature: Annotated[float, typer.Option(help="sampling temperature")] = 0.7,
    as_json: Annotated[
        bool, typer.Option("--json", help="print one JSON object at the end")
    ] = False,
) -> None:
    """Stream an answer from the cluster through the queen."""
    import json

    from rbee.cli.local_queen import client_for
    from rbee.config.load import load_cluster

    cluster = load_cluster(file)
    name = model or (cluster.deployments[0].model if cluster.deployments else None)
    if name is None:
        raise RbeeError("no model to ask", hint="pass --model or declare a deployment")
    client = client_for(cluster.queen)
    body = {
        "model": name,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": temperature,
    }
    started = time.monotonic()
    first: float | None = None
    parts: list[str] = []
    with client.chat_stream(body) as stream:
        for chunk in stream.chunks:
            choices = chunk.get("choices") or [{}]
            text = (choices[0].get("delta") or {}).get("content") or ""
            if not text:
                continue
            first = first if first is not None else time.monotonic()
            parts.append(text)
            if not as_json:
                sys.stdout.write(text)
                sys.stdout.flush()
        worker = stream.worker
    elapsed = time.monotonic() - started
    if as_json:
        result = {
            "model": name,
            "worker": worker,
            "content": "".join(parts),
            "chunks": len(parts),
            "time_to_first_token_s": round(first - started, 4) if first is not None else None,
            "elapsed_s": round(elapsed, 4),
        }
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        sys.stdout.write("\n")


@app.command()
def down(file: ConfigFile = DEFAULT_CONFIG) -> None:
    """Stop all workers and hives, then the local queen."""
    from rbee.cli.local_queen import QUEEN_URL_ENV, is_local, stop_queen
    from rbee.config.load import load_cluster

    cluster = load_cluster(file)
    # A local queen is started if needed: it is the one that knows how to stop hives.
    client = connect(cluster.queen)
    result = client.down(_desired(cluster))
    out.print(
        f"stopped {result.stopped_workers} workers and hives: "
        f"{', '.join(result.stopped_hives) or 'none'}"
    )
    if is_local(cluster.queen) and not os.environ.get(QUEEN_URL_ENV):
        pid = stop_queen(client)
        out.print(f"stopped queen (pid {pid})")


@queen_app.command("start")
def queen_start(file: ConfigFile = DEFAULT_CONFIG) -> None:
    """Start the queen of the YAML on this machine, detached (logs in ~/.local/state/rbee)."""
    from rbee.cli.local_queen import ensure_queen
    from rbee.config.load import load_cluster

    cluster = load_cluster(file)
    client, started = ensure_queen(cluster.queen)
    health = client.health()
    assert health is not None
    state = "started" if started else "already running"
    out.print(f"queen {state} at {cluster.queen.url} (pid {health.pid})")


@queen_app.command("stop")
def queen_stop(file: ConfigFile = DEFAULT_CONFIG) -> None:
    """Stop the queen (workers and hives keep running; `rbee down` stops everything)."""
    from rbee.cli.local_queen import credential, stop_queen
    from rbee.clients import QueenClient
    from rbee.config.load import load_cluster

    cluster = load_cluster(file)
    pid = stop_queen(QueenClient(cluster.queen.url, credential(cluster.queen)))
    out.print("queen is not running" if pid is None else f"stopped queen (pid {pid})")


def _applied(record: ApplyRecord) -> str:
    """`sha256:0123456789ab from cluster.yaml @ 1a2b3c4 by HOLDER, 2026-11-27 10:00 (ok)`."""
    line = f"sha256:{(record.digest or '?')[:12]}"
    if record.source is not None:
        line += f" from {record.source.file}"
        if record.source.commit:
            line += f" @ {record.source.commit[:12]}" + (
                " (with changes)" if record.source.dirty else ""
            )
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.started_at))
    return f"{line} by {record.holder}, {when} ({record.result})"


_SYNC_STYLE = {
    "in_sync": ("green", "in sync"),
    "healing": ("cyan", "healing"),
    "degraded": ("red", "degraded"),
    "suspended": ("yellow", "suspended"),
    "unknown": ("dim", "unknown"),
}


def _print_sync(sync: SyncStatus) -> None:
    """`sync   degraded  (self-heal on)` and why, each crash loop with its last log lines."""
    colour, label = _SYNC_STYLE[sync.state]
    heal = "self-heal on" if sync.self_heal else "self-heal off"
    out.print(f"sync   [{colour}]{label}[/{colour}]  ({heal})", highlight=False)
    for reason in sync.reasons:
        out.print(f"  {reason}", highlight=False, soft_wrap=True, markup=False)
    for loop in sync.crash_loops:
        out.print(
            f"  crash loop: {loop.worker_id} on {loop.hive}"
            + (f": {loop.error}" if loop.error else ""),
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
        for line in loop.log_tail.splitlines():
            out.print(f"    | {line}", highlight=False, soft_wrap=True, markup=False)


def _queen_down_hint(queen: Queen) -> str:
    """How to bring a queen back: its service, where one is installed, else `rbee queen start`."""
    from rbee.cli.local_queen import QUEEN_URL_ENV, is_local
    from rbee.cli.service import SERVICE, unit_paths

    if os.environ.get(QUEEN_URL_ENV):
        return f"start it on its host, or check {QUEEN_URL_ENV}"
    if not is_local(queen):
        return f"start it on its host; this machine reaches it at {queen.url}"
    for scope in ("user", "system"):
        unit = unit_paths(scope)[0]
        if unit.exists():
            manage = "systemctl --user" if scope == "user" else "sudo systemctl"
            return f"its service restarts it by itself; see `{manage} status {SERVICE}`"
    return (
        "start it with `rbee queen start`, or keep it running across crashes and reboots "
        "with `rbee queen install-service`"
    )


@queen_app.command("install-service")
def queen_install_service(
    file: ConfigFile = DEFAULT_CONFIG,
    system: Annotated[
        bool,
        typer.Option("--system", help="a system unit in /etc/systemd/system (root); default: user"),
    ] = False,
    print_only: Annotated[
        bool, typer.Option("--print", help="print the unit; write nothing")
    ] = False,
) -> None:
    """Run the YAML's queen as a systemd service: restarted whenever it stops, started at boot,
    logs in the journal. The cluster token goes into an environment file only you can read."""
    from rbee.cli.local_queen import is_local, local_queen_args
    from rbee.cli.service import (
        SERVICE,
        install_queen_service,
        queen_executable,
        queen_unit,
        unit_paths,
    )
    from rbee.config.load import load_cluster

    cluster = load_cluster(file)
    if not is_local(cluster.queen):
        raise RbeeError(
            f"the queen at {cluster.queen.url} is not on this machine",
            hint="run `rbee queen install-service` on the queen's host",
        )
    args = local_queen_args(cluster.queen)
    scope: Literal["user", "system"] = "system" if system else "user"
    if print_only:
        env_file = unit_paths(scope)[1]
        sys.stdout.write(queen_unit(args, queen_executable(), scope, env_file))
        return
    installed = install_queen_service(args, cluster.queen.token, scope)
    # Paths and commands to copy: never wrapped.
    out.print(f"wrote {installed.unit}", soft_wrap=True)
    if installed.env_file is not None:
        out.print(f"wrote {installed.env_file} (the cluster token, mode 600)", soft_wrap=True)
    if installed.enabled:
        out.print(f"[green]enabled and started {SERVICE}[/green]")
    for step in installed.next_steps:
        out.print(step, highlight=False, markup=False, soft_wrap=True)


@queen_app.command("status")
def queen_status(file: ConfigFile = DEFAULT_CONFIG) -> None:
    """Say whether the queen answers."""
    from rbee.cli.local_queen import client_for
    from rbee.config.load import load_cluster

    client = client_for(load_cluster(file).queen)
    health = client.health()
    if health is None:
        out.print(f"queen at {client.url}: [red]not running[/red]")
        raise typer.Exit(1)
    out.print(f"queen at {client.url}: [green]up[/green] (pid {health.pid}, v{health.version})")


ops.register(app)


def main() -> None:
    """Entry point of `rbee`: expected failures print one red line, no traceback."""
    try:
        app()
    except RbeeError as exc:
        if _debug or os.environ.get("RBEE_DEBUG"):
            raise
        ops.print_error(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
