"""What a job costs the queen: submit latency (the job is in SQLite before its id is answered),
jobs run per second against plain requests through the same worker, and a plain request's
latency while a burst of batch jobs is submitted and run beside it.

Usage: .venv/bin/python bench/jobs.py [--jobs 500] [--slots 4]

A real queen process (`tests.fixtures.scripted.ScriptedQueen`) in front of one scripted worker
(a Starlette stub answering 5 chunks at once), so the numbers are the queen's and not a
model's. Prints one table.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.fixtures.scripted import MODEL, ScriptedQueen, scripted_workers

BODY: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


def _ms(samples: list[float], q: float) -> str:
    ordered = sorted(samples)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.2f}"


async def _submit_all(client: httpx.AsyncClient, count: int) -> tuple[list[str], list[float]]:
    ids, took = [], []
    for _ in range(count):
        started = time.perf_counter()
        response = await client.post("/v1/jobs", json={**BODY, "priority": "batch"})
        took.append(time.perf_counter() - started)
        ids.append(response.json()["job_id"])
    return ids, took


async def _until_done(client: httpx.AsyncClient, ids: list[str]) -> None:
    for job_id in ids:
        while (await client.get(f"/v1/jobs/{job_id}")).json()["state"] != "done":
            await asyncio.sleep(0.02)


async def _plain(client: httpx.AsyncClient, count: int, concurrency: int) -> list[float]:
    took: list[float] = []

    async def one() -> None:
        for _ in range(count // concurrency):
            started = time.perf_counter()
            response = await client.post("/v1/chat/completions", json=BODY)
            assert response.status_code == 200, response.text
            took.append(time.perf_counter() - started)

    await asyncio.gather(*(one() for _ in range(concurrency)))
    return took


async def _run(url: str, jobs: int, slots: int) -> list[tuple[str, str, str, str]]:
    rows = []
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await _plain(client, 20, 1)  # warm up
        idle = await _plain(client, 200, 1)
        rows.append(("plain request, c=1, idle", _ms(idle, 0.5), _ms(idle, 0.99), "-"))

        started = time.perf_counter()
        await _plain(client, jobs, slots)
        rate = jobs / (time.perf_counter() - started)
        rows.append((f"plain requests, c={slots}", "-", "-", f"{rate:.0f}/s"))

        started = time.perf_counter()
        ids, submits = await _submit_all(client, jobs)
        await _until_done(client, ids)
        rate = jobs / (time.perf_counter() - started)
        rows.append((f"{jobs} batch jobs: submit", _ms(submits, 0.5), _ms(submits, 0.99), "-"))
        rows.append((f"{jobs} batch jobs: submit to all done", "-", "-", f"{rate:.0f}/s"))

        burst = asyncio.create_task(_submit_all(client, jobs))
        beside = await _plain(client, 200, 1)
        await _until_done(client, (await burst)[0])
        rows.append(
            ("plain request, c=1, beside the burst", _ms(beside, 0.5), _ms(beside, 0.99), "-")
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--slots", type=int, default=4)
    args = parser.parse_args()
    for scripted in scripted_workers():
        queen = ScriptedQueen.start(
            Path(tempfile.mkdtemp()), {"max_queue": 10_000, "queue_timeout": 120}
        )
        try:
            queen.add_worker("w", scripted.worker("ok"), slots=args.slots)
            rows = asyncio.run(_run(queen.url, args.jobs, args.slots))
        finally:
            queen.stop()
    width = max(len(row[0]) for row in rows)
    print(f"{'':{width}}  {'p50 ms':>8}  {'p99 ms':>8}  {'rate':>8}")
    for name, p50, p99, rate in rows:
        print(f"{name:{width}}  {p50:>8}  {p99:>8}  {rate:>8}")


if __name__ == "__main__":
    main()
