"""The cluster YAML `rbee init` writes: a pure function from answers to commented text, pinned
by snapshots."""

from __future__ import annotations

import re
import textwrap
from typing import TYPE_CHECKING

from rbee.cli.init.answers import InitAnswers, ModelFacts, PinnedBy

if TYPE_CHECKING:
    from rbee.defaults import Backend
    from rbee.wire import Capabilities, Gpu

__all__ = ["TOKEN", "cluster_yaml"]

#: The queen's token as the YAML names it: the environment's, never written in the file.
TOKEN = "${RBEE_TOKEN}"

_WIDTH = 95
_PLAIN = re.compile(r"[A-Za-z0-9_./~][A-Za-z0-9_./~:@+=-]*")
_DEVICE: dict[Backend, str] = {"cpu": "cpu", "cuda": "cuda:0", "metal": "metal"}


def cluster_yaml(answers: InitAnswers) -> str:
    """The commented cluster YAML for `answers`: the same answers give the same text."""
    lines = _comment(
        "The cluster rbee manages, written by `rbee init`. `rbee validate` checks it, `rbee "
        "plan` shows what would change, `rbee apply` makes it so. `rbee schema` prints the "
        "JSON Schema of every key (for editors); cluster.example.yaml shows more of them."
    )
    lines += ["version: 1", ""]
    lines += _queen(answers)
    lines += _hives(answers)
    lines += _models(answers)
    placements = _placements(answers)
    lines += _worker_binaries(answers.machine, placements)
    lines += _deployments(answers, placements)
    lines += _comment(
        "Delete models, worker binaries and hives this file no longer lists (`rbee apply "
        "--prune` does it once)."
    )
    lines += ["prune: false", ""]
    lines += _comment(
        "Between applies the queen keeps the cluster as applied: it restarts hives that "
        "stopped, fetches missing or damaged models again and respawns dead workers (never a "
        "delete or a change: those come from `rbee apply`). These are the defaults; "
        "`self_heal: false` turns it off."
    )
    lines.append("# self_heal: {enabled: true, interval: 30s, max_per_hour: 60}")
    return "\n".join(lines) + "\n"


def _queen(answers: InitAnswers) -> list[str]:
    if not answers.queen_on_loopback:
        lines = _comment(
            "Where the keeper (the `rbee` CLI) and the hives reach the queen. Off loopback it "
            "needs a token: export RBEE_TOKEN (a long random string) wherever `rbee` runs; "
            "keep it out of git."
        )
        return [*lines, "queen:", f"  url: {_scalar(answers.queen_url)}", f"  token: {TOKEN}", ""]
    lines = _comment(
        "Where the keeper (the `rbee` CLI) finds the queen. On loopback it needs no token, and "
        "`rbee` starts it on this machine when it is not running."
    )
    if answers.ssh_hives:
        lines += _comment(
            "The network hives below report to the queen at this URL too, and cannot reach "
            "loopback: change it to an address of this machine they reach, and add "
            f"`token: {TOKEN}`."
        )
    return [*lines, "queen:", f"  url: {_scalar(answers.queen_url)}", ""]


def _hives(answers: InitAnswers) -> list[str]:
    lines = [*_comment("Machines that run workers."), "hives:"]
    if answers.local is not None:
        lines += _comment(
            f"This machine ({_describe(answers.machine)}): the queen runs its hive as a "
            "child process.",
            indent=2,
        )
        lines += [f"  - name: {_scalar(answers.local)}", "    host: localhost"]
    if answers.ssh_hives:
        lines += _comment(
            f"From {answers.ssh_config}: the queen reaches these over SSH with its own keys and "
            "known_hosts (`rbee hive ssh-test NAME` checks one); `rbee apply` installs rbee "
            "there.",
            indent=2,
        )
    for hive in answers.ssh_hives:
        lines += [f"  - name: {_scalar(hive.name)}", f"    host: {_scalar(hive.host)}"]
        lines.append("    mode: network")
        ssh = hive.ssh.model_dump(exclude_defaults=True) if hive.ssh else {}
        if ssh:
            pairs = ", ".join(
                f"{key}: {value if isinstance(value, int) else _scalar(value)}"
                for key, value in ssh.items()
            )
            lines.append(f"    ssh: {{{pairs}}}")
    return [*lines, ""]


def _models(answers: InitAnswers) -> list[str]:
    model = answers.model
    lines = _comment(
        "GGUF files and where they come from: hf://, https:// or file://. Each hive checks "
        "its copy against the sha256."
    )
    lines += ["models:", f"  - name: {_scalar(model.name)}", f"    source: {_scalar(model.source)}"]
    if model.source.startswith("file://") and answers.ssh_hives:
        lines += _comment(
            "file:// is a path on each hive's own disk: the network hives need the file at "
            "this path too (an hf:// or https:// source is fetched by each hive).",
            indent=4,
        )
    if model.sha256 is not None:
        lines += _comment(_PINNED[model.pinned_by or "flag"], indent=4)
        lines.append(f"    sha256: {model.sha256}")
    else:
        lines += _comment(_unpinned(model), indent=4)
    return [*lines, ""]


_PINNED: dict[PinnedBy, str] = {
    "hub": "The sha256 the Hub publishes for the file (its LFS object id).",
    "file": "The sha256 of the file as `rbee init` read it.",
    "flag": "The sha256 given to `rbee init --sha256`.",
}


def _unpinned(model: ModelFacts) -> str:
    why = f" ({model.unpinned_because})" if model.unpinned_because else ""
    if model.source.startswith("hf://"):
        return (
            f"No sha256: the Hub could not be asked{why}. Each hive then records the Hub's at "
            "its first download; to pin it here, add `sha256:` with the SHA256 the file's page "
            "on the Hub shows, or `sha256sum` of a downloaded copy."
        )
    return f"No sha256{why}. To pin it, add `sha256:` with `sha256sum` of the file."


def _placements(answers: InitAnswers) -> list[tuple[Backend, list[str]]]:
    """(backend, hives) of each deployment: this machine's best backend for its own hive, the
    CPU on the network hives (their GPUs are not known before they run a hive)."""
    network = [hive.name for hive in answers.ssh_hives]
    if answers.local is None:
        return [("cpu", network)]
    backend = _local_backend(answers.machine)
    if backend == "cpu":
        return [("cpu", [answers.local, *network])]
    placements: list[tuple[Backend, list[str]]] = [(backend, [answers.local])]
    return [*placements, ("cpu", network)] if network else placements


def _local_backend(machine: Capabilities | None) -> Backend:
    """cuda with an NVIDIA GPU and nvcc to build for it, metal on Apple silicon, else cpu."""
    if machine is None:
        return "cpu"
    if "cuda" in machine.backends and machine.nvcc:
        return "cuda"
    return "metal" if "metal" in machine.backends else "cpu"


def _worker_binaries(
    machine: Capabilities | None, placements: list[tuple[Backend, list[str]]]
) -> list[str]:
    lines = _comment(
        "Inference runtimes (llama-cpp-python builds), one per backend. cpu without `build:` "
        "is the hive's own llama-cpp-python."
    )
    lines.append("worker_binaries:")
    for backend in dict.fromkeys(backend for backend, _ in placements):
        if backend == "cuda":
            lines += _comment(
                "Compiled for CUDA on each hive that runs it, once (nvcc is needed there: "
                f"this machine has {machine.nvcc if machine else 'it'}).",
                indent=2,
            )
        elif backend == "metal":
            lines += _comment("Compiled for Metal on each hive that runs it, once.", indent=2)
        lines += [f"  - name: {backend}", f"    backend: {backend}"]
        if backend != "cpu":
            lines.append("    build: {}")
    return [*lines, ""]


def _deployments(answers: InitAnswers, placements: list[tuple[Backend, list[str]]]) -> list[str]:
    from rbee.defaults import CTX_SIZE, SLOTS

    gpus = answers.machine.gpus if answers.machine else []
    lines = _comment(
        "What runs where: `replicas` workers of the model on each listed hive, each serving "
        "`slots` sequences at once with `ctx_size` tokens of context."
    )
    lines.append("deployments:")
    for number, (backend, hives) in enumerate(placements):
        if backend == "cuda" and len(gpus) > 1:
            lines += _comment(
                f"On this machine's first GPU. It has {len(gpus)}: `devices: all` in place of "
                "`replicas` and `device` runs one worker on each.",
                indent=2,
            )
        elif backend == "cpu" and answers.local in hives and gpus:
            lines += _comment(
                f"This machine has {_gpu_count(gpus)} but no nvcc to build llama-cpp-python "
                "for CUDA: with the CUDA toolkit installed, a cuda worker binary (`build: {}`) "
                "and `device: cuda:0` run the model on the GPU.",
                indent=2,
            )
        if backend == "cpu" and any(hive.name in hives for hive in answers.ssh_hives):
            lines += _comment(
                "The network hives' GPUs are not known yet: after `rbee apply`, `rbee hive "
                "refresh-capabilities NAME` lists them; a cuda worker binary and `device: "
                "cuda:0` then use one.",
                indent=2,
            )
        lines += [
            f"  - model: {_scalar(answers.model.name)}",
            f"    worker: {backend}",
            f"    hives: [{', '.join(_scalar(name) for name in hives)}]",
            f"    replicas: {answers.replicas}",
            f"    slots: {SLOTS}",
            f"    device: {_DEVICE[backend]}",
            f"    ctx_size: {CTX_SIZE}",
        ]
        if number == 0:
            lines += _comment(
                "How the queen serves the model (these are the defaults; its deployments "
                "share them): timeouts, retries before the first byte, the queue of requests "
                "waiting for a free slot, and the routing.",
                indent=4,
            )
            lines += [
                "    # serving: {connect_timeout: 2s, first_byte_timeout: 2m, idle_timeout: 30s,",
                "    #           attempts: 3, max_queue: 64, queue_timeout: 30s, "
                "routing: least_loaded}",
            ]
    return [*lines, ""]


def _describe(machine: Capabilities | None) -> str:
    if machine is None:
        return "its capabilities could not be read"
    text = (
        f"{machine.hostname}: {machine.os} {machine.arch}, {machine.cpu_count} CPUs, "
        f"{machine.ram_total_bytes / 2**30:.1f} GiB RAM"
    )
    if not machine.gpus:
        return f"{text}, no NVIDIA GPU"
    listed = ", ".join(
        f"cuda:{gpu.index} {gpu.name} ({gpu.memory_total_mib} MiB)" for gpu in machine.gpus
    )
    return f"{text}, {_gpu_count(machine.gpus)}: {listed}"


def _gpu_count(gpus: list[Gpu]) -> str:
    return "1 NVIDIA GPU" if len(gpus) == 1 else f"{len(gpus)} NVIDIA GPUs"


def _comment(text: str, indent: int = 0) -> list[str]:
    prefix = " " * indent + "# "
    return textwrap.wrap(
        text,
        _WIDTH,
        initial_indent=prefix,
        subsequent_indent=prefix,
        break_long_words=False,
        break_on_hyphens=False,
    )


def _scalar(value: str) -> str:
    """`value` as a YAML scalar: plain where it reads back as the same string (in a flow
    collection too), else double-quoted."""
    from ruamel.yaml import YAML

    if _PLAIN.fullmatch(value) and YAML(typ="safe").load(f"[{value}]") == [value]:
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
