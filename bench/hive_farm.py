"""A hive farm: N real rbee-hive apps in ONE process, each on its own loopback port.

Usage: .venv/bin/python bench/hive_farm.py N PORTS_FILE

Each hive is `rbee.hive.app.create_app` (the very app `rbee-hive` serves) with its own model
and worker-binary cache under a temporary directory, served by its own uvicorn server; all the
servers share one event loop. It stands in for N machines when a benchmark needs many hives
on a 2-core box: the routes and listings are real, but N hives answer from one core, where N
machines would answer in parallel. When every port listens, their numbers are written to
PORTS_FILE, one per line. Runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import tempfile
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rbee.catalog.artifact import ArtifactCatalog
from rbee.daemon import bind
from rbee.hive.app import create_app
from rbee.hive.binaries import WorkerBinaryCatalog
from rbee.net import LOOPBACK


async def farm(count: int, ports_file: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="rbee-hive-farm-"))
    servers, sockets = [], []
    for index in range(count):
        cache = root / f"h{index}"
        app = create_app(
            f"h{index}",
            catalog=ArtifactCatalog(cache / "models"),
            binaries=WorkerBinaryCatalog(cache / "workers"),
        )
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        servers.append(uvicorn.Server(config))
        sockets.append(bind(LOOPBACK, 0))
    for server in servers:
        # The farm stops as one; no server takes the process's signals for itself.
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    tasks = [
        asyncio.create_task(server.serve(sockets=[sock]))
        for server, sock in zip(servers, sockets, strict=True)
    ]
    while not all(server.started for server in servers):
        await asyncio.sleep(0.05)
    ports_file.write_text("".join(f"{sock.getsockname()[1]}\n" for sock in sockets))
    await stop.wait()
    for server in servers:
        server.should_exit = True
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(farm(int(sys.argv[1]), Path(sys.argv[2])))
