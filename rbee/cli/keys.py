"""`rbee key …`: the queen's API keys (inference, plan or admin scope, optional rate limits)."""

from __future__ import annotations

import datetime
import json
import sys
from typing import Annotated, get_args

import typer

from rbee.cli.console import err, out
from rbee.cli.options import DEFAULT_CONFIG, AsJson, ConfigFile
from rbee.cli.reach import connect_yaml
from rbee.errors import RbeeError

__all__ = ["key_app"]

key_app = typer.Typer(
    help="API keys for the queen. Once one exists, every route but /health needs a key "
    "(or the cluster token): inference keys may call /v1/chat/completions, /v1/completions, "
    "/v1/models and the jobs; plan keys may plan and read the cluster's state (status, hives, "
    "workers, history), for CI on pull requests; admin keys may do everything, apply included.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@key_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="a name for the key: who or what uses it")],
    scope: Annotated[
        str,
        typer.Option(
            help="inference (the OpenAI routes and jobs), plan (plan and read the state, "
            "nothing else: for CI on pull requests) or admin (everything)"
        ),
    ] = "inference",
    rpm: Annotated[int | None, typer.Option(min=1, help="requests a minute (429 beyond)")] = None,
    tpm: Annotated[int | None, typer.Option(min=1, help="tokens a minute (429 beyond)")] = None,
    file: ConfigFile = DEFAULT_CONFIG,
    as_json: AsJson = False,
) -> None:
    """Create a key and print it. It is shown this once: the queen keeps only its hash."""
    from rbee.wire import KeyScope  # here: `rbee --help` loads no pydantic

    if scope not in get_args(KeyScope):
        raise RbeeError(f"unknown scope {scope!r}", hint="choose inference, plan or admin")
    client = connect_yaml(file)
    created = client.create_key(name, scope, rpm=rpm, tpm=tpm)
    if as_json:
        sys.stdout.write(created.model_dump_json(indent=2) + "\n")
        return
    limits = ", ".join(
        f"{value} {unit}" for value, unit in ((rpm, "requests/min"), (tpm, "tokens/min")) if value
    )
    err.print(f"created {scope} key {name!r}" + (f" ({limits})" if limits else ""))
    err.print("[yellow]store it now: it is not shown again[/yellow]")
    sys.stdout.write(created.key + "\n")


@key_app.command("list")
def list_keys(file: ConfigFile = DEFAULT_CONFIG, as_json: AsJson = False) -> None:
    """List the live keys: name, scope, limits and the key's first characters."""
    client = connect_yaml(file)
    keys = client.keys()
    if as_json:
        sys.stdout.write(json.dumps([k.model_dump() for k in keys], indent=2) + "\n")
        return
    if not keys:
        out.print("no keys: only the cluster token opens the queen")
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("name", "scope", "key", "rpm", "tpm", "created"):
        table.add_column(column)
    for key in keys:
        table.add_row(
            key.name,
            key.scope,
            key.prefix + "…",
            str(key.rpm or "-"),
            str(key.tpm or "-"),
            datetime.datetime.fromtimestamp(key.created_at).strftime("%Y-%m-%d %H:%M"),
        )
    out.print(table)


@key_app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="the key's name")],
    file: ConfigFile = DEFAULT_CONFIG,
) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    client = connect_yaml(file)
    key = client.revoke_key(name)
    out.print(f"revoked {key.scope} key {key.name!r}")
