"""Worker runtimes built on the hive: a venv with llama-cpp-python compiled for one backend.

Each build lives in `<catalog>/.runtimes/<digest>/`, where the digest covers everything that
changes the compiled result (backend, llama-cpp-python version, CMAKE_ARGS, the Python). A
spec that was built once is reused as it is; a changed spec is a new directory. The venv is
built under a staging name and renamed into place, so a half build is never used.

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
import shutil
import site
import subprocess
import sys
import sysconfig
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

import psutil

from rbee.errors import RbeeError
from rbee.wire import AddWorkerBinary

__all__ = ["CMAKE_ARGS", "RuntimeBuildError", "build_runtime", "remove_unused", "runtime_spec"]

#: What each backend asks of llama.cpp's build when the YAML gives no `cmake_args`.
CMAKE_ARGS = {"cpu": "", "cuda": "-DGGML_CUDA=on", "metal": "-DGGML_METAL=on"}
_RUNTIMES = ".runtimes"
_MARKER = "rbee-runtime.json"
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
        "python": f"{sys.implementation.cache_tag}-{sys.platform}-{os.uname().machine}",
    }


def build_runtime(
    catalog_root: Path, spec: dict[str, str], log: Callable[[str], None]
) -> tuple[Path, bool]:
    """The Python of the runtime for `spec`, built now unless it already was; and whether it
    was built now. `log` gets each line of the build's output."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    with _locks_lock:
        lock = _locks.setdefault(digest, threading.Lock())
    # Two provisions of one spec at once: the second waits, then reuses the first's build.
    with lock:
        return _build(catalog_root / _RUNTIMES, digest, spec, log)


def _build(
    root: Path, digest: str, spec: dict[str, str], log: Callable[[str], None]
) -> tuple[Path, bool]:
    target = root / digest
    python = target / "bin" / "python"
    if (target / _MARKER).is_file() and python.exists():
        log(f"runtime {digest} already built: reusing it")
        return python, False
    staging = root / f".{digest}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    try:
        _venv(staging, log)
        _install(staging, spec, root / ".pip-cache" / digest, log)
        (staging / _MARKER).write_text(json.dumps(spec, indent=2) + "\n")
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _log.info("runtime built digest=%s spec=%s", digest, spec)
    return python, True


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


def _install(staging: Path, spec: dict[str, str], cache: Path, log: Callable[[str], None]) -> None:
    env = dict(os.environ)
    env["CMAKE_ARGS"] = spec["cmake_args"]
    # pip's wheel cache keys a built wheel by its source, not by CMAKE_ARGS: a cached cpu wheel
    # would be handed to a cuda build. Only the plain cpu build shares the user's cache.
    if spec["backend"] != "cpu" or spec["cmake_args"]:
        env["PIP_CACHE_DIR"] = str(cache)
    command = [
        sys.executable, "-m", "pip", "--python", str(staging / "bin" / "python"),
        "install", "--no-deps", "--ignore-installed", "--no-binary", "llama-cpp-python",
        "--progress-bar", "off", "--verbose",
        f"llama-cpp-python{spec['llama_cpp_python']}",
    ]  # fmt: skip
    _run(command, log, env=env)


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


def _pythons_in_use() -> set[Path]:
    pythons = set()
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"]
        if cmdline:
            pythons.add(Path(cmdline[0]))
    return pythons
