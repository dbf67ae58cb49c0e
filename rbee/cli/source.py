"""Which version of the cluster YAML an apply sends: its path, and its git commit if it has one."""

from __future__ import annotations

import subprocess
from pathlib import Path

from rbee.wire import AppliedSource

__all__ = ["applied_source"]


def applied_source(path: Path) -> AppliedSource:
    """`path` with the commit of the repository it is in (`dirty` when the file has changes
    since); without git or outside a repository, the path alone."""
    file = path.resolve()

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(file.parent), *args], capture_output=True, text=True, timeout=5
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return AppliedSource(file=str(path))
    changes = git("status", "--porcelain", "--", file.name)
    return AppliedSource(file=str(path), commit=commit, dirty=bool(changes))
