"""Install rbee on a remote machine from the wheelhouse over SFTP: no index needed there."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

import asyncssh

from rbee.remote import REMOTE_CACHE, REMOTE_STATE, REMOTE_VENV, REMOTE_WHEELHOUSE
from rbee.remote.connect import SshFailure, run_remote
from rbee.remote.daemon import HIVE_ENV_FILE, HIVE_UNIT_DIR, stop_hive
from rbee.systemd import HIVE_SERVICE

__all__ = ["install", "installed_version", "remote_python", "uninstall"]

log = logging.getLogger(__name__)

_PIP_TIMEOUT_S = 900.0
_PYTHON = f"{REMOTE_VENV}/bin/python"
# Written into the venv after a successful install: the digest of the wheelhouse it came from.
_MARKER = f"{REMOTE_VENV}/rbee-wheelhouse.sha256"

# Runs under the remote `python3`: its version, the wheelhouse digest the venv was last
# installed from, then the sha256 of every wheel already there.
_INVENTORY = """\
import hashlib, os, sys
print("python=%d.%d" % sys.version_info[:2])
if os.path.isfile(sys.argv[2]):
    print("installed=" + open(sys.argv[2]).read().strip())
folder = sys.argv[1]
for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
    path = os.path.join(folder, name)
    if name.endswith(".whl") and os.path.isfile(path):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        print("wheel=%s %s" % (digest.hexdigest(), name))
"""
_VERSION = "import rbee; print(rbee.__version__)"


async def install(
    conn: asyncssh.SSHClientConnection, wheelhouse: Sequence[Path], *, hive: str | None = None
) -> str:
    """Upload `wheelhouse` and install rbee (with the worker extra) into the remote venv.

    Wheels already on the remote with the same sha256 are not sent again; wheels of another
    build are removed. Returns the rbee version now installed there.
    """
    label = hive or _peer(conn)
    started = time.monotonic()
    # ~70 MB to hash: off the event loop, which may be serving other hives meanwhile.
    local = await asyncio.to_thread(lambda: {p.name: _sha256(p) for p in wheelhouse})
    rbee_wheels = [name for name in local if name.startswith("rbee-")]
    if len(rbee_wheels) != 1:
        raise SshFailure("command_failed", f"hive {label}: the wheelhouse has no single rbee wheel")
    rbee_wheel = rbee_wheels[0]

    digest = hashlib.sha256("".join(f"{n} {h}\n" for n, h in sorted(local.items())).encode())
    inventory = await run_remote(
        conn, shlex.join(["python3", "-c", _INVENTORY, REMOTE_WHEELHOUSE, _MARKER]), hive=label
    )
    remote_python, installed_from, remote = _parse_inventory(str(inventory.stdout))
    _check_python(label, remote_python, list(local))
    if installed_from == digest.hexdigest() and not set(remote) ^ set(local):
        version = await installed_version(conn, hive=label)
        if version == _wheel_version(rbee_wheel):
            log.info("event=hive_install_current hive=%s version=%s", label, version)
            return version

    missing = [path for path in wheelhouse if remote.get(path.name) != local[path.name]]
    stale = sorted(set(remote) - set(local))
    await _upload(conn, missing, stale)
    uploaded = time.monotonic()

    pip = [_PYTHON, "-m", "pip", "--disable-pip-version-check", "--no-input", "install"]
    # --no-compile: byte-compiling every module of every wheel is 60 % of an install's time
    # (10.4 s -> 3.9 s here); Python compiles what the hive imports, once, on its first start.
    offline = ["--no-index", "--find-links", REMOTE_WHEELHOUSE, "--no-compile"]
    steps = [
        f"[ -x {shlex.quote(_PYTHON)} ] || {shlex.join(['python3', '-m', 'venv', REMOTE_VENV])}",
        shlex.join([*pip, *offline, "--quiet", f"rbee[worker]=={_wheel_version(rbee_wheel)}"]),
    ]
    # The install differs from this wheelhouse (a new build of the same version, or files
    # changed by hand): pip would keep what it sees as installed, so rbee itself is reinstalled.
    force = ["--no-deps", "--force-reinstall", f"{REMOTE_WHEELHOUSE}/{rbee_wheel}"]
    steps.append(shlex.join([*pip, *offline, "--quiet", *force]))
    await run_remote(conn, " && ".join(steps), hive=label, timeout_s=_PIP_TIMEOUT_S)
    version = await installed_version(conn, hive=label)
    if version is None:
        raise SshFailure("command_failed", f"hive {label}: rbee does not import after install")
    mark = ["sh", "-c", 'printf "%s\\n" "$1" >"$2"', "sh", digest.hexdigest(), _MARKER]
    await run_remote(conn, shlex.join(mark), hive=label)
    log.info(
        "event=hive_installed hive=%s version=%s sent=%d upload_s=%.1f total_s=%.1f",
        label, version, len(missing), uploaded - started, time.monotonic() - started,
    )  # fmt: skip
    return version


async def remote_python(conn: asyncssh.SSHClientConnection, *, hive: str | None = None) -> str:
    """The `major.minor` of the host's `python3`, which rbee is installed for."""
    label = hive or _peer(conn)
    command = shlex.join(["python3", "-c", 'import sys; print("%d.%d" % sys.version_info[:2])'])
    result = await run_remote(conn, command, hive=label, check=False)
    version = str(result.stdout or "").strip()
    if result.exit_status != 0 or not version:
        raise _no_python(label)
    return version


async def installed_version(
    conn: asyncssh.SSHClientConnection, *, hive: str | None = None
) -> str | None:
    """The rbee version in the remote venv, or None when none is installed."""
    command = f"[ -x {shlex.quote(_PYTHON)} ] && {shlex.join([_PYTHON, '-c', _VERSION])}"
    result = await run_remote(conn, command, hive=hive or _peer(conn), check=False)
    output = str(result.stdout or "").strip()
    return output or None if result.exit_status == 0 else None


async def uninstall(
    conn: asyncssh.SSHClientConnection, purge_caches: bool, *, hive: str | None = None
) -> None:
    """Stop the hive if it runs and remove the venv; with `purge_caches`, models and logs too."""
    label = hive or _peer(conn)
    await stop_hive(conn, hive=label)
    unit_file = f"{HIVE_UNIT_DIR}/{HIVE_SERVICE}"
    disable = f'if [ -f "{unit_file}" ]; then systemctl --user disable {HIVE_SERVICE}; fi; true'
    script = f"cd && {{ {disable}; }} >/dev/null 2>&1"
    await run_remote(conn, shlex.join(["sh", "-c", script]), hive=label)
    paths = [REMOTE_VENV, unit_file, HIVE_ENV_FILE]
    if purge_caches:
        paths += [REMOTE_CACHE, REMOTE_STATE]
    await run_remote(conn, shlex.join(["rm", "-rf", "--", *paths]), hive=label)
    log.info("event=hive_uninstalled hive=%s purge=%s", label, purge_caches)


async def _upload(
    conn: asyncssh.SSHClientConnection, wheels: Sequence[Path], stale: Sequence[str]
) -> None:
    async with conn.start_sftp_client() as sftp:
        await sftp.makedirs(REMOTE_WHEELHOUSE, exist_ok=True)
        for name in stale:
            await sftp.remove(f"{REMOTE_WHEELHOUSE}/{name}")
        # Sent under a temporary name and renamed: never a half wheel under the real name.
        for path in wheels:
            final = f"{REMOTE_WHEELHOUSE}/{path.name}"
            await sftp.put(str(path), f"{final}.part")
            await sftp.posix_rename(f"{final}.part", final)


def _parse_inventory(output: str) -> tuple[str | None, str | None, dict[str, str]]:
    python: str | None = None
    installed_from: str | None = None
    wheels: dict[str, str] = {}
    for line in output.splitlines():
        key, _, value = line.partition("=")
        if key == "python":
            python = value.strip()
        elif key == "installed":
            installed_from = value.strip()
        elif key == "wheel":
            digest, _, name = value.strip().partition(" ")
            wheels[name] = digest
    return python, installed_from, wheels


def _check_python(label: str, remote: str | None, wheels: Sequence[str]) -> None:
    """Compiled wheels carry a CPython ABI tag (cp311): the remote python3 must match it."""
    if remote is None:
        raise _no_python(label)
    abis = {name[:-4].split("-")[-2] for name in wheels}
    wanted = {f"{abi[2]}.{abi[3:]}" for abi in abis if abi.startswith("cp") and abi[2:].isdigit()}
    if wanted and remote not in wanted:
        raise SshFailure(
            "command_failed",
            f"hive {label}: the wheelhouse was built for Python {', '.join(sorted(wanted))} but "
            f"the remote python3 is {remote}",
            hint="run the queen on the same Python minor version as the hives",
        )


def _no_python(label: str) -> SshFailure:
    return SshFailure(
        "command_failed",
        f"hive {label}: python3 on the remote host did not answer",
        hint="install python3 with the venv module there (Debian: apt install python3-venv)",
    )


def _wheel_version(name: str) -> str:
    return name.split("-")[1]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _peer(conn: asyncssh.SSHClientConnection) -> str:
    peer = conn.get_extra_info("peername")
    return str(peer[0]) if peer else "?"
