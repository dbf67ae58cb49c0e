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
import statistics
import time

from lab import lab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    with lab(args.hosts) as the_lab:
        the_lab.write(
            {
                "models": [{"name": "gemma3-270m", "source": f"file://{the_lab.model}"}],
                "worker_binaries": [{"name": "cpu"}],
                "deployments": [
                    {"model": "gemma3-270m", "worker": "cpu", "slots": 1, "ctx_size": 512}
                ],
            }
        )
        started = time.perf_counter()
        the_lab.rbee("apply", "--auto-approve")
        apply_s = time.perf_counter() - started
        plans = []
        for _ in range(args.runs):
            started = time.perf_counter()
            done = the_lab.rbee("plan", "--detailed-exitcode", check=False)
            plans.append(time.perf_counter() - started)
            assert done.returncode == 0, done.stdout + done.stderr

    print(f"{'what':<52} {'seconds':>8}")
    print(f"{f'rbee apply from nothing, {args.hosts} network hives':<52} {apply_s:>8.2f}")
    label = f"rbee plan, {args.hosts} hives, no changes (median of {args.runs})"
    print(f"{label:<52} {statistics.median(plans):>8.2f}")
    print(f"{'rbee plan, fastest':<52} {min(plans):>8.2f}")


if __name__ == "__main__":
    main()
