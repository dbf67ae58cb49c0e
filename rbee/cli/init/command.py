"""The typer command `rbee init`: gathers the facts, asks what the flags left open, and writes
the YAML once `rbee validate` would accept it."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from rbee.cli.console import err, out
from rbee.cli.init.answers import InitAnswers
from rbee.cli.init.facts import HUB_TIMEOUT_S, probe_machine, ssh_hives
from rbee.cli.init.questions import (
    DEFAULT_MODEL,
    ask_hosts,
    ask_local,
    ask_model,
    ask_queen,
    ask_replicas,
)
from rbee.cli.init.template import TOKEN, cluster_yaml
from rbee.cli.options import DEFAULT_CONFIG, ConfigFile
from rbee.errors import RbeeError

__all__ = ["init"]


def init(
    file: ConfigFile = DEFAULT_CONFIG,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            metavar="SOURCE",
            help="the model: hf://ORG/REPO/FILE.gguf[@REVISION], its Hub page's URL, a path to "
            f"a .gguf file, file://PATH, or https://URL with --sha256 [default: {DEFAULT_MODEL}]",
        ),
    ] = None,
    model_name: Annotated[
        str | None,
        typer.Option(
            "--model-name", metavar="NAME", help="its name in the YAML [default: from its file]"
        ),
    ] = None,
    sha256: Annotated[
        str | None,
        typer.Option(
            "--sha256",
            metavar="HEX",
            help="pin this sha256 [default: a file's is computed, the Hub's is asked for "
            f"(at most {HUB_TIMEOUT_S:.0f} s, else left out)]",
        ),
    ] = None,
    ssh_host: Annotated[
        list[str] | None,
        typer.Option(
            "--ssh-host",
            metavar="NAME",
            help="a Host of ~/.ssh/config to add as a network hive; repeatable",
        ),
    ] = None,
    hives_from_ssh: Annotated[
        bool | None,
        typer.Option(
            "--hives-from-ssh/--no-hives-from-ssh",
            help="add every (or no) Host of ~/.ssh/config as a network hive [default: none]",
            show_default=False,
        ),
    ] = None,
    local: Annotated[
        bool | None,
        typer.Option(
            "--local/--no-local",
            help="run a hive on this machine [default: local]",
            show_default=False,
        ),
    ] = None,
    replicas: Annotated[
        int | None,
        typer.Option(min=1, metavar="N", help="workers of the model on each hive [default: 1]"),
    ] = None,
    queen_url: Annotated[
        str | None,
        typer.Option(
            "--queen-url",
            metavar="URL",
            help="where `rbee` and the hives reach the queen; off loopback it needs RBEE_TOKEN "
            "[default: this machine's loopback]",
        ),
    ] = None,
    yes: Annotated[
        bool,
        typer.Option("--yes", "-y", help="ask nothing: flags and defaults only"),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="overwrite the file")] = False,
) -> None:
    """Write a first cluster YAML, with comments: a hive on this machine (its CPU or GPU),
    hives from the Host entries of ~/.ssh/config, and a model with its sha256.

    On a terminal it asks what the flags leave open; otherwise (or with --yes) flags and
    defaults decide. An existing file is kept unless --force.
    """
    if file.exists() and not force:
        raise _exists(file)
    ask = sys.stdin.isatty() and not yes
    machine = probe_machine()
    config = Path.home() / ".ssh" / "config"
    facts = ask_model(model, model_name, sha256, ask)
    network = ask_hosts(ssh_hives(config), config, ssh_host, hives_from_ssh, ask)
    here = ask_local(local, network, ask)
    answers = InitAnswers(
        model=facts,
        machine=machine,
        local=here,
        ssh_hives=tuple(network),
        ssh_config=str(config).replace(str(Path.home()), "~", 1),
        replicas=ask_replicas(replicas, ask),
        queen_url=ask_queen(queen_url, network, ask),
    )
    text = cluster_yaml(answers)
    from rbee.config.load import load_cluster_text

    # Never write what `rbee validate` refuses (the token is the environment's, when used).
    load_cluster_text(text.replace(TOKEN, "token"), str(file), file.absolute().parent)
    _write(file, text, force)
    _print_next_steps(file, answers)


def _exists(file: Path) -> RbeeError:
    return RbeeError(f"{file} already exists", hint="pass --force to overwrite it")


def _write(file: Path, text: str, force: bool) -> None:
    try:
        with file.open("w" if force else "x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        raise _exists(file) from None
    except OSError as exc:
        raise RbeeError(f"cannot write {file}: {exc.strerror or exc}") from None


def _print_next_steps(file: Path, answers: InitAnswers) -> None:
    hives = [*([answers.local] if answers.local else []), *(h.name for h in answers.ssh_hives)]
    pinned = "sha256 pinned" if answers.model.sha256 else "no sha256"
    out.print(
        f"Wrote {file}: hives {', '.join(hives)}; model {answers.model.name} ({pinned}); "
        f"{answers.replicas} worker{'s' if answers.replicas > 1 else ''} per hive.",
        highlight=False,
        soft_wrap=True,
    )
    if answers.ssh_hives and answers.queen_on_loopback:
        err.print(
            f"[yellow]warning:[/yellow] the network hives cannot reach a queen on loopback: "
            f"set queen.url in {file} to an address of this machine they reach",
            highlight=False,
            soft_wrap=True,
        )
    flag = "" if file == DEFAULT_CONFIG else f" -f {shlex.quote(str(file))}"
    steps = [
        (f"rbee validate{flag}", "check the file"),
        (f"rbee plan{flag}", "show what apply would change"),
        (f"rbee apply{flag}", "start the hives and the workers"),
    ]
    if not answers.queen_on_loopback and "RBEE_TOKEN" not in os.environ:
        steps.insert(0, ("export RBEE_TOKEN=$(openssl rand -hex 32)", "the queen's token"))
    out.print("Next steps:")
    width = max(len(command) for command, _ in steps)
    for command, what in steps:
        out.print(f"  {command:<{width}}  # {what}", highlight=False, markup=False, soft_wrap=True)
