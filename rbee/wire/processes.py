"""Process contracts: each daemon's command line as one typed value (DESIGN §8).

Whoever starts a process writes its flags with `to_argv()`; whoever reads them back (the
daemon itself, or a hive listing its workers from the process table) uses `from_argv()`. Both
sides share one definition and one set of defaults, so a field cannot get lost on the way.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, NoReturn, Self

from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError, computed_field
from pydantic_core import PydanticUndefined

from rbee.defaults import (
    CTX_SIZE,
    DEVICE,
    HIVE_CHECK_INTERVAL_S,
    HIVE_PORT,
    PROMPT_CACHE,
    QUEEN_CLUSTER_PORT,
    QUEEN_PORT,
    RPC_PORT,
    SLOTS,
    WORKER_BINARY,
    CtxSize,
    Device,
    PromptCache,
    Slots,
    SplitMode,
)
from rbee.net import LOOPBACK, http_url, https_url

__all__ = [
    "CommandLine",
    "HiveArgs",
    "QueenArgs",
    "RpcServerArgs",
    "RpcServerProcess",
    "SpawnRequest",
    "SpawnRpcServer",
    "SpawnWorker",
    "WorkerArgs",
    "WorkerProcess",
]


class CommandLine(BaseModel):
    """A daemon's command line: every field is a flag (`worker_id` → `--worker-id`).

    A field marked `exclude=True` is a secret: the daemon accepts it as a flag, but
    `to_argv()` never writes it, because `ps` shows a command line to every user of the
    machine. Secrets travel in the environment (RBEE_TOKEN) instead.
    """

    # A process started by another rbee version may carry flags this one does not know:
    # reading it back must still work, so its hive can list and stop it.
    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)

    SCRIPT: ClassVar[str]
    MODULE: ClassVar[str]
    DESCRIPTION: ClassVar[str]

    @classmethod
    def flags(cls) -> list[str]:
        """The fields that are flags: those of the class that names the program."""
        owner = next(k for k in cls.__mro__ if "SCRIPT" in vars(k))
        assert issubclass(owner, CommandLine)
        return list(owner.model_fields)

    def to_argv(self) -> list[str]:
        """The flags of every field that is set and not secret, in field order."""
        argv: list[str] = []
        for name in self.flags():
            value = getattr(self, name)
            if value is not None and not type(self).model_fields[name].exclude:
                argv += [_flag(name), str(value)]
        return argv

    def command(self, python: str = sys.executable) -> list[str]:
        """The whole command line: `python -m MODULE` and the flags."""
        return [python, "-m", self.MODULE, *self.to_argv()]

    @classmethod
    def from_argv(cls, argv: Sequence[str]) -> Self:
        """Read flags (`--name value` or `--name=value`) back; ValidationError when they do not
        describe a valid command line. Anything that is not a known flag is ignored."""
        known = set(cls.flags())
        values: dict[str, str] = {}
        args = iter(argv)
        for arg in args:
            if not arg.startswith("--"):
                continue
            key, eq, value = arg[2:].partition("=")
            name = key.replace("-", "_")
            value = value if eq else next(args, "")
            if name in known:
                values[name] = value
        return cls.model_validate(values)

    @classmethod
    def runs_in(cls, cmdline: Sequence[str]) -> bool:
        """Whether a process's command line runs this program (its script or `-m MODULE`)."""
        return _program_end(cls, cmdline) is not None

    @classmethod
    def from_cmdline(cls, cmdline: Sequence[str]) -> Self | None:
        """This program's command line read from a process's, or None when the process runs
        something else or its flags do not parse."""
        end = _program_end(cls, cmdline)
        if end is None:
            return None
        try:
            return cls.from_argv(cmdline[end:])
        except ValidationError:
            return None

    @classmethod
    def parse_cli(cls, argv: Sequence[str] | None = None) -> Self:
        """The daemon's own command line, with `--help` and usage errors from argparse."""
        parser = argparse.ArgumentParser(prog=cls.SCRIPT, description=cls.DESCRIPTION)
        for name in cls.flags():
            field = cls.model_fields[name]
            help_text = field.description or ""
            if field.default is not None and field.default is not PydanticUndefined:
                help_text += f" (default: {field.default})"
            parser.add_argument(
                _flag(name),
                dest=name,
                required=field.is_required(),
                metavar=name.upper(),
                help=help_text,
            )
        given = vars(parser.parse_args(argv))
        try:
            return cls.model_validate({k: v for k, v in given.items() if v is not None})
        except ValidationError as exc:
            _usage_error(parser, exc)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _program_end(cls: type[CommandLine], cmdline: Sequence[str]) -> int | None:
    """The index of the first flag after the program (`.../SCRIPT` or `-m MODULE`)."""
    for index, arg in enumerate(cmdline[:2]):
        if Path(arg).name == cls.SCRIPT:
            return index + 1
    for index in range(len(cmdline) - 1):
        if cmdline[index] == "-m" and cmdline[index + 1] == cls.MODULE:
            return index + 2
    return None


def _usage_error(parser: argparse.ArgumentParser, exc: ValidationError) -> NoReturn:
    problems = [
        f"{_flag(str(error['loc'][0])) if error['loc'] else 'arguments'}: {error['msg']}"
        for error in exc.errors()
    ]
    parser.error("; ".join(problems))


class SpawnWorker(BaseModel):
    """`POST /v1/worker-processes` of a hive: the worker the queen wants.

    The hive adds where it runs (model path, address, port) to make the worker's command line,
    `WorkerArgs`.
    """

    model_config = ConfigDict(extra="ignore", defer_build=True)

    #: Who the worker is and where it reports; every other field is what it runs.
    IDENTITY: ClassVar[frozenset[str]] = frozenset({"worker_id", "hive", "model", "queen_url"})

    worker_id: str = Field(description="this worker's id, as the queen knows it")
    hive: str = Field(description="name of the hive that spawned this worker")
    model: str = Field(description="model name, as in the cluster YAML")
    slots: Slots = SLOTS
    ctx_size: CtxSize = CTX_SIZE
    prompt_cache: PromptCache = ByteSize(PROMPT_CACHE)
    device: Device = DEVICE
    worker_binary: str = Field(
        default=WORKER_BINARY, description="worker binary name, as in the cluster YAML"
    )
    chat_format: str | None = Field(
        default=None, description="llama-cpp chat format when the GGUF names none"
    )
    split_mode: SplitMode | None = Field(
        default=None,
        description="how the model is split over several devices (several GPUs, or RPC "
        "servers): whole layers or rows; unset for one device",
    )
    tensor_split: str | None = Field(
        default=None,
        pattern=r"^\d+(\.\d+)?(,\d+(\.\d+)?)*$",
        description="the share of the layers each device takes, in llama.cpp's order of "
        "devices (RPC servers first, then this worker's GPUs), e.g. 0.3,0.7",
    )
    gpu_layers: int | None = Field(
        default=None,
        ge=0,
        description="layers (of the blocks and the output layer) not kept on this machine's "
        "CPU; unset: all of them on a GPU worker, none on a CPU worker",
    )
    rpc: str | None = Field(
        default=None,
        pattern=r"^[^,@\s]+@[^,@\s]+:\d+(,[^,@\s]+@[^,@\s]+:\d+)*$",
        description="the RPC servers this worker spans, as HIVE@HOST:PORT,...: reached over "
        "mutual TLS, each hive's server presenting that hive's certificate",
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="threads decoding the batch; default: on the CPU its share of the cores "
        "(over this user's CPU workers on the machine, followed as they come and go), on a GPU "
        "every core",
    )
    queen_url: str = Field(description="where to send heartbeats, e.g. http://127.0.0.1:7833")

    def spec(self) -> dict[str, Any]:
        """What the worker runs: every field but its identity. A change to any restarts it."""
        return {
            name: getattr(self, name)
            for name in SpawnWorker.model_fields
            if name not in self.IDENTITY
        }


class SpawnRequest(SpawnWorker):
    """A spawn as it crosses the wire: the worker, and the TLS identity the queen issued it
    (added as the spawn is sent: never in a plan, never in a log)."""

    tls_identity: str | None = Field(
        default=None, description="the worker's certificate, key and cluster CA (PEM)"
    )


class WorkerArgs(SpawnWorker, CommandLine):
    """`llm-worker-rbee`'s command line: the worker the queen wants, and where it runs."""

    SCRIPT = "llm-worker-rbee"
    MODULE = "rbee.worker.server"
    DESCRIPTION = (
        "Serve one GGUF model over OpenAI-compatible HTTP with N parallel slots, heartbeating "
        "to the queen. Normally started by a hive, not by hand. Without --identity, the "
        "token every route needs (and heartbeats send) is read from RBEE_TOKEN."
    )

    model_path: str = Field(description="path of the GGUF file")
    host: str = Field(default=LOOPBACK, description="address to listen on")
    port: int = Field(ge=0, le=65535, description="port to listen on (0 picks a free one)")
    identity: str | None = Field(
        default=None,
        description="the worker's TLS identity (certificate, key and cluster CA in one PEM "
        "file): with it the worker serves mutual TLS and heartbeats over it",
    )
    socket: str | None = Field(
        default=None,
        description="a Unix socket to serve on too, for the queen on this machine: no TLS, "
        "the kernel says who connects, and only this user's processes are let in",
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def url(self) -> str:
        """Where the queen reaches this worker."""
        return (https_url if self.identity else http_url)(self.host, self.port)


class WorkerProcess(WorkerArgs):
    """A worker process as a hive lists it: its command line, read back from the process."""

    pid: int
    started_at: float = Field(description="process start time, seconds since the epoch")


class SpawnRpcServer(BaseModel):
    """`POST /v1/rpc-servers` of a hive: start its RPC server, which lends this hive's devices
    (its GPUs, or its CPU and memory) to workers of other hives that span it."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    worker_binary: str = Field(
        default=WORKER_BINARY,
        description="the worker binary (runtime) whose llama.cpp runs the server: its backend "
        "must be the spanning worker's",
    )
    device: Device = DEVICE
    port: int = Field(
        default=RPC_PORT, ge=1, le=65535, description="where spanning workers connect (mTLS)"
    )
    threads: int | None = Field(default=None, ge=1, description="CPU threads (default: all)")


class RpcServerArgs(SpawnRpcServer, CommandLine):
    """`rpc-server-rbee`'s command line: llama.cpp's RPC server on a loopback no other process
    can reach, behind a mutual-TLS gate on the hive's address."""

    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)

    SCRIPT = "rpc-server-rbee"
    MODULE = "rbee.worker.rpc_server"
    DESCRIPTION = (
        "Lend this machine's devices to a worker on another hive (llama.cpp's RPC backend). "
        "llama.cpp's server has no authentication: it listens on the loopback of a network "
        "namespace of its own, and the only way in is a mutual-TLS gate that admits workers "
        "of the cluster. Normally started by a hive, not by hand."
    )

    hive: str = Field(description="the hive it serves for (its certificate's name)")
    host: str = Field(default=LOOPBACK, description="address of the mutual-TLS gate")
    cache_dir: str = Field(
        description="llama.cpp's tensor cache: weights a worker sent before are read from "
        "here, so a restarted server does not receive them again"
    )
    identity: str = Field(description="the hive's TLS identity bundle (PEM)")


class RpcServerProcess(RpcServerArgs):
    """An RPC server as a hive lists it: its command line, read back from the process."""

    pid: int
    started_at: float = Field(description="process start time, seconds since the epoch")


class _ServerArgs(CommandLine):
    """What the queen's and a hive's command lines share: the address and the token."""

    host: str = Field(default=LOOPBACK, description="address to listen on")
    token: str | None = Field(
        default=None,
        exclude=True,
        description="bearer token required on every route but /health (default: $RBEE_TOKEN)",
    )


class HiveArgs(_ServerArgs):
    """`rbee-hive`'s command line."""

    SCRIPT = "rbee-hive"
    MODULE = "rbee.hive.server"
    DESCRIPTION = "rbee hive daemon: model catalog and worker processes of this machine."

    port: int = Field(default=HIVE_PORT, ge=0, le=65535, description="port to listen on")
    name: str = Field(
        default_factory=socket.gethostname, description="this hive's name (default: hostname)"
    )
    queen_url: str | None = Field(default=None, description="the queen this hive belongs to")
    identity: str | None = Field(
        default=None,
        description="the hive's TLS identity (certificate, key and cluster CA in one PEM file, "
        "relative to HOME or absolute): with it the hive serves mutual TLS and only the "
        "queen (and, for copies, other hives) may call it; without it, RBEE_TOKEN",
    )


class QueenArgs(_ServerArgs):
    """`queen-rbee`'s command line."""

    SCRIPT = "queen-rbee"
    MODULE = "rbee.queen.server"
    DESCRIPTION = "The rbee queen: worker registry, plan/apply, OpenAI-compatible routing."

    port: int = Field(default=QUEEN_PORT, ge=0, le=65535, description="port to listen on")
    cluster_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="port of the cluster's mutual-TLS listener, where workers heartbeat "
        f"(default: the next after --port: {QUEEN_CLUSTER_PORT} beside {QUEEN_PORT})",
    )
    public_url: str | None = Field(
        default=None,
        description="URL hives and workers reach the queen at (default: http://HOST:PORT)",
    )
    db: Path | None = Field(
        default=None, description="SQLite file (default: ~/.local/state/rbee/queen.db)"
    )
    hive_check_interval: float = Field(
        default=HIVE_CHECK_INTERVAL_S,
        gt=0,
        description="seconds between health checks of every hive",
    )
    max_body_mb: float = Field(
        default=8.0, gt=0, le=1024, description="largest request body in MiB (413 beyond)"
    )
    tls_cert: str | None = Field(
        default=None,
        description="serve the front door over TLS with this certificate (chain) file, or "
        "`own`: the queen's own certificate of the cluster's CA",
    )
    tls_key: str | None = Field(default=None, description="the private key of --tls-cert")
