"""schemas/plan.schema.json is generated from the Plan model, kept fresh, and pins the format."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from rbee.plan.render import plan_json
from rbee.plan.schema import plan_schema, plan_schema_text
from tests.plan.test_planner import _case

SCHEMA_FILE = Path(__file__).parents[2] / "schemas" / "plan.schema.json"


def test_plan_schema_is_fresh() -> None:
    assert SCHEMA_FILE.read_text() == plan_schema_text(), (
        "schemas/plan.schema.json is stale: run `rbee schema plan > schemas/plan.schema.json`"
    )


def test_schema_rejects_a_plan_of_another_format_version() -> None:
    body = json.loads(plan_json(_case("empty_cluster")))
    body["format_version"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(body, plan_schema())
