"""Hive lifecycles: local hives are the queen's child processes; network hives are installed,
started and stopped over SSH."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

import asyncssh
import psutil

from rbee.clients import HiveClient
from rbee.config.models import Hive
from rbee.daemon import spawn_detached
from rbee.errors import RbeeError, UnavailableError
from rbee.paths import state_dir
from rbee.remote import daemon as remote_daemon
from rbee.remote import install as remote_install
from rbee.remote.connect import SshConnections
from rbee.remote.wheelhouse import build_wheelhouse

__all__ = ["HiveLifecycle", "stop_pid"]

log = logging.getLogger(__name__)


class HiveLifecycle:
    """Installs, starts and stops `rbee-hive` daemons, here or over SSH."""

    def __init__(self, queen_url: str, token: str | None) -> None:
        self._queen_url = queen_url
        self._token = token
        self._wheelhouse_lock = asyncio.Lock()

    async def start(
        self,
        hive: Hive,
        *,
        install: bool = False,
        upgrade: bool = False,
        connections: SshConnections | None = None,
    ) -> int:
        """Start the hive (installing or upgrading rbee first on a network hive); its pid."""
        if hive.effective_mode == "local":
            return await self._start_local(hive)
        wheels: list[Path] = []
        if install:
            async with self._wheelhouse_lock:
                # Built once per source change and cached; a thread, as pip runs inside.
                wheels = await asyncio.to_thread(build_wheelhouse)
        connections = connections or SshConnections()
        try:
            conn = await connections.get(hive)
            if upgrade:
                await remote_daemon.stop_hive(conn, hive=hive.name)
            if install:
                await remote_install.install(conn, wheels, hive=hive.name)
            return await remote_daemon.start_hive(conn, hive, self._queen_url, self._token)
        except (asyncssh.Error, OSError) as exc:
            # The connection dropped mid-way: a retry reconnects and picks up where it stopped.
            await connections.forget(hive)
            raise UnavailableError(f"hive {hive.name}: SSH connection lost: {exc!r}") from exc

    async def stop(
        self, hive: Hive, *, uninstall: bool = False, connections: SshConnections | None = None
    ) -> bool:
        """Stop the hive; `uninstall` also removes rbee and the caches of a network hive."""
        if hive.effective_mode == "local":
            return await self._stop_local(hive)
        conn = await (connections or SshConnections()).get(hive)
        if uninstall:
            await remote_install.uninstall(conn, purge_caches=True, hive=hive.name)
            return True
        return await remote_daemon.stop_hive(conn, hive=hive.name)

    async def _start_local(self, hive: Hive, timeout_s: float = 30.0) -> int:
        """Start the hive as a child process and wait for its /health; returns its pid."""
        log_path = state_dir() / f"hive-{hive.name}.log"
        command = [
            sys.executable,
            "-m",
            "rbee.hive.server",
            "--host",
            hive.host,
            "--port",
            str(hive.port),
            "--name",
            hive.name,
            "--queen-url",
            self._queen_url,
        ]
        proc = spawn_detached(command, log_path, self._token)
        log.info("event=hive_spawned hive=%s pid=%s", hive.name, proc.pid)
        deadline = time.monotonic() + timeout_s
        async with HiveClient(hive.url, self._token, timeout=2.0) as client:
            while True:
                try:
                    health = await client.health()
                    if health.pid == proc.pid:
                        return proc.pid
                except UnavailableError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RbeeError(
                        f"hive {hive.name} did not start: {_tail(log_path)}",
                        hint=f"full log: {log_path}",
                    )
                await asyncio.sleep(0.1)

    async def _stop_local(self, hive: Hive) -> bool:
        """Stop a local hive found by its /health pid; False when none was running."""
        async with HiveClient(hive.url, self._token, timeout=2.0) as client:
            try:
                health = await client.health()
            except RbeeError:
                return False
        await asyncio.to_thread(stop_pid, health.pid, ("rbee.hive.server", "rbee-hive"))
        return True


def stop_pid(pid: int, markers: tuple[str, ...], grace_s: float = 5.0) -> None:
    """SIGTERM `pid` if its command line holds one of `markers`, SIGKILL after `grace_s`."""
    try:
        proc = psutil.Process(pid)
        cmdline = " ".join(proc.cmdline())
        if not any(marker in cmdline for marker in markers):
            raise RbeeError(f"pid {pid} is not a {markers[0]} process; refusing to signal it")
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(grace_s)
    except psutil.NoSuchProcess:
        return


def _tail(path: os.PathLike[str], lines: int = 3) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read().strip().splitlines()
    except OSError:
        return "no log"
    return " | ".join(text[-lines:]) or "no output"
