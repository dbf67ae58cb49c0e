"""`rbee show` and `rbee graph` read a saved plan with no queen: what a CI job posts on a pull
request and draws."""

from __future__ import annotations

from pathlib import Path

from rbee.plan.render import plan_json
from tests.fixtures.cluster import rbee_in
from tests.plan.test_planner import _case


def test_show_prints_a_saved_plan_as_markdown_text_or_json(tmp_path: Path) -> None:
    saved = tmp_path / "plan.json"
    the_plan = _case("ctx_size_change_restarts_worker")
    saved.write_text(plan_json(the_plan))
    markdown = rbee_in(tmp_path, "show", str(saved), "--format", "markdown")
    assert markdown.returncode == 0, markdown.stderr
    assert markdown.stdout.startswith("### rbee plan\n")
    assert "**Plan:** 0 to add, 1 to change, 0 to destroy." in markdown.stdout
    text = rbee_in(tmp_path, "show", str(saved))
    assert "Plan: 0 to add, 1 to change, 0 to destroy." in text.stdout
    as_json = rbee_in(tmp_path, "show", str(saved), "--format", "json")
    assert as_json.stdout == plan_json(the_plan)


def test_graph_of_a_saved_plan_is_dot(tmp_path: Path) -> None:
    saved = tmp_path / "plan.json"
    saved.write_text(plan_json(_case("empty_cluster")))
    result = rbee_in(tmp_path, "graph", str(saved))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("digraph rbee_plan {")
    assert '"hive.local" -> "model.local.gemma3-270m";' in result.stdout


def test_show_of_a_file_that_is_no_plan_is_one_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.json"
    bogus.write_text('{"hello": 1}')
    result = rbee_in(tmp_path, "show", str(bogus), "--format", "markdown")
    assert result.returncode == 1
    assert "is not a plan saved by `rbee plan --out`" in result.stderr
    assert "Traceback" not in result.stderr
