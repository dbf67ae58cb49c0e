"""How does `rbee plan` grow with the number of hives? And how fast does the keeper start?

Usage: .venv/bin/python bench/plan_scale.py [--sizes 10 50 100] [--runs 5] [--ssh-hosts 20]
           [--baseline REV] [--quick]

Every figure is the real `rbee` CLI timed end to end from outside (process start, YAML,
queen round trip, observation, plan, printing), median of --runs after one warm-up run:

- `rbee --help` and `rbee validate` of the demo YAML: the keeper's own start.
- N simulated hives (--sizes): a *hive farm* (bench/hive_farm.py), N real rbee-hive apps in
  one process on loopback ports, declared as N local hives with their cpu worker binary and
  no workers. The farm answers every hive from one core, where N machines would answer in
  parallel, so these rows overstate what N real hives cost.
- --ssh-hosts real SSH hosts (needs root): network namespaces with their own sshd
  (tests/fixtures/netns.py); `rbee apply` installs rbee and starts a hive on each over SSH,
  then each plan probes every host over SSH and reads its hive's listings over HTTP.

--baseline REV runs the same rows with rbee from a git worktree of REV (PYTHONPATH), keeper
and queen both, in the same run: the peer the numbers compare against. --quick is the form
the test suite runs: 10 hives, 1 run, no SSH hosts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

Row = tuple[str, list[float]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ssh-hosts", type=int, default=20)
    parser.add_argument("--baseline", help="a git revision to compare against, in the same run")
    parser.add_argument("--quick", action="store_true", help="10 hives, 1 run, no SSH hosts")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.runs, args.ssh_hosts = [10], 1, 0

    variants = {"this tree": ROOT}
    with contextlib.ExitStack() as stack:
        if args.baseline:
            variants[args.baseline] = stack.enter_context(_worktree(args.baseline))
        results = {name: _measure(tree, args) for name, tree in variants.items()}
    _print(results)


def _measure(tree: Path, args: argparse.Namespace) -> list[Row]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    rows: list[Row] = [
        ("rbee --help", _times(args.runs, _rbee("--help"), env)),
        (
            "rbee validate (demo YAML)",
            _times(args.runs, _rbee("validate", "-f", str(ROOT / "cluster.example.yaml")), env),
        ),
    ]
    for size in args.sizes:
        rows.append((f"rbee plan, {size} simulated hives (farm)", _plan_farm(size, args.runs, env)))
    if args.ssh_hosts:
        rows.append(
            (
                f"rbee plan, {args.ssh_hosts} SSH hives (netns)",
                _plan_ssh(args.ssh_hosts, args.runs, env),
            )
        )
    return rows


def _rbee(*args: str) -> list[str]:
    """The command line of the rbee CLI (of the tree on PYTHONPATH)."""
    return [sys.executable, "-m", "rbee.cli", *args]


def _times(
    runs: int, command: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)
) -> list[float]:
    """Wall seconds of `command`, run once to warm up and then `runs` times."""
    seconds = []
    for run in range(runs + 1):
        started = time.perf_counter()
        # From the tree's directory: `python -m` puts the working directory first on sys.path.
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, cwd=env["PYTHONPATH"]
        )
        elapsed = time.perf_counter() - started
        if done.returncode not in ok:
            raise SystemExit(
                f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
            )
        if run:
            seconds.append(elapsed)
    return seconds


def _plan_farm(size: int, runs: int, env: dict[str, str]) -> list[float]:
    home = Path(tempfile.mkdtemp(prefix="rbee-plan-scale-"))
    env = {**env, "HOME": str(home)}
    config = home / "cluster.yaml"
    try:
        with _farm(size, home) as ports:
            config.write_text(
                json.dumps(
                    {
                        "queen": {"url": f"http://127.0.0.1:{_free_port()}"},
                        "self_heal": False,
                        "hives": [
                            {"name": f"h{i}", "host": "127.0.0.1", "mode": "local", "port": port}
                            for i, port in enumerate(ports)
                        ],
                    }
                )
            )
            try:
                return _times(runs, _rbee("plan", "--detailed-exitcode", "-f", str(config)), env)
            finally:
                subprocess.run(
                    _rbee("queen", "stop", "-f", str(config)), env=env, capture_output=True
                )
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def _farm(size: int, home: Path) -> Iterator[list[int]]:
    ports_file = home / "farm-ports"
    farm = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "hive_farm.py"), str(size), str(ports_file)],
        env={**os.environ, "HOME": str(home)},
    )
    try:
        deadline = time.monotonic() + 60
        while not ports_file.exists() or not ports_file.read_text().endswith("\n"):
            if farm.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the hive farm of {size} did not start")
            time.sleep(0.1)
        yield [int(line) for line in ports_file.read_text().split()]
    finally:
        farm.send_signal(signal.SIGTERM)
        farm.wait(30)


def _plan_ssh(hosts: int, runs: int, env: dict[str, str]) -> list[float]:
    from lab import lab

    with lab(hosts) as the_lab:
        the_lab.env.update(PYTHONPATH=env["PYTHONPATH"])
        the_lab.write({"self_heal": False})
        # From the tree's directory, as _times runs: the queen the apply starts is the tree's.
        subprocess.run(
            _rbee("apply", "--auto-approve", "-f", str(the_lab.config)),
            env=the_lab.env,
            cwd=env["PYTHONPATH"],
            check=True,
            capture_output=True,
        )
        plan = _rbee("plan", "--detailed-exitcode", "-f", str(the_lab.config))
        return _times(runs, plan, the_lab.env)


@contextlib.contextmanager
def _worktree(revision: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rbee-baseline-"))
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), revision],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
            capture_output=True,
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _print(results: dict[str, list[Row]]) -> None:
    names = list(results)
    header = f"{'what':<44}" + "".join(f" {name + ' median (min-max) s':>30}" for name in names)
    print(header)
    print("-" * len(header))
    for index, (label, _) in enumerate(results[names[0]]):
        cells = []
        for name in names:
            seconds = results[name][index][1]
            cells.append(
                f"{statistics.median(seconds):.2f} ({min(seconds):.2f}-{max(seconds):.2f})"
            )
        print(f"{label:<44}" + "".join(f" {cell:>30}" for cell in cells))


if __name__ == "__main__":
    main()
