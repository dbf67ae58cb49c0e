"""`rbee show` and `rbee graph` read a saved plan with no queen: what a CI job posts on a pull
request and draws."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rbee.plan.render import plan_json
from tests.plan.test_planner import _case


def _rbee(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(cwd)}
    return subprocess.run(
        [sys.executable, "-m", "rbee.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd,
    )


def test_show_prints_a_saved_plan_as_markdown_text_or_json(tmp_path: Path) -> None:
    saved = tmp_path / "plan.json"
    the_plan = _case("ctx_size_change_restarts_worker")
    saved.write_text(plan_json(the_plan))
    markdown = _rbee("show", str(saved), "--format", "markdown", cwd=tmp_path)
    assert markdown.returncode == 0, markdown.stderr
    assert markdown.stdout.startswith("### rbee plan\n")
    assert "**Plan:** 0 to add, 1 to change, 0 to destroy." in markdown.stdout
    text = _rbee("show", str(saved), cwd=tmp_path)
    assert "Plan: 0 to add, 1 to change, 0 to destroy." in text.stdout
    as_json = _rbee("show", str(saved), "--format", "json", cwd=tmp_path)
    assert as_json.stdout == plan_json(the_plan)


def test_graph_of_a_saved_plan_is_dot(tmp_path: Path) -> None:
    saved = tmp_path / "plan.json"
    saved.write_text(plan_json(_case("empty_cluster")))
    result = _rbee("graph", str(saved), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("digraph rbee_plan {")
    assert '"hive.local" -> "model.local.gemma3-270m";' in result.stdout


def test_show_of_a_file_that_is_no_plan_is_one_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.json"
    bogus.write_text('{"hello": 1}')
    result = _rbee("show", str(bogus), "--format", "markdown", cwd=tmp_path)
    assert result.returncode == 1
    assert "is not a plan saved by `rbee plan --out`" in result.stderr
    assert "Traceback" not in result.stderr
