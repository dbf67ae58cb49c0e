"""The wheelhouse: rbee's wheel and every wheel it needs, so a remote host installs offline.

Built on the queen's machine with its own pip (which may reach an index and has its wheel
cache) from the lock in rbee's source tree (`requirements/hive.txt`, hash-checked), so a
remote hive runs exactly the set CI tested. Kept per rbee version and Python tag: a second
call with an unchanged source tree and lock returns at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import rbee
from rbee.errors import RbeeError
from rbee.llama_wheel import RPC_CMAKE_ARGS, has_rpc
from rbee.paths import cache_dir
from rbee.remote.requirements import pins_for, read_lock, requirement_lines

__all__ = [
    "BUILD_CONSTRAINTS",
    "HIVE_LOCK",
    "WHEELHOUSE_EXTRAS",
    "build_wheelhouse",
    "project_dir",
    "wheelhouse_tag",
]

log = logging.getLogger(__name__)

# What a hive needs: the daemon (`rbee-hive`) and its workers (`llm-worker-rbee`).
WHEELHOUSE_EXTRAS = "worker"
# Relative to the source tree, both written by `make lock`: what a hive installs, and the
# versions of the build backends pip sets up to compile rbee's and llama-cpp-python's wheels.
HIVE_LOCK = "requirements/hive.txt"
BUILD_CONSTRAINTS = "requirements/build.txt"
# Compiled here for any Python: it has no binary wheels on PyPI and its wheel is `py3-none`.
_COMPILED = "llama-cpp-python"
_MANIFEST = "manifest.json"
_PIP_TIMEOUT_S = 1800


def _compile_llama(dest: Path, requirement: Path, constraints: tuple[str, ...]) -> None:
    """llama-cpp-python's wheel, with the RPC backend (`rbee.llama_wheel`), into `dest`."""
    flags = (
        "--quiet", "--no-deps", "--require-hashes", *constraints,
        "--wheel-dir", str(dest), "--requirement", str(requirement),
    )  # fmt: skip
    _pip("wheel", *flags, env={"CMAKE_ARGS": RPC_CMAKE_ARGS})
    if not all(map(has_rpc, dest.glob("llama_cpp_python-*.whl"))):
        # A wheel cached by an older build, without the RPC backend.
        for stale in dest.glob("llama_cpp_python-*.whl"):
            stale.unlink()
        _pip("wheel", "--no-cache-dir", *flags, env={"CMAKE_ARGS": RPC_CMAKE_ARGS})


def project_dir() -> Path:
    """rbee's source tree (where pyproject.toml is), needed to build rbee's own wheel."""
    root = Path(rbee.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise RbeeError(
            f"rbee is not installed from a source tree ({root} has no pyproject.toml), so its "
            "wheel cannot be built for remote hives",
            hint="install rbee with `pip install -e .` from a checkout on the queen's machine",
        )
    return root


def own_python() -> str:
    """This interpreter's `major.minor`, e.g. `3.11`."""
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def wheelhouse_tag(python: str | None = None) -> str:
    """`<rbee version>-<python tag>-<platform>`: remote hosts need a matching interpreter."""
    tag = "cp" + (python or own_python()).replace(".", "")
    platform = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    return f"{rbee.__version__}-{tag}-{platform}"


def build_wheelhouse(dest: Path | None = None, python: str | None = None) -> list[Path]:
    """Build (or reuse) the wheelhouse for a host's `python` (`major.minor`, default this
    one's) under `dest/<tag>/`; returns its wheel files.

    Every dependency is the lock's pin for that Python, checked against the lock's sha256s:
    binary wheels for it, while llama-cpp-python (a `py3-none` ctypes wheel, good for any
    CPython of this platform) is compiled once, here. `dest` defaults to `$RBEE_WHEELHOUSE`,
    else `~/.cache/rbee/wheelhouse`. Rebuilds only what changed: rbee's wheel when its source
    changed, the dependencies when the lock changed.
    """
    root = project_dir()
    target = python or own_python()
    default = Path(os.environ.get("RBEE_WHEELHOUSE") or cache_dir("wheelhouse"))
    house = (dest or default) / wheelhouse_tag(target)
    source = _source_digest(root)
    pins = pins_for(read_lock(root / HIVE_LOCK), target)
    locked = requirement_lines(pins)
    build = (root / BUILD_CONSTRAINTS).read_text()
    deps = hashlib.sha256((target + locked + build + RPC_CMAKE_ARGS).encode()).hexdigest()
    manifest = _read_manifest(house)
    listed = [str(name) for name in manifest.get("wheels") or []]
    if (
        manifest.get("source") == source
        and manifest.get("deps") == deps
        and listed
        and all((house / name).is_file() for name in listed)
    ):
        return [house / name for name in listed]

    started = time.monotonic()
    house.mkdir(parents=True, exist_ok=True)
    constraints = ("--build-constraint", str(root / BUILD_CONSTRAINTS))
    with tempfile.TemporaryDirectory(prefix="rbee-wheelhouse-") as tmp:
        work = Path(tmp)
        rbee_wheel = _build_rbee_wheel(root, work / "rbee", constraints)
        if manifest.get("deps") != deps or not listed:
            compiled = work / "compiled.txt"
            compiled.write_text(requirement_lines({_COMPILED: pins[_COMPILED]}))
            binary = work / "binary.txt"
            binary.write_text(requirement_lines({n: p for n, p in pins.items() if n != _COMPILED}))
            _compile_llama(work / "deps", compiled, constraints)
            _pip(
                "download", "--quiet", "--no-deps", "--require-hashes", "--only-binary=:all:",
                *_target_flags(target), "--dest", str(work / "deps"), "--requirement", str(binary),
            )  # fmt: skip
            wheels = sorted((work / "deps").glob("*.whl"))
            wheels.append(rbee_wheel)
            for old in house.glob("*.whl"):
                old.unlink()
        else:
            # Dependencies unchanged: keep them, swap only rbee's own wheel.
            wheels = [rbee_wheel]
            for old in house.glob("rbee-*.whl"):
                old.unlink()
        for wheel in wheels:
            shutil.copy2(wheel, house / wheel.name)
    names = sorted(p.name for p in house.glob("*.whl"))
    _write_manifest(house, {"source": source, "deps": deps, "wheels": names})
    log.info(
        "event=wheelhouse_built path=%s wheels=%d seconds=%.1f",
        house, len(names), time.monotonic() - started,
    )  # fmt: skip
    return [house / name for name in names]


def _build_rbee_wheel(root: Path, out: Path, constraints: tuple[str, ...]) -> Path:
    _pip("wheel", "--quiet", "--no-deps", *constraints, "--wheel-dir", str(out), str(root))
    wheels = list(out.glob("rbee-*.whl"))
    if len(wheels) != 1:
        raise RbeeError(f"building rbee's wheel from {root} produced {len(wheels)} wheels")
    return wheels[0]


def _target_flags(python: str) -> list[str]:
    """pip's flags to fetch binary wheels for CPython `python` on this machine's platform."""
    machine = sysconfig.get_platform().split("-")[-1]
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in range(5, 40)]
    platforms += [f"manylinux2014_{machine}", f"manylinux1_{machine}", f"linux_{machine}"]
    flags = ["--python-version", python, "--implementation", "cp"]
    return flags + [arg for platform in platforms for arg in ("--platform", platform)]


def _pip(*args: str, env: dict[str, str] | None = None) -> None:
    argv = [sys.executable, "-m", "pip", *args]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **(env or {})}
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, env=env, check=False
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise RbeeError(
            f"building the wheelhouse failed: pip {args[0]} exited {proc.returncode}: {tail}",
            hint="the queen's machine needs a package index (or pip's cache) to build it",
        )


def _source_digest(root: Path) -> str:
    """A digest of what goes into rbee's wheel: every file under rbee/ plus pyproject.toml."""
    digest = hashlib.sha256()
    files = [root / "pyproject.toml"]
    files += sorted(
        p for p in (root / "rbee").rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _read_manifest(house: Path) -> dict[str, Any]:
    try:
        data = json.loads((house / _MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_manifest(house: Path, data: dict[str, object]) -> None:
    tmp = house / f"{_MANIFEST}.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(house / _MANIFEST)
