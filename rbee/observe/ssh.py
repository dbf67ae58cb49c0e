"""The SSH probe: what a network hive's machine has, in one connection and one command."""

from __future__ import annotations

import asyncio
import logging
import shlex
import time
from collections.abc import Iterable

import asyncssh

from rbee.config.models import Hive
from rbee.remote import REMOTE_CACHE, REMOTE_HIVE_PID, REMOTE_HIVE_PORT, REMOTE_VENV
from rbee.remote.connect import SshConnections, SshFailure, connect, run_remote
from rbee.remote.daemon import HIVE_PID_SHELL
from rbee.wire import SshFacts

__all__ = ["PROBE_COMMAND", "parse_probe", "probe", "probe_all"]

log = logging.getLogger(__name__)

_BEGIN = "rbee_probe=1"
_END = "rbee_probe_end=1"

# POSIX sh, run from the user's home. Paths are quoted constants; nothing comes from the YAML.
# rbee's version is read from its installed metadata, not by starting Python: a plan probes
# every host, every time.
_SCRIPT = f"""\
cd || exit 1
echo {_BEGIN}
echo "kernel=$(uname -s)"
echo "arch=$(uname -m)"
if [ -r /etc/os-release ]; then
  ( . /etc/os-release && echo "distro=${{ID:-}}" && echo "distro_version=${{VERSION_ID:-}}" )
fi
if py=$(python3 -V 2>&1); then echo "python=${{py#Python }}"; fi
if [ -x {shlex.quote(REMOTE_VENV + "/bin/python")} ]; then
  for m in {shlex.quote(REMOTE_VENV)}/lib/python3*/site-packages/rbee-*.dist-info/METADATA; do
    [ -r "$m" ] && sed -n 's/^Version: /rbee=/p;/^$/q' "$m"
  done
fi
PIDFILE={shlex.quote(REMOTE_HIVE_PID)}
{HIVE_PID_SHELL}
if pid=$(hive_pid); then
  echo "hive_pid=$pid"
  q={shlex.quote(REMOTE_HIVE_PORT)}
  [ -r "$q" ] && echo "hive_port=$(head -n 1 "$q")"
fi
d={shlex.quote(REMOTE_CACHE)}
[ -d "$d" ] || d=.
df -Pk "$d" 2>/dev/null | awk 'NR == 2 {{ print "disk_free_kb=" $4 }}'
echo {_END}
"""
PROBE_COMMAND = shlex.join(["sh", "-c", _SCRIPT])


def parse_probe(output: str) -> SshFacts:
    """SshFacts from the probe command's key=value output (pure: tested on recorded outputs)."""
    values: dict[str, str] = {}
    lines = output.splitlines()
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if sep:
            values.setdefault(key, value.strip())
    if _BEGIN not in lines or _END not in lines:
        return SshFacts(
            reachable=True,
            error_kind="command_failed",
            error=f"the probe's output is incomplete: {output.strip()[-300:]!r}",
        )
    os_name = " ".join(
        v for v in (values.get("kernel"), values.get("distro"), values.get("distro_version")) if v
    )
    pid = _int(values.get("hive_pid"))
    free_kb = _int(values.get("disk_free_kb"))
    return SshFacts(
        reachable=True,
        os=os_name or None,
        arch=values.get("arch") or None,
        python_version=values.get("python") or None,
        rbee_version=values.get("rbee") or None,
        hive_running=pid is not None,
        hive_pid=pid,
        hive_port=_int(values.get("hive_port")) if pid is not None else None,
        free_disk_bytes=free_kb * 1024 if free_kb is not None else None,
    )


def _int(value: str | None) -> int | None:
    if value is None or not value.isdigit():
        return None
    return int(value)


async def probe(
    hive: Hive, *, timeout_s: float = 5.0, connections: SshConnections | None = None
) -> SshFacts:
    """Probe one network hive's machine; expected failures come back as unreachable facts.

    With `connections`, the connection is taken from (and left in) that run's cache;
    without, one is opened and closed here.
    """
    started = time.monotonic()
    try:
        if connections is not None:
            facts = await _probe_pooled(connections, hive, timeout_s)
        else:
            async with await connect(hive, timeout_s=timeout_s) as conn:
                facts = await _probe_on(conn, hive, timeout_s)
    except SshFailure as exc:
        log.info("event=ssh_probe hive=%s ok=false kind=%s", hive.name, exc.kind)
        error = f"{exc.message} ({exc.hint})" if exc.hint else exc.message
        # A command that failed ran on a reachable machine; every other kind never got there.
        reachable = exc.kind == "command_failed"
        return SshFacts(reachable=reachable, error_kind=exc.kind, error=error)
    log.info("event=ssh_probe hive=%s ok=true seconds=%.3f", hive.name, time.monotonic() - started)
    return facts


async def _probe_pooled(connections: SshConnections, hive: Hive, timeout_s: float) -> SshFacts:
    """Probe on the pool's connection. It is dropped when the probe fails; when the failure was
    the connection itself, lost since its last use (sshd restarted, host rebooted), the probe
    is tried once more on a new one."""
    conn = await connections.get(hive)
    try:
        return await _probe_on(conn, hive, timeout_s)
    except SshFailure:
        lost = conn.is_closed()
        await connections.forget(hive)
        if not lost:
            raise
    return await _probe_on(await connections.get(hive), hive, timeout_s)


async def _probe_on(conn: asyncssh.SSHClientConnection, hive: Hive, timeout_s: float) -> SshFacts:
    result = await run_remote(conn, PROBE_COMMAND, hive=hive.name, timeout_s=timeout_s)
    stdout = result.stdout
    text = stdout.decode(errors="replace") if isinstance(stdout, bytes) else str(stdout or "")
    return parse_probe(text)


async def probe_all(
    hives: Iterable[Hive],
    *,
    concurrency: int = 10,
    timeout_s: float = 5.0,
    connections: SshConnections | None = None,
) -> dict[str, SshFacts]:
    """Probe many hives concurrently, at most `concurrency` at a time; keyed by hive name."""
    semaphore = asyncio.Semaphore(concurrency)
    hives = list(hives)

    async def one(hive: Hive) -> SshFacts:
        async with semaphore:
            return await probe(hive, timeout_s=timeout_s, connections=connections)

    facts = await asyncio.gather(*(one(h) for h in hives))
    return {hive.name: fact for hive, fact in zip(hives, facts, strict=True)}
