"""Worker runtimes made on the hive: a venv with llama-cpp-python built for one backend.

Each runtime lives in `<catalog>/.runtimes/<digest>/`, where the digest covers everything
that changes the result (backend, llama-cpp-python version, CMAKE_ARGS, Python, OS, machine,
libc; or the wheel URL and its sha256). A spec made once is reused as it is; a changed spec is
a new directory. The llama-cpp-python wheel is compiled here, taken from a peer hive of the
same platform that compiled it, or downloaded from a URL; it is kept beside the venv for
peers. The venv is made under a staging name and renamed into place, so a half build is
never used.

The venv holds llama-cpp-python only. rbee and the rest of the worker's dependencies come
from the hive's own environment through a `.pth` file, which Python reads after the venv's
own site-packages: the venv's llama_cpp shadows the hive's.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import httpx
import psutil

from rbee.catalog.vendors import Resolved
from rbee.catalog.vendors.http import download
from rbee.errors import NotFoundError, RbeeError
from rbee.llama_wheel import RPC_CMAKE_ARGS, has_rpc
from rbee.wire import AddWorkerBinary

__all__ = [
    "CMAKE_ARGS",
    "RuntimeBuildError",
    "build_runtime",
    "install_wheel",
    "platform_tag",
    "remove_unused",
    "runtime_digest",
    "runtime_spec",
    "runtime_wheel",
]

#: What each backend asks of llama.cpp's build when the YAML gives no `cmake_args`: every
#: runtime has llama.cpp's RPC backend, so a worker may span hives and a hive lend its
#: devices (`span:`) with nothing more in the YAML.
CMAKE_ARGS = {
    "cpu": RPC_CMAKE_ARGS,
    "cuda": f"-DGGML_CUDA=on {RPC_CMAKE_ARGS}",
    "metal": f"-DGGML_METAL=on {RPC_CMAKE_ARGS}",
}
_RUNTIMES = ".runtimes"
_MARKER = "rbee-runtime.json"
_WHEELS = "wheel"
_DIGEST = re.compile(r"^[0-9a-f]{16}$")
_WHEEL_NAME = re.compile(r'filename="?([A-Za-z0-9_.+-]+\.whl)"?')
_PEER_TIMEOUT = httpx.Timeout(10.0, read=120.0)
_LOG_TAIL = 15
_log = logging.getLogger(__name__)
_locks: dict[str, threading.Lock] = {}
_locks_lock = threading.Lock()


class RuntimeBuildError(RbeeError):
    """Building a worker runtime failed; the message ends with the last lines of its log."""


def runtime_spec(request: AddWorkerBinary) -> dict[str, str]:
    """What decides the compiled result, with the defaults filled in: an unpinned build gets
    the llama-cpp-python version the hive itself has."""
    pinned = request.llama_cpp_python
    return {
        "backend": request.backend,
        "llama_cpp_python": pinned or f"=={importlib.metadata.version('llama-cpp-python')}",
        "cmake_args": request.cmake_args
        if request.cmake_args is not None
        else CMAKE_ARGS[request.backend],
        "python": platform_tag(),
    }


def platform_tag() -> str:
    """What a compiled runtime is bound to: interpreter, OS, machine and C library."""
    libc, version = platform.libc_ver()
    return f"{sys.implementation.cache_tag}-{sys.platform}-{os.uname().machine}-{libc}{version}"


def runtime_digest(spec: dict[str, str]) -> str:
    """The name of the runtime built for `spec`: equal on every hive of the same platform."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def runtime_wheel(catalog_root: Path, digest: str) -> tuple[Path, str]:
    """The llama-cpp-python wheel of a built runtime and its sha256 (for peers of the same
    platform); NotFoundError when there is none."""
    if not _DIGEST.match(digest):
        raise NotFoundError(f"no runtime {digest!r}")
    runtime = catalog_root / _RUNTIMES / digest
    try:
        marker = json.loads((runtime / _MARKER).read_text())
        return runtime / _WHEELS / marker["wheel"], str(marker["wheel_sha256"])
    except (OSError, ValueError, KeyError):
        raise NotFoundError(f"no built runtime {digest} on this hive") from None


def build_runtime(
    catalog_root: Path,
    spec: dict[str, str],
    log: Callable[[str], None],
    peers: Sequence[Resolved] = (),
) -> tuple[Path, bool]:
    """The Python of the runtime for `spec`, made now unless it already was; and whether it
    was made now. A peer hive of the same platform that built it hands over its wheel (`peers`:
    the URLs of `GET /v1/runtimes/DIGEST/wheel`); else it is compiled here. `log` gets each
    line of the build's output."""

    def wheel(wheels: Path, digest: str) -> None:
        if not any(_from_peer(peer, digest, wheels, log) for peer in peers):
            cache = catalog_root / _RUNTIMES / ".pip-cache" / digest
            _compile(spec, wheels, cache, log)

    return _make(catalog_root, spec, log, wheel)


def install_wheel(
    catalog_root: Path, url: str, sha256: str, log: Callable[[str], None]
) -> tuple[Path, bool]:
    """The Python of a venv with the llama-cpp-python wheel at `url` (checked against
    `sha256`), installed now unless it already was."""

    def wheel(wheels: Path, digest: str) -> None:
        log(f"downloading {url}")
        with (wheels / urlsplit(url).path.rsplit("/", 1)[-1]).open("wb") as out:
            sink = _HashingFile(out)
            download(Resolved(url=url), sink, lambda done, total: None)
        if sink.hexdigest() != sha256:
            raise RuntimeBuildError(
                f"{url}: sha256 mismatch: expected {sha256}, got {sink.hexdigest()}"
            )

    spec = {"url": url, "sha256": sha256, "python": platform_tag()}
    return _make(catalog_root, spec, log, wheel)


def _make(
    catalog_root: Path,
    spec: dict[str, str],
    log: Callable[[str], None],
    wheel: Callable[[Path, str], None],
) -> tuple[Path, bool]:
    """The runtime for `spec` at `.runtimes/<digest>/`: reused when it is there, else a venv
    built under a staging name, given the wheel `wheel` puts in its wheel folder, and renamed
    into place. Two provisions of one spec at once: the second waits and reuses the first's."""
    digest = runtime_digest(spec)
    root = catalog_root / _RUNTIMES
    target = root / digest
    python = target / "bin" / "python"
    with _locks_lock:
        lock = _locks.setdefault(digest, threading.Lock())
    with lock:
        if (target / _MARKER).is_file() and python.exists():
            log(f"runtime {digest} already made: reusing it")
            return python, False
        staging = root / f".{digest}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        try:
            _venv(staging, log)
            wheels = staging / _WHEELS
            wheels.mkdir()
            wheel(wheels, digest)
            [made] = wheels.glob("*.whl")
            _install(staging, wheels, log)
            # The wheel's sha256, hashed once here rather than for every peer that asks.
            marker = {**spec, "wheel": made.name, "wheel_sha256": _file_sha256(made)}
            (staging / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    _log.info("runtime made digest=%s spec=%s", digest, spec)
    return python, True


class _HashingFile:
    """A download sink writing a file from its start and hashing it."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._digest = hashlib.sha256()
        self.offset = 0

    def write(self, chunk: bytes) -> None:
        self._out.write(chunk)
        self._digest.update(chunk)
        self.offset += len(chunk)

    def restart(self) -> None:
        self._out.seek(0)
        self._out.truncate()
        self._digest = hashlib.sha256()
        self.offset = 0

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def remove_unused(catalog_root: Path, keep: set[Path]) -> None:
    """Delete built runtimes that no catalog entry (`keep`: their pythons) and no running
    process uses."""
    root = catalog_root / _RUNTIMES
    if not root.is_dir():
        return
    busy = _pythons_in_use()
    for runtime in root.iterdir():
        python = runtime / "bin" / "python"
        if runtime.name.startswith(".") or python in keep or python in busy:
            continue
        _log.info("runtime removed path=%s", runtime)
        shutil.rmtree(runtime, ignore_errors=True)


def _venv(staging: Path, log: Callable[[str], None]) -> None:
    _run([sys.executable, "-m", "venv", "--without-pip", str(staging)], log, env=None)
    # Read by the venv's Python at start, after its own site-packages (so its llama_cpp wins):
    # rbee and its dependencies from the hive's environment, editable installs included.
    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    lines = [f"import site; site.addsitedir({d!r})" for d in dirs if os.path.isdir(d)]
    purelib = sysconfig.get_path("purelib", vars={"base": str(staging), "platbase": str(staging)})
    Path(purelib, "_rbee_hive.pth").write_text("\n".join(lines) + "\n")


def _compile(spec: dict[str, str], wheels: Path, cache: Path, log: Callable[[str], None]) -> None:
    """Build llama-cpp-python's wheel for the spec's backend into `wheels`."""
    env = dict(os.environ)
    env["CMAKE_ARGS"] = spec["cmake_args"]
    # pip's wheel cache keys a built wheel by its source, not by CMAKE_ARGS: a cached cpu wheel
    # would be handed to a cuda build. Only the plain cpu build (what `make install` builds)
    # shares the user's cache, and a wheel from it without the RPC backend is built again.
    shared = spec["backend"] == "cpu" and spec["cmake_args"] == CMAKE_ARGS["cpu"]
    if not shared:
        env["PIP_CACHE_DIR"] = str(cache)
    command = [
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-binary", "llama-cpp-python",
        "--progress-bar", "off", "--verbose", "--wheel-dir", str(wheels),
        f"llama-cpp-python{spec['llama_cpp_python']}",
    ]  # fmt: skip
    _run(command, log, env=env)
    if shared and not all(map(has_rpc, wheels.glob("*.whl"))):
        log("the cached wheel has no RPC backend (an older build): compiling it again")
        for stale in wheels.glob("*.whl"):
            stale.unlink()
        _run([*command[:4], "--no-cache-dir", *command[4:]], log, env=env)


def _install(staging: Path, wheels: Path, log: Callable[[str], None]) -> None:
    command = [
        sys.executable, "-m", "pip", "--python", str(staging / "bin" / "python"),
        "install", "--no-deps", "--ignore-installed", "--no-index", "--progress-bar", "off",
        *map(str, sorted(wheels.glob("*.whl"))),
    ]  # fmt: skip
    _run(command, log, env=None)


def _from_peer(peer: Resolved, digest: str, wheels: Path, log: Callable[[str], None]) -> bool:
    """Fetch the wheel a peer hive built for this same runtime; False when it has none.

    No plan knows a wheel built on a hive, so its sha256 comes from the peer: what makes it
    trusted is the peer's certificate (a hive of this cluster, checked by TLS); the sha256
    only proves the copy whole."""
    url = f"{peer.url.rstrip('/')}/v1/runtimes/{digest}/wheel"
    try:
        with httpx.stream(
            "GET", url, headers=peer.headers, timeout=_PEER_TIMEOUT, verify=peer.verify
        ) as response:
            if response.status_code != 200:
                log(f"peer {peer.url} has no runtime {digest} (HTTP {response.status_code})")
                return False
            name = _WHEEL_NAME.search(response.headers.get("content-disposition", ""))
            if name is None:
                return False
            digest_sha, path = hashlib.sha256(), wheels / name.group(1)
            with path.open("wb") as out:
                for chunk in response.iter_bytes():
                    digest_sha.update(chunk)
                    out.write(chunk)
    except httpx.HTTPError as exc:
        log(f"peer {peer.url} did not hand over runtime {digest}: {exc!r}")
        return False
    if digest_sha.hexdigest() != response.headers.get("x-rbee-sha256"):
        log(f"peer {peer.url} sent a wheel that does not match its sha256: building here")
        path.unlink()
        return False
    log(f"runtime {digest}: copied {path.name} from {peer.url} instead of compiling")
    return True


def _run(command: list[str], log: Callable[[str], None], env: dict[str, str] | None) -> None:
    """Run a build step, each output line to `log`; RuntimeBuildError with the tail on failure."""
    tail: deque[str] = deque(maxlen=_LOG_TAIL)
    log("$ " + " ".join(command))
    with subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=env,
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if line:
                tail.append(line)
                log(line)
    if proc.returncode != 0:
        raise RuntimeBuildError(
            f"`{' '.join(command[:4])} …` exited with status {proc.returncode}; "
            "its log ends:\n" + "\n".join(tail)
        )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _pythons_in_use() -> set[Path]:
    pythons = set()
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"]
        if cmdline:
            pythons.add(Path(cmdline[0]))
    return pythons
