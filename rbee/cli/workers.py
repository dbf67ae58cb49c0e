"""`rbee worker …`: the live workers the queen routes requests to, and retiring one."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Annotated

import typer

from rbee.cli.console import out
from rbee.cli.options import DEFAULT_CONFIG, AsJson, ConfigFile, parse_duration
from rbee.cli.reach import client_for_yaml
from rbee.errors import NotFoundError, RbeeError

if TYPE_CHECKING:
    from rbee.clients import QueenClient
    from rbee.wire import WorkerView

__all__ = ["worker_app"]

worker_app = typer.Typer(
    help="The live workers the queen routes requests to.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

WorkerId = Annotated[str, typer.Argument(help="worker id, as `rbee worker list` shows it")]
# A stopped queen has no workers: these commands reach the queen, never start one.
_LIST_HINT = "`rbee worker list` shows the live workers"


def _state(worker: WorkerView, why: bool = True) -> str:
    from rich.markup import escape

    colour = {"idle": "green", "busy": "cyan", "draining": "yellow"}.get(worker.state, "white")
    state = f"[{colour}]{worker.state}[/{colour}]"
    if not worker.healthy:
        reason = f": {escape(worker.unhealthy_reason or '?')}" if why else ""
        state += f" [red](unhealthy{reason})[/red]"
    return state


def _idle(worker: WorkerView) -> str:
    return "-" if worker.idle_s is None else f"{worker.idle_s:.0f} s"


def _show(workers: list[WorkerView]) -> None:
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    # Ids (HIVE.DEPLOYMENT.i) are copied into `rbee worker retire`: never cut short.
    table.add_column("worker", no_wrap=True, min_width=max(len(w.worker_id) for w in workers))
    for column in ("state", "slots", "idle", "pid"):
        table.add_column(column)
    for worker in workers:
        table.add_row(
            worker.worker_id,
            _state(worker, why=False),
            f"{worker.in_flight}/{worker.slots_total}",
            _idle(worker),
            str(worker.pid),
        )
    out.print(table)


def _describe(worker: WorkerView) -> None:
    """One worker, a line per fact."""
    lines = [
        ("worker", worker.worker_id),
        ("state", _state(worker)),
        ("hive", worker.hive),
        ("model", f"{worker.model} ({worker.worker_binary}, {worker.device})"),
        ("slots", f"{worker.in_flight} of {worker.slots_total} in use"),
        ("idle", _idle(worker)),
        ("pid", str(worker.pid)),
        ("url", worker.url),
        ("last seen", f"{worker.last_seen_s:.1f} s ago"),
    ]
    if worker.threads is not None:
        lines.insert(5, ("threads", str(worker.threads)))
    if (cache := worker.prompt_cache) is not None:
        mib = f"{cache.bytes / 2**20:.0f} of {cache.budget / 2**20:.0f} MiB"
        held = f"{cache.entries} in RAM ({mib})"
        lines.insert(
            6,
            (
                "cache",
                f"{cache.hits} hits ({cache.ram_hits} from RAM), {cache.misses} misses, "
                f"{cache.reused_tokens} of {cache.prompt_tokens} prompt tokens reused, {held}",
            ),
        )
    for name, value in lines:
        out.print(f"{name:<10} {value}", highlight=False, soft_wrap=True)


def _print_json(workers: list[WorkerView]) -> None:
    sys.stdout.write(json.dumps([w.model_dump(mode="json") for w in workers], indent=2) + "\n")


@worker_app.command("list")
def list_workers(file: ConfigFile = DEFAULT_CONFIG, as_json: AsJson = False) -> None:
    """List the live workers: state, slots in use, seconds since their last request
    (`rbee worker get ID` tells the rest)."""
    workers = client_for_yaml(file).workers()
    if as_json:
        _print_json(workers)
    elif not workers:
        out.print("no live workers")
    else:
        _show(workers)


@worker_app.command("get")
def get_worker(
    worker_id: WorkerId, file: ConfigFile = DEFAULT_CONFIG, as_json: AsJson = False
) -> None:
    """Show one live worker."""
    worker = _worker(client_for_yaml(file), worker_id)
    if as_json:
        sys.stdout.write(worker.model_dump_json(indent=2) + "\n")
    else:
        _describe(worker)


@worker_app.command("retire")
def retire_worker(
    worker_id: WorkerId,
    file: ConfigFile = DEFAULT_CONFIG,
    wait: Annotated[
        bool, typer.Option("--wait", help="return once the worker has stopped")
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            parser=parse_duration,
            metavar="DURATION",
            help="with --wait: give up after this long (30s, 5m)",
        ),
    ] = 600.0,
) -> None:
    """Drain a worker, then stop it: it gets no new request, those in flight finish.

    A deployment with a fixed count of replicas gets it back at the next `rbee apply` (self-heal
    may spawn it again sooner); for a range of replicas, the queen decides whether to replace it.
    """
    client = client_for_yaml(file)
    try:
        worker = client.retire_worker(worker_id)
    except NotFoundError:
        raise RbeeError(f"no live worker {worker_id!r}", hint=_LIST_HINT) from None
    out.print(f"worker {worker_id} (pid {worker.pid}) is draining ({worker.in_flight} in flight)")
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while _alive(client, worker_id, worker.pid):
        if time.monotonic() > deadline:
            raise RbeeError(
                f"worker {worker_id} still runs after {timeout:g} s",
                hint="a long request may still be running; `rbee worker get` shows it",
            )
        time.sleep(0.2)
    out.print(f"worker {worker_id} stopped")


def _worker(client: QueenClient, worker_id: str) -> WorkerView:
    try:
        return client.worker(worker_id)
    except NotFoundError:
        raise RbeeError(f"no live worker {worker_id!r}", hint=_LIST_HINT) from None


def _alive(client: QueenClient, worker_id: str, pid: int) -> bool:
    """Whether the process `pid` still serves as `worker_id` (a replacement has another pid)."""
    try:
        return client.worker(worker_id).pid == pid
    except NotFoundError:
        return False
