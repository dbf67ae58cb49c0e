"""Multi-turn chat time to first token under the queen's routing policies, against llama-server
processes with a RAM prompt cache behind nginx round-robin (issue 24).

Usage (root: the rbee setups run two network-namespace hosts):
    .venv/bin/python bench/prefix_chat.py [--conversations 16] [--turns 5] [--runs 1]
        [--setups prefix,least_loaded,round_robin,llama-server] [--workloads chat,noprefix]
        [--json PATH]

Workloads (every request streamed, `temperature: 0`, `max_tokens: 12`, with
`stream_options: {include_usage: true}`; all conversations at once, each a sequential loop):
- chat: N conversations x T turns. Each conversation has its own ~300-word system prompt
  (seeded random words: no two share more than the chat template's head) and a short user
  question per turn; the answer as streamed goes back as the assistant's message, then the next
  question, sent at once. The history is re-sent every turn: a worker that still holds it reads
  only the new part.
- noprefix: as many requests at the same concurrency, but every request is a fresh random
  prompt of the length the chat turn would have (no shared prefixes): prefix routing must not
  cost anything here.

Setups (each measurement starts with cold caches: its workers or servers are fresh):
- prefix, least_loaded, round_robin: rbee, 2 hives (namespace hosts of bench/lab.py, sshd,
  the queen on their bridge) x 2 workers x 2 slots, SmolLM2-135M-Instruct (the demo model),
  `ctx_size` 2048 per slot, `threads` unset (each worker decodes with its share of its
  hive's cores: 1 of 2), and `serving: {routing: POLICY}` with queue and first-byte timeouts
  of 600 s (the default 30 s in the queue turns the slowest requests into 504s, where
  llama-server lets them wait: both sides wait as long as the client does). Before each
  measurement the deployment is applied with replicas 0 (workers stopped), then with 2 and the
  policy; the measurement starts once the queen lists 4 idle workers; afterwards replicas go
  back to 0, so no idle worker shares the cores with the next setup. A policy this rbee does
  not have gets a row saying so.
- llama-server: 4 llama.cpp `llama-server` processes on this host (`-np 2 -t 1 -c 4096
  --cache-ram 512`: the same slots, threads and context per slot) behind one nginx
  (round-robin upstream, `proxy_buffering off`), all started afresh for each measurement.

Per request: time to the first content token, prompt, completion and cached prompt tokens from
the final usage chunk (`usage.prompt_tokens_details.cached_tokens`, or llama-server's
`timings.cache_n`; "n/a" when the server reports neither), and failures (non-200, an error
event, no [DONE]). The table has one row per setup x workload: TTFT p50/p95 of turn 1 and of
turns 2+, completion tokens over the wall time, cached over prompt tokens, wall time and
failures; with --runs K, setups are interleaved (A run 1, B run 1, …, A run 2, …) and each
figure is the median over runs. --json dumps every request (rewritten after each measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fixtures.model import demo_model_path

POLICIES = ("prefix", "least_loaded", "round_robin")
PEER = "llama-server"
WORKLOADS = ("chat", "noprefix")
MODEL = "smollm2-135m"
HIVES, WORKERS, SLOTS, CTX = 2, 2, 2, 2048
MAX_TOKENS = 12
SYSTEM_WORDS = 300
LLAMA_SERVER = Path.home() / ".cache" / "rbee-bench" / "llama-server-0.3.36" / "llama-server"
NGINX = "/usr/sbin/nginx"
REQUEST_TIMEOUT_S = 600.0

_VOCABULARY = """
river mountain lantern copper garden harbor meadow violin engine compass orchard silver
thunder canvas pepper marble falcon cabinet glacier saddle ribbon quarry timber velvet
anchor beacon crystal desert ember feather galaxy hammer island jungle kettle ladder magnet
needle ocean pillar quartz rocket shadow tunnel umbrella valley window yarn zebra almond
bakery candle dolphin eagle forest guitar helmet igloo jacket kitten lemon mirror notebook
oyster parrot quilt raven sparrow tiger unicorn volcano walnut basket cactus dragon fountain
goblet hazel ivory jasmine kayak lilac mango nectar olive pebble quiver rhubarb saffron
tulip urchin vessel willow acorn bramble cobalt driftwood estuary fjord granite heron
inlet juniper kelp lagoon moss nettle obsidian prairie quail reed shale thistle tundra
vine wren cedar delta fern grove hollow lichen marsh nook oak pine ridge spruce thicket
walks builds paints carries follows gathers measures polishes repairs sketches studies
quietly slowly bravely kindly gently boldly warmly calmly eagerly neatly
red blue green amber golden hidden ancient bright narrow distant gentle hollow rapid
"""
VOCABULARY = _VOCABULARY.split()
QUESTIONS = (
    "What is the first thing you would tell me?",
    "Summarise that in one short sentence.",
    "Which word above matters most, and why?",
    "Give me one more detail, briefly.",
    "What should I remember from all this?",
    "Say it again in plain words.",
    "Name two things from your instructions.",
    "How would a child explain it?",
)


def _log(message: str) -> None:
    print(f"[prefix_chat] {message}", file=sys.stderr, flush=True)


# --- prompts -----------------------------------------------------------------------------------


def _words(rng: random.Random, count: int) -> str:
    """`count` seeded random words in sentences of 8 to 15 words."""
    sentences, left = [], count
    while left > 0:
        n = min(left, rng.randint(8, 15))
        words = [rng.choice(VOCABULARY) for _ in range(n)]
        sentences.append(" ".join(words).capitalize() + ".")
        left -= n
    return " ".join(sentences)


def _system_prompt(rng: random.Random) -> str:
    return _words(rng, SYSTEM_WORDS)


def _question(turn: int) -> str:
    return QUESTIONS[turn % len(QUESTIONS)]


# --- one request -------------------------------------------------------------------------------


@dataclass
class Request:
    """One streamed request and what came back."""

    setup: str
    workload: str
    run: int
    conversation: int
    turn: int
    started: float = 0.0
    ttft_s: float | None = None
    elapsed_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    error: str = ""
    text: str = ""


def _cached(chunk: dict[str, Any]) -> int | None:
    """Cached prompt tokens of a final chunk: OpenAI's field, else llama-server's timings."""
    details = (chunk.get("usage") or {}).get("prompt_tokens_details") or {}
    if isinstance(details.get("cached_tokens"), int):
        return int(details["cached_tokens"])
    cache_n = (chunk.get("timings") or {}).get("cache_n")
    return int(cache_n) if isinstance(cache_n, int) else None


async def _send(
    client: httpx.AsyncClient, url: str, messages: list[dict[str, str]], record: Request
) -> None:
    """POST the chat request, read its SSE stream, fill in `record`."""
    body = {
        "model": MODEL,
        "messages": messages,
        "stream": True,
        "temperature": 0,
        "max_tokens": MAX_TOKENS,
        "stream_options": {"include_usage": True},
    }
    loop = asyncio.get_running_loop()
    record.started = loop.time()
    done = False
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                await response.aread()
                record.error = f"HTTP {response.status_code}: {response.text[:120]}"
                return
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    record.error = f"error event: {json.dumps(chunk['error'])[:120]}"
                    return
                for choice in chunk.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        if record.ttft_s is None:
                            record.ttft_s = loop.time() - record.started
                        record.text += content
                if usage := chunk.get("usage"):
                    record.prompt_tokens = usage.get("prompt_tokens")
                    record.completion_tokens = usage.get("completion_tokens")
                    record.cached_tokens = _cached(chunk)
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"[:160]
    finally:
        record.elapsed_s = loop.time() - record.started
    if not done and not record.error:
        record.error = "stream ended without [DONE]"


async def _conversation(
    client: httpx.AsyncClient, url: str, workload: str, index: int, turns: int, base: Request
) -> list[Request]:
    """One conversation's turns in order; noprefix sends a fresh prompt of the same size."""
    rng = random.Random(f"{workload}-{index}-{base.run}" if workload == "noprefix" else index)
    messages = [{"role": "system", "content": _system_prompt(rng)}]
    records = []
    for turn in range(turns):
        record = Request(base.setup, workload, base.run, index, turn + 1)
        if workload == "chat":
            messages.append({"role": "user", "content": _question(turn)})
            await _send(client, url, messages, record)
            messages.append({"role": "assistant", "content": record.text})
        else:
            # About as long as the chat's turn: the system prompt plus the earlier turns.
            words = SYSTEM_WORDS + 20 * turn
            fresh = [
                {"role": "system", "content": _words(rng, words)},
                {"role": "user", "content": _question(turn)},
            ]
            await _send(client, url, fresh, record)
        records.append(record)
    return records


async def _workload(
    base_url: str, headers: dict[str, str], workload: str, args: argparse.Namespace, base: Request
) -> tuple[list[Request], float]:
    """Every conversation at once; the requests and the wall time."""
    url = f"{base_url}/v1/chat/completions"
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=30)
    async with httpx.AsyncClient(
        headers=headers, limits=limits, timeout=timeout, trust_env=False
    ) as client:
        started = time.perf_counter()
        loops = [
            _conversation(client, url, workload, index, args.turns, base)
            for index in range(args.conversations)
        ]
        done = await asyncio.gather(*loops)
        wall = time.perf_counter() - started
    return [record for records in done for record in records], wall


# --- figures -----------------------------------------------------------------------------------


@dataclass
class Figures:
    """One measurement (setup x workload x run) summed up."""

    setup: str
    workload: str
    run: int
    wall_s: float
    requests: int
    failed: int
    turn1_p50: float | None = None
    turn1_p95: float | None = None
    later_p50: float | None = None
    later_p95: float | None = None
    tokens_per_s: float | None = None
    cache_hit: float | None = None
    note: str = ""
    errors: list[str] = field(default_factory=list)


def _percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def _figures(records: list[Request], wall: float, base: Request) -> Figures:
    ok = [r for r in records if not r.error]
    first = [r.ttft_s for r in ok if r.turn == 1 and r.ttft_s is not None]
    later = [r.ttft_s for r in ok if r.turn > 1 and r.ttft_s is not None]
    completion = sum(r.completion_tokens or 0 for r in ok)
    known = [r for r in ok if r.cached_tokens is not None and r.prompt_tokens]
    return Figures(
        base.setup,
        base.workload,
        base.run,
        wall,
        len(records),
        len(records) - len(ok),
        _percentile(first, 50),
        _percentile(first, 95),
        _percentile(later, 50),
        _percentile(later, 95),
        completion / wall if wall else None,
        (
            sum(r.cached_tokens or 0 for r in known) / sum(r.prompt_tokens or 0 for r in known)
            if known
            else None
        ),
        errors=sorted({r.error for r in records if r.error}),
    )


def _median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _table(all_figures: list[Figures], setups: list[str], workloads: list[str]) -> list[str]:
    lines = [
        "| setup | workload | turn 1 TTFT p50 / p95 s | turns 2+ TTFT p50 / p95 s "
        "| completion tok/s | cache hit % | wall s | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for setup in setups:
        for workload in workloads:
            runs = [f for f in all_figures if f.setup == setup and f.workload == workload]
            if not runs:
                continue
            notes = sorted({f.note for f in runs if f.note})
            if notes and all(f.note for f in runs):
                lines.append(f"| {setup} | {workload} | n/a ({'; '.join(notes)}) | | | | | |")
                continue
            runs = [f for f in runs if not f.note]

            def med(name: str, runs: list[Figures] = runs) -> float | None:
                return _median([getattr(f, name) for f in runs])

            hit = med("cache_hit")
            tps = med("tokens_per_s")
            failed = "/".join(f"{f.failed}" for f in runs) + f" of {runs[0].requests}"
            cells = [
                setup,
                workload,
                f"{_seconds(med('turn1_p50'))} / {_seconds(med('turn1_p95'))}",
                f"{_seconds(med('later_p50'))} / {_seconds(med('later_p95'))}",
                "n/a" if tps is None else f"{tps:.1f}",
                "n/a" if hit is None else f"{hit * 100:.0f} %",
                f"{med('wall_s'):.0f}",
                failed,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


# --- processes ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each process this script started, SIGKILL what is left after 10 s."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 10
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_http(url: str, procs: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(proc.poll() is not None for proc in procs):
            raise RuntimeError(f"a process exited before {url} answered")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


NGINX_CONF = """daemon off;
worker_processes 1;
error_log {tmp}/error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    upstream llama {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://llama;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


@contextlib.contextmanager
def _llama_servers(model: Path, logs: Path) -> Iterator[str]:
    """HIVES x WORKERS llama-servers (SLOTS slots, 1 thread, a RAM prompt cache) behind nginx
    round-robin, started afresh; the nginx URL."""
    procs: list[subprocess.Popen[bytes]] = []
    tmp = Path(tempfile.mkdtemp(prefix="nginx-", dir=logs))
    try:
        ports = []
        for index in range(HIVES * WORKERS):
            port = _free_port()
            argv = [
                str(LLAMA_SERVER), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
                "-np", str(SLOTS), "-t", "1", "-c", str(SLOTS * CTX), "--cache-ram", "512",
            ]  # fmt: skip
            with (logs / f"llama-server-{index}.log").open("ab") as out:
                procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT))
            ports.append(port)
        for port in ports:
            _wait_http(f"http://127.0.0.1:{port}/health", procs)
        port = _free_port()
        servers = "\n".join(f"        server 127.0.0.1:{p};" for p in ports)
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, servers=servers, port=port))
        with (logs / "nginx.log").open("ab") as out:
            procs.append(
                subprocess.Popen(
                    [NGINX, "-p", str(tmp), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT
                )
            )
        _wait_http(f"http://127.0.0.1:{port}/health", procs)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(procs)


class Rbee:
    """The rbee cluster of the lab: 2 namespace hives, the deployment applied per policy."""

    def __init__(self, the_lab: Any, model: Path) -> None:
        self.lab = the_lab
        self.model = model
        self.headers = {"authorization": f"Bearer {the_lab.env['RBEE_TOKEN']}"}

    def cluster(self, replicas: int, policy: str = "least_loaded") -> dict[str, Any]:
        deployment: dict[str, Any] = {
            "model": MODEL,
            "worker": "cpu",
            "hives": "all",
            "replicas": replicas,
            "slots": SLOTS,
            "ctx_size": CTX,
            # As long as llama-server lets a request wait for a slot: a 504 after the default
            # 30 s would drop the slowest requests from the TTFT figures.
            "serving": {
                "routing": policy,
                "queue_timeout": REQUEST_TIMEOUT_S,
                "first_byte_timeout": REQUEST_TIMEOUT_S,
            },
        }
        return {
            "self_heal": False,
            "models": [{"name": MODEL, "source": f"file://{self.model}"}],
            "worker_binaries": [{"name": "cpu"}],
            "deployments": [deployment],
        }

    def apply(self, replicas: int, policy: str = "least_loaded") -> None:
        from pydantic import ValidationError

        from rbee.config.models import Deployment

        cluster = self.cluster(replicas, policy)
        try:
            Deployment.model_validate(cluster["deployments"][0])
        except ValidationError as exc:
            problem = exc.errors()[0]
            where = ".".join(str(part) for part in problem["loc"])
            raise Unaccepted(f"{where}: {problem['msg']}"[:160]) from None
        self.lab.write(cluster)
        done = self.lab.rbee("apply", "--auto-approve", check=False)
        if done.returncode != 0:
            raise RuntimeError(f"rbee apply failed:\n{done.stdout}\n{done.stderr}")

    def workers(self) -> list[dict[str, Any]]:
        url = f"{self.lab.queen_url}/v1/workers"
        body: list[dict[str, Any]] = httpx.get(
            url, headers=self.headers, timeout=10, trust_env=False
        ).json()
        return body

    @contextlib.contextmanager
    def serving(self, policy: str) -> Iterator[str]:
        """Fresh workers routed by `policy` (stopped again afterwards); the queen's URL."""
        self.apply(0)
        try:
            self.apply(WORKERS, policy)
            deadline = time.monotonic() + 180
            while True:
                idle = [w for w in self.workers() if w.get("state") == "idle"]
                if len(idle) == HIVES * WORKERS:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(idle)} of {HIVES * WORKERS} workers idle after 180 s")
                time.sleep(0.5)
            yield self.lab.queen_url
        finally:
            self.apply(0)


class Unaccepted(Exception):
    """This rbee refuses the cluster YAML (e.g. a routing policy it does not have yet)."""


@contextlib.contextmanager
def _rbee(logs: Path) -> Iterator[Rbee]:
    """The lab's two hosts with the demo model where their users can read it; rbee installed
    on them by a first apply (replicas 0)."""
    from lab import lab

    with lab(HIVES) as the_lab:
        model = the_lab.model.parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
        shutil.copyfile(demo_model_path(), model)
        model.chmod(0o644)
        rbee = Rbee(the_lab, model)
        _log("installing rbee on the hosts (apply, replicas 0)")
        rbee.apply(0)
        yield rbee


# --- main --------------------------------------------------------------------------------------


def _measure(
    setup: str, workload: str, run: int, args: argparse.Namespace, rbee: Rbee | None, logs: Path
) -> tuple[Figures, list[Request]]:
    base = Request(setup, workload, run, 0, 0)
    _log(f"run {run}: {setup} x {workload}")
    try:
        if setup == PEER:
            server: contextlib.AbstractContextManager[str] = _llama_servers(demo_model_path(), logs)
            headers: dict[str, str] = {}
        else:
            assert rbee is not None
            server, headers = rbee.serving(setup), rbee.headers
        with server as url:
            records, wall = asyncio.run(_workload(url, headers, workload, args, base))
    except Unaccepted as exc:
        _log(f"{setup}: not accepted: {exc}")
        return Figures(setup, workload, run, 0.0, 0, 0, note=f"not accepted: {exc}"), []
    figures = _figures(records, wall, base)
    _log(
        f"  wall {wall:.1f} s, turn 1 p50 {_seconds(figures.turn1_p50)} s, turns 2+ p50 "
        f"{_seconds(figures.later_p50)} s, failed {figures.failed}"
        + (f" ({'; '.join(figures.errors)})" if figures.errors else "")
    )
    return figures, records


def _dump(path: Path, figures: list[Figures], records: list[Request]) -> None:
    body = {"figures": [asdict(f) for f in figures], "requests": [asdict(r) for r in records]}
    path.write_text(json.dumps(body, indent=1))


def _names(text: str, known: tuple[str, ...]) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if unknown := [name for name in names if name not in known]:
        raise argparse.ArgumentTypeError(f"unknown: {', '.join(unknown)} (of {', '.join(known)})")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=16)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--runs", type=int, default=1, help="runs per setup, interleaved")
    parser.add_argument(
        "--setups",
        type=lambda text: _names(text, (*POLICIES, PEER)),
        default=[*POLICIES, PEER],
        help=f"comma-separated, of {', '.join((*POLICIES, PEER))}",
    )
    parser.add_argument(
        "--workloads",
        type=lambda text: _names(text, WORKLOADS),
        default=list(WORKLOADS),
        help=f"comma-separated, of {', '.join(WORKLOADS)}",
    )
    parser.add_argument("--json", type=Path, help="write every request here")
    parser.add_argument("--keep", action="store_true", help="keep the logs directory")
    args = parser.parse_args()
    if any(setup in POLICIES for setup in args.setups) and os.geteuid() != 0:
        sys.exit("the rbee setups need root (network-namespace hosts)")

    # SIGTERM unwinds like Ctrl-C: everything started is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logs = Path(tempfile.mkdtemp(prefix="rbee-bench-prefix-chat-"))
    started = time.perf_counter()
    all_figures: list[Figures] = []
    all_records: list[Request] = []
    try:
        with contextlib.ExitStack() as stack:
            wanted = any(setup in POLICIES for setup in args.setups)
            rbee = stack.enter_context(_rbee(logs)) if wanted else None
            for run in range(1, args.runs + 1):
                for setup in args.setups:
                    for workload in args.workloads:
                        figures, records = _measure(setup, workload, run, args, rbee, logs)
                        all_figures.append(figures)
                        all_records += records
                        if args.json:  # after each one: a run cut short keeps what it measured
                            _dump(args.json, all_figures, all_records)
    finally:
        if args.keep:
            _log(f"logs kept in {logs}")
        else:
            shutil.rmtree(logs, ignore_errors=True)
    total = time.perf_counter() - started

    print(
        f"\n{args.conversations} conversations x {args.turns} turns at once, {MAX_TOKENS} tokens "
        f"per answer, streamed; {HIVES * WORKERS} workers x {SLOTS} slots; median of "
        f"{args.runs} run(s); {len(os.sched_getaffinity(0))} cores; whole bench {total:.0f} s\n"
    )
    print("\n".join(_table(all_figures, args.setups, args.workloads)))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted (everything it started is stopped)")
