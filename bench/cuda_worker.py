"""Does a `cuda` worker binary build and serve? Build time, tok/s and VRAM of one worker.

For a machine with an NVIDIA GPU and nvcc (never needed by the tests). It runs the hive's own
code paths: the worker binary is provisioned by `WorkerBinaryCatalog.provision` (a venv with
llama-cpp-python compiled with CMAKE_ARGS, as `rbee apply` does for `build:`), and each worker
is spawned by `rbee.hive.processes.spawn_worker` (pinned with CUDA_VISIBLE_DEVICES).

    python bench/cuda_worker.py --model M.gguf [--cmake-args "-DGGML_CUDA=on ..."] [--slots 1 4]

pip must reach llama-cpp-python's sdist and its build tools (an index, or PIP_FIND_LINKS with
PIP_NO_INDEX=1 on a machine without one). Prints a table; `--json` writes the figures too.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from rbee.hive.binaries import WorkerBinaryCatalog
from rbee.hive.processes import spawn_worker, stop_worker
from rbee.wire import AddWorkerBinary, SpawnWorker

_PROMPT = "Write a long story about a bee who learns to fly."


def _smi(*query: str) -> list[list[str]]:
    try:
        out = subprocess.run(
            ["nvidia-smi", *query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
        ).stdout
    except OSError:
        return []
    return [[field.strip() for field in line.split(",")] for line in out.splitlines()]


def _vram_mib(pid: int) -> int | None:
    """GPU memory the process holds, from nvidia-smi."""
    for fields in _smi("--query-compute-apps=pid,used_memory"):
        if len(fields) == 2 and fields[0] == str(pid):
            return int(fields[1])
    return None


def _gpu_used_mib() -> int | None:
    """Memory in use on the first GPU (the whole card, every process)."""
    rows = _smi("--query-gpu=memory.used")
    return int(rows[0][0]) if rows else None


def _complete(url: str, tokens: int) -> tuple[int, float]:
    started = time.perf_counter()
    body = {"prompt": _PROMPT, "max_tokens": tokens, "temperature": 0}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=600)
    response.raise_for_status()
    return response.json()["usage"]["completion_tokens"], time.perf_counter() - started


def _wait_idle(url: str, timeout_s: float = 300) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if httpx.get(f"{url}/health", timeout=2).json()["state"] == "idle":
                return time.monotonic() - started
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"worker at {url} did not load within {timeout_s:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--backend", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--cmake-args", default=None, help="default: the backend's")
    parser.add_argument("--llama-cpp-python", default=None, help='e.g. "==0.3.36"')
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--catalog", type=Path, default=Path(tempfile.mkdtemp(prefix="rbee-bc-")))
    parser.add_argument("--log", type=Path, default=Path("build.log"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    catalog = WorkerBinaryCatalog(args.catalog / "workers")
    request = AddWorkerBinary(
        name=args.backend,
        backend=args.backend,
        build=True,
        llama_cpp_python=args.llama_cpp_python,
        cmake_args=args.cmake_args,
    )
    with args.log.open("w") as log:
        started = time.monotonic()
        entry = catalog.provision(request, lambda line: print(line, file=log, flush=True))
        build_s = time.monotonic() - started
        started = time.monotonic()
        catalog.provision(request, lambda line: print(line, file=log, flush=True))
        cached_s = time.monotonic() - started
    print(f"built {entry.python} (llama-cpp-python {entry.llama_cpp_version})")
    print(f"build: {build_s:.0f} s cold, {cached_s:.1f} s again (cached by spec)")

    rows = []
    for slots in args.slots:
        spawn = SpawnWorker(
            worker_id=f"bench-{slots}",
            hive="bench",
            model="bench",
            worker_binary=args.backend,
            slots=slots,
            ctx_size=4096,
            device=args.device,
            queen_url="http://127.0.0.1:9",  # nothing listens: heartbeats fail quietly
        )
        before = _gpu_used_mib()
        worker = spawn_worker(spawn, entry.python, args.model.resolve(), token=None)
        try:
            load_s = _wait_idle(worker.url)
            after = _gpu_used_mib()
            _complete(worker.url, 16)  # warm-up
            tokens, seconds = _complete(worker.url, args.tokens)
            single = tokens / seconds
            with concurrent.futures.ThreadPoolExecutor(slots) as pool:
                started = time.perf_counter()
                urls = [worker.url] * slots
                results = list(pool.map(_complete, urls, [args.tokens] * slots))
                wall = time.perf_counter() - started
            aggregate = sum(t for t, _ in results) / wall
            rows.append(
                {
                    "slots": slots,
                    "load_s": round(load_s, 1),
                    "tok_s_one_stream": round(single, 1),
                    "tok_s_all_slots": round(aggregate, 1),
                    "vram_mib": _vram_mib(worker.pid),
                    "gpu_used_delta_mib": None
                    if after is None or before is None
                    else after - before,
                }
            )
        finally:
            stop_worker(worker.pid, 10, args.model.resolve().parent)
    header = ("slots", "load s", "tok/s 1 stream", "tok/s all slots", "VRAM MiB", "GPU +MiB")
    print("\n{:>5} {:>7} {:>15} {:>16} {:>9} {:>9}".format(*header))
    for row in rows:
        print("{:>5} {:>7} {:>15} {:>16} {!s:>9} {!s:>9}".format(*row.values()))
    if args.json:
        figures = {"build_s": round(build_s, 1), "cached_s": round(cached_s, 2), "workers": rows}
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
