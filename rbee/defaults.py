"""Defaults and bounds that the cluster YAML and the processes' command lines share.

Each is written here once: the YAML's fields, the hive's spawn request and the worker's flags
all take them from this module, so a worker started by hand and one started by `rbee apply`
get the same values.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import ByteSize, Field

__all__ = [
    "BACKEND",
    "CTX_SIZE",
    "DEVICE",
    "HIVE_CHECK_INTERVAL_S",
    "HIVE_PORT",
    "QUEEN_CLUSTER_PORT",
    "QUEEN_PORT",
    "RPC_PORT",
    "SLOTS",
    "SOURCE_SCHEMES",
    "SPLIT_GGUF",
    "SSH_IDLE_S",
    "WORKER_BINARY",
    "Backend",
    "CtxSize",
    "Device",
    "Slots",
    "SplitMode",
    "split_gguf",
]

QUEEN_PORT = 7833
#: The queen's mutual-TLS listener for the cluster's own traffic (workers' heartbeats).
QUEEN_CLUSTER_PORT = 7834
HIVE_PORT = 7835
#: Where a hive's RPC server takes the mutual-TLS connections of the workers that span it.
RPC_PORT = 7836
#: Seconds between the queen's health checks of every hive (a hive gone offline is healed).
HIVE_CHECK_INTERVAL_S = 5.0
#: Seconds the queen keeps an unused SSH connection to a network hive open for the next plan.
SSH_IDLE_S = 300.0
SLOTS = 1
CTX_SIZE = 4096
#: Host memory for a worker's prompt cache (the states of finished conversations), in bytes.
PROMPT_CACHE = 1 << 30
DEVICE = "cpu"
WORKER_BINARY = "cpu"

#: The URL schemes models may come from: one vendor each in rbee.catalog (a test keeps the
#: two lists equal).
SOURCE_SCHEMES = ("hf", "https", "http", "file")

#: A GGUF in parts, named by its first: `<stem>-00001-of-00003.gguf`.
SPLIT_GGUF = re.compile(r"^(?P<stem>.+)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$")


def split_gguf(source: str) -> re.Match[str] | None:
    """The split-GGUF parts of a model source's file name (`…/NAME-00001-of-00003.gguf[@REV]`),
    or None when it names a whole file."""
    return SPLIT_GGUF.match(source.partition("@")[0].rsplit("/", 1)[-1])


#: The inference backends a worker binary can be built for.
Backend = Literal["cpu", "cuda", "metal"]
BACKEND: Backend = "cpu"

Slots = Annotated[int, Field(ge=1, le=64, description="parallel sequences per worker")]
CtxSize = Annotated[int, Field(ge=128, le=1_048_576, description="context tokens per slot")]
PromptCache = Annotated[
    ByteSize,
    Field(
        ge=0,
        le=1 << 40,
        description="host memory for the prompt cache: the KV states of finished conversations "
        "whose slot was taken, restored when they come back (bytes, or e.g. 512MiB, 2GB; 0: off)",
    ),
]
Device = Annotated[
    str,
    Field(
        pattern=r"^(cpu|metal|cuda:\d+(,cuda:\d+)*)$",
        description="cpu, metal, cuda:N, or several GPUs of one worker: cuda:0,cuda:1",
    ),
]
#: How llama.cpp splits a model over several devices: whole layers, or rows of each matrix.
SplitMode = Literal["layer", "row"]
