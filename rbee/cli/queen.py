"""`rbee queen start | stop | status | install-service`: the queen on this machine; and
`rbee down`, which stops the whole cluster, the local queen last."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Literal

import typer

from rbee.cli.console import out
from rbee.cli.options import DEFAULT_CONFIG, ConfigFile
from rbee.cli.reach import QUEEN_URL_ENV, client_for_yaml, connect, credential, is_local
from rbee.errors import RbeeError

__all__ = ["down", "queen_app"]


queen_app = typer.Typer(
    help="Run the queen on this machine.", no_args_is_help=True, rich_markup_mode=None
)


def down(file: ConfigFile = DEFAULT_CONFIG) -> None:
    """Stop all workers and hives, then the local queen."""
    from rbee.cli.local_queen import stop_queen
    from rbee.config.load import load_cluster
    from rbee.wire import DownRequest

    cluster = load_cluster(file)
    # A local queen is started if needed: it is the one that knows how to stop hives.
    client = connect(cluster.queen)
    result = client.down(DownRequest(cluster=cluster.model_dump(mode="json")))
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
    from rbee.cli.reach import ensure_queen
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
    from rbee.cli.local_queen import stop_queen
    from rbee.clients import QueenClient
    from rbee.config.load import load_cluster

    cluster = load_cluster(file)
    pid = stop_queen(QueenClient(cluster.queen.url, credential(cluster.queen)))
    out.print("queen is not running" if pid is None else f"stopped queen (pid {pid})")


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
    from rbee.cli.local_queen import local_queen_args
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
    client = client_for_yaml(file)
    health = client.health()
    if health is None:
        out.print(f"queen at {client.url}: [red]not running[/red]")
        raise typer.Exit(1)
    out.print(f"queen at {client.url}: [green]up[/green] (pid {health.pid}, v{health.version})")
