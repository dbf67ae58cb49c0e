"""Where rbee keeps things on disk: caches under ~/.cache/rbee, logs under ~/.local/state/rbee."""

from __future__ import annotations

from pathlib import Path

__all__ = ["cache_dir", "contained", "state_dir"]


def cache_dir(kind: str = "") -> Path:
    """`~/.cache/rbee/<kind>`: the hive's catalogs (models, workers)."""
    base = Path.home() / ".cache" / "rbee"
    return base / kind if kind else base


def state_dir() -> Path:
    """`~/.local/state/rbee`: daemon logs, pid files and the queen's SQLite database."""
    path = Path.home() / ".local" / "state" / "rbee"
    path.mkdir(parents=True, exist_ok=True)
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
