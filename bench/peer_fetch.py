"""Does a model leave the source once? `rbee apply` of a URL model on N fresh network hives,
with peer fetch, against N hives each downloading it from the source.

Usage (root): .venv/bin/python bench/peer_fetch.py [--hosts 3] [--source-mb-s 50]

N network-namespace hosts with real sshd (tests/fixtures/netns.py) get rbee installed by a first
apply (no model). The model (Gemma 3 270M, 253 MB) is then served by a local server
(tests/fixtures/hub.py) whose uplink is limited to --source-mb-s, shared by all its downloads,
as an internet link would be; the hives talk to each other over the bridge unthrottled.
Measured: the apply that adds the model to every hive (rbee: one hive fetches, the others copy
from it), the same apply with `peer_fetch: false` (every hive from the source), and N
concurrent `curl` downloads from the source inside the namespaces. Prints bytes from the
source and wall time for each.
"""

from __future__ import annotations

import argparse
import subprocess
import time

from lab import lab

from tests.fixtures.hub import fake_hub


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--source-mb-s", type=float, default=50.0)
    args = parser.parse_args()

    rows = []
    with lab(args.hosts) as the_lab:

        def cluster(models: list[dict[str, object]], peer_fetch: bool = True) -> dict[str, object]:
            deployments = [{"model": m["name"], "worker": "cpu", "replicas": 0} for m in models]
            return {
                "models": models,
                "worker_binaries": [{"name": "cpu"}],
                "deployments": deployments,
                "peer_fetch": peer_fetch,
            }

        the_lab.write(cluster([]))
        the_lab.rbee("apply", "--auto-approve")  # installs rbee on every host: not measured
        for hub in fake_hub(host=the_lab.gateway, cdn_host=the_lab.gateway):
            served = hub.add("org/repo", "gemma.gguf", the_lab.model)
            hub.bytes_per_s = args.source_mb_s * 1e6
            url = f"{hub.cdn_url}/cdn/{served.sha256}"
            the_lab.write(cluster([{"name": "gemma", "source": url, "sha256": served.sha256}]))
            started = time.perf_counter()
            the_lab.rbee("apply", "--auto-approve")
            rows.append(("rbee apply (peer fetch)", hub.sent, time.perf_counter() - started))
            hub.sent = 0
            # The same file under another name, which no hive holds yet, each from the source.
            again = {"name": "gemma-again", "source": url, "sha256": served.sha256}
            the_lab.write(cluster([again], peer_fetch=False))
            started = time.perf_counter()
            the_lab.rbee("apply", "--auto-approve")
            rows.append(("rbee apply (peer_fetch: false)", hub.sent, time.perf_counter() - started))
            hub.sent = 0
            started = time.perf_counter()
            curl = ["curl", "-sSf", "-o", "/dev/null", url]
            downloads = [
                subprocess.Popen(["ip", "netns", "exec", host.namespace, *curl])
                for host in the_lab.hosts
            ]
            assert all(d.wait() == 0 for d in downloads)
            elapsed = time.perf_counter() - started
            rows.append((f"{args.hosts} x curl from the source", hub.sent, elapsed))

    size = served.size / 1e6
    print(f"{args.hosts} hives, {size:.0f} MB model, source uplink {args.source_mb_s:g} MB/s\n")
    print(f"{'how':<32} {'MB from the source':>19} {'seconds':>8}")
    for how, sent, seconds in rows:
        print(f"{how:<32} {sent / 1e6:>19.0f} {seconds:>8.1f}")


if __name__ == "__main__":
    main()
