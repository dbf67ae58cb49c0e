"""Where workers put their Unix sockets: a directory of the operator's own, or none."""

from __future__ import annotations

import os
import pwd
import stat
import tempfile
from pathlib import Path

import pytest

from rbee.paths import socket_dir


def test_the_runtime_directory_holds_a_private_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    made = socket_dir()
    assert made == tmp_path / "rbee"
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    made.chmod(0o755)  # opened by someone: closed again
    assert stat.S_IMODE(socket_dir().stat().st_mode) == 0o700


def test_a_directory_another_user_made_first_or_a_link_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    squatted = tmp_path / "rbee"
    squatted.mkdir(mode=0o777)
    nobody = pwd.getpwnam("nobody")
    os.chown(squatted, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(PermissionError, match="not a directory of this user's own"):
        socket_dir()
    squatted.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    squatted.symlink_to(elsewhere)
    with pytest.raises(PermissionError):
        socket_dir()


def test_without_a_runtime_directory_one_in_tmp_named_by_uid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    assert socket_dir() == tmp_path / f"rbee-{os.getuid()}"
