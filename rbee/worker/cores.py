"""A CPU worker's share of its machine's cores.

Two workers that each decode with every core run twice as many threads as there are cores,
and both slow down far more than by half (issue 24 measured two workers of 2 slots three times
slower than one of 4). So a CPU worker without `--threads` decodes with its share: the cores
left by the CPU workers given `--threads` (the YAML's `threads:`), over the CPU workers
without. It reads the share as it loads and again every few seconds, and llama.cpp takes a new
thread count between two decodes (`llama_set_n_threads`): a worker started or stopped beside
it changes its share without restarting it.

The workers counted are this cluster's on the machine that decode on the CPU: this user's
workers reporting to the same queen (in the tests' namespaces each hive is a user of its own).
"""

from __future__ import annotations

import os

from rbee.process import own_processes
from rbee.wire import WorkerArgs

__all__ = ["SHARE_EVERY_S", "cores", "share"]

#: How often a worker reads its share again.
SHARE_EVERY_S = 3.0


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) or os.cpu_count() or 1


def share(config: WorkerArgs) -> int:
    """The threads the CPU worker of `config`, without `--threads`, decodes with now."""
    given, sharing = 0, 0
    for _, args, _ in own_processes(WorkerArgs):
        if args.device != "cpu" or args.queen_url != config.queen_url:
            continue
        if args.threads is None:
            sharing += 1
        else:
            given += args.threads
    return max(1, (cores() - given) // max(1, sharing))
