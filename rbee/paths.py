"""Where rbee keeps things on disk: caches under ~/.cache/rbee, logs under ~/.local/state/rbee."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["cache_dir", "contained", "private_dir", "socket_dir", "state_dir"]


def cache_dir(kind: str = "") -> Path:
    """`~/.cache/rbee/<kind>`: the hive's catalogs (models, workers)."""
    base = Path.home() / ".cache" / "rbee"
    return base / kind if kind else base


def state_dir() -> Path:
    """`~/.local/state/rbee` (0700): daemon logs, pid files and the queen's SQLite database."""
    return private_dir(Path.home() / ".local" / "state" / "rbee")


def socket_dir() -> Path:
    """Where workers put their Unix sockets: `$XDG_RUNTIME_DIR/rbee`, else `/tmp/rbee-<uid>`
    (a socket's path holds 107 bytes at most; a home directory can be longer). The directory
    must be this user's own and not a link: one another user made first is refused
    (PermissionError), so nobody can put a socket of theirs where a worker's is expected."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    path = (
        Path(runtime) / "rbee" if runtime else Path(tempfile.gettempdir()) / f"rbee-{os.getuid()}"
    )
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PermissionError(f"{path} is not a directory of this user's own")
    if info.st_mode & 0o077:
        path.chmod(0o700)
    return path


def private_dir(path: Path) -> Path:
    """`path`, made with its parents if missing, and 0700: rbee's state and caches (the applied
    cluster with its secrets, prompts, logs, models) are the operator's alone. A directory an
    older rbee made open is closed."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def contained(root: Path, name: str) -> Path:
    """`root/name`, refusing a name that would escape `root` (`..`, absolute paths, `/`) or
    that is hidden (a leading `.` is kept for rbee's own staging files)."""
    if "\0" in name:
        raise ValueError(f"invalid name {name!r}: must not contain a NUL byte")
    candidate = (root / name).resolve()
    if candidate.parent != root.resolve() or name in {"", ".", ".."}:
        raise ValueError(f"invalid name {name!r}: must be a single path component")
    if name.startswith("."):
        raise ValueError(f"invalid name {name!r}: must not start with '.'")
    return candidate
