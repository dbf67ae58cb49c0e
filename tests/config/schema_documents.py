"""Hypothesis: cluster documents drawn from the JSON Schema, with one thing made invalid."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hypothesis import strategies as st

from tests.config.malformed import SCHEMA, UNKNOWN_KEY, Loc, at

__all__ = ["broken_documents"]


def _resolved(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = SCHEMA["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    if "oneOf" in schema:  # a tagged union (`replicas`: a count or a range) is a union here too
        rest = {key: value for key, value in schema.items() if key != "oneOf"}
        return {**rest, "anyOf": schema["oneOf"]}
    return schema


def _valid(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that the schema allows (the models' own validators may still refuse some)."""
    schema = _resolved(schema)
    if "anyOf" in schema:
        return st.one_of([_valid(option) for option in schema["anyOf"]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema["type"]
    if kind == "object":
        required = set(schema.get("required", []))
        properties = {key: _valid(value) for key, value in schema["properties"].items()}
        return st.fixed_dictionaries(
            {key: value for key, value in properties.items() if key in required},
            optional={key: value for key, value in properties.items() if key not in required},
        )
    if kind == "array":
        return st.lists(_valid(schema["items"]), max_size=3)
    if kind == "integer":
        return st.integers(schema.get("minimum", -1000), schema.get("maximum", 1000))
    if kind == "number":
        low = schema.get("gt", schema.get("minimum", -1000.0))
        return st.floats(low, schema.get("le", 1000.0), exclude_min="gt" in schema)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if "pattern" in schema:
        return st.from_regex(schema["pattern"], fullmatch=True)
    return st.text(min_size=schema.get("minLength", 0), max_size=20)


#: Values no branch of any union in the schema accepts.
_REFUSED_BY_ANY_UNION = ({UNKNOWN_KEY: 1}, 1.5, [{UNKNOWN_KEY: 1}])


def _invalid(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values the models refuse where `schema` applies (chosen for pydantic's lax mode: it
    takes "7" as an integer and 1 as true, so neither is used)."""
    schema = _resolved(schema)
    if "anyOf" in schema:
        return st.sampled_from(_REFUSED_BY_ANY_UNION)
    if "const" in schema or "enum" in schema:
        return st.sampled_from(["not-a-choice", 2.5])
    kind = schema["type"]
    bad: list[Any] = {
        "object": ["not a mapping", [1]],
        "array": ["not a list", 7],
        "boolean": ["maybe", 2, 0.5],
        "string": [12345, [1], {UNKNOWN_KEY: 1}],
        "integer": ["many", 1.5, [1]],
        "number": ["soon", float("inf"), [1]],
    }[kind]
    if "minimum" in schema:
        bad.append(schema["minimum"] - 1)
    if "gt" in schema:
        bad.append(schema["gt"])
    if "maximum" in schema or "le" in schema:
        bad.append(schema.get("maximum", schema.get("le")) + 1)
    if "pattern" in schema:
        bad.append("not valid!")
    if schema.get("minLength"):
        bad.append("")
    return st.sampled_from(bad)


def _spots(value: Any, schema: dict[str, Any], loc: Loc) -> Iterator[tuple[Loc, dict[str, Any]]]:
    """Every location in a document drawn from `schema`, with the schema that applies there;
    the deepest first, so that Hypothesis's simplest choice is not the document itself."""
    schema = _resolved(schema)
    for option in map(_resolved, schema.get("anyOf", [schema])):
        if isinstance(value, dict) and option.get("type") == "object":
            for key, item in value.items():
                yield from _spots(item, option["properties"][key], (*loc, key))
        elif isinstance(value, list) and option.get("type") == "array":
            for index, item in enumerate(value):
                yield from _spots(item, option["items"], (*loc, index))
    yield loc, schema


@st.composite
def broken_documents(draw: st.DrawFn) -> tuple[dict[str, Any], Loc]:
    """A document drawn from the schema with one thing broken, and where: a value the models
    refuse, an unknown key in a mapping, or a required key taken away."""
    document = draw(_valid(SCHEMA))
    loc, schema = draw(st.sampled_from(list(_spots(document, SCHEMA, ()))))
    if not loc:  # the document itself
        document[UNKNOWN_KEY] = draw(st.integers(0, 9))
        return document, (UNKNOWN_KEY,)
    parent = at(document, loc[:-1])
    objects = [option for option in schema.get("anyOf", [schema]) if "properties" in option]
    how = draw(st.sampled_from(["value", "unknown key", "missing key"] if objects else ["value"]))
    required = objects[0].get("required", []) if objects else []
    value = parent[loc[-1]]
    if how == "unknown key" and isinstance(value, dict):
        value[UNKNOWN_KEY] = draw(st.integers(0, 9))
        return document, (*loc, UNKNOWN_KEY)
    if how == "missing key" and isinstance(value, dict) and required:
        del value[draw(st.sampled_from(required))]
        return document, loc
    parent[loc[-1]] = draw(_invalid(schema))
    return document, loc
