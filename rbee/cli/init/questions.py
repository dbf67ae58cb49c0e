"""The questions `rbee init` asks on a terminal: each takes its flag's value, asks only what
the flag left open, and asks again after a wrong answer."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import typer

from rbee.cli.console import out, print_error
from rbee.cli.init.answers import ModelFacts
from rbee.cli.init.facts import (
    checked,
    checked_model,
    default_model_name,
    lan_address,
    model_source,
    pin_sha256,
)
from rbee.errors import NotFoundError, RbeeError
from rbee.net import LOOPBACK, http_url

if TYPE_CHECKING:
    from pathlib import Path

    from rbee.config.models import Hive

__all__ = ["DEFAULT_MODEL", "ask_hosts", "ask_local", "ask_model", "ask_queen", "ask_replicas"]

#: Small enough to try on a laptop's CPU (the example cluster's model).
DEFAULT_MODEL = "hf://ggml-org/gemma-3-270m-GGUF/gemma-3-270m-Q4_K_M.gguf"
_LOCAL_HIVE = "local"


def ask_model(given: str | None, name: str | None, sha256: str | None, ask: bool) -> ModelFacts:
    """The model's source, name and sha256: the flags', else asked, else the defaults."""
    while True:
        if given is None and ask:
            text = typer.prompt("Model (hf://ORG/REPO/FILE.gguf or a .gguf file)", DEFAULT_MODEL)
        else:
            text = given or DEFAULT_MODEL
        try:
            source, path = model_source(text)
            checked_model("model", source, sha256)
            pinned = pin_sha256(source, path, sha256)
            break
        except RbeeError as exc:
            if given is not None or not ask:
                raise
            print_error(exc)
    while True:
        if name is None and ask:
            chosen = typer.prompt("Model name", default_model_name(source))
        else:
            chosen = name or default_model_name(source)
        try:
            checked_model(chosen, source, pinned[0])
            return ModelFacts(chosen, source, *pinned)
        except RbeeError as exc:
            if name is not None or not ask:
                raise
            print_error(exc)


def ask_hosts(
    hosts: list[Hive], config: Path, picked: list[str] | None, every: bool | None, ask: bool
) -> list[Hive]:
    """The network hives: the Hosts picked by flag, else asked for, else none."""
    if picked:
        if every is not None:
            raise RbeeError(
                "--ssh-host picks the hosts: leave out --hives-from-ssh/--no-hives-from-ssh"
            )
        return _pick(hosts, config, picked)
    if every is not None or not ask or not hosts:
        return hosts if every else []
    out.print(f"{config} lists {len(hosts)} hosts:", highlight=False)
    for hive in hosts:
        ssh = hive.ssh
        where = f"{ssh.user}@{hive.host}" if ssh and ssh.user else hive.host
        port = f":{ssh.port}" if ssh and ssh.port != 22 else ""
        out.print(f"  {hive.name:<16} {where}{port}", highlight=False)
    while True:
        answer = typer.prompt("Hosts to add as hives (names, all or none)", "none").strip()
        if answer in ("none", ""):
            return []
        if answer == "all":
            return hosts
        try:
            return _pick(hosts, config, [n for n in re.split(r"[\s,]+", answer) if n])
        except RbeeError as exc:
            print_error(exc)


def _pick(hosts: list[Hive], config: Path, names: list[str]) -> list[Hive]:
    by_name = {hive.name: hive for hive in hosts}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        known = ", ".join(by_name) or "none"
        raise NotFoundError(f"no Host {', '.join(unknown)} in {config}", hint=f"its hosts: {known}")
    return [by_name[name] for name in dict.fromkeys(names)]


def ask_local(given: bool | None, network: list[Hive], ask: bool) -> str | None:
    """The name of the hive on this machine, or None for none."""
    if given is None:
        # With no other hive this machine is the cluster: nothing to ask.
        given = typer.confirm("Run a hive on this machine too?", True) if ask and network else True
    if not given and not network:
        raise RbeeError("no hives to run the model on", hint="drop --no-local, or pass --ssh-host")
    if not given:
        return None
    taken = {hive.name for hive in network}
    return _LOCAL_HIVE if _LOCAL_HIVE not in taken else "this-machine"


def ask_queen(given: str | None, network: list[Hive], ask: bool) -> str:
    """The queen's URL: the flag's, else asked for when network hives must reach it (a LAN
    address suggested), else loopback."""
    from rbee.config.models import Queen
    from rbee.defaults import QUEEN_PORT

    default = http_url(LOOPBACK, QUEEN_PORT)
    if given is not None or not ask or not network:
        return checked(Queen, f"queen URL {given}", url=given or default).url
    lan = lan_address()
    suggested = http_url(lan, QUEEN_PORT) if lan else default
    while True:
        url = typer.prompt("Queen URL (the network hives must reach it)", suggested)
        try:
            return checked(Queen, f"queen URL {url}", url=url).url
        except RbeeError as exc:
            print_error(exc)


def ask_replicas(given: int | None, ask: bool) -> int:
    """Workers of the model on each hive."""
    while given is None and ask:
        answer: int = typer.prompt("Workers per hive", 1, type=int)
        if answer >= 1:
            return answer
        print_error(RbeeError("at least 1"))
    return given or 1
