"""Where rbee keeps things on disk: caches under ~/.cache/rbee, logs under ~/.local/state/rbee."""

from __future__ import annotations

from pathlib import Path

__all__ = ["cache_dir", "contained", "private_dir", "state_dir"]


def cache_dir(kind: str = "") -> Path:
    """`~/.cache/rbee/<kind>`: the hive's catalogs (models, workers)."""
    base = Path.home() / ".cache" / "rbee"
    return base / kind if kind else base


def state_dir() -> Path:
    """`~/.local/state/rbee` (0700): daemon logs, pid files and the queen's SQLite database."""
    return private_dir(Path.home() / ".local" / "state" / "rbee")


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
