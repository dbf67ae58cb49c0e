"""The queen's OpenAI relay against peers: req/s and latency through queen-rbee, nginx and
LiteLLM's proxy, all in front of the same stub upstream, measured with wrk in one run.

Usage: .venv/bin/python bench/router.py [--duration 10] [--concurrency 1 16 64]
           [--stub python|nginx] [--targets direct nginx litellm queen queen-keys queen-unix]
           [--modes non-stream stream] [--streams N [--only-streams]] [--keep]

The stub upstream has one port per mode: one answers POST /v1/chat/completions with a small
chat.completion JSON, the other with 8 SSE events (`chat.completion.chunk`s, then
`data: [DONE]`), whatever the request says; the bodies are the same bytes with either --stub:

- python (the default): bench/stub_upstream.py's `app`, a raw ASGI app (no framework) served by
  uvicorn with httptools and uvloop, one process (one worker) per port: `python -m uvicorn
  stub_upstream:app --http httptools --loop uvloop --no-access-log --log-level warning
  --no-proxy-headers`. The issue's baseline (nginx 6,651 req/s at c=16, the queen 1,126) was
  measured against a Python (uvicorn + httptools) stub, so this is the comparable setting:
  the stub costs CPU on the same cores, as a real Python worker would.
- nginx: nginx itself (its own instance, 1 worker process) with `return 200 '…'`: an upstream
  that costs next to nothing, so the rows show each proxy's own ceiling.

Each mode ("non-stream", "stream") starts every target afresh pointed at that mode's port;
every target's answer is checked once (status, content, [DONE]) before wrk runs. Targets:

- direct: wrk straight at the stub.
- nginx: a second nginx instance (worker_processes 1) with proxy_pass to the stub,
  proxy_buffering off, proxy_http_version 1.1, keepalive 64 to the upstream.
- litellm: LiteLLM's proxy (`litellm[proxy]`, --litellm-spec) in its own venv
  (--litellm-venv, installed on first use), as pip installs it (uvicorn with h11: the
  [proxy] extra brings no httptools), 1 worker (--num_workers 1), model `stub` →
  `openai/stub` at the stub. Telemetry and logging off as far as options allow: env
  LITELLM_LOCAL_MODEL_COST_MAP=True (no cost-map fetch at start) and LITELLM_LOG=ERROR;
  litellm_settings set_verbose/json_logs false, suppress_debug_info,
  turn_off_message_logging and disable_streaming_logging true; general_settings
  disable_spend_logs, disable_error_logs true, background_health_checks false; no database
  (so no spend tracking). It refuses to start without a master key, so it has one, sent by
  wrk (a plain string compare: no database for virtual keys). This LiteLLM's `--telemetry` is a
  deprecated no-op: there is no telemetry left to turn off. The pin is the newest release
  whose [proxy] extra resolved from PyPI here (1.107.0 was the compromised, yanked release).
  If it cannot be installed or started, its rows say "n/a (reason)".
- queen@REV: the same queen from a git worktree of revision REV (PYTHONPATH), to measure a
  change against what came before it in one run (a revision before mutual TLS relays to the
  plain stub: `queen@REV` against `queen` is then plain against TLS to the worker).
- queen: `python -m rbee.queen.server` from this checkout, HOME in a temporary directory, the
  stub registered as worker `stub-0` (slots_total 1024) by a heartbeat every second. It
  relays over mutual TLS to the stub's TLS twin (the same app, uvicorn with `--ssl-certfile`,
  `--ssl-ca-certs` and `--ssl-cert-reqs 2`: a worker certificate of the bench's CA, which the
  queen takes as its own, and the queen's certificate required), heartbeats go to its cluster
  listener with the worker's certificate, and wrk sends its cluster token. Its metrics are
  always on (there is no switch), in this variant too.
- queen-keys ("queen (keys+metrics)"): the same, plus API keys: an admin key, then an
  inference key made with it (POST /v1/keys), sent by wrk as `Authorization: Bearer …`, so
  every request is looked up and scope-checked; GET /metrics is scraped once with the admin
  key after its runs (the note under the table says whether it answered 200). Its rows say
  "n/a (no /v1/keys yet)" while the queen has no such endpoint.
- queen-unix (not in the default targets): the same queen, relaying in clear to the stub's
  Unix-socket twin, as it does to a worker on its own machine: the heartbeat carries the TLS
  twin's `https://127.0.0.1:PORT` URL and the socket (`socket`), which the stub serves in a
  0700 directory of this user's (nginx `listen unix:`, or uvicorn `--uds`). Only a queen of
  this checkout reads `socket` (an older one ignores it and relays over TLS). A note under the
  table says, for every queen row, which way its connections to the stub went: its TCP
  connections open to the stub's ports and the connections open on the stub's socket
  (/proc/net/unix: a connection accepted there bears the socket's path) after the run.
  With it, a second table compares the three paths to the stub at each mode and c: direct
  (wrk at the plain stub, the ceiling), unix and tls (queen), each against unix and direct;
  the queen's own CPU time per request relayed (user and system, from psutil), which is the
  relay's cost without the stub's side of TLS (on these shared cores the stub's TLS server
  also takes from the req/s), against unix's; the 1-minute load average after each row (the
  bench's own processes in it) and the
  cores others kept busy during it (the machine's CPU time less this bench's and its
  children's, from psutil): a row where others ran is not comparable.

Every (target, mode, c) runs a --warmup (2 s) wrk warm-up, then --duration seconds with
threads = min(c, 2); wrk's Lua `done()` prints the numbers. "added p50" is the target's p50
minus direct's at the same mode and c; "% of nginx" its req/s over nginx's; "errors" wrk's
socket errors and non-2xx answers; "new upstream conns" the connections the stub accepted
during the measured run, about 0 for a proxy that keeps its upstream connections alive. With
--stub nginx they come from its stub_status: c + 1 for direct (wrk opens one connection of its
own at start, and sends nothing on it). With --stub python the app counts the connections
that sent it a request (GET /stub_status): c for direct, as wrk's own connection sends nothing;
"-" where it cannot tell. Everything
shares the machine's cores with wrk and the stub, so compare rows of one run, not runs of
different machines.

--streams N: N concurrent long streams (default 50 chunks 100 ms apart, bench/stub_upstream.py,
aiohttp) opened at once by an aiohttp client in this process, through each of
--stream-targets: how many complete, the longest gap between two chunks of any stream (a stall
detector: 100 ms is no stall), time to first chunk, total time, and the peak RSS of the proxy
(psutil, every 100 ms). direct is there to show what the client and the stub alone manage.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import itertools
import json
import os
import platform
import resource
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import httpx
import psutil
import uvloop

from rbee.pki import Authority, Role, client_context, tls_name, write_private

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("direct", "nginx", "litellm", "queen", "queen-keys")
#: Accepted by --targets, not run unless named.
EXTRA_TARGETS = ("queen-unix",)
LABELS = {"queen-keys": "queen (keys+metrics)"}
MODES = ("non-stream", "stream")
PATH = "/v1/chat/completions"
BODY = {"model": "stub", "messages": [{"role": "user", "content": "hi"}]}
LITELLM_SPEC = "litellm[proxy]==1.106.12"
LITELLM_VENV = Path.home() / ".cache" / "rbee-bench" / "litellm-venv"
WORDS = ["Hello", " from", " the", " stub", " up", "stream"]
STUB_TEXT = "".join(WORDS)
#: The stub's name as a worker of hive `local` (its certificate's).
STUB_WORKER = "local/stub-0"
WRK_SLOTS = 1024
T = TypeVar("T")


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _completion() -> str:
    """The stub's non-streamed answer."""
    return _compact(
        {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "stub",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": STUB_TEXT},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 6, "total_tokens": 7},
        }
    )


def _sse() -> str:
    """The stub's streamed answer: a role chunk, one per word, a finish chunk, [DONE]."""
    deltas: list[tuple[dict[str, str], str | None]] = [({"role": "assistant"}, None)]
    deltas += [({"content": word}, None) for word in WORDS]
    deltas.append(({}, "stop"))
    events = [
        "data: "
        + _compact(
            {
                "id": "chatcmpl-stub",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": "stub",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
        )
        + "\n\n"
        for delta, finish in deltas
    ]
    return "".join(events) + "data: [DONE]\n\n"


def _nginx_string(text: str) -> str:
    """`text` as a single-quoted nginx string (no variables in it: no `$`)."""
    assert "$" not in text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


# --- processes ---------------------------------------------------------------------------------


class Unavailable(Exception):
    """A target that cannot be measured; its rows say n/a (the reason)."""


def _log(message: str) -> None:
    print(f"[router] {message}", file=sys.stderr, flush=True)


def _free_port(pair: bool = False) -> int:
    """A free port on loopback; with `pair`, the next one is free too (a queen's cluster
    listener takes it)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not pair:
            return port
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port + 1))
            return port


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " / ".join([line.strip()[:200] for line in text if line.strip()][-lines:])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate `proc` and whatever it started; kill what is left after 10 s."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _, alive = psutil.wait_procs(family, timeout=10)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    log: Path
    name: str

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_ready(self, ready: Callable[[], bool], timeout: float) -> None:
        """Until `ready()`; Unavailable when the process exits or `timeout` passes first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (code := self.popen.poll()) is not None:
                raise Unavailable(f"{self.name} exited with {code}: {_tail(self.log)}")
            if ready():
                return
            time.sleep(0.2)
        raise Unavailable(f"{self.name} not ready after {timeout:.0f} s: {_tail(self.log)}")


@contextlib.contextmanager
def _process(
    name: str, argv: list[str], logs: Path, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> Iterator[Proc]:
    """`argv` running with its output in logs/NAME.log; stopped (and its children) at the end."""
    log = logs / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd
        )
    try:
        yield Proc(popen, log, name)
    finally:
        _stop(popen)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _http_ok(url: str, tls: ssl.SSLContext | None = None) -> bool:
    try:
        return httpx.get(url, timeout=2, verify=tls or True).status_code == 200
    except httpx.HTTPError:
        return False


def _rss(pid: int) -> int:
    """RSS of `pid` and its children, in bytes (0 once gone)."""
    try:
        proc = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])
    except psutil.NoSuchProcess:
        return 0


# --- tools -------------------------------------------------------------------------------------


@dataclass
class Tools:
    nginx: str
    wrk: str


def _find(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/usr/bin") if (p := Path(d) / name).exists()), None
    )


def _ensure_tools() -> Tools:
    """nginx and wrk, installed with apt-get (nginx-light, wrk) when missing and root."""
    nginx, wrk = _find("nginx"), _find("wrk")
    if (nginx is None or wrk is None) and os.geteuid() == 0 and shutil.which("apt-get"):
        _log("installing nginx-light and wrk with apt-get")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "nginx-light", "wrk"]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True)
            subprocess.run(install, env=env, capture_output=True)
        nginx, wrk = _find("nginx"), _find("wrk")
    if nginx is None or wrk is None:
        sys.exit("router.py needs nginx and wrk: apt-get install -y nginx-light wrk")
    return Tools(nginx, wrk)


def _version(argv: list[str]) -> str:
    """The first line `argv` prints, e.g. 'nginx version: nginx/1.22.1' → 'nginx/1.22.1'."""
    out = subprocess.run(argv, capture_output=True, text=True)
    line = (out.stdout + out.stderr).strip().splitlines()[0]
    return line.removeprefix("nginx version: ").split(" Copyright")[0]


# --- nginx -------------------------------------------------------------------------------------


def _nginx_conf(prefix: Path, servers: str) -> str:
    user = "user root root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes 1;
worker_rlimit_nofile 65536;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
{servers}
}}
"""


@contextlib.contextmanager
def _nginx(ctx: Context, name: str, servers: str, ports: list[int]) -> Iterator[Proc]:
    """A foreground nginx (`daemon off`) with its config, pid, logs and temp files in tmp/NAME."""
    prefix = ctx.tmp / name
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(_nginx_conf(prefix, servers))
    argv = [ctx.tools.nginx, "-p", f"{prefix}/", "-e", f"{prefix}/error.log", "-c", str(conf)]
    with _process(name, [*argv, "-g", "daemon off;"], ctx.tmp) as proc:
        proc.wait_ready(lambda: all(_port_open(port) for port in ports), 10)
        yield proc


@dataclass
class Upstream:
    port: int
    pid: int
    # How it counts accepted connections: "nginx" (stub_status at /nginx_status), "python"
    # (bench/stub_upstream.py's GET /stub_status) or None (it does not).
    status: str | None = None
    # A stub serving mutual TLS as a worker does (https; `tls` is a client context holding a
    # queen's certificate of the bench's CA, for its stub_status), and its plain twin's TLS one.
    tls: ssl.SSLContext | None = None
    tls_twin: Upstream | None = None
    # A stub on a Unix socket (`socket`, port 0), and its plain twin's Unix one.
    socket: str | None = None
    unix_twin: Upstream | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def get(self, path: str) -> httpx.Response:
        """GET `path` of the stub, on its socket or its port."""
        if self.socket is not None:
            transport = httpx.HTTPTransport(uds=self.socket)
            with httpx.Client(transport=transport, timeout=5) as client:
                return client.get(f"http://127.0.0.1{path}")
        return httpx.get(f"{self.url}{path}", timeout=5, verify=self.tls or True)

    def accepted(self) -> int | None:
        """Connections the stub has accepted so far (this call's own included)."""
        if self.status == "nginx":
            # "Active connections: 1 \nserver accepts handled requests\n 7 7 12 \n…"
            return int(self.get("/nginx_status").text.split()[7])
        if self.status == "python":
            count = self.get("/stub_status").json()["connections"]
            return None if count is None else int(count)
        return None


def _socket_dir(ctx: Context) -> Path:
    """A 0700 directory of this user's for the stub's sockets (a queen relays to a socket
    of its own user's only)."""
    path = ctx.tmp / "sockets"
    path.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)
    return path


def _unix_ready(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(path) == 0


def _stub_bodies() -> dict[str, tuple[str, str]]:
    """By mode, the stub's content type and body."""
    return {
        "non-stream": ("application/json", _completion()),
        "stream": ("text/event-stream", _sse()),
    }


@contextlib.contextmanager
def _stub(ctx: Context) -> Iterator[dict[str, Upstream]]:
    """The --stub upstream: by mode, the upstream that answers in that mode."""
    starts = {"nginx": _nginx_stub, "python": _python_stub}
    with starts[ctx.args.stub](ctx) as upstreams:
        yield upstreams


@contextlib.contextmanager
def _python_stub(ctx: Context) -> Iterator[dict[str, Upstream]]:
    """bench/stub_upstream.py's ASGI `app` under uvicorn (httptools, uvloop), one per mode,
    each with a twin serving mutual TLS with a worker's certificate (what a queen of this
    checkout relays to)."""
    upstreams: dict[str, Upstream] = {}
    stub, ca = ctx.identity("worker", STUB_WORKER), ctx.authority.directory / "ca.pem"
    queen = client_context(ctx.identity("queen", "bench"))
    tls_flags = ["--ssl-certfile", str(stub), "--ssl-ca-certs", str(ca), "--ssl-cert-reqs", "2"]
    unix = "queen-unix" in ctx.args.targets
    with contextlib.ExitStack() as stack:
        for mode, (ctype, body) in _stub_bodies().items():
            env = {**os.environ, "RBEE_STUB_CONTENT_TYPE": ctype, "RBEE_STUB_BODY": body}
            started: list[Upstream] = []
            for kind in ("plain", "tls", "unix") if unix else ("plain", "tls"):
                tls = queen if kind == "tls" else None
                port = 0 if kind == "unix" else _free_port()
                path = str(_socket_dir(ctx) / f"stub-{mode}.sock") if kind == "unix" else None
                argv = [sys.executable, "-m", "uvicorn", "stub_upstream:app"]
                argv += ["--app-dir", str(ROOT / "bench")]
                argv += ["--uds", path] if path else ["--host", "127.0.0.1", "--port", str(port)]
                argv += ["--http", "httptools", "--loop", "uvloop"]
                argv += ["--no-access-log", "--log-level", "warning", "--no-proxy-headers"]
                argv += tls_flags if tls else []
                name = f"stub-python-{mode}{'' if kind == 'plain' else '-' + kind}"
                proc = stack.enter_context(_process(name, argv, ctx.tmp, env=env))
                upstream = Upstream(port, proc.pid, status="python", tls=tls, socket=path)
                proc.wait_ready(functools.partial(_stub_ok, upstream), 30)
                started.append(upstream)
            plain = started[0]
            plain.tls_twin = started[1]
            plain.unix_twin = started[2] if unix else None
            upstreams[mode] = plain
        yield upstreams


def _stub_ok(upstream: Upstream) -> bool:
    try:
        return upstream.get("/health").status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def _nginx_stub(ctx: Context) -> Iterator[dict[str, Upstream]]:
    """nginx answering with `return 200 '…'`, one port per mode, and per mode a twin port
    serving mutual TLS with a worker's certificate of the bench's CA (nginx's TLS costs next
    to nothing: the rows show the relay's own TLS) and a twin Unix socket."""
    ports = {mode: _free_port() for mode in MODES}
    tls_ports = {mode: _free_port() for mode in MODES}
    sockets = {mode: str(_socket_dir(ctx) / f"stub-{mode}.sock") for mode in MODES}
    bodies = _stub_bodies()
    stub, ca = ctx.identity("worker", STUB_WORKER), ctx.authority.directory / "ca.pem"
    tls = (
        f"ssl_certificate {stub}; ssl_certificate_key {stub}; ssl_client_certificate {ca}; "
        "ssl_verify_client on; ssl_protocols TLSv1.2 TLSv1.3;"
    )
    listens = {
        mode: (
            (f"127.0.0.1:{ports[mode]}", ""),
            (f"127.0.0.1:{tls_ports[mode]} ssl", tls),
            (f"unix:{sockets[mode]}", ""),
        )
        for mode in MODES
    }
    servers = "\n".join(
        f"""    server {{
        listen {listen} backlog=4096;
        {extra}
        location = {PATH} {{ default_type {ctype}; return 200 {_nginx_string(body)}; }}
        location = /health {{ default_type application/json; return 200 '{{"status":"ok"}}'; }}
        location = /nginx_status {{ stub_status; }}
        location / {{ return 404; }}
    }}"""
        for mode, (ctype, body) in bodies.items()
        for listen, extra in listens[mode]
    )
    queen = client_context(ctx.identity("queen", "bench"))
    every = [*ports.values(), *tls_ports.values()]
    with _nginx(ctx, "stub-nginx", servers, every) as proc:
        proc.wait_ready(lambda: all(map(_unix_ready, sockets.values())), 10)
        upstreams = {}
        for mode, port in ports.items():
            upstreams[mode] = Upstream(port, proc.pid, status="nginx")
            upstreams[mode].tls_twin = Upstream(tls_ports[mode], proc.pid, "nginx", tls=queen)
            unix = Upstream(0, proc.pid, "nginx", socket=sockets[mode])
            upstreams[mode].unix_twin = unix
        yield upstreams


# --- targets -----------------------------------------------------------------------------------


@dataclass
class Endpoint:
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    pid: int | None = None  # the proxy's process, for RSS
    metrics_headers: dict[str, str] | None = None  # scrape GET /metrics with these, after
    upstream: Upstream | None = None  # the one it relays to, when not the mode's plain stub


@dataclass
class Context:
    args: argparse.Namespace
    tmp: Path
    tools: Tools
    litellm: Path | Unavailable | None = None
    started: int = 0
    worktrees: list[Path] = field(default_factory=list)
    # The bench's cluster CA: each queen of this checkout takes it as its own, so the TLS
    # stub's worker certificate is one it trusts.
    authority: Authority = field(init=False)

    def __post_init__(self) -> None:
        self.authority = Authority(self.tmp / "ca")

    def identity(self, role: Role, name: str) -> Path:
        """`role` `name`'s identity bundle from the bench's CA (made once)."""
        path = self.tmp / "ca" / f"{role}-{name.replace('/', '_')}.pem"
        if not path.exists():
            write_private(path, self.authority.issue(role, name, ["127.0.0.1"]))
        return path

    def name(self, base: str) -> str:
        """A name of its own for each started thing (logs, directories)."""
        self.started += 1
        return f"{base}-{self.started}"


@contextlib.contextmanager
def _nginx_target(ctx: Context, upstream: Upstream) -> Iterator[Endpoint]:
    port = _free_port()
    server = f"""    upstream stub {{
        server 127.0.0.1:{upstream.port};
        keepalive 64;
        keepalive_requests 10000000;  # default 1000: a new connection every 1000 requests
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://stub;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
    }}"""
    with _nginx(ctx, ctx.name("nginx"), server, [port]) as proc:
        yield Endpoint(f"http://127.0.0.1:{port}", pid=proc.pid)


def _litellm_exe(ctx: Context) -> Path:
    """LiteLLM's `litellm` from its own venv, installed there the first time."""
    if isinstance(ctx.litellm, Unavailable):
        raise ctx.litellm
    if ctx.litellm is not None:
        return ctx.litellm
    venv: Path = ctx.args.litellm_venv
    exe = venv / "bin" / "litellm"
    try:
        if not exe.exists():
            _log(f"installing {ctx.args.litellm_spec} into {venv} (once; minutes)")
            python = shutil.which("python3") or sys.executable
            subprocess.run([python, "-m", "venv", str(venv)], check=True, capture_output=True)
            pip = [str(venv / "bin" / "pip"), "install", "-q", ctx.args.litellm_spec]
            out = subprocess.run(pip, capture_output=True, text=True, timeout=1800)
            if out.returncode != 0 or not exe.exists():
                errors = [line for line in out.stderr.splitlines() if "ERROR" in line]
                raise Unavailable(f"pip install failed: {(errors or ['?'])[-1][:160]}")
    except (OSError, subprocess.SubprocessError) as exc:
        ctx.litellm = Unavailable(f"cannot install LiteLLM: {exc}")
        raise ctx.litellm from None
    except Unavailable as exc:
        ctx.litellm = exc
        raise
    ctx.litellm = exe
    return exe


def _litellm_version(venv: Path) -> str | None:
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    code = "import importlib.metadata as m; print(m.version('litellm'))"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or None


@contextlib.contextmanager
def _litellm_target(ctx: Context, upstream: Upstream) -> Iterator[Endpoint]:
    exe = _litellm_exe(ctx)
    name = ctx.name("litellm")
    master_key = f"sk-{secrets.token_hex(32)}"
    config = ctx.tmp / f"{name}.yaml"
    config.write_text(
        f"""model_list:
  - model_name: stub
    litellm_params:
      model: openai/stub
      api_base: {upstream.url}/v1
      api_key: x
litellm_settings:
  set_verbose: false
  json_logs: false
  suppress_debug_info: true
  turn_off_message_logging: true
  disable_streaming_logging: true
general_settings:
  master_key: {master_key}
  disable_spend_logs: true
  disable_error_logs: true
  background_health_checks: false
"""
    )
    port = _free_port()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    argv = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    with _process(name, [*argv, "--num_workers", "1"], ctx.tmp, env=env) as proc:
        url = f"http://127.0.0.1:{port}"
        proc.wait_ready(lambda: _http_ok(f"{url}/health/liveliness"), 180)
        yield Endpoint(url, {"Authorization": f"Bearer {master_key}"}, proc.pid)


class Heartbeats:
    """Registers a worker with a queen: its heartbeat POSTed every second from a thread (with
    `tls`, the worker's certificate, to the queen's cluster listener as a worker does)."""

    def __init__(self, queen: str, beat: dict[str, Any], tls: ssl.SSLContext | None) -> None:
        self._url = f"{queen}/v1/workers/heartbeat"
        self._beat = beat
        self._tls = tls
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)
        self.last: str = "none sent"

    def _run(self) -> None:
        extensions = {"sni_hostname": tls_name("queen", "queen")} if self._tls else {}
        with httpx.Client(timeout=2, verify=self._tls or True) as client:
            while not self._stop.is_set():
                try:
                    answer = client.post(self._url, json=self._beat, extensions=extensions)
                    self.last = str(answer.status_code)
                except httpx.HTTPError as exc:
                    self.last = repr(exc)
                self._stop.wait(1.0)

    def __enter__(self) -> Heartbeats:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _make_key(queen: str, name: str, scope: str, headers: dict[str, str]) -> str:
    """A new API key's secret (POST /v1/keys)."""
    body = {"name": name, "scope": scope}
    made = httpx.post(f"{queen}/v1/keys", json=body, headers=headers, timeout=10)
    if made.status_code == 404:
        raise Unavailable("no /v1/keys yet")
    if made.status_code >= 300:
        raise Unavailable(f"POST /v1/keys: {made.status_code} {made.text[:100]}")
    return str(made.json()["key"])


@contextlib.contextmanager
def _queen_target(
    ctx: Context,
    upstream: Upstream,
    slots: int,
    keys: bool = False,
    source: Path | None = None,
    unix: bool = False,
) -> Iterator[Endpoint]:
    """The queen of this checkout, or of `source` (a worktree of another revision).

    A queen with mutual TLS (this checkout's, or a revision's that has `rbee/pki.py`) relays to
    the stub's TLS twin, hears its heartbeats on its cluster listener and wants its cluster
    token (sent by wrk); an older one relays to the plain stub and is open until its first key.
    With `unix`, the heartbeat names the stub's socket too, and the queen relays there.
    """
    name = ctx.name("queen-unix" if unix else "queen-keys" if keys else "queen")
    home = ctx.tmp / name
    home.mkdir()
    port = _free_port(pair=True)
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "rbee.queen.server", "--port", str(port)]
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    mtls = (source or ROOT).joinpath("rbee", "pki.py").exists()
    headers: dict[str, str] = {}
    unix_twin = upstream.unix_twin
    if mtls:
        if upstream.tls_twin is None:
            raise Unavailable("this queen relays over TLS only: use --stub python")
        upstream = upstream.tls_twin
        tls = home / ".local" / "state" / "rbee" / "tls"
        tls.mkdir(parents=True)
        for part in ("ca.pem", "ca.key"):
            shutil.copyfile(ctx.authority.directory / part, tls / part)
        env["RBEE_TOKEN"] = token = secrets.token_urlsafe(24)
        headers["Authorization"] = f"Bearer {token}"
    if source is not None:  # ahead of the venv's editable install of this checkout
        env["PYTHONPATH"] = str(source)
        where = subprocess.run(
            [sys.executable, "-c", "import rbee; print(rbee.__file__)"],
            env=env,
            cwd=source,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if not where.startswith(str(source)):
            raise Unavailable(f"rbee imports from {where}, not from {source}")
    beat = {
        "worker_id": "stub-0",
        "hive": "local",
        "model": "stub",
        "worker_binary": "cpu",
        "url": upstream.url,
        "pid": upstream.pid,
        "device": "cpu",
        "state": "idle",
        "slots_total": slots,
        "slots_busy": 0,
    }
    if unix:
        if not mtls or unix_twin is None:
            raise Unavailable("no Unix socket to relay to (a queen of this checkout only)")
        beat["socket"] = unix_twin.socket
        upstream = unix_twin
    # `python -m` puts its working directory first on sys.path: run from the source wanted.
    cwd = source or ROOT
    with _process(name, [*argv, "--db", str(home / "queen.db")], ctx.tmp, env, cwd) as proc:
        proc.wait_ready(lambda: _http_ok(f"{url}/health"), 60)
        cluster = f"https://127.0.0.1:{port + 1}" if mtls else url
        worker_tls = client_context(ctx.identity("worker", STUB_WORKER)) if mtls else None
        with Heartbeats(cluster, beat, worker_tls) as heartbeats:
            admin: dict[str, str] | None = None
            if keys:
                # An admin key first (made with the cluster token, or on an older queen open
                # until its first key), for /metrics.
                admin_key = _make_key(url, "bench-admin", "admin", dict(headers))
                admin = {"Authorization": f"Bearer {admin_key}"}
                headers["Authorization"] = f"Bearer {_make_key(url, 'bench', 'inference', admin)}"
            try:
                yield Endpoint(url, headers, proc.pid, metrics_headers=admin, upstream=upstream)
            except Unavailable as exc:
                raise Unavailable(f"{exc} (last heartbeat: {heartbeats.last})") from None


@contextlib.contextmanager
def _target(ctx: Context, name: str, upstream: Upstream, slots: int) -> Iterator[Endpoint]:
    """Target `name` started in front of `upstream`, stopped at the end."""
    if name == "direct":
        yield Endpoint(upstream.url)
        return
    if name.startswith("queen@"):
        with _queen_target(ctx, upstream, slots, source=_worktree(ctx, name[6:])) as endpoint:
            yield endpoint
        return
    starts = {
        "nginx": lambda: _nginx_target(ctx, upstream),
        "litellm": lambda: _litellm_target(ctx, upstream),
        "queen": lambda: _queen_target(ctx, upstream, slots),
        "queen-keys": lambda: _queen_target(ctx, upstream, slots, keys=True),
        "queen-unix": lambda: _queen_target(ctx, upstream, slots, unix=True),
    }
    with starts[name]() as endpoint:
        yield endpoint


def _target_name(text: str) -> str:
    if text in TARGETS + EXTRA_TARGETS or (text.startswith("queen@") and len(text) > 6):
        return text
    names = ", ".join(TARGETS + EXTRA_TARGETS)
    raise argparse.ArgumentTypeError(f"expected one of {names} or queen@REV")


def _worktree(ctx: Context, rev: str) -> Path:
    """A checkout of revision `rev` of this repository (made once per run)."""
    path = ctx.tmp / f"worktree-{rev}"
    if not path.exists():
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev],
            check=True,
            capture_output=True,
        )
        ctx.worktrees.append(path)
    return path


def _check(endpoint: Endpoint, stream: bool) -> str | None:
    """None when the target answers as the stub does, else what is wrong."""
    try:
        response = httpx.post(
            endpoint.url + PATH,
            json=BODY | {"stream": True} if stream else BODY,
            headers=endpoint.headers,
            timeout=30,
        )
    except httpx.HTTPError as exc:
        return repr(exc)
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:120]}"
    try:
        if not stream:
            text = response.json()["choices"][0]["message"]["content"]
        else:
            data = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
            if not data or data[-1] != "[DONE]":
                return "no data: [DONE] at the end"
            chunks = [json.loads(item)["choices"] for item in data[:-1]]
            text = "".join(c[0]["delta"].get("content") or "" for c in chunks if c)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return f"unexpected body ({exc!r}): {response.text[:120]}"
    return None if text == STUB_TEXT else f"content {text!r}"


def _checked(endpoint: Endpoint, stream: bool, within: float = 15) -> None:
    """Retries _check for `within` seconds (a queen routes once the first heartbeat is in)."""
    deadline = time.monotonic() + within
    while (problem := _check(endpoint, stream)) is not None:
        if time.monotonic() > deadline:
            raise Unavailable(f"bad answer: {problem}")
        time.sleep(0.5)


# --- wrk ---------------------------------------------------------------------------------------

_DONE_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT {\"requests\":%d,\"duration_us\":%d,\"p50_us\":%.1f,\"p99_us\":%.1f," ..
    "\"connect\":%d,\"read\":%d,\"write\":%d,\"status\":%d,\"timeout\":%d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def _lua(path: Path, body: dict[str, Any], headers: dict[str, str]) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{_compact(body)}]==]"]
    for key, value in {"Content-Type": "application/json", **headers}.items():
        lines.append(f'wrk.headers["{key}"] = [==[{value}]==]')
    path.write_text("\n".join(lines) + "\n" + _DONE_LUA)
    return path


@dataclass
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _wrk(ctx: Context, url: str, script: Path, connections: int, seconds: int) -> WrkResult:
    threads = min(connections, 2)
    argv = [ctx.tools.wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s"]
    argv += ["--timeout", "10s", "-s", str(script), url]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"wrk did not finish in {seconds + 60} s") from None
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise Unavailable(f"wrk: {(out.stderr or out.stdout).strip()[-160:]}")
    r = json.loads(line[len("RESULT ") :])
    errors = sum(r[key] for key in ("connect", "read", "write", "status", "timeout"))
    rps = r["requests"] / (r["duration_us"] / 1e6)
    return WrkResult(r["requests"], rps, r["p50_us"] / 1000, r["p99_us"] / 1000, errors)


@dataclass
class Row:
    target: str
    mode: str
    c: int
    result: WrkResult | None = None
    note: str = ""
    upstream_conns: int | None = None  # connections the stub accepted during the run
    load: float | None = None  # the 1-minute load average right after the run
    others_cpu: float | None = None  # cores busy with what this bench did not start, meanwhile
    relay_us: float | None = None  # the queen's own CPU time per request relayed (µs)


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds spent so far by the machine and by this bench and everything it started
    (those ended and waited for included): over a row, the first's growth less the second's
    is the work of others on the same cores. The machine's count takes softirq in: loopback
    traffic's, charged to the processes here, is a third of the busy time in /proc/stat."""
    times = psutil.cpu_times()
    me = psutil.Process()
    ours = 0.0
    for proc in (me, *me.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):
            ours += sum(proc.cpu_times()[:4])  # user, system, and its waited children's
    return times.user + times.nice + times.system + times.irq + times.softirq, ours


def _process_cpu(pid: int | None) -> float | None:
    """CPU seconds (user and system) the process `pid` has used so far."""
    if pid is None:
        return None
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return None
    return float(times.user + times.system)


def _bench_target(
    ctx: Context, name: str, mode: str, upstream: Upstream, notes: list[str]
) -> list[Row]:
    args = ctx.args
    rows: list[Row] = []
    label = LABELS.get(name, name)
    try:
        with _target(ctx, name, upstream, WRK_SLOTS) as endpoint:
            stream = mode == "stream"
            _checked(endpoint, stream)
            body = BODY | {"stream": True} if stream else BODY
            script = _lua(ctx.tmp / f"{ctx.name('wrk')}.lua", body, endpoint.headers)
            url = endpoint.url + PATH
            for c in args.concurrency:
                _log(f"{label} {mode} c={c}")
                try:
                    _wrk(ctx, url, script, c, args.warmup)
                    relayed_to = endpoint.upstream or upstream
                    before = relayed_to.accepted()
                    relay_before = _process_cpu(endpoint.pid)
                    cpu_before, start = _cpu_seconds(), time.monotonic()
                    result = _wrk(ctx, url, script, c, args.duration)
                    (busy, ours), wall = _cpu_seconds(), time.monotonic() - start
                    relay_after = _process_cpu(endpoint.pid)
                    relay_us = (
                        (relay_after - relay_before) / result.requests * 1e6
                        if relay_after is not None and relay_before is not None and result.requests
                        else None
                    )
                    others = (busy - cpu_before[0] - (ours - cpu_before[1])) / wall
                    after = relayed_to.accepted()
                    # Less the status request of `after` itself.
                    opened = (
                        after - before - 1 if after is not None and before is not None else None
                    )
                    load = os.getloadavg()[0]
                    rows.append(
                        Row(
                            name,
                            mode,
                            c,
                            result,
                            upstream_conns=opened,
                            load=load,
                            others_cpu=others,
                            relay_us=relay_us if endpoint.upstream is not None else None,
                        )
                    )
                    if endpoint.upstream is not None and endpoint.pid is not None:
                        paths = _relay_paths(endpoint.pid, upstream)
                        notes.append(f"{label}, {mode}, c={c}: {paths}")
                except Unavailable as exc:
                    rows.append(Row(name, mode, c, note=str(exc)))
            if endpoint.metrics_headers is not None:
                notes.append(f"{label}, {mode}: GET /metrics → {_scrape(endpoint)}")
    except Unavailable as exc:
        _log(f"{label} {mode}: n/a ({exc})")
        done = {row.c for row in rows}
        rows += [Row(name, mode, c, note=str(exc)) for c in args.concurrency if c not in done]
    return rows


def _relay_paths(pid: int, stub: Upstream) -> str:
    """Which ways the connections of proxy `pid` to the stub (`stub` and its twins) go, as
    open now: its TCP connections to each port, and the connections on the stub's socket."""
    tcp = collections.Counter(
        conn.raddr.port
        for conn in psutil.Process(pid).net_connections(kind="tcp")
        if conn.raddr and conn.status == psutil.CONN_ESTABLISHED
    )
    parts = [
        f"{tcp[twin.port]} TCP to :{twin.port} ({'TLS' if twin.tls else 'plain'})"
        for twin in (stub, stub.tls_twin)
        if twin is not None
    ]
    if stub.unix_twin is not None and stub.unix_twin.socket is not None:
        path = stub.unix_twin.socket
        parts.append(f"{_unix_accepted(path)} on unix:{Path(path).name}")
    return "relay connections open after the run: " + ", ".join(parts)


def _unix_accepted(path: str) -> int:
    """Connections accepted on the Unix socket `path`, open now: in /proc/net/unix such a
    connection bears the listening socket's path (the connecting end bears none), and the
    listening socket is the one flagged __SO_ACCEPTCON (0x10000)."""
    count = 0
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == path and not int(fields[3], 16) & 0x10000:
            count += 1
    return count


def _scrape(endpoint: Endpoint) -> str:
    try:
        response = httpx.get(
            endpoint.url + "/metrics", headers=endpoint.metrics_headers, timeout=10
        )
    except httpx.HTTPError as exc:
        return repr(exc)
    if response.status_code != 200:
        return f"{response.status_code} (metrics not on)"
    samples = [line for line in response.text.splitlines() if line and line[0] != "#"]
    counted = [line for line in samples if line.startswith("rbee_queen_requests")]
    return f"200, {len(samples)} samples ({'; '.join(counted[:3]) or 'no rbee_queen_requests'})"


def _bench_wrk(ctx: Context) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    notes: list[str] = []
    with _stub(ctx) as stubs:
        for mode in ctx.args.modes:
            for name in ctx.args.targets:
                rows += _bench_target(ctx, name, mode, stubs[mode], notes)
    return rows, notes


def _cell(text: str, limit: int = 200) -> str:
    """`text` fit for one Markdown table cell."""
    text = " ".join(text.split()).replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def _wrk_table(rows: list[Row]) -> list[str]:
    by_key = {(row.target, row.mode, row.c): row.result for row in rows}
    lines = [
        "| target | mode | c | req/s | p50 ms | p99 ms | added p50 ms vs direct "
        "| % of nginx req/s | errors | new upstream conns |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        label = LABELS.get(row.target, row.target)
        r = row.result
        if r is None:
            lines.append(
                f"| {label} | {row.mode} | {row.c} | n/a ({_cell(row.note)}) | | | | | | |"
            )
            continue
        direct = by_key.get(("direct", row.mode, row.c))
        nginx = by_key.get(("nginx", row.mode, row.c))
        added = f"{r.p50_ms - direct.p50_ms:+.2f}" if direct else "-"
        share = f"{r.rps / nginx.rps * 100:.0f} %" if nginx else "-"
        lines.append(
            f"| {label} | {row.mode} | {row.c} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} "
            f"| {added} | {share} | {r.errors} | {_or_dash(row.upstream_conns)} |"
        )
    return lines


#: The ways to the stub that the second table compares: (its name there, the target).
PATHS = (("direct", "direct"), ("unix", "queen-unix"), ("tls", "queen"))


def _paths_table(rows: list[Row]) -> list[str]:
    """Each path's req/s at each mode and c, against unix's and direct's."""
    by_key = {(row.target, row.mode, row.c): row for row in rows if row.result is not None}
    lines = [
        "| mode | c | path | req/s | vs unix | vs direct | queen CPU µs/request "
        "| vs unix | load 1 min after | others' CPU (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    modes = list(dict.fromkeys(row.mode for row in rows))
    for mode, c in itertools.product(modes, sorted({row.c for row in rows})):
        unix, direct = by_key.get(("queen-unix", mode, c)), by_key.get(("direct", mode, c))
        for path, target in PATHS:
            row = by_key.get((target, mode, c))
            if row is None or row.result is None:
                continue
            rps = row.result.rps
            cells = [mode, str(c), path, f"{rps:,.0f}"]
            for base in (unix, direct):
                share = base.result.rps if base is not None and base.result else None
                cells.append(f"{(rps / share - 1) * 100:+.1f} %" if share else "-")
            cost, unix_cost = row.relay_us, unix.relay_us if unix is not None else None
            cells.append("-" if cost is None else f"{cost:.0f}")
            cells.append(f"{(cost / unix_cost - 1) * 100:+.1f} %" if cost and unix_cost else "-")
            cells.append("-" if row.load is None else f"{row.load:.2f}")
            cells.append("-" if row.others_cpu is None else f"{row.others_cpu:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


# --- long streams ------------------------------------------------------------------------------


@dataclass
class Stream:
    start: float
    stamps: list[float] = field(default_factory=list)
    done: bool = False
    error: str = ""

    def complete(self, chunks: int) -> bool:
        """All `chunks` events and [DONE] came, and nothing went wrong."""
        return self.done and not self.error and len(self.stamps) == chunks + 1


async def _one_stream(session: aiohttp.ClientSession, endpoint: Endpoint) -> Stream:
    loop = asyncio.get_running_loop()
    stream = Stream(loop.time())
    try:
        async with session.post(
            endpoint.url + PATH, json=BODY | {"stream": True}, headers=endpoint.headers
        ) as response:
            if response.status != 200:
                stream.error = f"HTTP {response.status}"
                return stream
            async for line in response.content:
                if line.startswith(b"data: "):
                    stream.stamps.append(loop.time())
                    stream.done = line.startswith(b"data: [DONE]")
    except (aiohttp.ClientError, TimeoutError) as exc:
        stream.error = type(exc).__name__
    return stream


async def _streams(endpoint: Endpoint, n: int) -> tuple[list[Stream], float]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        streams = await asyncio.gather(*(_one_stream(session, endpoint) for _ in range(n)))
        return streams, time.perf_counter() - start


class PeakRss:
    """The peak RSS of a process (and its children), sampled every 100 ms from a thread."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.idle = _rss(pid) if pid else 0
        self.peak = self.idle
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while self.pid and not self._stop.wait(0.1):
            self.peak = max(self.peak, _rss(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _stream_ready(endpoint: Endpoint, chunks: int, within: float = 15) -> None:
    """Until one stream comes through whole (a queen routes once the first heartbeat is in)."""
    deadline = time.monotonic() + within
    while True:
        (stream,), _ = _run_async(_streams(endpoint, 1))
        if stream.complete(chunks):
            return
        if time.monotonic() > deadline:
            problem = stream.error or f"{len(stream.stamps)} of {chunks + 1} events"
            raise Unavailable(f"a single stream did not complete: {problem}")
        time.sleep(0.5)


def _stream_row(ctx: Context, name: str, upstream: Upstream) -> list[str]:
    args = ctx.args
    n, chunks = args.streams, args.stream_chunks
    label = LABELS.get(name, name)
    try:
        with _target(ctx, name, upstream, max(n, WRK_SLOTS)) as endpoint:
            _log(f"{label}: {n} streams of {chunks} chunks")
            _stream_ready(endpoint, chunks)
            with PeakRss(endpoint.pid) as rss:
                streams, total = _run_async(_streams(endpoint, n))
    except Unavailable as exc:
        return [f"| {label} | {n} | n/a ({_cell(str(exc))}) | | | | | | | |"]
    complete = [s for s in streams if s.complete(chunks)]
    gaps = [max(b - a for a, b in itertools.pairwise(s.stamps)) for s in complete]
    first = [s.stamps[0] - s.start for s in streams if s.stamps]
    errors = collections.Counter(s.error or "incomplete" for s in streams if not s.complete(chunks))
    mib = 1024 * 1024
    cells = [
        label,
        str(n),
        str(len(complete)),
        f"{total:.2f}",
        f"{statistics.median(first) * 1000:.0f}" if first else "-",
        f"{max(first) * 1000:.0f}" if first else "-",
        f"{max(gaps) * 1000:.0f}" if gaps else "-",
        f"{_percentile(gaps, 99) * 1000:.0f}" if gaps else "-",
        f"{rss.peak / mib:.0f} ({rss.idle / mib:.0f})" if endpoint.pid else "-",
        ", ".join(f"{k}: {v}" for k, v in errors.items()) or "0",
    ]
    return ["| " + " | ".join(cells) + " |"]


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    """`coro` on a fresh uvloop event loop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _bench_streams(ctx: Context) -> list[str]:
    args = ctx.args
    port = _free_port()
    stub = [sys.executable, str(ROOT / "bench" / "stub_upstream.py"), "--port", str(port)]
    stub += ["--chunks", str(args.stream_chunks), "--interval", str(args.stream_interval)]
    lines = [
        f"{args.streams} concurrent streams, {args.stream_chunks} chunks "
        f"{args.stream_interval * 1000:.0f} ms apart each (bench/stub_upstream.py):",
        "",
        "| target | streams | completed | total s | first chunk p50 ms | first chunk max ms "
        "| max gap ms | p99 of per-stream max gap ms | peak RSS MiB (idle) | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    with _process("slow-stub", stub, ctx.tmp) as proc:
        proc.wait_ready(lambda: _http_ok(f"http://127.0.0.1:{port}/health"), 30)
        upstream = Upstream(port, proc.pid)
        for name in args.stream_targets:
            lines += _stream_row(ctx, name, upstream)
    return lines


# --- main --------------------------------------------------------------------------------------


def _machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    return f"{len(os.sched_getaffinity(0))} cores (nproc), {cpu}, Linux {platform.release()}"


def _revision() -> str:
    def git(*argv: str) -> str:
        out = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True)
        return out.stdout.strip()

    return git("rev-parse", "--short", "HEAD") + (
        " (dirty)" if git("status", "--porcelain") else ""
    )


def _stub_line(stub: str, tools: Tools) -> str:
    if stub == "nginx":
        return f"nginx ({_version([tools.nginx, '-v'])}, 1 worker process, return 200 '…')"
    uvicorn, httptools, uvloop_ = (version(name) for name in ("uvicorn", "httptools", "uvloop"))
    return (
        f"python (bench/stub_upstream.py's raw ASGI app; uvicorn {uvicorn} --http httptools "
        f"{httptools} --loop uvloop {uvloop_}, 1 process per port)"
    )


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of wrk warm-up per run")
    parser.add_argument("--concurrency", "-c", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument(
        "--stub",
        choices=("python", "nginx"),
        default="python",
        help="the wrk runs' upstream: uvicorn+httptools (as the issue's baseline) or nginx",
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        type=_target_name,
        default=list(TARGETS),
        help=f"of {', '.join(TARGETS + EXTRA_TARGETS)}, or queen@REV: the queen of git "
        "revision REV (default: all but queen-unix)",
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--streams", type=int, default=0, help="N concurrent long streams")
    parser.add_argument("--only-streams", action="store_true", help="skip the wrk runs")
    parser.add_argument(
        "--stream-targets", nargs="+", type=_target_name, default=["direct", "nginx", "queen"]
    )
    parser.add_argument("--stream-chunks", type=int, default=50)
    parser.add_argument("--stream-interval", type=float, default=0.1, help="seconds")
    parser.add_argument("--litellm-spec", default=LITELLM_SPEC, help="pip requirement")
    parser.add_argument("--litellm-venv", type=Path, default=LITELLM_VENV)
    parser.add_argument("--keep", action="store_true", help="keep the temporary dir (logs)")
    args = parser.parse_args()
    if args.only_streams and not args.streams:
        parser.error("--only-streams needs --streams N")

    # SIGTERM unwinds like Ctrl-C: every process started is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    _raise_fd_limit()
    tools = _ensure_tools()
    tmp = Path(tempfile.mkdtemp(prefix="rbee-bench-router-"))
    load_before = os.getloadavg()
    ctx = Context(args, tmp, tools)
    wrk_rows: list[Row] = []
    notes: list[str] = []
    stream_lines: list[str] = []
    try:
        if not args.only_streams:
            wrk_rows, notes = _bench_wrk(ctx)
        if args.streams:
            stream_lines = _bench_streams(ctx)
    finally:
        for worktree in ctx.worktrees:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)],
                capture_output=True,
            )
        if args.keep:
            _log(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    load_after = os.getloadavg()
    litellm = _litellm_version(args.litellm_venv)
    print(f"machine: {_machine()}")
    print(f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"command: {shlex.join(['python', 'bench/router.py', *sys.argv[1:]])}")
    print(
        f"rbee {_revision()}; {_version([tools.nginx, '-v'])}; {_version([tools.wrk, '-v'])}; "
        f"LiteLLM {litellm or 'not installed'}"
    )
    loads = [", ".join(f"{x:.2f}" for x in load) for load in (load_before, load_after)]
    print(f"load average (1, 5, 15 min): {loads[0]} before, {loads[1]} after")
    if wrk_rows:
        print(f"stub (wrk runs): {_stub_line(args.stub, tools)}")
        print()
        print(
            f"wrk, {args.duration} s per row after a {args.warmup} s warm-up, "
            "threads = min(c, 2), POST /v1/chat/completions:"
        )
        print()
        print("\n".join(_wrk_table(wrk_rows)))
        if any(row.target == "queen-unix" for row in wrk_rows):
            print()
            print("The queen's relay to the stub: in clear on a Unix socket, or mutual TLS on TCP:")
            print()
            print("\n".join(_paths_table(wrk_rows)))
        for note in notes:
            print(f"\n{note}")
    if stream_lines:
        print(f"stub (streams): bench/stub_upstream.py, aiohttp {aiohttp.__version__} on uvloop")
        print()
        print("\n".join(stream_lines))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted (everything it started is stopped)")
    except Unavailable as exc:
        sys.exit(f"error: {exc}")
