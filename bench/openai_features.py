"""Do embeddings and JSON-schema output cost rbee more than llama-server? rbee's worker against
llama.cpp's `llama-server` on the same GGUFs, threads, context and batch sizes (issue 22,
point 8). One run prints two tables:

    .venv/bin/python bench/openai_features.py [--threads 2] [--runs 9] [--gen-runs 7]
        [--max-tokens 200] [--seed 42] [--only embeddings|schema] [--json]

llama-server is the one `bench/worker_batching.py` builds from the llama.cpp vendored in the
llama-cpp-python sdist the worker uses (the same kernels, cached under ~/.cache/rbee-bench/).
rbee's worker runs as a hive starts it (`--queen-url` pointing nowhere: its heartbeats fail
at once, as with no queen up). Each pair of servers runs side by side, each idle but for its
own requests, which alternate (rbee, llama-server, rbee, …) so that load from elsewhere on
the machine hits both alike. The load average is printed with the tables: figures taken under
load are noisier, not biased.

1. Embeddings. A BERT GGUF written by `tests/fixtures/synthetic_bert.py` with random weights
   in all-MiniLM-L6-v2's shape (6 layers, 384 wide, 12 heads, 1536 feed-forward, 512
   positions, mean pooling, F32; the fixture's own 610-token WordPiece vocabulary, the only
   one it makes: the vocabulary is a row lookup, it costs no time). rbee's worker
   (`python -m rbee.worker.server`, 1 slot, `--ctx-size 512`: 2048-token batches of up to
   64 sequences) against `llama-server --embedding -np 64 -c 32768 -b 2048 -ub 2048` (64
   slots of 512 positions, so the 64 inputs of a request are read in one batch as rbee reads
   them). One request of 1, 16 and 64 different sentences of 19 to 29 words, `--runs` times
   per server; columns:
   - `tokens`: the request's `usage.prompt_tokens` on rbee (`[CLS]`, `[SEP]` included),
     marked `(!)` where llama-server's count (in `--json`) differs.
   - `rbee inputs/s`, `llama-server inputs/s`: inputs / wall time of the request, as the
     client sees it (HTTP and JSON included), median of the runs.
   - `rbee / llama-server`: the ratio of those medians (issue 22's bound: >= 95 %).
   - `min cosine`: the lowest cosine between rbee's and llama-server's vector of the same
     input, over every input of every run of that batch size (both L2-normalised again
     here; the bound: >= 0.9999).
2. JSON-schema generation. SmolLM2-135M-Instruct Q4_1 (the demo's model), rbee's worker with
   1 slot and `--ctx-size 2048` against `llama-server --jinja -np 1 -c 2048`, one chat request
   at a time, not streamed: a request for a bee's record as JSON with `response_format`
   `json_schema` (an object of 6 required fields: bounded strings, an enum, an integer, a
   nested object, an array with maxItems, a boolean; no other properties), and the same
   request without `response_format` (free text). Temperature 0.7, top_k 40, top_p 0.95,
   min_p 0.05, no repeat penalty (sent to both, so their sampler chains are the same),
   `--max-tokens` at most; run i of each kind uses seed `--seed` + i on both servers.
   Columns, per server:
   - `constrained tok/s`, `free tok/s`: the answer's `usage.completion_tokens` / wall time of
     the request as the client sees it, median of the runs (the prompt is the same every run,
     so both servers read it from their prompt cache after the first).
   - `cost`: constrained tok/s / free tok/s (1.00: the grammar costs nothing).
   - `tokens`: median completion tokens, constrained / free.
   - `invalid`: constrained answers that do not parse as JSON, do not validate against the
     schema (`jsonschema`), or were cut by max_tokens, of all the runs.
   Then rbee's constrained tok/s as a % of llama-server's (issue 22's bound: >= 95 %). The
   two servers build different grammars from the schema (llama-server's C++ converter lets
   newlines and indentation in between, rbee's, llama-cpp-python's port, one space), so
   their answers, token counts and grammar rejections differ even at the same seed: compare
   medians over several seeds, never one answer.

Server logs stay in the temporary folder the last line names.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import jsonschema  # type: ignore[import-untyped]
import llama_cpp
import numpy as np
from worker_batching import Server, llama_server

from tests.fixtures.model import demo_model_path
from tests.fixtures.ports import free_port
from tests.fixtures.synthetic_bert import write_model

TOKEN = "rbee-bench-token"
BATCHES = (1, 16, 64)
#: all-MiniLM-L6-v2's shape.
MINILM = {"layers": 6, "embd": 384, "heads": 12, "ff": 1536, "context": 512}

_OPENINGS = [
    "The father walked to the high field behind the school early in the morning",
    "After a long and very cold night the old hive near the river",
    "Our small cluster of machines in the back room of the house",
    "During the music show in the center of the city the children",
    "When the queen bee stops laying eggs at the end of the year",
    "Every night the person on call reads the record of the worker",
    "Before the honey is taken from the hive the young people always",
    "In the north field between the farm and the sea a family of bees",
]
_ENDINGS = [
    "went to check if the hive was full of honey and the bees were well.",
    "was found open, so the group made a plan to get new bees next year.",
    "answered each question in less than a second once the model was ready.",
    "gave honey and food to every family in the town.",
    "the workers feed a young bee so that she can become the new queen.",
    "and writes down which questions were slow.",
    "check every tool, put the honey in boxes by color and write each name.",
    "made a large home in an old tree that no one saw for many years.",
]
#: 64 different sentences of 19 to 29 words, mostly of the fixture's vocabulary (so about as
#: many tokens a word as a real WordPiece vocabulary makes).
SENTENCES = [f"{start} {end}" for end in _ENDINGS for start in _OPENINGS]

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 30},
        "species": {"type": "string", "enum": ["honey bee", "bumble bee", "mason bee"]},
        "age_days": {"type": "integer"},
        "hive": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "minLength": 1, "maxLength": 60},
                "frames": {"type": "integer"},
            },
            "required": ["location", "frames"],
            "additionalProperties": False,
        },
        "tasks": {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": 30},
            "maxItems": 4,
        },
        "healthy": {"type": "boolean"},
    },
    "required": ["name", "species", "age_days", "hive", "tasks", "healthy"],
    "additionalProperties": False,
}
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant who keeps the club's records."},
    {
        "role": "user",
        "content": "Write the record of one worker bee from the hives on the hill: her name, "
        "her species, her age in days, her hive (where it is and how many frames it has), up "
        "to four tasks she does, and whether she is healthy.",
    },
]
SAMPLING = {"temperature": 0.7, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "repeat_penalty": 1.0}


def _worker_argv(model: Path, name: str, port: int, ctx: int, threads: int) -> list[str]:
    """rbee's worker as `tests/worker/conftest.py::launch_worker` starts it (the token by env)."""
    return [
        sys.executable, "-m", "rbee.worker.server", "--worker-id", f"bench-{name}",
        "--hive", "bench", "--model", name, "--model-path", str(model),
        "--worker-binary", "cpu", "--host", "127.0.0.1", "--port", str(port),
        "--slots", "1", "--ctx-size", str(ctx), "--threads", str(threads), "--device", "cpu",
        "--queen-url", "http://127.0.0.1:9",
    ]  # fmt: skip


@contextmanager
def _pair(
    name: str, model: Path, ctx: int, threads: int, peer_flags: list[str], logs: Path
) -> Iterator[tuple[Server, Server]]:
    """rbee's worker and llama-server on `model`, both loaded; stopped on exit."""
    port, peer_port = free_port(), free_port()
    peer = [str(llama_server()), "-m", str(model), "--host", "127.0.0.1",
            "--port", str(peer_port), "-t", str(threads), "-tb", str(threads), "--no-webui",
            *peer_flags]  # fmt: skip
    servers: list[Server] = []
    try:
        argv = _worker_argv(model, name, port, ctx, threads)
        servers.append(Server("rbee", argv, port, logs / f"rbee-{name}.log"))
        servers.append(Server("llama-server", peer, peer_port, logs / f"llama-server-{name}.log"))
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


def _client() -> httpx.Client:
    return httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300)


# --- 1. embeddings ----------------------------------------------------------------------------


@dataclass
class EmbeddingRow:
    batch: int
    tokens: int
    peer_tokens: int
    rbee: list[float] = field(default_factory=list)  # inputs/s per run
    peer: list[float] = field(default_factory=list)
    min_cosine: float = 1.0

    @property
    def ratio(self) -> float:
        return statistics.median(self.rbee) / statistics.median(self.peer)


def _embed(client: httpx.Client, server: Server, inputs: list[str]) -> tuple[float, Any]:
    """(inputs/s, the answer) of one `/v1/embeddings` request."""
    started = time.perf_counter()
    response = client.post(f"{server.url}/v1/embeddings", json={"input": inputs, "model": "e"})
    wall = time.perf_counter() - started
    response.raise_for_status()
    return len(inputs) / wall, response.json()


def _vectors(answer: Any) -> np.ndarray:
    rows = sorted(answer["data"], key=lambda item: item["index"])
    vectors = np.array([row["embedding"] for row in rows], dtype=np.float64)
    unit: np.ndarray = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit


def embeddings(threads: int, runs: int, logs: Path) -> list[EmbeddingRow]:
    """Inputs/s of both servers at each batch size, and how close their vectors are."""
    model = write_model(logs / "minilm-shape.gguf", **MINILM)  # type: ignore[arg-type]
    peer_flags = ["--embedding", "-np", "64", "-c", str(64 * 512), "-b", "2048", "-ub", "2048"]
    rows = []
    with _pair("embedding", model, 512, threads, peer_flags, logs) as servers, _client() as client:
        for server in servers:
            _embed(client, server, SENTENCES)  # warm-up
        for batch in BATCHES:
            inputs = SENTENCES[:batch]
            row = EmbeddingRow(batch, 0, 0)
            for _ in range(runs):
                rate, ours = _embed(client, servers[0], inputs)
                peer_rate, theirs = _embed(client, servers[1], inputs)
                row.rbee.append(rate)
                row.peer.append(peer_rate)
                row.tokens = ours["usage"]["prompt_tokens"]
                row.peer_tokens = theirs["usage"]["prompt_tokens"]
                cosines = np.sum(_vectors(ours) * _vectors(theirs), axis=1)
                row.min_cosine = min(row.min_cosine, float(cosines.min()))
            rows.append(row)
    return rows


# --- 2. JSON-schema generation ----------------------------------------------------------------


@dataclass
class SchemaRow:
    server: str
    constrained: list[float] = field(default_factory=list)  # tok/s per run
    free: list[float] = field(default_factory=list)
    constrained_tokens: list[int] = field(default_factory=list)
    free_tokens: list[int] = field(default_factory=list)
    invalid: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def cost(self) -> float:
        return statistics.median(self.constrained) / statistics.median(self.free)


def _chat(client: httpx.Client, server: Server, seed: int, max_tokens: int, schema: bool) -> Any:
    """(completion tokens / wall s, completion tokens, content, finish_reason) of one request."""
    body: dict[str, Any] = {
        "model": "smollm2",
        "messages": MESSAGES,
        "max_tokens": max_tokens,
        "seed": seed,
        **SAMPLING,
    }
    if schema:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "bee", "strict": True, "schema": SCHEMA},
        }
    started = time.perf_counter()
    response = client.post(f"{server.url}/v1/chat/completions", json=body)
    wall = time.perf_counter() - started
    response.raise_for_status()
    answer = response.json()
    tokens = int(answer["usage"]["completion_tokens"])
    choice = answer["choices"][0]
    return tokens / wall, tokens, choice["message"]["content"], choice["finish_reason"]


def _invalid(content: str, finish_reason: str) -> str | None:
    """Why a constrained answer fails the schema; None when it parses and validates."""
    if finish_reason != "stop":
        return f"finish_reason {finish_reason}"
    try:
        jsonschema.validate(json.loads(content), SCHEMA)
    except (ValueError, jsonschema.ValidationError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return None


def json_schema(threads: int, runs: int, max_tokens: int, seed: int, logs: Path) -> list[SchemaRow]:
    """Constrained and free tok/s of both servers, and the constrained answers' validity."""
    peer_flags = ["--jinja", "-np", "1", "-c", "2048"]
    rows = [SchemaRow("rbee"), SchemaRow("llama-server")]
    with (
        _pair("smollm2", demo_model_path(), 2048, threads, peer_flags, logs) as servers,
        _client() as client,
    ):
        for server in servers:  # warm-up: the prompt enters each server's cache
            _chat(client, server, seed, 8, schema=False)
        for run in range(runs):
            for constrained in (True, False):
                for server, row in zip(servers, rows, strict=True):
                    rate, tokens, content, reason = _chat(
                        client, server, seed + run, max_tokens, constrained
                    )
                    if not constrained:
                        row.free.append(rate)
                        row.free_tokens.append(tokens)
                        continue
                    row.constrained.append(rate)
                    row.constrained_tokens.append(tokens)
                    why = _invalid(content, reason)
                    if why is not None:
                        row.invalid += 1
                        row.failures.append(f"seed {seed + run}: {why}: {content[:200]!r}")
    return rows


# --- the tables -------------------------------------------------------------------------------


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _print_embeddings(rows: list[EmbeddingRow], threads: int, runs: int) -> None:
    print(
        f"\nEmbeddings: synthetic BERT in all-MiniLM-L6-v2's shape (F32, random weights), "
        f"{threads} threads, one request of N inputs, median of {runs} runs\n"
    )
    print("| inputs | tokens | rbee inputs/s | llama-server inputs/s | rbee / llama-server "
          "| min cosine |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for row in rows:
        tokens = str(row.tokens) if row.tokens == row.peer_tokens else f"{row.tokens} (!)"
        print(
            f"| {row.batch} | {tokens} | {statistics.median(row.rbee):.1f} "
            f"| {statistics.median(row.peer):.1f} | {row.ratio:.0%} | {row.min_cosine:.8f} |"
        )


def _print_schema(rows: list[SchemaRow], threads: int, runs: int, max_tokens: int) -> None:
    print(
        f"\nJSON-schema generation: SmolLM2-135M-Instruct Q4_1, 1 slot, {threads} threads, "
        f"temperature 0.7, max_tokens {max_tokens}; tok/s = completion tokens / wall time of "
        f"the request, median of {runs} runs\n"
    )
    print("| server | constrained tok/s | free tok/s | cost (constrained / free) "
          "| tokens (constrained / free) | invalid |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row.server} | {statistics.median(row.constrained):.1f} "
            f"| {statistics.median(row.free):.1f} | {row.cost:.2f} "
            f"| {statistics.median(row.constrained_tokens):.0f} / "
            f"{statistics.median(row.free_tokens):.0f} | {row.invalid} of {runs} |"
        )
    ours, theirs = (statistics.median(row.constrained) for row in rows)
    print(f"\nrbee constrained / llama-server constrained: {ours / theirs:.0%}")
    for row in rows:
        for failure in row.failures:
            print(f"invalid ({row.server}): {failure}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=9, help="runs per embeddings batch size")
    parser.add_argument("--gen-runs", type=int, default=7, help="runs per generation kind")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--only", choices=["embeddings", "schema"])
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args()
    os.environ["RBEE_TOKEN"] = TOKEN  # the workers read it; llama-server ignores it
    logs = Path(tempfile.mkdtemp(prefix="rbee-bench-features-"))
    load_before = _load()
    embedded = [] if args.only == "schema" else embeddings(args.threads, args.runs, logs)
    generated = (
        []
        if args.only == "embeddings"
        else json_schema(args.threads, args.gen_runs, args.max_tokens, args.seed, logs)
    )
    loads = f"{load_before} before, {_load()} after"
    if args.json:
        out = {
            "cpu_count": os.cpu_count(),
            "llama_cpp_python": llama_cpp.__version__,
            "threads": args.threads,
            "load_average": loads,
            "embeddings": [
                {
                    **asdict(row),
                    "rbee_median": statistics.median(row.rbee),
                    "peer_median": statistics.median(row.peer),
                    "ratio": row.ratio,
                }
                for row in embedded
            ],
            "json_schema": [
                {
                    **asdict(row),
                    "constrained_median": statistics.median(row.constrained),
                    "free_median": statistics.median(row.free),
                    "cost": row.cost,
                }
                for row in generated
            ],
        }
        print(json.dumps(out, indent=2))
        return
    print(
        f"cpu_count={os.cpu_count()}, llama.cpp of llama-cpp-python {llama_cpp.__version__}, "
        f"load average (1, 5, 15 min) {loads}"
    )
    if embedded:
        _print_embeddings(embedded, args.threads, args.runs)
    if generated:
        _print_schema(generated, args.threads, args.gen_runs, args.max_tokens)
    print(f"\nlogs: {logs}")


if __name__ == "__main__":
    main()
