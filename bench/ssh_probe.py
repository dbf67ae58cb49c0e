"""How fast does the queen learn what N SSH hosts have? rbee's probe vs. pyinfra and ansible.

Usage (root): .venv/bin/python bench/ssh_probe.py [--hosts 24] [--runs 3] [--no-tools]

Builds N network-namespace hosts with real sshd (tests/fixtures/netns.py), then times, on the
same hosts in the same run, each from a cold start (connection setup included):
- rbee's `probe_all` (one asyncssh connection and one batched command per host), with its
  default concurrency of 10 and with all hosts at once;
- pyinfra fact gathering (server.Os, server.Arch, server.Hostname), `ansible -m raw` and
  `ansible -m setup`, all with parallelism N, from a throwaway venv (`--tool-venv`, default
  /tmp/rbee-bench-venv) where they are pip-installed if missing — never into .venv.
Every tool verifies host keys against the fixture's known_hosts. Prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rbee.observe.ssh import probe_all
from tests.fixtures.netns import SshHost, netns_hosts

Row = tuple[str, list[float], str]


def _rbee(hosts: list[SshHost], concurrency: int) -> Callable[[], str]:
    hives = [h.hive() for h in hosts]

    def run() -> str:
        facts = asyncio.run(probe_all(hives, concurrency=concurrency))
        bad = [name for name, f in facts.items() if not f.reachable or f.python_version is None]
        return f"{len(facts) - len(bad)}/{len(facts)} ok"

    return run


def _tool_venv(path: Path) -> Path | None:
    """A venv with pyinfra and ansible-core, made (and filled from PyPI) if missing."""
    python = path / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    have = subprocess.run(
        [str(python), "-c", "import pyinfra, ansible"], capture_output=True, check=False
    )
    if have.returncode != 0:
        print(f"installing pyinfra and ansible-core into {path} ...", flush=True)
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "pyinfra", "ansible-core"], check=False
        )
        if done.returncode != 0:
            return None
    return path / "bin"


def _pyinfra(bin_dir: Path, hosts: list[SshHost], work: Path) -> Callable[[], str]:
    inventory = work / "inventory.py"
    entries = ",\n".join(
        f"    ({h.address!r}, {{'ssh_user': {h.user!r}, 'ssh_key': {str(h.key)!r}, "
        f"'ssh_known_hosts_file': {str(h.known_hosts)!r}, "
        f"'ssh_strict_host_key_checking': 'yes'}})"
        for h in hosts
    )
    inventory.write_text(f"hosts = [\n{entries},\n]\n")
    argv = [
        str(bin_dir / "pyinfra"), "-y", "--parallel", str(len(hosts)), str(inventory),
        "fact", "server.Os", "server.Arch", "server.Hostname",
    ]  # fmt: skip
    return lambda: _command(argv, work, ok_marker=None)


def _ansible(bin_dir: Path, hosts: list[SshHost], work: Path, module: str) -> Callable[[], str]:
    inventory = work / "hosts.ini"
    lines = [
        f"h{h.index} ansible_host={h.address} ansible_user={h.user} "
        f"ansible_ssh_private_key_file={h.key}"
        for h in hosts
    ]
    inventory.write_text("[all]\n" + "\n".join(lines) + "\n")
    known_hosts = hosts[0].known_hosts
    argv = [str(bin_dir / "ansible"), "all", "-i", str(inventory), "-f", str(len(hosts))]
    argv += ["-m", module] + (["-a", "uname -a"] if module == "raw" else [])
    env = {
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
        "ANSIBLE_SSH_COMMON_ARGS": f"-o UserKnownHostsFile={known_hosts} "
        "-o StrictHostKeyChecking=yes",
        "ANSIBLE_LOCAL_TEMP": str(work / "ansible-tmp"),
        "ANSIBLE_NOCOLOR": "1",
    }

    def run() -> str:
        # A fresh ControlPath directory per run: connection setup is part of every run.
        control = tempfile.mkdtemp(prefix="cp-", dir=work)
        return _command(
            argv, work, ok_marker=" | ", env={**env, "ANSIBLE_SSH_CONTROL_PATH_DIR": control}
        )

    return run


def _command(
    argv: list[str], cwd: Path, ok_marker: str | None, env: dict[str, str] | None = None
) -> str:
    proc = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return f"exit {proc.returncode}: {' / '.join(tail)[:120]}"
    if ok_marker:
        ok = sum(1 for line in proc.stdout.splitlines() if "SUCCESS" in line or "CHANGED" in line)
        return f"{ok} ok"
    return "ok"


def _time(run: Callable[[], str], runs: int) -> tuple[list[float], str]:
    times: list[float] = []
    note = ""
    for _ in range(runs):
        start = time.perf_counter()
        note = run()
        times.append(time.perf_counter() - start)
    return times, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=24)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-tools", action="store_true", help="time rbee only")
    parser.add_argument("--tool-venv", type=Path, default=Path("/tmp/rbee-bench-venv"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, users, sshd)")

    bin_dir = None if args.no_tools else _tool_venv(args.tool_venv)
    rows: list[Row] = []
    started = time.perf_counter()
    with netns_hosts(args.hosts) as hosts, tempfile.TemporaryDirectory() as tmp:
        setup = time.perf_counter() - started
        work = Path(tmp)
        n = len(hosts)
        cases: list[tuple[str, Callable[[], str]]] = [
            ("rbee probe_all (concurrency 10)", _rbee(hosts, 10)),
            (f"rbee probe_all (concurrency {n})", _rbee(hosts, n)),
        ]
        if bin_dir is not None:
            cases += [
                ("pyinfra fact (3 facts)", _pyinfra(bin_dir, hosts, work)),
                ("ansible -m raw 'uname -a'", _ansible(bin_dir, hosts, work, "raw")),
                ("ansible -m setup", _ansible(bin_dir, hosts, work, "setup")),
            ]
        for name, run in cases:
            print(f"timing {name} ...", flush=True)
            times, note = _time(run, args.runs)
            rows.append((name, times, note))

    print()
    print(f"{n} namespace hosts with real sshd, {args.runs} runs each, cold connections;")
    print(f"building the hosts took {setup:.2f} s.")
    if bin_dir is None and not args.no_tools:
        print("pyinfra/ansible could not be installed into the tool venv: not compared.")
    print()
    print(f"| tool | median s | min s | max s | per host ms (median/{n}) | result |")
    print("|---|---:|---:|---:|---:|---|")
    for name, times, note in rows:
        median = statistics.median(times)
        print(
            f"| {name} | {median:.2f} | {min(times):.2f} | {max(times):.2f} "
            f"| {median / n * 1000:.0f} | {note} |"
        )


if __name__ == "__main__":
    main()
