"""`rbee queen install-service`: the queen as a systemd service that outlives crashes and reboots.

The unit runs the same command line `rbee queen start` would (`QueenArgs`), with
`Restart=always`; its output goes to the journal. The cluster token never enters the unit: it
goes into an environment file only its owner can read.
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from rbee.systemd import QUEEN_SERVICE, Scope, unit
from rbee.wire import QueenArgs

__all__ = [
    "SERVICE",
    "Installed",
    "Scope",
    "install_queen_service",
    "queen_executable",
    "queen_unit",
    "systemd_runs",
    "unit_paths",
]

SERVICE = QUEEN_SERVICE


def queen_unit(args: QueenArgs, executable: str, scope: Scope, env_file: Path) -> str:
    """The unit file's text for a queen started with `args` by `executable` (queen-rbee)."""
    return unit(
        "rbee queen (queen-rbee): worker registry, plan/apply, OpenAI-compatible routing",
        " ".join([executable, *args.to_argv()]),
        str(env_file),
        scope,
        user=getpass.getuser(),
    )


@dataclass(frozen=True)
class Installed:
    unit: Path
    env_file: Path | None
    enabled: bool
    next_steps: list[str]


def systemd_runs() -> bool:
    """Whether systemd manages this machine (it is PID 1 and its runtime directory exists)."""
    return Path("/run/systemd/system").is_dir()


def unit_paths(scope: Scope, home: Path | None = None) -> tuple[Path, Path]:
    """Where the unit and the token's environment file go."""
    if scope == "system":
        return Path("/etc/systemd/system") / SERVICE, Path("/etc/rbee/queen.env")
    home = home or Path.home()
    return home / ".config/systemd/user" / SERVICE, home / ".config/rbee/queen.env"


def queen_executable() -> str:
    """The `queen-rbee` of this installation (beside the running Python)."""
    beside = Path(sys.executable).with_name("queen-rbee")
    return str(beside) if beside.exists() else shutil.which("queen-rbee") or str(beside)


def install_queen_service(
    args: QueenArgs, token: str | None, scope: Scope, home: Path | None = None
) -> Installed:
    """Write the unit (and the token's environment file), and enable it where systemd runs."""
    unit, env_file = unit_paths(scope, home)
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(queen_unit(args, queen_executable(), scope, env_file))
    written_env: Path | None = None
    if token:
        env_file.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(f"RBEE_TOKEN={token}\n")
        os.chmod(env_file, 0o600)
        written_env = env_file
    systemctl = ["systemctl", "--user"] if scope == "user" else ["systemctl"]
    enable = [*systemctl, "enable", "--now", SERVICE]
    if not systemd_runs():
        return Installed(
            unit,
            written_env,
            False,
            [
                "systemd does not run on this machine: start the queen with `rbee queen start`",
                f"where systemd runs, enable the unit with `{' '.join(enable)}`",
            ],
        )
    subprocess.run([*systemctl, "daemon-reload"], check=True)
    subprocess.run(enable, check=True)
    steps = [f"logs: journalctl {'--user ' if scope == 'user' else ''}-u {SERVICE} -f"]
    if scope == "user":
        # Without lingering, a user's services stop at logout and do not start at boot.
        linger = subprocess.run(["loginctl", "enable-linger", getpass.getuser()], check=False)
        if linger.returncode != 0:
            steps.append(f"run `sudo loginctl enable-linger {getpass.getuser()}` to start at boot")
    return Installed(unit, written_env, True, steps)
