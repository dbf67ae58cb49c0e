"""SSH connections to network hives: host keys always verified, failures named by kind."""

from __future__ import annotations

import asyncio
import getpass
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import asyncssh

from rbee.config.models import Hive
from rbee.errors import RbeeError, SshErrorKind

__all__ = [
    "DEFAULT_KNOWN_HOSTS",
    "SshConnections",
    "SshFailure",
    "SshTarget",
    "connect",
    "run_remote",
]

log = logging.getLogger(__name__)

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
_SSH_PORT = 22
_TRANSIENT: frozenset[SshErrorKind] = frozenset({"timeout", "unreachable"})
_KEEPALIVE_S = 15.0
_DOWN_HINT = "is the host up, and reachable from the queen's machine?"


class SshFailure(RbeeError):
    """Connecting to (or running a command on) a hive over SSH failed; `kind` says how."""

    def __init__(self, kind: SshErrorKind, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.kind: SshErrorKind = kind
        # A host that is down or unreachable may be back soon; a key or auth problem won't fix
        # itself.
        self.transient = kind in _TRANSIENT


_Endpoint = tuple[str, int, str, Path | None, Path]


@dataclass(frozen=True)
class SshTarget:
    """Where and as whom to connect, with `~` expanded and defaults filled in."""

    hive: str
    host: str
    port: int
    user: str
    key: Path | None
    known_hosts: Path

    @classmethod
    def of(cls, hive: Hive) -> SshTarget:
        ssh = hive.ssh
        key = ssh.key if ssh and ssh.key else None
        known_hosts = ssh.known_hosts if ssh and ssh.known_hosts else DEFAULT_KNOWN_HOSTS
        return cls(
            hive=hive.name,
            host=hive.host,
            port=ssh.port if ssh else _SSH_PORT,
            user=ssh.user if ssh and ssh.user else getpass.getuser(),
            key=Path(key).expanduser() if key else None,
            known_hosts=Path(known_hosts).expanduser(),
        )

    @property
    def endpoint(self) -> _Endpoint:
        """What makes two connections the same (two hives on one machine share one)."""
        return (self.host, self.port, self.user, self.key, self.known_hosts)

    @property
    def where(self) -> str:
        port = "" if self.port == _SSH_PORT else f":{self.port}"
        return f"{self.user}@{self.host}{port}"

    def fail(self, kind: SshErrorKind, what: str, hint: str | None = None) -> SshFailure:
        return SshFailure(kind, f"hive {self.hive}: {what}", hint)


async def connect(hive: Hive, *, timeout_s: float = 5.0) -> asyncssh.SSHClientConnection:
    """Open an SSH connection to `hive` as its ssh user, verifying the host key.

    The host key must be in the hive's known_hosts (`ssh.known_hosts`, default
    `~/.ssh/known_hosts`); every failure is an `SshFailure` whose `kind` names it.
    """
    target = SshTarget.of(hive)
    known_hosts = _read_known_hosts(target)
    client_keys: list[asyncssh.SSHKey] | tuple[()] = (
        [_read_key(target, target.key)] if target.key else ()
    )
    try:
        conn = await asyncssh.connect(
            target.host,
            target.port,
            username=target.user,
            known_hosts=known_hosts,
            client_keys=client_keys,
            # With an explicit key, never fall back to whatever an agent offers.
            agent_path=None if target.key else (),
            # The cluster YAML is the whole truth: no ~/.ssh/config rewriting host or user.
            config=[],
            preferred_auth="publickey",
            connect_timeout=timeout_s,
            # A pooled connection to a host that vanished is closed within a minute.
            keepalive_interval=_KEEPALIVE_S,
            keepalive_count_max=3,
        )
    except asyncssh.HostKeyNotVerifiable:
        raise _host_key_failure(target, known_hosts) from None
    except asyncssh.PermissionDenied:
        key = str(target.key) if target.key else "the default keys"
        raise target.fail(
            "auth_failed",
            f"{target.where} refused the key {key}",
            hint=f"check ssh.user and ssh.key, and that the public key is in "
            f"~{target.user}/.ssh/authorized_keys on {target.host}",
        ) from None
    except ConnectionRefusedError:
        raise target.fail(
            "connection_refused",
            f"nothing accepts SSH connections on {target.host}:{target.port} (connection refused)",
            hint="start sshd on the host or fix ssh.port",
        ) from None
    except TimeoutError:
        raise target.fail(
            "timeout",
            f"no SSH answer from {target.host}:{target.port} within {timeout_s:g} s",
            hint=_DOWN_HINT,
        ) from None
    except socket.gaierror as exc:
        raise target.fail(
            "unreachable", f"cannot resolve {target.host}: {exc.strerror}", hint="fix host"
        ) from None
    except OSError as exc:  # no route to host, network unreachable, ...
        what = f"cannot reach {target.host}:{target.port}: {exc.strerror or exc}"
        raise target.fail("unreachable", what, hint=_DOWN_HINT) from None
    except asyncssh.Error as exc:
        raise target.fail(
            "unreachable", f"SSH to {target.where} failed: {exc.reason}", hint=None
        ) from None
    log.debug("event=ssh_connected hive=%s target=%s", target.hive, target.where)
    return conn


async def run_remote(
    conn: asyncssh.SSHClientConnection,
    command: str,
    *,
    hive: str,
    timeout_s: float | None = 60.0,
    check: bool = True,
    input: str | None = None,
) -> asyncssh.SSHCompletedProcess:
    """Run `command` (built with shlex.join/quote by the caller) on the hive's machine.

    A non-zero exit (with `check`) or a timeout is an `SshFailure` of kind `command_failed`
    carrying the tail of stderr. `input` goes to the command's stdin (the way to pass a secret:
    never on a command line, where `ps` shows it).
    """
    try:
        result = await asyncio.wait_for(
            conn.run(command, check=False, input=input), timeout=timeout_s
        )
    except TimeoutError:
        raise SshFailure(
            "command_failed", f"hive {hive}: remote command timed out after {timeout_s:g} s"
        ) from None
    except (OSError, asyncssh.Error) as exc:
        raise SshFailure(
            "command_failed", f"hive {hive}: SSH connection lost while running a command: {exc}"
        ) from None
    if check and result.exit_status != 0:
        raise SshFailure(
            "command_failed",
            f"hive {hive}: remote command failed with exit status {result.exit_status}: "
            f"{_tail(result.stderr) or _tail(result.stdout)}",
        )
    return result


def _tail(output: object, lines: int = 15) -> str:
    text = output.decode(errors="replace") if isinstance(output, bytes) else str(output or "")
    return "\n".join(text.strip().splitlines()[-lines:])


def _read_known_hosts(target: SshTarget) -> asyncssh.SSHKnownHosts:
    path = target.known_hosts
    try:
        return asyncssh.read_known_hosts(str(path))
    except FileNotFoundError:
        raise target.fail(
            "host_key_unknown",
            f"known_hosts file {path} does not exist, so the host key of {target.host} "
            "cannot be verified",
            hint=_keyscan_hint(target),
        ) from None
    except (OSError, ValueError) as exc:
        raise target.fail("host_key_unknown", f"cannot read known_hosts {path}: {exc}") from None


def _read_key(target: SshTarget, path: Path) -> asyncssh.SSHKey:
    try:
        return asyncssh.read_private_key(str(path))
    except (OSError, asyncssh.KeyImportError) as exc:
        raise target.fail(
            "auth_failed",
            f"cannot read the ssh key {path}: {exc}",
            hint="ssh.key must name an unencrypted private key readable by the queen",
        ) from None


def _host_key_failure(target: SshTarget, known_hosts: asyncssh.SSHKnownHosts) -> SshFailure:
    """Tell an unknown host key from a changed one: is any key recorded for this host?"""
    port = None if target.port == _SSH_PORT else target.port
    recorded = known_hosts.match(target.host, "", port)[0]
    if recorded:
        return target.fail(
            "host_key_changed",
            f"the host key of {target.host} CHANGED: it does not match the key recorded in "
            f"{target.known_hosts}; this may be a man-in-the-middle attack",
            hint=f"if the host was reinstalled on purpose, verify its new key, then "
            f"ssh-keygen -R {_host_pattern(target)} -f {target.known_hosts} and add the new one",
        )
    return target.fail(
        "host_key_unknown",
        f"the host key of {target.host} is not in {target.known_hosts}",
        hint=_keyscan_hint(target),
    )


def _host_pattern(target: SshTarget) -> str:
    return target.host if target.port == _SSH_PORT else f"[{target.host}]:{target.port}"


def _keyscan_hint(target: SshTarget) -> str:
    return (
        f"verify the host's key and add it: ssh-keyscan -p {target.port} {target.host} "
        f">> {target.known_hosts}"
    )


class SshConnections:
    """SSH connections by target, opened on first use and reused.

    A run's own cache (`async with SshConnections()`) closes them at its end. The queen keeps
    one for its lifetime with `idle_s`, as OpenSSH's ControlPersist does: each plan's probes
    ride the connections of the one before, instead of a key exchange per host per plan, and a
    connection unused for `idle_s` is closed.
    """

    def __init__(self, *, timeout_s: float = 5.0, idle_s: float | None = None) -> None:
        self.timeout_s = timeout_s
        self.idle_s = idle_s
        self._conns: dict[_Endpoint, asyncssh.SSHClientConnection] = {}
        self._used: dict[_Endpoint, float] = {}
        self._locks: dict[_Endpoint, asyncio.Lock] = {}

    async def get(self, hive: Hive) -> asyncssh.SSHClientConnection:
        """The open connection to `hive`, connecting on first use (or after it dropped)."""
        endpoint = SshTarget.of(hive).endpoint
        self._close_idle()
        async with self._locks.setdefault(endpoint, asyncio.Lock()):
            conn = self._conns.get(endpoint)
            if conn is None or conn.is_closed():
                conn = await connect(hive, timeout_s=self.timeout_s)
                self._conns[endpoint] = conn
            self._used[endpoint] = time.monotonic()
            return conn

    def _close_idle(self) -> None:
        if self.idle_s is None:
            return
        now = time.monotonic()
        for endpoint, used in list(self._used.items()):
            if now - used > self.idle_s and not self._locks[endpoint].locked():
                del self._used[endpoint]
                conn = self._conns.pop(endpoint, None)
                if conn is not None:
                    conn.close()

    async def forget(self, hive: Hive) -> None:
        """Drop the connection to `hive` (after the host was reinstalled, or when it failed):
        aborted, as a dead peer would never answer a polite close."""
        endpoint = SshTarget.of(hive).endpoint
        self._used.pop(endpoint, None)
        conn = self._conns.pop(endpoint, None)
        if conn is not None:
            conn.abort()
            await conn.wait_closed()

    async def close(self) -> None:
        """Close every connection."""
        conns, self._conns, self._used = list(self._conns.values()), {}, {}
        for conn in conns:
            conn.close()
        await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)

    async def __aenter__(self) -> SshConnections:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
