"""The example CI pipelines in examples/ci/ are valid for their platforms: actionlint (with
shellcheck on every `run:`) and GitHub's workflow schema for GitHub Actions, GitLab's CI schema
and shellcheck for GitLab CI. Only the schemas vendored in check-jsonschema are used: no
network."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from ruamel.yaml import YAML

__all__ = ["GITHUB", "GITLAB"]

EXAMPLES = Path(__file__).parents[2] / "examples" / "ci"
GITHUB = EXAMPLES / "github" / "rbee.yml"
GITLAB = EXAMPLES / "gitlab" / ".gitlab-ci.yml"
# The tools come with the test extra, into the venv that runs the tests.
_BIN = Path(sys.executable).parent


def _tool(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(_BIN / name), *map(str, args)], capture_output=True, text=True, timeout=60
    )


def _actionlint(workflow: Path) -> subprocess.CompletedProcess[str]:
    # -shellcheck by path: actionlint skips shellcheck silently when it is not on PATH.
    return _tool("actionlint", "-no-color", "-shellcheck", _BIN / "shellcheck", workflow)


def _schema_check(schema: str, file: Path) -> subprocess.CompletedProcess[str]:
    return _tool("check-jsonschema", "--builtin-schema", schema, "--no-cache", file)


def _gitlab_schema_check(file: Path) -> subprocess.CompletedProcess[str]:
    return _schema_check("vendor.gitlab-ci", file)


def test_github_workflow_passes_actionlint_and_shellcheck() -> None:
    result = _actionlint(GITHUB)
    assert result.returncode == 0, result.stdout + result.stderr


def test_github_workflow_matches_githubs_workflow_schema() -> None:
    result = _schema_check("vendor.github-workflows", GITHUB)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gitlab_pipeline_matches_gitlabs_ci_schema() -> None:
    result = _gitlab_schema_check(GITLAB)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gitlab_scripts_pass_shellcheck() -> None:
    pipeline = YAML(typ="safe").load(GITLAB)
    scripts = {
        f"{name}.{part}": "\n".join(job[part])
        for name, job in pipeline.items()
        if isinstance(job, dict)
        for part in ("before_script", "script")
        if part in job
    }
    assert {"rbee:plan.script", "rbee:apply.script", "default.before_script"} <= set(scripts)
    for name, script in scripts.items():
        # GitLab's runner runs a job's lines as one bash script, `set -eo pipefail` first.
        result = subprocess.run(
            [str(_BIN / "shellcheck"), "--shell=bash", "-"],
            input=f"set -eo pipefail\n{script}\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"{name}:\n{result.stdout}"


@pytest.mark.parametrize(
    ("example", "mistake", "check"),
    [
        (GITHUB, ("needs: plan", "needs: plann"), _actionlint),
        (GITLAB, ("when: manual", "when: manually"), _gitlab_schema_check),
    ],
    ids=["github-unknown-job", "gitlab-unknown-when"],
)
def test_a_broken_copy_is_rejected(
    tmp_path: Path,
    example: Path,
    mistake: tuple[str, str],
    check: Callable[[Path], subprocess.CompletedProcess[str]],
) -> None:
    """The checks above can fail: one typo in a copy of each example is caught."""
    broken = tmp_path / example.name
    right, wrong = mistake
    assert right in example.read_text()
    broken.write_text(example.read_text().replace(right, wrong, 1))
    result = check(broken)
    assert result.returncode != 0
    assert wrong.split()[-1] in result.stdout + result.stderr
