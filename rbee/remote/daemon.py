"""Start and stop a remote machine's hive daemon over SSH (detached, outliving the session)."""

from __future__ import annotations

import logging
import shlex
import time

import asyncssh

from rbee.clients import cluster_tls
from rbee.config.models import Hive
from rbee.process import wait_healthy
from rbee.remote import (
    REMOTE_HIVE_IDENTITY,
    REMOTE_HIVE_LOG,
    REMOTE_HIVE_PID,
    REMOTE_HIVE_PORT,
    REMOTE_STATE,
    REMOTE_VENV,
)
from rbee.remote.connect import SshFailure, run_remote
from rbee.systemd import HIVE_SERVICE, unit
from rbee.wire import HiveArgs

__all__ = [
    "HIVE_ENV_FILE",
    "HIVE_EXECUTABLE",
    "HIVE_PID_SHELL",
    "HIVE_UNIT_DIR",
    "hive_log_tail",
    "hive_unit",
    "start_hive",
    "stop_hive",
]

log = logging.getLogger(__name__)

HIVE_EXECUTABLE = f"{REMOTE_VENV}/bin/rbee-hive"
HIVE_UNIT_DIR = ".config/systemd/user"
HIVE_ENV_FILE = ".config/rbee/hive.env"
_ALIVE_CHECK_S = 1.0

# Shell functions shared by the scripts here and the probe: `is_hive PID` (alive, not a
# zombie, not a reused pid) and `hive_pid` (the live hive's pid from $PIDFILE).
HIVE_PID_SHELL = """\
is_hive() {
  kill -0 "$1" 2>/dev/null || return 1
  [ -r "/proc/$1/stat" ] || return 0
  state=$(sed 's/.*) //' "/proc/$1/stat" | cut -d ' ' -f 1)
  [ "$state" != Z ] || return 1
  tr '\\000' ' ' <"/proc/$1/cmdline" | grep -q rbee-hive
}
hive_pid() {
  pid=$(head -n 1 "$PIDFILE" 2>/dev/null) || return 1
  case "$pid" in ''|*[!0-9]*) return 1 ;; esac
  is_hive "$pid" && echo "$pid"
}
"""

# Where a host runs systemd (and this user's manager answers), the hive is a user unit with
# lingering: restarted when it dies, started at boot. Elsewhere (containers, the test
# namespaces) it is a setsid/nohup daemon, restarted by the queen's self-heal.
_SYSTEMD_START = f"""\
if [ -d /run/systemd/system ] && systemctl --user show-environment >/dev/null 2>&1; then
  units=$HOME/{HIVE_UNIT_DIR} envfile=$HOME/{HIVE_ENV_FILE}
  mkdir -p "$units" "${{envfile%/*}}"
  (umask 077; : >"$envfile")
  printf '%s' "$UNIT" >"$units/{HIVE_SERVICE}"
  loginctl enable-linger "$(id -un)" >/dev/null 2>&1 || true
  if systemctl --user daemon-reload && systemctl --user enable {HIVE_SERVICE} >/dev/null 2>&1 \\
      && systemctl --user restart {HIVE_SERVICE}; then
    pid=$(systemctl --user show -p MainPID --value {HIVE_SERVICE})
    echo "$pid" >"$PIDFILE"
    echo "$PORT" >"$PORTFILE"
    echo "unit={HIVE_SERVICE}"
    echo "pid=$pid"
    exit 0
  fi
fi
"""

# argv: sh -c SCRIPT STATE PIDFILE PORTFILE LOG PORT UNIT IDENTITY EXECUTABLE ARGS...; the
# identity's PEM on stdin.
_START = f"""\
cd || exit 1
STATE=$1 PIDFILE=$2 PORTFILE=$3 LOG=$4 PORT=$5 UNIT=$6 IDENTITY=$7
shift 7
{HIVE_PID_SHELL}
if pid=$(hive_pid); then echo "already=$pid"; exit 0; fi
mkdir -p "$STATE"
(umask 077; mkdir -p "${{IDENTITY%/*}}" && cat >"$IDENTITY.new" \
  && mv -f "$IDENTITY.new" "$IDENTITY") || exit 1
unset RBEE_TOKEN
{_SYSTEMD_START}
setsid nohup "$@" >>"$LOG" 2>&1 </dev/null &
echo $! >"$PIDFILE"
echo "$PORT" >"$PORTFILE"
echo "pid=$!"
"""

# argv: sh -c SCRIPT PIDFILE PORTFILE GRACE_TENTHS
_STOP = f"""\
cd || exit 1
PIDFILE=$1 PORTFILE=$2 GRACE=$3
if [ -f "{HIVE_UNIT_DIR}/{HIVE_SERVICE}" ] \\
    && systemctl --user is-active --quiet {HIVE_SERVICE} 2>/dev/null; then
  systemctl --user stop {HIVE_SERVICE}
  rm -f "$PIDFILE" "$PORTFILE"
  echo stopped=term
  exit 0
fi
{HIVE_PID_SHELL}
if ! pid=$(hive_pid); then rm -f "$PIDFILE" "$PORTFILE"; echo stopped=none; exit 0; fi
kill -TERM "$pid" 2>/dev/null
i=0
while is_hive "$pid" && [ "$i" -lt "$GRACE" ]; do sleep 0.1; i=$((i + 1)); done
if is_hive "$pid"; then kill -KILL "$pid" 2>/dev/null; echo stopped=kill; else echo stopped=term; fi
rm -f "$PIDFILE" "$PORTFILE"
"""

# argv: sh -c SCRIPT PID
_ALIVE = f"""\
{HIVE_PID_SHELL}
is_hive "$1"
"""


def hive_unit(args: HiveArgs) -> str:
    """The systemd user unit of a network hive started with `args` (`%h`: the user's home)."""
    return unit(
        f"rbee hive {args.name}: models, worker binaries and worker processes of this machine",
        shlex.join([f"%h/{HIVE_EXECUTABLE}", *args.to_argv()]),
        f"%h/{HIVE_ENV_FILE}",
    )


async def start_hive(
    conn: asyncssh.SSHClientConnection,
    hive: Hive,
    queen_url: str,
    identity: bytes,
    *,
    timeout_s: float = 30.0,
) -> int:
    """Start the hive daemon detached on the remote machine; wait for its /health. Returns its pid.

    Its TLS `identity` (certificate, key, CA) goes over the SSH channel's stdin into
    `~/.local/state/rbee/tls/hive.pem` (0600), so no command line shows it. A hive already
    running is left alone (with the identity it has) and its pid returned. A daemon that exits
    or never answers is an error carrying the tail of `~/.local/state/rbee/hive.log`.
    """
    args = HiveArgs(
        host=hive.host,
        port=hive.port,
        name=hive.name,
        queen_url=queen_url,
        identity=REMOTE_HIVE_IDENTITY,
    )
    argv = [HIVE_EXECUTABLE, *args.to_argv()]
    files = [
        REMOTE_STATE,
        REMOTE_HIVE_PID,
        REMOTE_HIVE_PORT,
        REMOTE_HIVE_LOG,
        str(hive.port),
        hive_unit(args),
        REMOTE_HIVE_IDENTITY,
    ]
    command = shlex.join(["sh", "-c", _START, "sh", *files, *argv])
    started = time.monotonic()
    result = await run_remote(conn, command, hive=hive.name, input=identity.decode(), check=False)
    output = dict(
        line.partition("=")[::2] for line in str(result.stdout or "").splitlines() if "=" in line
    )
    if result.exit_status != 0 or not (output.get("pid") or output.get("already")):
        raise SshFailure(
            "command_failed",
            f"hive {hive.name}: starting rbee-hive failed: {str(result.stderr or '').strip()}",
            hint="is rbee installed there? (`rbee apply` installs it)",
        )
    if "already" in output:
        log.info("event=hive_already_running hive=%s pid=%s", hive.name, output["already"])
        return int(output["already"])
    pid = int(output["pid"])

    async def exited() -> bool:
        check = shlex.join(["sh", "-c", _ALIVE, "sh", str(pid)])
        return (await run_remote(conn, check, hive=hive.name, check=False)).exit_status != 0

    await wait_healthy(
        f"hive {hive.name}: rbee-hive (pid {pid})",
        hive.url,
        accept=lambda health: health.service == HiveArgs.SCRIPT,
        exited=exited,
        log_tail=lambda: hive_log_tail(conn, hive=hive.name),
        timeout_s=timeout_s - (time.monotonic() - started),
        verify=cluster_tls(),
        exit_check_s=_ALIVE_CHECK_S,
        timeout_hint="is the hive's port reachable from the queen's machine (firewall)?",
    )
    log.info(
        "event=hive_started hive=%s pid=%d seconds=%.2f",
        hive.name, pid, time.monotonic() - started,
    )  # fmt: skip
    return pid


async def stop_hive(
    conn: asyncssh.SSHClientConnection, grace_s: float = 5.0, *, hive: str | None = None
) -> bool:
    """Stop the remote hive daemon: SIGTERM, then SIGKILL after `grace_s`. False if none ran."""
    tenths = str(max(1, round(grace_s * 10)))
    command = shlex.join(["sh", "-c", _STOP, "sh", REMOTE_HIVE_PID, REMOTE_HIVE_PORT, tenths])
    label = hive or "?"
    result = await run_remote(conn, command, hive=label, timeout_s=grace_s + 30.0)
    outcome = str(result.stdout or "").strip().rpartition("stopped=")[2]
    log.info("event=hive_stopped hive=%s how=%s", label, outcome)
    return outcome in {"term", "kill"}


async def hive_log_tail(
    conn: asyncssh.SSHClientConnection, lines: int = 20, *, hive: str | None = None
) -> str:
    """The last lines of the remote hive's log, or its unit's journal (empty when none)."""
    script = (
        f'if [ -f "{HIVE_UNIT_DIR}/{HIVE_SERVICE}" ]; then '
        f'journalctl --user -u {HIVE_SERVICE} -n "$1" --no-pager; else tail -n "$1" "$2"; fi'
    )
    command = shlex.join(["sh", "-c", script, "sh", str(lines), REMOTE_HIVE_LOG])
    result = await run_remote(conn, command, hive=hive or "?", check=False)
    return str(result.stdout or "").rstrip()
