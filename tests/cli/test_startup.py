"""The keeper starts with only what a command uses (its speed is in bench/plan_scale.py).

`rbee --help` and `rbee validate` are what CI runs on every pull request; they must not pay for
the HTTP client, the wire models, the planner or the daemon starter. Each case runs the real
CLI in a fresh interpreter and lists the modules it imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_RUN = """
import json, sys
sys.argv = ["rbee", *json.loads(sys.argv[1])]
from rbee.cli.main import main
try:
    main()
except SystemExit:
    pass
print("\\n" + json.dumps(sorted(sys.modules)))
"""

# What talks to a queen, plans, or starts daemons.
_QUEEN_SIDE = {"httpx", "rbee.clients", "rbee.wire", "rbee.plan", "psutil", "asyncio", "asyncssh"}


def _imported(*args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", _RUN, json.dumps(args)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_help_imports_neither_pydantic_nor_yaml_nor_the_queen_side() -> None:
    modules = _imported("--help")
    assert "rbee.cli.main" in modules
    assert not {m.split(".")[0] for m in modules} & {"pydantic", "ruamel"}
    assert "typer.rich_utils" not in modules  # plain help: rich's boxes cost 70 ms
    assert not _QUEEN_SIDE & modules


@pytest.mark.parametrize(
    "command", ["plan", "apply", "hive", "key", "job", "logs", "queen", "init"]
)
def test_a_command_s_help_imports_nothing_of_the_queen_side(command: str) -> None:
    assert not _QUEEN_SIDE & _imported(command, "--help")


def test_validate_imports_the_config_but_not_the_queen_side() -> None:
    modules = _imported("validate", "-f", str(ROOT / "cluster.example.yaml"))
    assert "rbee.config.load" in modules
    assert not _QUEEN_SIDE & modules
    assert "dotenv" not in modules  # only with --env-file
