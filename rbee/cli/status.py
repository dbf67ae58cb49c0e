"""`rbee status`: the hives and workers the queen knows, the last apply and whether the
cluster is in sync; when the queen is down, how to bring it back."""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

from rbee.cli.console import out
from rbee.cli.options import DEFAULT_CONFIG, AsJson, ConfigFile
from rbee.cli.reach import QUEEN_URL_ENV, client_for, is_local
from rbee.errors import UnavailableError

if TYPE_CHECKING:
    from rbee.config.models import Queen
    from rbee.wire import ApplyRecord, SyncStatus

__all__ = ["status"]


def status(
    file: ConfigFile = DEFAULT_CONFIG,
    as_json: AsJson = False,
) -> None:
    """Show the hives and workers the queen knows; exit 1 when the queen is down."""
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
        for server in hive.rpc_servers:
            out.print(
                f"  rpc  server pid {server.pid}  {server.host}:{server.port}  lends "
                f"{server.device} ({server.worker_binary})  cache {server.cache_dir}",
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
