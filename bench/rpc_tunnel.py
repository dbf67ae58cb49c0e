"""Which authenticated channel should carry llama.cpp's RPC between two hives (issue 23, point 4):
rbee's mutual-TLS tunnel or OpenSSH port forwarding? Measured against direct TCP, the floor
(what `llama-server --rpc` does, unauthenticated), over the same path in one run.

Usage (root: it starts an sshd):
    .venv/bin/python bench/rpc_tunnel.py [--rounds 3] [--round-trips 5000] [--mib 256]
        [--ssh-cipher default aes128-gcm@openssh.com]

Everything is on this machine's loopback, each end in a process of its own; the target is a
small echo/sink server here (threads, blocking sockets, TCP_NODELAY) that the three paths reach:

- direct: the client connects to the target;
- rbee TLS: the client connects to a `Forwarder` (rbee/worker/tunnel.py: a loopback listener
  admitting only this user's sockets, as in the head worker), which pipes it over mutual TLS to
  `serve_gate` (as in the RPC server's process), which pipes it to the target. Certificates from
  a throwaway cluster CA: a "worker" identity for the forwarder, a "hive" identity "b" at
  127.0.0.1 for the gate;
- ssh -L: `ssh -N -L` to an sshd started here on a free port (a generated host key and user
  key, public-key login only), once per `--ssh-cipher` ("default" lets OpenSSH choose; the
  cipher it negotiated is in the row's name).

Per path and round, on one connection: round-trip time of `round-trips` 9-byte requests each
answered with 32 bytes (the size of llama.cpp's per-token RPC commands, GRAPH_COMPUTE's reply
and the like), after 200 unmeasured; then `mib` MiB sent one way in 1 MiB writes (weights at
load), timed from the first byte to the sink's acknowledgement of the last (MB = 10^6 bytes).
Rounds rotate the order of the paths; each figure is the median of the rounds (the machine has
2 cores shared with other work). A token of a split model costs several round trips and no
bulk transfer, so the channel chosen is the one adding the least round-trip time.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import pwd
import re
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from rbee.pki import Authority, client_context, server_context, tls_name, write_private
from rbee.worker.tunnel import Forwarder, run_gate

REQUEST, ANSWER = 9, 32
WARMUP = 200
CHUNK = 1 << 20
PING, SINK, READY, DONE = b"P", b"S", b"r", b"!"
SSHD = "/usr/sbin/sshd"
HIVE = "b"
_READY_TIMEOUT_S = 20.0
# Each end runs in a process of its own, as on two hives: none shares a GIL with the client.
_spawn = multiprocessing.get_context("spawn")


@dataclass
class Round:
    p50_us: float
    p99_us: float
    mb_s: float


# ---- the target: echo for round trips, sink for bulk ----


def _recv_exact(conn: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _serve_one(conn: socket.socket) -> None:
    with conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        mode = _recv_exact(conn, 1)
        if mode == PING:
            answer = bytes(ANSWER)
            while _recv_exact(conn, REQUEST) is not None:
                conn.sendall(answer)
        elif mode == SINK:
            header = _recv_exact(conn, 8)
            if header is None:
                return
            left = int.from_bytes(header, "big")
            conn.sendall(READY)
            buffer = memoryview(bytearray(CHUNK))
            while left:
                got = conn.recv_into(buffer, min(left, CHUNK))
                if not got:
                    return
                left -= got
            conn.sendall(DONE)


def _target(ready: Connection) -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    ready.send(listener.getsockname()[1])
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve_one, args=(conn,), daemon=True).start()


# ---- rbee's tunnel: the gate (RPC server's side) and the forwarder (head worker's side) ----


def _gate(identity: str, target_port: int, ready: Connection) -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    ready.send(sock.getsockname()[1])
    bundle = Path(identity)
    run_gate(sock, bundle, server_context(bundle), ("127.0.0.1", target_port))


def _forwarder(identity: str, gate_port: int, ready: Connection) -> None:
    context = client_context(Path(identity))
    forwarder = Forwarder(HIVE, ("127.0.0.1", gate_port), context, lambda _: None)
    ready.send(forwarder.port)
    threading.Event().wait()


def _start(stack: contextlib.ExitStack, target: Callable[..., None], *args: object) -> int:
    """Run `target(*args, ready)` in a child process; the port it sends back."""
    parent, child = _spawn.Pipe(duplex=False)
    process = _spawn.Process(target=target, args=(*args, child), daemon=True)
    process.start()
    stack.callback(process.join, 5)
    stack.callback(process.terminate)
    if not parent.poll(_READY_TIMEOUT_S):
        raise RuntimeError(f"{target.__name__} did not start")
    return int(parent.recv())


def _tls_cipher(identity: Path, gate_port: int) -> str:
    """The TLS version and cipher the gate negotiates with a worker's client context."""
    context = client_context(identity)
    with (
        socket.create_connection(("127.0.0.1", gate_port)) as raw,
        context.wrap_socket(raw, server_hostname=tls_name("hive", HIVE)) as tls,
    ):
        name, version, _ = tls.cipher() or ("?", "?", 0)
        return f"{version} {name}"


# ---- OpenSSH: an sshd on a free loopback port, `ssh -N -L` per cipher ----


def _keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True
    )
    return path.with_suffix(".pub").read_text()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on port {port}") from None
            time.sleep(0.02)


def _popen(stack: contextlib.ExitStack, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    stack.callback(process.wait, 5)
    stack.callback(process.terminate)
    return process


def _sshd(stack: contextlib.ExitStack, work: Path) -> tuple[int, Path, Path]:
    """Start an sshd admitting this user with a new key: its port, the key, known_hosts."""
    host_key, user_key = work / "ssh_host_ed25519_key", work / "id_ed25519"
    host_public = _keygen(host_key).split()
    (work / "authorized_keys").write_text(_keygen(user_key))
    port, user = _free_port(), pwd.getpwuid(os.getuid()).pw_name
    known_hosts = work / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_public[0]} {host_public[1]}\n")
    config = work / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "ListenAddress 127.0.0.1",
                f"Port {port}",
                f"HostKey {host_key}",
                f"PidFile {work / 'sshd.pid'}",
                f"AuthorizedKeysFile {work / 'authorized_keys'}",
                f"AllowUsers {user}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                # The keys live under /tmp, which is group- and world-writable.
                "StrictModes no",
                "AllowTcpForwarding local",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = work / "sshd.log"
    process = _popen(stack, [SSHD, "-D", "-f", str(config), "-E", str(log)], log)
    _wait_port(port, process, log)
    return port, user_key, known_hosts


def _ssh_forward(
    stack: contextlib.ExitStack,
    work: Path,
    sshd: tuple[int, Path, Path],
    target_port: int,
    cipher: str,
) -> tuple[int, str]:
    """`ssh -N -L` from a free local port to the target: the port and the cipher negotiated."""
    sshd_port, user_key, known_hosts = sshd
    local = _free_port()
    choice = [] if cipher == "default" else ["-o", f"Ciphers={cipher}"]
    log = work / f"ssh-{cipher}.log"
    argv = [
        "ssh", "-v", "-N", "-F", "/dev/null", "-p", str(sshd_port), "-i", str(user_key),
        "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts}", "-o", "ExitOnForwardFailure=yes",
        *choice, "-L", f"127.0.0.1:{local}:127.0.0.1:{target_port}",
        f"{pwd.getpwuid(os.getuid()).pw_name}@127.0.0.1",
    ]  # fmt: skip
    process = _popen(stack, argv, log)
    _wait_port(local, process, log)
    found = re.search(r"kex: client->server cipher: (\S+)", log.read_text())
    return local, found.group(1) if found else cipher


# ---- the client ----


def _connect(port: int) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def _round_trips(port: int, count: int) -> tuple[float, float]:
    """p50 and p99 of `count` request/answer round trips on one connection, in µs."""
    request = bytes(REQUEST)
    samples: list[int] = []
    with _connect(port) as conn:
        conn.sendall(PING)
        for i in range(WARMUP + count):
            start = time.perf_counter_ns()
            conn.sendall(request)
            if _recv_exact(conn, ANSWER) is None:
                raise RuntimeError("the target closed the connection")
            if i >= WARMUP:
                samples.append(time.perf_counter_ns() - start)
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49] / 1000, cuts[98] / 1000


def _bulk(port: int, mib: int) -> float:
    """MB/s sending `mib` MiB one way, once the path to the sink is established."""
    chunk = memoryview(bytes(CHUNK))
    with _connect(port) as conn:
        conn.sendall(SINK + (mib * CHUNK).to_bytes(8, "big"))
        if _recv_exact(conn, 1) != READY:
            raise RuntimeError("the sink did not answer")
        start = time.perf_counter()
        for _ in range(mib):
            conn.sendall(chunk)
        if _recv_exact(conn, 1) != DONE:
            raise RuntimeError("the sink did not acknowledge")
        return mib * CHUNK / (time.perf_counter() - start) / 1e6


def _measure(paths: dict[str, int], rounds: int, count: int, mib: int) -> dict[str, list[Round]]:
    results: dict[str, list[Round]] = {name: [] for name in paths}
    names = list(paths)
    for index in range(rounds):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            p50, p99 = _round_trips(paths[name], count)
            mb_s = _bulk(paths[name], mib)
            results[name].append(Round(p50, p99, mb_s))
            print(f"  round {index + 1} {name}: {p50:.1f} / {p99:.1f} µs, {mb_s:.0f} MB/s")
    return results


def _table(medians: dict[str, Round], direct: str) -> str:
    floor = medians[direct]
    lines = [
        "| path | RTT p50 µs | RTT p99 µs | MB/s | vs direct |",
        "|---|---|---|---|---|",
    ]
    for name, m in medians.items():
        versus = (
            "floor"
            if name == direct
            else f"{m.p50_us - floor.p50_us:+.1f} µs p50, {100 * m.mb_s / floor.mb_s:.0f} % of MB/s"
        )
        lines.append(f"| {name} | {m.p50_us:.1f} | {m.p99_us:.1f} | {m.mb_s:.0f} | {versus} |")
    return "\n".join(lines)


def _verdict(medians: dict[str, Round], direct: str) -> str:
    """The path adding the least round-trip time, against the best of the other channel."""
    floor = medians[direct].p50_us
    ranked = sorted((name for name in medians if name != direct), key=lambda n: medians[n].p50_us)
    best = ranked[0]
    runner = next((n for n in ranked if _channel(n) != _channel(best)), ranked[-1])
    b, r = medians[best], medians[runner]
    return (
        f"chosen: {best}: it adds {b.p50_us - floor:.1f} µs per round trip (p50) against "
        f"{r.p50_us - floor:.1f} µs for {runner}, and a token costs round trips, not bulk; "
        f"throughput {b.mb_s:.0f} MB/s against {r.mb_s:.0f} MB/s (weights, once per load)"
    )


def _channel(path: str) -> str:
    return path.split(" (")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round-trips", type=int, default=5000)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--ssh-cipher", nargs="+", default=["default", "aes128-gcm@openssh.com"])
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rbee-rpc-tunnel-")))
        authority = Authority(work / "tls")
        gate_id = write_private(work / "hive-b.pem", authority.issue("hive", HIVE, ["127.0.0.1"]))
        worker_id = write_private(
            work / "worker-head.pem", authority.issue("worker", "head", ["127.0.0.1"])
        )
        target = _start(stack, _target)
        gate = _start(stack, _gate, str(gate_id), target)
        paths = {"direct TCP": target}
        paths[f"rbee TLS ({_tls_cipher(worker_id, gate)})"] = _start(
            stack, _forwarder, str(worker_id), gate
        )
        sshd = _sshd(stack, work)
        for cipher in args.ssh_cipher:
            port, negotiated = _ssh_forward(stack, work, sshd, target, cipher)
            label = "OpenSSH default" if cipher == "default" else "-o Ciphers"
            paths[f"ssh -L ({negotiated}, {label})"] = port

        print(
            f"loopback, {os.cpu_count()} CPUs; {args.rounds} rounds of {args.round_trips} "
            f"round trips ({REQUEST} B → {ANSWER} B) and {args.mib} MiB one way",
            flush=True,
        )
        results = _measure(paths, args.rounds, args.round_trips, args.mib)

    medians = {
        name: Round(
            statistics.median(r.p50_us for r in rounds),
            statistics.median(r.p99_us for r in rounds),
            statistics.median(r.mb_s for r in rounds),
        )
        for name, rounds in results.items()
    }
    direct = next(iter(medians))
    print()
    print(_table(medians, direct))
    print()
    print(_verdict(medians, direct))


if __name__ == "__main__":
    main()
