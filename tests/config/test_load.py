"""Loading the cluster YAML: what loads, and how each mistake is reported."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from syrupy.assertion import SnapshotAssertion

from rbee.config import Cluster, load_cluster, load_cluster_text
from rbee.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
BAD = Path(__file__).parent / "bad"
BAD_CASES = sorted(path.name for path in BAD.glob("*.yaml"))
EXAMPLES = sorted(path.name for path in (ROOT / "examples").glob("*.yaml"))

LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<rest>.*)$")
FIELD_PATH = re.compile(r"^(?P<path>[A-Za-z_][\w.\[\]]*): ")


@pytest.fixture(autouse=True)
def _no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RBEE_TOKEN", raising=False)


def _error_for(name: str, monkeypatch: pytest.MonkeyPatch) -> ConfigError:
    monkeypatch.chdir(BAD)  # a relative path keeps the bare file name in the messages
    with pytest.raises(ConfigError) as caught:
        load_cluster(name)
    return caught.value


def _load(tmp_path: Path, text: str) -> Cluster:
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return load_cluster(path)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_cluster_is_reported_as_one_line_per_error(
    case: str, monkeypatch: pytest.MonkeyPatch, snapshot: SnapshotAssertion
) -> None:
    assert _error_for(case, monkeypatch).message == snapshot


@pytest.mark.parametrize("case", BAD_CASES)
def test_error_position_points_at_the_offending_entry(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = (BAD / case).read_text().splitlines()
    for error in _error_for(case, monkeypatch).message.splitlines():
        where = LINE.match(error)
        assert where is not None, f"{error!r} has no file:line:col"
        assert where["file"] == case
        if not lines:  # an empty file: its error points at its start
            assert (where["line"], where["col"]) == ("1", "1")
            continue
        text = lines[int(where["line"]) - 1]
        column = int(where["col"]) - 1
        field = FIELD_PATH.match(where["rest"])
        if field is None:
            assert text[column:].strip(), f"{error} points at blank space in {text!r}"
        elif field["path"].endswith("]"):  # a sequence item: right after '- ', '[' or ','
            assert text[:column].rstrip()[-1:] in ("-", "[", ","), f"{error} vs {text!r}"
        else:  # a mapping key
            key = field["path"].rsplit(".", 1)[-1]
            assert text[column:].startswith(f"{key}:"), f"{error} vs {text!r}"


def test_errors_are_sorted_by_line_whatever_order_validation_finds_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = _error_for("two_errors.yaml", monkeypatch).message
    numbers = [int(LINE.match(line)["line"]) for line in message.splitlines()]  # type: ignore[index]
    assert numbers == [5, 9]


def test_yaml_syntax_error_points_at_the_misindented_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = _error_for("syntax_error.yaml", monkeypatch).message
    assert message.startswith("syntax_error.yaml:5:4: invalid YAML: ")
    assert (BAD / "syntax_error.yaml").read_text().splitlines()[4][3:].startswith("port:")


def test_unset_variable_does_not_hide_other_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, "queen:\n  token: ${RBEE_TOKEN}\nprune: maybe\n")
    file = tmp_path / "cluster.yaml"
    assert caught.value.message.splitlines() == [
        f"{file}:2:3: queen.token: environment variable RBEE_TOKEN is not set",
        f"{file}:3:1: prune: expected true or false, got 'maybe'",
    ]


def test_missing_file_error_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'nope.yaml'}: no such file")):
        load_cluster(tmp_path / "nope.yaml")


def test_directory_instead_of_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path}: cannot read")):
        load_cluster(tmp_path)


def test_load_cluster_text_prefixes_errors_with_the_given_filename() -> None:
    with pytest.raises(ConfigError, match=r"^inline\.yaml:1:1: prune: "):
        load_cluster_text("prune: maybe\n", "inline.yaml", Path("/"))


def test_example_cluster_loads_the_demo() -> None:
    cluster = load_cluster(ROOT / "cluster.example.yaml")
    assert cluster.queen.url == "http://127.0.0.1:7833"
    assert cluster.queen.token is None
    assert [(hive.name, hive.effective_mode) for hive in cluster.hives] == [("local", "local")]
    (deployment,) = cluster.deployments
    assert (deployment.model, deployment.worker) == ("smollm2-135m", "cpu")
    assert (deployment.hives, deployment.replicas, deployment.slots) == (["local"], 1, 2)
    assert (deployment.device, deployment.ctx_size) == ("cpu", 2048)
    demo = Path.home() / ".cache/rbee/demo/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert cluster.models[0].source == f"file://{demo}"


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_loads(example: str) -> None:
    assert load_cluster(ROOT / "examples" / example).deployments


def test_variable_is_read_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RBEE_TOKEN", "s3cret")
    cluster = _load(tmp_path, "queen:\n  token: ${RBEE_TOKEN:-change-me}\n")
    assert cluster.queen.token == "s3cret"


def test_variable_default_applies_when_the_variable_is_unset(tmp_path: Path) -> None:
    cluster = _load(tmp_path, "queen:\n  token: ${RBEE_TOKEN:-change-me}\n")
    assert cluster.queen.token == "change-me"


def test_variable_set_to_empty_falls_back_to_its_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RBEE_TOKEN", "")
    cluster = _load(tmp_path, "queen:\n  token: ${RBEE_TOKEN:-change-me}\n")
    assert cluster.queen.token == "change-me"


def test_variable_inside_a_string_is_replaced_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUEEN_HOST", "10.1.2.3")
    cluster = _load(tmp_path, "queen:\n  url: http://${QUEEN_HOST}:${QUEEN_PORT:-7833}\n")
    assert cluster.queen.url == "http://10.1.2.3:7833"


def test_relative_file_source_is_resolved_against_the_yaml_directory(tmp_path: Path) -> None:
    cluster = _load(tmp_path, "models:\n  - name: m\n    source: file://models/m.gguf\n")
    assert cluster.models[0].source == f"file://{tmp_path}/models/m.gguf"


def test_file_source_expands_the_home_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cluster = _load(tmp_path, "models:\n  - name: m\n    source: file://~/m.gguf\n")
    assert cluster.models[0].source == f"file://{tmp_path}/home/m.gguf"


def test_absolute_file_source_is_kept(tmp_path: Path) -> None:
    cluster = _load(tmp_path, "models:\n  - name: m\n    source: file:///srv/m.gguf\n")
    assert cluster.models[0].source == "file:///srv/m.gguf"
