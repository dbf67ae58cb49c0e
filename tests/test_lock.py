"""The dependency lock (`requirements/`): it satisfies pyproject.toml, the hive's part agrees
with the whole, and this venv holds exactly the locked versions (as `make install` leaves it)."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from rbee.errors import RbeeError
from rbee.remote.requirements import Pin, pins_for, read_lock, requirement_lines

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ROOT / "requirements"


def _declared(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        found += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return found


def _unmet(declared: list[Requirement], pins: dict[str, Pin]) -> list[str]:
    unmet = []
    for requirement in declared:
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None or not requirement.specifier.contains(pin.version, prereleases=True):
            unmet.append(f"{requirement} (locked: {pin.version if pin else 'missing'})")
    return unmet


@pytest.mark.parametrize("python", ["3.11", "3.12", "3.13"])
def test_the_lock_satisfies_pyproject_for_every_python(python: str) -> None:
    dev = pins_for(read_lock(LOCKS / "dev.txt"), python)
    hive = pins_for(read_lock(LOCKS / "hive.txt"), python)
    assert _unmet(_declared("worker", "test"), dev) == []
    assert _unmet(_declared("worker"), hive) == []
    # The hive's part is the whole's, version for version, and no test tool rides along.
    assert {n: p.version for n, p in hive.items()} == {n: dev[n].version for n in hive}
    assert "pytest" not in hive


def test_this_venv_holds_exactly_the_locked_versions() -> None:
    locked = pins_for(read_lock(LOCKS / "dev.txt")) | pins_for(read_lock(LOCKS / "extra.txt"))
    installed = {}
    for name in locked:
        try:
            installed[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed[name] = "missing"
    drift = {n: (p.version, installed[n]) for n, p in locked.items() if installed[n] != p.version}
    assert drift == {}, "run `make install` (locked, installed):"


def test_a_pin_per_python_range_is_narrowed_to_the_target(tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text(
        "# via uv\n"
        "numpy==2.4.6 ; python_full_version < '3.12' \\\n"
        "    --hash=sha256:aa \\\n"
        "    --hash=sha256:bb\n"
        "    # via rbee\n"
        "numpy==2.5.5 ; python_full_version >= '3.12' \\\n"
        "    --hash=sha256:cc\n"
        "idna==3.21 --hash=sha256:dd\n"
    )
    pins = read_lock(lock)
    assert requirement_lines(pins_for(pins, "3.11")) == (
        "idna==3.21 --hash=sha256:dd\nnumpy==2.4.6 --hash=sha256:aa --hash=sha256:bb\n"
    )
    assert pins_for(pins, "3.12")["numpy"].line() == "numpy==2.5.5 --hash=sha256:cc"


@pytest.mark.parametrize(
    "line", ["numpy>=2 --hash=sha256:aa", "numpy==2.4.6", "numpy==2.4.6 ; oops --hash=sha256:aa"]
)
def test_a_line_that_is_no_hashed_pin_is_an_error_naming_it(tmp_path: Path, line: str) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text(f"# header\n{line}\n")
    with pytest.raises(RbeeError, match=r"lock.txt:2: .*numpy") as caught:
        read_lock(lock)
    assert caught.value.hint == "regenerate the lock with `make lock`"
