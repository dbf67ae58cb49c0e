"""systemd units for rbee's daemons: the queen here, hives on their hosts.

One shape for both: `Restart=always`, output to the journal, and the cluster token in an
environment file only its owner can read, never in the unit. `KillMode=process`: a restart
stops the daemon alone, not the hives and workers it started (they run on and are found
again, as after a crash outside systemd).
"""

from __future__ import annotations

from typing import Literal

__all__ = ["HIVE_SERVICE", "QUEEN_SERVICE", "Scope", "unit"]

QUEEN_SERVICE = "queen-rbee.service"
HIVE_SERVICE = "rbee-hive.service"
Scope = Literal["user", "system"]


def unit(
    description: str,
    exec_start: str,
    env_file: str,
    scope: Scope = "user",
    user: str | None = None,
) -> str:
    """A service unit's text: `exec_start` restarted whenever it exits, `env_file` optional."""
    run_as = f"User={user}\n" if scope == "system" and user else ""
    wanted_by = "default.target" if scope == "user" else "multi-user.target"
    return f"""[Unit]
Description={description}
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
{run_as}ExecStart={exec_start}
EnvironmentFile=-{env_file}
Restart=always
RestartSec=2
TimeoutStopSec=15
KillMode=process
# Every client, hive check, relayed stream and worker connection is a file: systemd's default
# of 1,024 let idle clients starve the queen's own checks of hives.
LimitNOFILE=65536

[Install]
WantedBy={wanted_by}
"""
