"""A hive farm: N real rbee-hive apps in ONE process, each on its own loopback port.

Usage: .venv/bin/python bench/hive_farm.py N PORTS_FILE

Each hive is `rbee.hive.app.create_app` (the very app `rbee-hive` serves) with its own model
and worker-binary cache under a temporary directory, served as `rbee-hive --identity` serves
it: mutual TLS with an identity from the cluster CA of this HOME (which the queen started with
the same HOME uses; made here if missing), the queen's certificate only. All the servers share
one event loop (`rbee.daemon.run_daemon`). It stands in for N machines when a benchmark needs
many hives on a 2-core box: the routes and listings are real, but N hives answer from one
core, where N machines would answer in parallel. When every port listens, their numbers are
written to PORTS_FILE, one per line. Runs until SIGTERM.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rbee.catalog.artifact import ArtifactCatalog
from rbee.credentials import tls_dir
from rbee.daemon import Listener, PeerAuth, bind, run_daemon
from rbee.hive.app import create_app
from rbee.hive.binaries import WorkerBinaryCatalog
from rbee.net import LOOPBACK, LOOPBACK_NAMES
from rbee.pki import Authority, Identity, write_private


def farm(count: int, ports_file: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="rbee-hive-farm-"))
    authority = Authority(tls_dir())
    listeners = []
    for index in range(count):
        name, cache = f"h{index}", root / f"h{index}"
        bundle = authority.issue("hive", name, list(LOOPBACK_NAMES))
        identity = Identity(write_private(cache / "identity.pem", bundle))
        app = create_app(
            name,
            catalog=ArtifactCatalog(cache / "models"),
            binaries=WorkerBinaryCatalog(cache / "workers"),
            identity=identity,
        )
        guarded = PeerAuth(app, lambda role, method, path: role == "queen")
        sock = bind(LOOPBACK, 0)
        listeners.append(Listener(guarded, sock, identity.server, lifespan=False))
    # Bound sockets listen already: a client that comes before the servers run waits.
    ports_file.write_text("".join(f"{x.sock.getsockname()[1]}\n" for x in listeners))
    run_daemon(*listeners)


if __name__ == "__main__":
    farm(int(sys.argv[1]), Path(sys.argv[2]))
