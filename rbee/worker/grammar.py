"""JSON output constrained by a grammar: `response_format` and forced tool calls.

A JSON schema becomes a GBNF grammar through llama-cpp-python's port of llama.cpp's converter
(`llama_cpp.llama_grammar.json_schema_to_gbnf`, what llama-server uses), which llama.cpp's
grammar sampler then enforces token by token (`rbee.worker.batch`). The converter quietly
drops what it cannot express (a `minimum`, a `format: email`, `uniqueItems`…), which would
make an answer that parses but does not validate; so a schema is first checked against what
the converter does enforce, and anything else is refused naming where it is (`SchemaError`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from llama_cpp.llama_grammar import json_schema_to_gbnf

__all__ = ["JSON_OBJECT", "SchemaError", "check_schema", "response_grammar", "schema_grammar"]

#: Bounds on what a request may ask the converter to build (its work grows with the schema).
MAX_SCHEMA_BYTES = 64 * 1024
_MAX_DEPTH = 32

# Keywords that describe and constrain nothing: read and passed over.
_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$defs",
        "definitions",
    }
)
# What the converter enforces, by the kind of value (a schema with no `type` may use any).
_ANY = frozenset({"type", "enum", "const", "$ref", "anyOf", "oneOf", "allOf"})
_BY_TYPE: dict[str, frozenset[str]] = {
    "object": frozenset({"properties", "required", "additionalProperties"}),
    "array": frozenset({"items", "prefixItems", "minItems", "maxItems"}),
    "string": frozenset({"pattern", "format", "minLength", "maxLength"}),
    "number": frozenset(),
    "integer": frozenset(),
    "boolean": frozenset(),
    "null": frozenset(),
}
_ALL_OF_PART = frozenset({"$ref", "properties", "required", "type", "anyOf"})
_FORMATS = frozenset({"date", "time", "date-time", "uuid", *(f"uuid{v}" for v in range(1, 6))})


# Two rules of the Python port differ from llama.cpp's C++ converter, which llama-server uses:
# its `space` lets no newline in, which models that indent JSON keep running into (the
# grammar then goes over the whole vocabulary, and answers read oddly), and its `char` lets
# raw control characters into strings, which JSON forbids: they are replaced by llama.cpp's.
_HEX = " ".join(["[0-9a-fA-F]"] * 4)
_AS_LLAMA_SERVER = {
    r'space ::= " "?': r'space ::= | " " | "\n"{1,2} [ \t]{0,20}',
    rf'char ::= [^"\\] | "\\" (["\\/bfnrt] | "u" {_HEX})': (
        r'char ::= [^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'
    ),
}


class SchemaError(ValueError):
    """A schema the grammar cannot enforce; the message names where and what."""


def schema_grammar(schema: Any, where: str = "schema") -> str:
    """The GBNF grammar whose every sentence is JSON valid against `schema`."""
    if not isinstance(schema, Mapping):
        raise SchemaError(f"{where}: a JSON schema is an object")
    text = json.dumps(schema)
    if len(text) > MAX_SCHEMA_BYTES:
        raise SchemaError(f"{where}: at most {MAX_SCHEMA_BYTES} bytes of schema")
    check_schema(schema, where)
    try:
        grammar = str(json_schema_to_gbnf(text))
    except (AssertionError, KeyError, ValueError, RecursionError, TypeError) as exc:
        reason = str(exc) or type(exc).__name__
        raise SchemaError(f"{where}: cannot be made into a grammar ({reason})") from None
    return "\n".join(_AS_LLAMA_SERVER.get(line, line) for line in grammar.splitlines())


def response_grammar(response_format: Mapping[str, Any] | None) -> str | None:
    """The grammar an OpenAI `response_format` asks for (None for plain text)."""
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_OBJECT
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping) or "schema" not in spec:
            raise SchemaError("response_format.json_schema.schema: required")
        return schema_grammar(spec["schema"], "response_format.json_schema.schema")
    raise SchemaError(
        f"response_format.type: {kind!r} is not supported (text, json_object or json_schema)"
    )


def check_schema(schema: Any, where: str, depth: int = 0) -> None:
    """Refuse a keyword the converter would drop (see the module's docstring), naming where
    it is (`where`: the schema's own place in the request)."""
    if depth > _MAX_DEPTH:
        raise SchemaError(f"{where}: nested deeper than {_MAX_DEPTH}")
    if isinstance(schema, bool):
        return
    if not isinstance(schema, Mapping):
        raise SchemaError(f"{where}: a schema is an object")
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if kind is not None else list(_BY_TYPE)
    for one in kinds:
        if one not in _BY_TYPE:
            raise SchemaError(f"{where}.type: {one!r} is not a JSON schema type")
    allowed = _ANY | _ANNOTATIONS | frozenset().union(*(_BY_TYPE[one] for one in kinds))
    for key in schema:
        if key not in allowed:
            raise SchemaError(f"{where}.{key}: not supported in a grammar-constrained schema")
    if isinstance(kind, list) and len(schema.keys() - _ANNOTATIONS - {"type"}) > 0:
        raise SchemaError(f"{where}.type: a list of types only without other constraints")
    if "format" in schema and schema["format"] not in _FORMATS:
        raise SchemaError(f"{where}.format: {schema['format']!r} is not supported")
    if "pattern" in schema and {"format", "minLength", "maxLength"} & schema.keys():
        raise SchemaError(f"{where}.pattern: not together with format, minLength or maxLength")
    if "format" in schema and {"minLength", "maxLength"} & schema.keys():
        raise SchemaError(f"{where}.format: not together with minLength or maxLength")
    if isinstance(schema.get("prefixItems") or schema.get("items"), list) and (
        {"minItems", "maxItems"} & schema.keys()
    ):
        raise SchemaError(f"{where}.minItems: not with a tuple of items")
    properties = schema.get("properties") or {}
    for name in schema.get("required") or []:
        if name not in properties:
            raise SchemaError(f"{where}.required: {name!r} is not one of the properties")
    if "allOf" in schema:
        for i, part in enumerate(schema["allOf"]):
            if not isinstance(part, Mapping) or part.keys() - _ALL_OF_PART - _ANNOTATIONS:
                raise SchemaError(f"{where}.allOf.{i}: only object parts (properties, $ref)")
    if "$ref" in schema and not str(schema["$ref"]).startswith("#"):
        raise SchemaError(f"{where}.$ref: only references inside the schema (#/…)")
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for i, part in enumerate(schema.get(key) or []):
            check_schema(part, f"{where}.{key}.{i}", depth + 1)
    items = schema.get("items")
    if isinstance(items, list):
        for i, part in enumerate(items):
            check_schema(part, f"{where}.items.{i}", depth + 1)
    elif items is not None:
        check_schema(items, f"{where}.items", depth + 1)
    for name, part in (schema.get("properties") or {}).items():
        check_schema(part, f"{where}.properties.{name}", depth + 1)
    extra = schema.get("additionalProperties")
    if isinstance(extra, Mapping):
        check_schema(extra, f"{where}.additionalProperties", depth + 1)
    for defs in ("$defs", "definitions"):
        for name, part in (schema.get(defs) or {}).items():
            check_schema(part, f"{where}.{defs}.{name}", depth + 1)


#: Any JSON object (`response_format: {"type": "json_object"}`).
JSON_OBJECT = schema_grammar({"type": "object"})
