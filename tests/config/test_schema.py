"""The committed JSON Schema is generated from the models and must not go stale."""

from __future__ import annotations

import json
from pathlib import Path

from rbee.config import cluster_schema, schema_text, write_schema

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "cluster.schema.json"


def test_schema_is_fresh() -> None:
    assert SCHEMA.read_text() == schema_text(), (
        "schemas/cluster.schema.json is stale: run `rbee schema > schemas/cluster.schema.json`"
    )


def test_schema_forbids_unknown_keys() -> None:
    schema = cluster_schema()
    assert schema["additionalProperties"] is False
    assert all(model["additionalProperties"] is False for model in schema["$defs"].values())


def test_write_schema_writes_the_schema_as_sorted_json(tmp_path: Path) -> None:
    write_schema(tmp_path / "schema.json")
    text = (tmp_path / "schema.json").read_text()
    assert json.loads(text) == cluster_schema()
    assert text == json.dumps(cluster_schema(), indent=2, sort_keys=True) + "\n"
