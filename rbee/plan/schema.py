"""The JSON Schema of `rbee plan --json` and saved plans, generated from the Plan model."""

from __future__ import annotations

import json
from typing import Any

from rbee.wire.plan import PLAN_FORMAT_VERSION, Plan

__all__ = ["plan_schema", "plan_schema_text"]


def plan_schema() -> dict[str, Any]:
    """The plan's JSON Schema (draft 2020-12), as the plan is serialised."""
    schema = Plan.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"rbee plan (format_version {PLAN_FORMAT_VERSION})"
    schema["properties"]["format_version"]["const"] = PLAN_FORMAT_VERSION
    return schema


def plan_schema_text() -> str:
    """The schema as committed in schemas/plan.schema.json: sorted keys, indent 2."""
    return json.dumps(plan_schema(), indent=2, sort_keys=True) + "\n"
