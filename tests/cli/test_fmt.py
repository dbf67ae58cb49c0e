"""`rbee fmt`: one layout for cluster YAML, comments and quoting kept, `--check` for CI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from rbee.config.load import load_cluster
from tests.fixtures.cluster import rbee_in

MESSY = """\
# the lab's cluster
version: 1
queen:
    url: http://127.0.0.1:7833   # the queen
    token: "0123"
hives:
- name: local     # this machine
  host: localhost



models:
-   name: m
    source: file:///m.gguf
worker_binaries:
- name: cpu
deployments:
- {model: m, worker: cpu, hives: [local]}
"""

TIDY = """\
# the lab's cluster
version: 1
queen:
  url: http://127.0.0.1:7833     # the queen
  token: "0123"
hives:
  - name: local   # this machine
    host: localhost

models:
  - name: m
    source: file:///m.gguf
worker_binaries:
  - name: cpu
deployments:
  - {model: m, worker: cpu, hives: [local]}
"""


def test_fmt_rewrites_in_one_layout_keeping_comments_and_quotes(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(MESSY)
    check = rbee_in(tmp_path, "fmt", "--check", str(path))
    assert check.returncode == 1
    assert f"{path}: not formatted" in check.stderr
    assert path.read_text() == MESSY  # --check changes nothing
    assert rbee_in(tmp_path, "fmt", str(path)).returncode == 0
    assert path.read_text() == TIDY
    assert load_cluster(path).queen.token == "0123"  # still a string
    again = rbee_in(tmp_path, "fmt", "--check", str(path))
    assert again.returncode == 0 and again.stdout == ""


def test_the_example_file_is_formatted(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "cluster.example.yaml"
    copy = tmp_path / "cluster.example.yaml"
    shutil.copyfile(example, copy)
    result = rbee_in(tmp_path, "fmt", "--check", str(copy))
    assert result.returncode == 0, result.stderr


def test_an_invalid_file_is_reported_with_its_position_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    broken = "version: 1\nhives:\n  - name: local\n    hostt: localhost\n"
    path.write_text(broken)
    result = rbee_in(tmp_path, "fmt", str(path))
    assert result.returncode == 1
    assert f"{path}:4:5: hives[0].hostt: unknown key 'hostt'" in result.stderr
    assert "Traceback" not in result.stderr
    assert path.read_text() == broken


def test_validate_checks_the_yamls_variables_against_an_env_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text("version: 1\nqueen:\n  url: http://10.0.0.10:7833\n  token: ${RBEE_TOKEN}\n")
    env = {k: v for k, v in os.environ.items() if k != "RBEE_TOKEN"}
    missing = subprocess.run(
        [sys.executable, "-m", "rbee.cli", "validate", "-f", str(path)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert missing.returncode == 1
    assert f"{path}:4:3: queen.token: environment variable RBEE_TOKEN is not set" in (
        missing.stderr
    ), missing.stderr
    secrets = tmp_path / "ci.env"
    secrets.write_text("# the CI job's secrets\nRBEE_TOKEN=s3cret\n")
    valid = subprocess.run(
        [sys.executable, "-m", "rbee.cli", "validate", "-f", str(path), "--env-file", str(secrets)],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert valid.returncode == 0, valid.stderr
    assert "valid" in valid.stdout and "s3cret" not in valid.stdout
