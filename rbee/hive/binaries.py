"""The hive's worker-binary catalog: `<root>/<name>/metadata.json`, one Python runtime each.

A worker binary is the Python that runs `llm-worker-rbee` with llama-cpp-python built for a
backend: an existing runtime (`path`), a venv built here (`build`, see `rbee.hive.runtimes`),
or, for a plain cpu binary, the hive's own Python.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from rbee.catalog import entry_dir
from rbee.catalog.vendors import Resolved
from rbee.errors import NotFoundError, RbeeError
from rbee.hive.runtimes import (
    RuntimeBuildError,
    build_runtime,
    install_wheel,
    remove_unused,
    runtime_spec,
    runtime_wheel,
)
from rbee.wire import AddWorkerBinary, WorkerBinaryEntry

__all__ = ["METADATA", "ProvisionError", "WorkerBinaryCatalog"]

METADATA = "metadata.json"
_CHECK_TIMEOUT_S = 120.0
# What a worker needs from its runtime; prints the version the entry records.
_CHECK = "import llama_cpp, rbee.worker.server; print(llama_cpp.__version__)"
_log = logging.getLogger(__name__)


class ProvisionError(RbeeError):
    """A worker binary could not be provisioned; `message` says why and what to do."""


class WorkerBinaryCatalog:
    """Worker binaries under `root` (`~/.cache/rbee/workers`), one directory per name."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def check(self, name: str) -> None:
        """Refuse at once a name that `provision` would refuse (InvalidArtifactError)."""
        self._dir(name)

    def provision(
        self,
        request: AddWorkerBinary,
        log: Callable[[str], None] = lambda _: None,
        peers: Sequence[Resolved] = (),
    ) -> WorkerBinaryEntry:
        """Build or check the requested runtime and record it, replacing any entry of the same
        name; `log` gets the build's output line by line. A build takes the wheel of a peer
        (`peers`) of the same platform when one has it."""
        directory = self._dir(request.name)
        python = self._runtime(request, log, peers)
        entry = WorkerBinaryEntry(
            name=request.name,
            backend=request.backend,
            python=python,
            llama_cpp_version=_llama_cpp_version(python),
            spec=request.spec,
        )
        directory.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(prefix=f".{METADATA}.", suffix=".partial", dir=directory)
        try:
            with os.fdopen(fd, "w") as out:
                out.write(entry.model_dump_json(indent=2) + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(staging, directory / METADATA)
        finally:
            Path(staging).unlink(missing_ok=True)
        _log.info(
            "worker binary provisioned name=%s backend=%s python=%s llama_cpp=%s",
            entry.name, entry.backend, entry.python, entry.llama_cpp_version,
        )  # fmt: skip
        self._remove_unused_runtimes()
        return entry

    def list(self) -> list[WorkerBinaryEntry]:
        """Every provisioned worker binary, sorted by name."""
        if not self.root.is_dir():
            return []
        entries = []
        for child in sorted(self.root.iterdir()):
            if child.name.startswith("."):
                continue
            entry = _read(child)
            if entry is not None:
                entries.append(entry)
        return entries

    def get(self, name: str) -> WorkerBinaryEntry:
        """The worker binary called `name`; NotFoundError when it is not provisioned."""
        entry = _read(self._dir(name))
        if entry is None:
            raise NotFoundError(f"worker binary {name!r} is not provisioned on this hive")
        return entry

    def remove(self, name: str) -> WorkerBinaryEntry:
        """Forget the worker binary called `name` and return what it was (NotFoundError)."""
        entry = self.get(name)
        # Renamed aside first, so a reader never sees a half-deleted binary under its name.
        aside = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=self.root))
        os.rename(self._dir(name), aside / name)
        shutil.rmtree(aside, ignore_errors=True)
        _log.info("worker binary removed name=%s", name)
        self._remove_unused_runtimes()
        return entry

    def _dir(self, name: str) -> Path:
        return entry_dir(self.root, name)

    def wheel(self, digest: str) -> tuple[Path, str]:
        """The wheel of runtime `digest` built here and its sha256, for peers (NotFoundError)."""
        return runtime_wheel(self.root, digest)

    def _runtime(
        self, request: AddWorkerBinary, log: Callable[[str], None], peers: Sequence[Resolved]
    ) -> str:
        """The Python to run workers with: the given path, a build, or the hive's own."""
        if request.path is not None:
            if not os.path.isabs(request.path):
                raise ProvisionError(f"path {request.path!r} of worker binary is not absolute")
            return request.path
        if request.url is not None:
            if request.sha256 is None:
                raise ProvisionError(f"worker binary {request.name!r}: a wheel URL needs sha256")
            try:
                python, _ = install_wheel(self.root, request.url, request.sha256, log)
            except (RuntimeBuildError, NotFoundError) as exc:
                raise ProvisionError(f"installing worker binary {request.name!r}: {exc}") from None
            return str(python)
        if request.build:
            spec = runtime_spec(request)
            try:
                python, _ = build_runtime(self.root, spec, log, peers)
            except RuntimeBuildError as exc:
                raise ProvisionError(f"building worker binary {request.name!r}: {exc}") from None
            return str(python)
        if request.backend == "cpu":
            return sys.executable
        raise ProvisionError(
            f"a {request.backend} worker binary needs `build:` (compile llama-cpp-python for "
            "it) or `path:` (a Python that has it)"
        )

    def _remove_unused_runtimes(self) -> None:
        remove_unused(self.root, keep={Path(entry.python) for entry in self.list()})


def _llama_cpp_version(python: str) -> str:
    """llama-cpp-python's version in `python`, which must also import the rbee worker."""
    if not os.path.isfile(python) or not os.access(python, os.X_OK):
        raise ProvisionError(f"python {python} does not exist or is not executable")
    try:
        result = subprocess.run(
            [python, "-c", _CHECK],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_CHECK_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise ProvisionError(
            f"python {python} did not import llama_cpp within {_CHECK_TIMEOUT_S:.0f} s"
        ) from None
    except OSError as exc:
        raise ProvisionError(f"python {python} cannot be run: {exc.strerror or exc}") from None
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        errors = result.stderr.strip().splitlines()
        cause = errors[-1] if errors else f"exit status {result.returncode}"
        raise ProvisionError(
            f"python {python} cannot run a worker: {cause} "
            "(install llama-cpp-python and rbee into it)"
        )
    return lines[-1]


def _read(directory: Path) -> WorkerBinaryEntry | None:
    try:
        return WorkerBinaryEntry.model_validate_json((directory / METADATA).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as exc:
        _log.warning("unreadable worker binary metadata dir=%s error=%s", directory, exc)
        return None
