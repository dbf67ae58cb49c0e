"""The JSON Schema of the cluster YAML, generated from the models (editors validate with it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rbee.config.models import Cluster

__all__ = ["cluster_schema", "schema_text", "write_schema"]


def cluster_schema() -> dict[str, Any]:
    """The cluster YAML's JSON Schema (draft 2020-12)."""
    schema = Cluster.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "rbee cluster"
    return schema


def schema_text() -> str:
    """The schema as committed in schemas/cluster.schema.json: sorted keys, indent 2."""
    return json.dumps(cluster_schema(), indent=2, sort_keys=True) + "\n"


def write_schema(path: str | Path) -> None:
    """Write the schema to `path`."""
    Path(path).write_text(schema_text(), encoding="utf-8")
