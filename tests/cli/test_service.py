"""systemd units: `rbee queen install-service` (the unit file, the token kept out of it, and
what it says where systemd does not run, as in this sandbox and in CI containers) and the
user unit a network hive runs under where its host runs systemd."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from syrupy.assertion import SnapshotAssertion

from rbee.cli.service import Scope, queen_unit, systemd_runs
from rbee.remote.daemon import HIVE_ENV_FILE, HIVE_EXECUTABLE, hive_unit
from rbee.wire import HiveArgs, QueenArgs
from tests.fixtures.ports import free_port

ARGS = QueenArgs(host="0.0.0.0", port=7833, public_url="http://10.0.0.1:7833")


@pytest.mark.parametrize("scope", ["user", "system"])
def test_the_unit_restarts_the_queen_always(scope: Scope, snapshot: SnapshotAssertion) -> None:
    text = queen_unit(ARGS, "/opt/rbee/bin/queen-rbee", scope, Path("/etc/rbee/queen.env"))
    lines = [line for line in text.splitlines() if not line.startswith("User=")]
    assert "\n".join(lines) == snapshot
    assert "Restart=always" in text
    assert "--public-url http://10.0.0.1:7833" in text


def test_systemd_analyze_finds_nothing_wrong(tmp_path: Path) -> None:
    """The unit parses as systemd reads it (`systemd-analyze verify` prints what it ignores)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the snapshot above checks the text")
    executable = tmp_path / "queen-rbee"
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    unit = tmp_path / "queen-rbee.service"
    unit.write_text(queen_unit(ARGS, str(executable), "system", tmp_path / "queen.env"))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    complaints = [
        line
        for line in result.stderr.splitlines()
        if str(unit) in line  # lines about our file, not about the sandbox's missing manager
    ]
    assert complaints == [], result.stderr
    broken = tmp_path / "broken.service"
    broken.write_text(unit.read_text().replace("Restart=always", "Restart=alwayz"))
    result = subprocess.run([analyze, "verify", str(broken)], capture_output=True, text=True)
    assert "alwayz" in result.stderr  # the check can fail


HIVE_ARGS = HiveArgs(host="10.0.0.2", port=7835, name="h1", queen_url="http://10.0.0.1:7833")


def test_a_network_hives_user_unit_restarts_it_and_leaves_its_workers_running(
    snapshot: SnapshotAssertion, tmp_path: Path
) -> None:
    text = hive_unit(HIVE_ARGS)
    assert text == snapshot
    assert "Restart=always" in text and "KillMode=process" in text
    assert "LimitNOFILE=65536" in text  # the default 1,024 files starve a busy daemon
    assert f"ExecStart=%h/{HIVE_EXECUTABLE} --host 10.0.0.2" in text
    assert f"EnvironmentFile=-%h/{HIVE_ENV_FILE}" in text
    # What systemd makes of it, with the user's home (%h) made concrete.
    executable = tmp_path / HIVE_EXECUTABLE
    executable.parent.mkdir(parents=True)
    executable.write_text("#!/bin/sh\n")
    executable.chmod(0o755)
    assert _complaints(tmp_path, text.replace("%h", str(tmp_path))) == []


def _complaints(tmp_path: Path, text: str) -> list[str]:
    """What `systemd-analyze verify` says about this unit text (it prints what it ignores)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the snapshot checks the text")
    unit = tmp_path / "checked.service"
    unit.write_text(text)
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    return [line for line in result.stderr.splitlines() if str(unit) in line]


def test_install_service_writes_the_unit_and_keeps_the_token_out_of_it(tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text("queen:\n  url: http://127.0.0.1:7999\n  token: ${RBEE_TOKEN}\n")
    env = {
        "HOME": str(tmp_path),
        "PATH": os.environ["PATH"],
        "RBEE_TOKEN": "s3cret-token",
    }
    result = subprocess.run(
        [sys.executable, "-m", "rbee.cli", "queen", "install-service", "-f", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    unit = tmp_path / ".config/systemd/user/queen-rbee.service"
    text = unit.read_text()
    assert "--host 127.0.0.1 --port 7999" in text
    assert "s3cret-token" not in text
    env_file = tmp_path / ".config/rbee/queen.env"
    assert env_file.read_text() == "RBEE_TOKEN=s3cret-token\n"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert f"EnvironmentFile=-{env_file}" in text
    if not systemd_runs():
        assert "systemd does not run on this machine" in result.stdout
        assert "systemctl --user enable --now queen-rbee.service" in result.stdout


def test_a_queen_on_another_machine_gets_no_unit_here(tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text("queen:\n  url: http://192.0.2.7:7833\n  token: t\n")
    result = subprocess.run(
        [sys.executable, "-m", "rbee.cli", "queen", "install-service", "-f", str(config)],
        env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "not on this machine" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / ".config/systemd").exists()


def test_status_of_a_down_queen_says_how_to_bring_it_back(tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text(f"queen:\n  url: http://127.0.0.1:{free_port()}\n")

    def status() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rbee.cli", "status", "-f", str(config)],
            env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]},
            capture_output=True,
            text=True,
            timeout=60,
        )

    down = status()
    assert down.returncode == 1 and "Traceback" not in down.stderr
    assert "is down" in down.stderr and "rbee queen install-service" in down.stderr
    unit = tmp_path / ".config/systemd/user/queen-rbee.service"
    unit.parent.mkdir(parents=True)
    unit.write_text(queen_unit(ARGS, "/opt/rbee/bin/queen-rbee", "user", tmp_path / "env"))
    with_service = status()
    assert with_service.returncode == 1
    assert "systemctl --user status queen-rbee.service" in with_service.stderr
