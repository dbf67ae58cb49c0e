"""The wheelhouse: rbee's wheel and every wheel it needs, so a remote host installs offline.

Built on the queen's machine with its own pip (which may reach an index and has its wheel
cache); dependencies are pinned to the versions installed next to the queen, so a remote
hive runs the same, tested set. Kept per rbee version and Python tag: a second call with an
unchanged source tree returns at once.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
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
from rbee.paths import cache_dir

__all__ = ["WHEELHOUSE_EXTRAS", "build_wheelhouse", "project_dir", "wheelhouse_tag"]

log = logging.getLogger(__name__)

# What a hive needs: the daemon (`rbee-hive`) and its workers (`llm-worker-rbee`).
WHEELHOUSE_EXTRAS = "worker"
_MANIFEST = "manifest.json"
_PIP_TIMEOUT_S = 1800


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

    For this Python the dependencies are built as wheels; for another they are downloaded as
    binary wheels for it, while llama-cpp-python (a `py3-none` ctypes wheel, good for any
    CPython of this platform) is compiled once, here. `dest` defaults to `$RBEE_WHEELHOUSE`,
    else `~/.cache/rbee/wheelhouse`. Rebuilds only what changed: rbee's wheel when its source
    changed, the dependencies when the pinned set changed.
    """
    root = project_dir()
    target = python or own_python()
    default = Path(os.environ.get("RBEE_WHEELHOUSE") or cache_dir("wheelhouse"))
    house = (dest or default) / wheelhouse_tag(target)
    source = _source_digest(root)
    pins = _pins()
    deps = hashlib.sha256(
        (target + pins + (root / "pyproject.toml").read_text()).encode()
    ).hexdigest()
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
    with tempfile.TemporaryDirectory(prefix="rbee-wheelhouse-") as tmp:
        work = Path(tmp)
        rbee_wheel = _build_rbee_wheel(root, work / "rbee")
        if manifest.get("deps") != deps or not listed:
            constraints = work / "constraints.txt"
            constraints.write_text(pins)
            if target == own_python():
                _pip(
                    "wheel", "--quiet", "--wheel-dir", str(work / "deps"),
                    "--constraint", str(constraints),
                    f"{rbee_wheel}[{WHEELHOUSE_EXTRAS}]",
                )  # fmt: skip
            else:
                _download_for(target, rbee_wheel, constraints, work)
            wheels = sorted((work / "deps").glob("*.whl"))
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


def _build_rbee_wheel(root: Path, out: Path) -> Path:
    _pip("wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(root))
    wheels = list(out.glob("rbee-*.whl"))
    if len(wheels) != 1:
        raise RbeeError(f"building rbee's wheel from {root} produced {len(wheels)} wheels")
    return wheels[0]


def _download_for(python: str, rbee_wheel: Path, constraints: Path, work: Path) -> None:
    """Binary wheels of rbee's dependencies for another CPython of this platform, plus
    llama-cpp-python compiled here (it has no binary wheels on PyPI; its wheel is `py3-none`)."""
    llama = work / "llama"
    _pip(
        "wheel", "--quiet", "--no-deps", "--wheel-dir", str(llama),
        f"llama-cpp-python=={importlib.metadata.version('llama-cpp-python')}",
    )  # fmt: skip
    machine = sysconfig.get_platform().split("-")[-1]
    platforms = [f"manylinux_2_{minor}_{machine}" for minor in range(5, 40)]
    platforms += [f"manylinux2014_{machine}", f"manylinux1_{machine}", f"linux_{machine}"]
    _pip(
        "download", "--quiet", "--only-binary=:all:", "--dest", str(work / "deps"),
        "--python-version", python, "--implementation", "cp",
        *(arg for platform in platforms for arg in ("--platform", platform)),
        "--find-links", str(llama), "--find-links", str(rbee_wheel.parent),
        "--constraint", str(constraints),
        f"{rbee_wheel.name.split('-')[0]}[{WHEELHOUSE_EXTRAS}]=={rbee_wheel.name.split('-')[1]}",
    )  # fmt: skip


def _pip(*args: str) -> None:
    argv = [sys.executable, "-m", "pip", *args]
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, env=env, check=False
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise RbeeError(
            f"building the wheelhouse failed: pip {args[0]} exited {proc.returncode}: {tail}",
            hint="the queen's machine needs a package index (or pip's cache) to build it",
        )


def _pins() -> str:
    """`name==version` for every distribution installed next to the queen, rbee excluded."""
    lines = set()
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() != "rbee":
            lines.add(f"{name}=={dist.version}")
    return "\n".join(sorted(lines, key=str.lower)) + "\n"


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
