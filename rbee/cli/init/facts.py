"""What `rbee init` learns: this machine's capabilities, the Host entries of an ssh config, the
model's source and its sha256 (of the file, or as the Hub publishes it)."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rbee.cli.console import err
from rbee.errors import NotFoundError, RbeeError
from rbee.remote.ssh_config import hives_from_ssh_config

# pydantic and the YAML models are imported when init runs: `rbee --help` stays fast.
if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

    from rbee.cli.init.answers import PinnedBy
    from rbee.config.models import Hive, Model
    from rbee.wire import Capabilities

    _Checked = TypeVar("_Checked", bound=BaseModel)

__all__ = [
    "HUB_TIMEOUT_S",
    "checked",
    "checked_model",
    "default_model_name",
    "lan_address",
    "model_source",
    "pin_sha256",
    "probe_machine",
    "ssh_hives",
]

#: How long the Hub may take to name a file's sha256 before init writes the file without it.
HUB_TIMEOUT_S = 3.0
_PROBE_TIMEOUT_S = 30.0
_CHUNK = 4 << 20
_PROGRESS_FROM_BYTES = 64 << 20
_HF_PAGE = re.compile(
    r"^https://huggingface\.co/(?P<repo>[^/]+/[^/]+)/(?:blob|resolve)/(?P<rev>[^/]+)/"
    r"(?P<path>[^?#]+)"
)
# The keeper never imports the hive (an import-linter contract): the hive's own probe runs in a
# child Python, as it runs in the hive.
_PROBE = (
    "import sys; from rbee.hive.capabilities import gather; "
    "sys.stdout.write(gather().model_dump_json())"
)


def probe_machine() -> Capabilities | None:
    """This machine's CPUs, RAM, GPUs and backends, as the hive reads them; None on failure."""
    from rbee.wire import Capabilities

    try:
        result = subprocess.run(
            [sys.executable, "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=_PROBE_TIMEOUT_S,
            check=True,
        )
        return Capabilities.model_validate_json(result.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:  # ValidationError too
        err.print(
            f"[yellow]warning:[/yellow] cannot read this machine's capabilities ({exc}); "
            "writing a CPU deployment",
            highlight=False,
        )
        return None


def ssh_hives(config: Path) -> list[Hive]:
    """The concrete Host entries of an ssh config as network hives; none without the file."""
    from rbee.config.models import Hive

    try:
        text = config.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    hives: dict[str, Hive] = {}
    for stanza in hives_from_ssh_config(text):
        try:
            hive = checked(Hive, f"Host {stanza['host']}", **stanza)
        except RbeeError as exc:
            err.print(f"[yellow]warning:[/yellow] skipping {exc.message}", highlight=False)
            continue
        hives.setdefault(hive.name, hive)
    return list(hives.values())


def model_source(text: str) -> tuple[str, Path | None]:
    """A model as the YAML names it, and the file on this machine to hash, if any: hf:// and
    https:// as given (a Hub page's URL becomes hf://), a path becomes an absolute file://."""
    text = text.strip()
    page = _HF_PAGE.match(text)
    if page is not None:
        revision = "" if page["rev"] == "main" else f"@{page['rev']}"
        return f"hf://{page['repo']}/{page['path']}{revision}", None
    if "://" in text and not text.startswith("file://"):
        return text, None
    path = Path(os.path.abspath(Path(text.removeprefix("file://")).expanduser()))
    if path.is_file():
        return f"file://{path}", path
    if text.startswith("file://"):
        return f"file://{path}", None  # a path on the hives, maybe not on this machine
    raise NotFoundError(
        f"no file {path}", hint="give a path to a .gguf file, or hf://ORG/REPO/FILE.gguf"
    )


def default_model_name(source: str) -> str:
    """A name from the source's file: `…/gemma-3-270m-Q4_K_M.gguf` → `gemma-3-270m-q4_k_m`."""
    from rbee.defaults import SPLIT_GGUF

    file = source.rsplit("/", 1)[-1]
    if source.startswith("hf://"):
        file = file.partition("@")[0]
    split = SPLIT_GGUF.match(file)
    stem = split["stem"] if split else file.removesuffix(".gguf")
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")[:63].rstrip("-._")
    return name or "model"


def pin_sha256(
    source: str, path: Path | None, given: str | None
) -> tuple[str | None, PinnedBy | None, str | None]:
    """(sha256, where it came from, why there is none)."""
    if given is not None:
        return given.lower(), "flag", None
    if path is not None:
        return _file_sha256(path), "file", None
    if source.startswith("hf://"):
        sha256, because = _hub_sha256(source)
        return sha256, "hub" if sha256 else None, because
    return None, None, "the file is not on this machine"


def _file_sha256(path: Path) -> str:
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    size = path.stat().st_size
    digest = hashlib.sha256()
    progress = Progress(
        f"hashing {path.name}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=size < _PROGRESS_FROM_BYTES,
    )
    with progress, path.open("rb") as handle:
        task = progress.add_task("hashing", total=size)
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            progress.advance(task, len(chunk))
    return digest.hexdigest()


def _hub_sha256(source: str) -> tuple[str | None, str | None]:
    """The sha256 the Hub publishes for an hf:// file, or None and why. NotFoundError when the
    Hub says there is no such repository, revision or file."""
    from rbee.catalog.vendors.hf import HfVendor

    outcome: list[str | Exception | None] = []

    def ask() -> None:
        try:
            outcome.append(HfVendor(timeout_s=HUB_TIMEOUT_S).resolve(source).sha256)
        except Exception as exc:  # whatever goes wrong, the file is written without the sha256
            outcome.append(exc)

    thread = threading.Thread(target=ask, name="hub-sha256", daemon=True)
    with err.status("asking the Hub for the file's sha256"):
        thread.start()
        # A name lookup is outside httpx's timeouts: offline, init waits no longer than this.
        thread.join(HUB_TIMEOUT_S + 1)
    if not outcome:
        return None, f"no answer within {HUB_TIMEOUT_S:.0f} s"
    [result] = outcome
    if isinstance(result, NotFoundError):
        raise result
    if isinstance(result, Exception):
        err.print(f"[yellow]warning:[/yellow] no sha256 for {source}: {result}", highlight=False)
        # The first clause only ("cannot reach https://huggingface.co"): the file keeps it short.
        reason = str(result).removeprefix(f"{source}: ").split(": ", 1)[0].splitlines()[0]
        return None, reason[:120] or type(result).__name__
    return result, (None if result else "it publishes none for this file")


def checked(kind: type[_Checked], what: str, hint: str | None = None, **fields: Any) -> _Checked:
    """`kind` made of `fields`, or RbeeError naming `what` and each problem."""
    from pydantic import ValidationError

    try:
        return kind.model_validate(fields)
    except ValidationError as exc:
        raise RbeeError(f"{what}: {_problems(exc)}", hint=hint) from None


def _problems(exc: ValidationError) -> str:
    from rbee.config.models import Model

    messages = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(part) for part in error["loc"])
        if error["type"] == "string_pattern_mismatch":
            message = f"expected {Model.model_fields['name'].description} (63 at most)"
        else:
            message = error["msg"].removeprefix("Value error, ")
        messages.append(f"{where}: {message}" if where else message)
    return "; ".join(messages)


def checked_model(name: str, source: str, sha256: str | None) -> Model:
    """The model `name` from `source` as the YAML holds it, or RbeeError saying what is wrong."""
    from rbee.config.models import Model

    hint = "pass --sha256" if source.startswith(("https://", "http://")) else None
    what = f"model {name!r} from {source}"
    return checked(Model, what, hint, name=name, source=source, sha256=sha256)


def lan_address() -> str | None:
    """An IPv4 address of this machine that other machines may reach."""
    import psutil

    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith(
                ("127.", "169.254.")
            ):
                return str(address.address)
    return None
