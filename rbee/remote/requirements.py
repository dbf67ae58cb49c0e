"""The locked dependency set (`requirements/*.txt`, written by `make lock`): read, and narrowed
to one Python, so the wheelhouse fetches for a hive exactly what CI tested.

The lock is universal (uv's `--universal`): a package may have one pin per Python range
(`numpy==2.4.6 ; python_full_version < '3.12'`). pip reads such markers against the Python
that runs pip, not the one it downloads for, so they are evaluated here for the target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from rbee.errors import RbeeError

__all__ = ["Pin", "pins_for", "read_lock", "requirement_lines"]

_HASH = re.compile(r"\s--hash=(\S+)")


@dataclass(frozen=True)
class Pin:
    """One locked distribution: `name==version`, for the Pythons its marker admits."""

    name: str
    version: str
    requirement: Requirement
    hashes: tuple[str, ...]

    def line(self) -> str:
        """The pin as a hash-checked requirement line, without its marker."""
        return " ".join([f"{self.name}=={self.version}", *(f"--hash={h}" for h in self.hashes)])


def read_lock(path: Path) -> list[Pin]:
    """Every pin of a lock file, markers kept; a malformed line is an error naming it."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise RbeeError(
            f"cannot read the dependency lock {path}: {exc.strerror}",
            hint="run `make lock` in rbee's source tree",
        ) from None
    pins = []
    for number, logical in _logical_lines(text):
        hashes = tuple(_HASH.findall(" " + logical))
        spec = _HASH.sub("", " " + logical).strip()
        try:
            requirement = Requirement(spec)
            [clause] = requirement.specifier
        except (InvalidRequirement, ValueError):
            raise RbeeError(
                f"{path}:{number}: not a `name==version` pin: {spec}",
                hint="regenerate the lock with `make lock`",
            ) from None
        if clause.operator != "==" or not hashes:
            raise RbeeError(
                f"{path}:{number}: {spec} is not pinned with `==` and --hash",
                hint="regenerate the lock with `make lock`",
            )
        name = canonicalize_name(requirement.name)
        pins.append(Pin(name, clause.version, requirement, hashes))
    return pins


def pins_for(pins: list[Pin], python: str | None = None) -> dict[str, Pin]:
    """The pins that apply to CPython `python` (`major.minor`, default this one) on this
    platform, by canonical name."""
    environment = {key: str(value) for key, value in default_environment().items()}
    if python is not None and python != environment["python_version"]:
        environment |= {"python_version": python, "python_full_version": f"{python}.0"}
    chosen: dict[str, Pin] = {}
    for pin in pins:
        marker = pin.requirement.marker
        if marker is None or marker.evaluate(environment):
            if pin.name in chosen:
                raise RbeeError(f"the lock pins {pin.name} twice for Python {python}")
            chosen[pin.name] = pin
    return chosen


def requirement_lines(pins: dict[str, Pin]) -> str:
    """A requirements file of `pins` for `pip --require-hashes --no-deps`."""
    return "".join(pins[name].line() + "\n" for name in sorted(pins))


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each requirement, continuations joined, comments dropped."""
    out: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not pending:
            start = number
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        joined = " ".join(part for part in pending if part).strip()
        pending = []
        if joined:
            out.append((start, joined))
    return out
