"""`rpc-server-rbee`: llama.cpp's RPC server, lending this hive's devices to a worker on
another hive, with nothing but a mutual-TLS gate in front of it.

The order of `main` is the security: the gate's socket is bound on the hive's address first;
then the process moves into a network namespace of its own (an unprivileged user namespace
makes that possible without root), whose loopback no other process shares; llama.cpp's server
listens there. The gate (`tunnel.serve_gate`), still holding its socket in the hive's
namespace, is the only way in.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from rbee.daemon import fail, listen
from rbee.errors import RbeeError
from rbee.pki import server_context
from rbee.wire import RpcServerArgs
from rbee.worker.tunnel import run_gate

__all__ = ["main", "private_loopback"]

SERVICE = "rpc-server-rbee"
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_log = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> None:
    """Bind the gate, leave the hive's network, start llama.cpp's server on the private
    loopback, and pipe admitted workers to it until killed."""
    args = RpcServerArgs.parse_cli(argv)
    gate = listen(SERVICE, args.host, args.port)
    identity = Path(args.identity)
    try:
        context = server_context(identity)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        fail(RbeeError(f"cannot use the TLS identity {identity}: {exc}"))
    try:
        private_loopback()
    except OSError as exc:
        fail(
            RbeeError(
                f"cannot make a private network namespace for llama.cpp's RPC server: {exc}",
                hint="rbee never exposes it on a shared address; unprivileged user namespaces "
                "must be enabled (sysctl user.max_user_namespaces > 0)",
            )
        )
    target = ("127.0.0.1", _free_port())
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Imported only now: llama.cpp's library may start threads, and a process must be single-
    # threaded to enter a new user namespace.
    from rbee.worker import ggml_rpc

    try:
        devices = ggml_rpc.server_devices(gpus=args.device.startswith("cuda"))
    except RbeeError as exc:
        fail(exc)
    threads = args.threads or os.cpu_count() or 1

    def run() -> None:
        ggml_rpc.start_server(f"{target[0]}:{target[1]}", cache, threads, devices)
        _log.error("llama.cpp's RPC server stopped")
        os._exit(1)

    threading.Thread(target=run, name="ggml-rpc", daemon=True).start()
    _wait_listening(target)
    _log.info(
        "rpc server ready hive=%s gate=%s:%d devices=%d cache=%s",
        args.hive, args.host, gate.getsockname()[1], len(devices), cache,
    )  # fmt: skip
    with contextlib.suppress(KeyboardInterrupt):
        run_gate(gate, identity, context, target)


def private_loopback() -> None:
    """Move this process into a network namespace of its own, with its loopback up: what
    listens there is reachable from this process alone. Needs a single-threaded process."""
    libc = ctypes.CDLL(None, use_errno=True)
    flags = _CLONE_NEWNET if os.geteuid() == 0 else _CLONE_NEWUSER | _CLONE_NEWNET
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(flags) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    if flags & _CLONE_NEWUSER:
        # Stay who we are inside (files keep their owner); the namespace grants the network
        # capability over its own loopback, nothing over the machine's.
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", 0)
        (flags_now,) = struct.unpack("16sH", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1:]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags_now | _IFF_UP))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(target: tuple[str, int], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection(target, timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                fail(RbeeError("llama.cpp's RPC server did not start listening"))
            time.sleep(0.05)


if __name__ == "__main__":
    main()
