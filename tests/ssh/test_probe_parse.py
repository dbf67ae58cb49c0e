"""The probe's parser, pyinfra-style: facts/<case>.json holds raw output in, SshFacts out."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from rbee.observe.ssh import PROBE_COMMAND, parse_probe
from rbee.wire import SshFacts

CASES = sorted((Path(__file__).parent / "facts").glob("*.json"))


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_probe_output_parses_to_facts(case: Path) -> None:
    data = json.loads(case.read_text())
    assert parse_probe(data["output"]) == SshFacts.model_validate(data["facts"])


def test_probe_is_one_fixed_sh_command() -> None:
    argv = shlex.split(PROBE_COMMAND)
    assert argv[:2] == ["sh", "-c"]
    assert len(argv) == 3
