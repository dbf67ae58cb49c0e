"""`rbee hive …`: the hives the queen manages, and their health."""

from __future__ import annotations

import datetime
import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from rbee.cli.console import out
from rbee.cli.options import DEFAULT_CONFIG, AsJson, ConfigFile
from rbee.cli.reach import client_for_yaml
from rbee.errors import RbeeError

if TYPE_CHECKING:
    from rbee.wire import HiveRecord

__all__ = ["hive_app"]

hive_app = typer.Typer(
    help="The hives the queen manages.", no_args_is_help=True, rich_markup_mode=None
)
# These commands only look: they reach the queen (`client_for_yaml`), never start one.


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "never"
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M:%S")


def _show(records: list[HiveRecord]) -> None:
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("hive", "mode", "url", "state", "version", "checked", "error"):
        table.add_column(column)
    for record in records:
        colour = {"online": "green", "offline": "red"}.get(record.state, "yellow")
        table.add_row(
            record.name,
            record.mode,
            record.url,
            f"[{colour}]{record.state}[/{colour}]",
            record.version or "-",
            _when(record.checked_at),
            record.error or "",
        )
    out.print(table)


@hive_app.command("list")
def list_hives(file: ConfigFile = DEFAULT_CONFIG, as_json: AsJson = False) -> None:
    """List registered hives with their last health check (every 15 s)."""
    records = client_for_yaml(file).hives()
    if as_json:
        sys.stdout.write(json.dumps([r.model_dump(mode="json") for r in records], indent=2) + "\n")
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
    record = client_for_yaml(file).hive(name)
    if as_json:
        sys.stdout.write(record.model_dump_json(indent=2) + "\n")
    else:
        _show([record])


@hive_app.command("status")
def hive_status(
    name: Annotated[str, typer.Argument(help="hive name")],
    file: ConfigFile = DEFAULT_CONFIG,
    as_json: AsJson = False,
) -> None:
    """Check one hive's health now; exit 1 when it is offline."""
    record = client_for_yaml(file).hive(name, refresh=True)
    if as_json:
        sys.stdout.write(record.model_dump_json(indent=2) + "\n")
    else:
        _show([record])
    if record.state != "online":
        raise typer.Exit(1)


@hive_app.command("refresh-capabilities")
def refresh_capabilities(
    name: Annotated[str, typer.Argument(help="hive name")],
    file: ConfigFile = DEFAULT_CONFIG,
    as_json: AsJson = False,
) -> None:
    """Ask the hive for its CPUs, RAM, GPUs and backends now, and keep them in the registry."""
    record = client_for_yaml(file).refresh_capabilities(name)
    caps = record.capabilities
    if caps is None:
        raise RbeeError(f"hive {name} reported no capabilities")
    if as_json:
        sys.stdout.write(caps.model_dump_json(indent=2) + "\n")
        return
    out.print(f"hive {name}: {caps.hostname} ({caps.os} {caps.arch})")
    out.print(
        f"  cpus {caps.cpu_count}, ram {caps.ram_total_bytes / 2**30:.1f} GiB "
        f"({caps.ram_available_bytes / 2**30:.1f} GiB free), "
        f"backends {', '.join(caps.backends)}"
    )
    for gpu in caps.gpus:
        out.print(f"  gpu {gpu.index}: {gpu.name}, {gpu.memory_total_mib} MiB")


@hive_app.command("ssh-test")
def ssh_test(
    name: Annotated[str, typer.Argument(help="hive name in the YAML")],
    file: ConfigFile = DEFAULT_CONFIG,
    as_json: AsJson = False,
) -> None:
    """Have the queen connect to a network hive over SSH and report what it finds.

    Exit 1 when the host cannot be reached (unknown or changed host key, refused key, port
    closed, host down); the message says which.
    """
    from rbee.cli.reach import client_for
    from rbee.config.load import load_cluster
    from rbee.wire import SshTestRequest

    cluster = load_cluster(file)
    hive = next((h for h in cluster.hives if h.name == name), None)
    if hive is None:
        known = ", ".join(h.name for h in cluster.hives) or "none"
        raise RbeeError(f"no hive named {name!r} in {file}", hint=f"declared: {known}")
    client = client_for(cluster.queen)
    facts = client.ssh_test(SshTestRequest(hive=hive.model_dump(mode="json")))
    if as_json:
        sys.stdout.write(json.dumps(facts.model_dump(mode="json"), indent=2) + "\n")
    elif facts.reachable and facts.error_kind is None:
        installed = facts.rbee_version or "not installed"
        running = f"running (pid {facts.hive_pid})" if facts.hive_running else "not running"
        free = facts.free_disk_bytes
        out.print(f"[green]ok[/green] {hive.name} ({hive.host}): {facts.os} {facts.arch}")
        out.print(f"  python {facts.python_version}, rbee {installed}, hive {running}")
        if free is not None:
            out.print(f"  free disk in the cache: {free / 2**30:.1f} GiB")
    if not facts.reachable or facts.error_kind is not None:
        raise RbeeError(f"{facts.error_kind}: {facts.error}")


@hive_app.command("import-ssh")
def import_ssh(file: ConfigFile = DEFAULT_CONFIG) -> None:
    """Print the queen's ~/.ssh/config Host entries as YAML hive stanzas to paste."""
    found = client_for_yaml(file).import_ssh()
    if not found.hives:
        raise RbeeError(f"no concrete Host entries in {found.path}")
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.default_flow_style = False
    sys.stdout.write(f"# from {found.path}; review before adding to the cluster YAML\n")
    yaml.dump({"hives": found.hives}, sys.stdout)
