"""Hive lifecycles: local hives are the queen's child processes; network hives are installed,
started and stopped over SSH. Each start gives the hive a new TLS identity from the queen's CA
(over the SSH connection to a network hive): its certificate names the hive and its address."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import asyncssh
import psutil

from rbee.clients import HiveClient, HiveTimeout, cluster_tls, hive_identity
from rbee.config.models import Hive
from rbee.credentials import tls_dir
from rbee.errors import RbeeError, UnavailableError
from rbee.paths import state_dir
from rbee.pki import write_private
from rbee.process import start_daemon, terminate
from rbee.remote import daemon as remote_daemon
from rbee.remote import install as remote_install
from rbee.remote.connect import SshConnections
from rbee.remote.wheelhouse import build_wheelhouse
from rbee.wire import HiveArgs

__all__ = ["HiveLifecycle"]

log = logging.getLogger(__name__)


class HiveLifecycle:
    """Installs, starts and stops `rbee-hive` daemons, here or over SSH."""

    def __init__(self, queen_url: str) -> None:
        self._queen_url = queen_url
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
        connections = connections or SshConnections()
        try:
            conn = await connections.get(hive)
            wheels: list[Path] = []
            if install:
                # For the host's own Python; built once per source change and Python and
                # cached. A thread, as pip runs inside.
                python = await remote_install.remote_python(conn, hive=hive.name)
                async with self._wheelhouse_lock:
                    wheels = await asyncio.to_thread(build_wheelhouse, None, python)
            if upgrade:
                await remote_daemon.stop_hive(conn, hive=hive.name)
            if install:
                await remote_install.install(conn, wheels, hive=hive.name)
            return await remote_daemon.start_hive(
                conn, hive, self._queen_url, hive_identity(hive.name, hive.host)
            )
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
        identity = write_private(
            tls_dir() / f"hive-{hive.name}.pem", hive_identity(hive.name, hive.host)
        )
        args = HiveArgs(
            host=hive.host,
            port=hive.port,
            name=hive.name,
            queen_url=self._queen_url,
            identity=str(identity),
        )
        return await start_daemon(
            f"hive {hive.name}",
            args.command(),
            state_dir() / f"hive-{hive.name}.log",
            hive.url,
            token=None,
            # Another hive still answering on the port is not the one just started.
            accept=lambda health, pid: health.pid == pid,
            timeout_s=timeout_s,
            verify=cluster_tls(),
        )

    async def _stop_local(self, hive: Hive) -> bool:
        """Stop a local hive found by its /health pid; False when none was running."""
        async with HiveClient(hive.url, hive.name, timeout=HiveTimeout.CHECK) as client:
            try:
                health = await client.health()
            except RbeeError:
                return False
        await asyncio.to_thread(_stop_hive_process, health.pid)
        return True


def _stop_hive_process(pid: int, grace_s: float = 5.0) -> None:
    """SIGTERM the hive `pid`, SIGKILL it after `grace_s`; refuses a pid that runs no hive."""
    try:
        proc = psutil.Process(pid)
        if not HiveArgs.runs_in(proc.cmdline()):
            raise RbeeError(f"pid {pid} is not an rbee-hive process; refusing to signal it")
    except psutil.NoSuchProcess:
        return
    terminate(proc, grace_s)
