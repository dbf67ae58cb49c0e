"""The bad-input sweep (issue 11): hundreds of malformed cluster files, each reported as
`file:line:col` errors with exit 1, never a traceback, in validate, plan and apply."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings

from rbee.config import load_cluster
from rbee.errors import ConfigError
from tests.config import malformed
from tests.config.schema_documents import broken_documents
from tests.config.test_load import FIELD_PATH, LINE

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "cluster.example.yaml"
EXAMPLE_FILES = [EXAMPLE, *sorted((ROOT / "examples").glob("*.yaml"))]
EXAMPLES = {path.name: path.read_text() for path in EXAMPLE_FILES}
CASES = malformed.mutations(EXAMPLES) + malformed.whole_files(EXAMPLE.read_text())
COMMANDS = (["validate"], ["plan"], ["apply", "--auto-approve"])


@pytest.fixture(scope="module", autouse=True)
def _environment() -> Iterator[None]:
    """Every `${VAR}` the examples read is set, so that only the mutation makes a file bad."""
    with pytest.MonkeyPatch.context() as patch:
        for text in EXAMPLES.values():
            for name in malformed.VARIABLE.findall(text):
                patch.setenv(name, "set-by-the-sweep")
        yield


def _assert_positioned(message: str, path: Path, text: str) -> list[str]:
    """Every line of `message` is `path:line:col: ...` inside the file; returns their fields."""
    lines = text.split("\n")  # a mark may sit just past the last line break
    fields = []
    for error in message.splitlines():
        where = LINE.match(error)
        assert where is not None, f"no file:line:col in {error[:300]!r}"
        assert where["file"] == str(path), error[:300]
        line, column = int(where["line"]), int(where["col"])
        assert 1 <= line <= len(lines), f"line {line} of {len(lines)}: {error[:300]}"
        assert 1 <= column <= len(lines[line - 1]) + 1, f"column {column}: {error[:300]}"
        field = FIELD_PATH.match(where["rest"])
        fields.append(field["path"] if field else "")
    return fields


def _config_error(path: Path) -> ConfigError:
    try:
        cluster = load_cluster(path)
    except ConfigError as exc:
        return exc
    raise AssertionError(f"{path} is valid: {cluster!r:.300}")


def test_the_sweep_has_every_kind_of_mistake_and_over_200_files() -> None:
    kinds = Counter(case.kind for case in CASES)
    assert len(CASES) >= 200
    assert all(count >= 4 for count in kinds.values()), kinds
    assert set(kinds) >= {
        "wrong_type",
        "port_out_of_range",
        "duplicate_name",
        "unknown_reference",
        "bad_url",
        "bad_duration",
        "bad_count",
        "unknown_key",
        "missing_key",
        "yaml_syntax",
        "huge",
        "deep_nesting",
    }


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda path: path.name)
def test_each_example_loads_before_it_is_broken(example: Path) -> None:
    assert load_cluster(example)


@pytest.mark.parametrize("case", CASES, ids=[f"{case.kind}-{case.name}"[:120] for case in CASES])
def test_malformed_file_is_a_config_error_at_file_line_col(
    case: malformed.Malformed, tmp_path: Path
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_bytes(case.content)
    _assert_positioned(_config_error(path).message, path, case.text)


@settings(max_examples=150, derandomize=True, database=None, deadline=None)
@given(broken_documents())
def test_schema_document_with_one_bad_field_is_reported_at_that_field(
    broken: tuple[dict[str, object], malformed.Loc],
) -> None:
    document, loc = broken
    text = malformed.dumped(document)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cluster.yaml"
        path.write_text(text)
        fields = _assert_positioned(_config_error(path).message, path, text)
    broken_at = malformed.dotted(loc)
    assert any(
        field == broken_at or field.startswith((f"{broken_at}.", f"{broken_at}["))
        for field in fields
    ), f"no error at {broken_at} in {fields}"


def _written(cases: list[malformed.Malformed], folder: Path) -> list[Path]:
    paths = [folder / f"{number:02d}-{case.kind}.yaml" for number, case in enumerate(cases)]
    for path, case in zip(paths, cases, strict=True):
        path.write_bytes(case.content)
    return paths


def _run_cli(files: list[Path], folder: Path) -> dict[tuple[str, Path], dict[str, Any]]:
    """Each file through validate, plan and apply, all in one Python process (cli_batch);
    the results by (command, file)."""
    runs = [[*command, "-f", str(path)] for path in files for command in COMMANDS]
    (folder / "runs.json").write_text(json.dumps(runs))
    env = {key: value for key, value in os.environ.items() if not key.startswith("RBEE_")}
    env |= {"HOME": str(folder / "home"), "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "tests.config.cli_batch", "runs.json", "results.json"]
    subprocess.run(command, cwd=folder, env=env, check=True, timeout=120)
    results = json.loads((folder / "results.json").read_text())
    assert [result["argv"] for result in results] == runs
    return {(result["argv"][0], Path(result["argv"][-1])): result for result in results}


def _assert_failed_at_file_line_col(result: dict[str, Any]) -> None:
    argv, stderr = result["argv"], result["stderr"]
    assert "Traceback" not in stderr, f"{argv}: {stderr}"
    assert result["code"] == 1, f"{argv}: exit {result['code']}: {stderr[:500]}"
    assert result["queen"] == [], f"{argv} reached for the queen"
    assert stderr.startswith("Error: "), f"{argv}: {stderr[:500]}"
    message = [line for line in stderr.splitlines() if not line.startswith("hint: ")]
    path = Path(argv[-1])
    text = path.read_bytes().decode(errors="replace")
    _assert_positioned("\n".join(message).removeprefix("Error: "), path, text)


def test_cli_fails_fast_on_malformed_files_without_a_queen(tmp_path: Path) -> None:
    first_of_each_kind = list({case.kind: case for case in reversed(CASES)}.values())
    files = _written(first_of_each_kind, tmp_path)
    results = _run_cli([*files, EXAMPLE], tmp_path)
    for path in files:
        for command, *_ in COMMANDS:
            _assert_failed_at_file_line_col(results[command, path])
    # The valid example shows that reaching for the queen would be seen.
    assert results["validate", EXAMPLE]["code"] == 0
    assert results["plan", EXAMPLE]["queen"]
    assert results["apply", EXAMPLE]["queen"]


def test_cli_prints_a_value_that_reads_as_markup_as_written(tmp_path: Path) -> None:
    (case,) = [case for case in CASES if case.name == malformed.MARKUP]
    for result in _run_cli(_written([case], tmp_path), tmp_path).values():
        _assert_failed_at_file_line_col(result)
        assert "got '[/red]'" in result["stderr"]
