"""Cluster YAML → validated models, with every error as one `file:line:col: field: message` line.

Positions point at the offending entry: the key of a mapping entry, the item of a sequence.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

from rbee.config.models import Cluster, Loc, check_references
from rbee.errors import ConfigError

__all__ = ["load_cluster", "load_cluster_text"]

_HINT = "see cluster.example.yaml; `rbee schema` prints the JSON Schema"
_YAML_HINT = "check the indentation and quoting around that line"
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_FILE = "file://"


def load_cluster(path: str | Path) -> Cluster:
    """Read, interpolate and validate a cluster YAML; relative `file://` sources follow the file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file", hint="pass the cluster YAML with -f") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return load_cluster_text(text, str(path), file.expanduser().absolute().parent)


def load_cluster_text(text: str, filename: str, base_dir: Path) -> Cluster:
    """Validate YAML text; `filename` prefixes errors, `base_dir` anchors relative file:// paths."""
    root = _parse(text, filename)
    if root is None:
        raise ConfigError(
            f"{filename}: the file is empty", hint="a cluster YAML starts with `version: 1`"
        )
    unset: list[_Error] = []
    data = _interpolate(root, (), unset)
    skip = {error.loc for error in unset}
    errors = list(unset)
    cluster: Cluster | None = None
    try:
        cluster = Cluster.model_validate(data)
    except ValidationError as exc:
        errors += [error for error in _pydantic_errors(exc, data) if error.loc not in skip]
    if cluster is not None and not errors:
        errors += [_Error(loc, message) for loc, message in check_references(cluster)]
    if errors or cluster is None:
        lines = sorted({_Located.at(error, root, filename) for error in errors})
        raise ConfigError("\n".join(line.text for line in lines), hint=_HINT)
    return _resolve_files(cluster, base_dir)


# --- parsing and interpolation ---------------------------------------------------------------


def _parse(text: str, filename: str) -> Any:
    try:
        return YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        where = f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else filename
        raise ConfigError(f"{where}: invalid YAML: {problem}", hint=_YAML_HINT) from None
    except YAMLError as exc:
        raise ConfigError(f"{filename}: invalid YAML: {exc}", hint=_YAML_HINT) from None


def _interpolate(node: Any, loc: Loc, unset: list[_Error]) -> Any:
    """Plain Python values with `${VAR}` expanded; unset variables are reported, left as written."""
    if isinstance(node, Mapping):
        return {key: _interpolate(value, (*loc, key), unset) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolate(item, (*loc, index), unset) for index, item in enumerate(node)]
    if isinstance(node, str):
        text = str(node)
        missing = [
            m.group(1)
            for m in _VARIABLE.finditer(text)
            if m.group(2) is None and m.group(1) not in os.environ
        ]
        if missing:
            names = " and ".join(dict.fromkeys(missing))
            plural = "s" if len(missing) > 1 else ""
            verb = "are" if plural else "is"
            unset.append(_Error(loc, f"environment variable{plural} {names} {verb} not set"))
            return text
        # like the shell, `${VAR:-default}` also replaces a variable set to the empty string
        return _VARIABLE.sub(lambda m: os.environ.get(m.group(1)) or m.group(2) or "", text)
    # ruamel's ScalarBoolean/ScalarInt/ScalarFloat become plain builtins.
    if isinstance(node, ScalarBoolean):
        return bool(node)
    if isinstance(node, int) and not isinstance(node, bool):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return node


def _resolve_files(cluster: Cluster, base_dir: Path) -> Cluster:
    models = []
    for model in cluster.models:
        if model.source.startswith(_FILE):
            path = Path(model.source.removeprefix(_FILE)).expanduser()
            absolute = os.path.abspath(base_dir / path)
            model = model.model_copy(update={"source": _FILE + absolute})
        models.append(model)
    return cluster.model_copy(update={"models": models})


# --- errors ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Error:
    loc: Loc
    message: str


@dataclass(frozen=True, order=True)
class _Located:
    line: int
    column: int
    text: str

    @classmethod
    def at(cls, error: _Error, root: Any, filename: str) -> _Located:
        line, column = _position(root, error.loc)
        field = _dotted(error.loc)
        prefix = f"{field}: " if field else ""
        return cls(line, column, f"{filename}:{line}:{column}: {prefix}{error.message}")


def _position(root: Any, loc: Loc) -> tuple[int, int]:
    """1-based line and column of the deepest entry of `loc` present in the file."""
    line, column = (root.lc.line, root.lc.col) if hasattr(root, "lc") else (0, 0)
    node = root
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            line, column = node.lc.key(part)
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            line, column = node.lc.item(part)
        else:
            break
        node = node[part]
    return line + 1, column + 1


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _pydantic_errors(exc: ValidationError, data: Any) -> list[_Error]:
    """Pydantic's errors in the file's terms: union branch tags dropped, messages rewritten."""
    found: dict[Loc, list[tuple[bool, ErrorDetails]]] = {}
    for detail in exc.errors(include_url=False):
        loc, in_union = _strip_tags(detail["loc"], data, detail["type"] == "missing")
        found.setdefault(loc, []).append((in_union, detail))
    errors = []
    for loc, details in found.items():
        union = [detail for in_union, detail in details if in_union]
        if any(other[: len(loc)] == loc and len(other) > len(loc) for other in found):
            union = []  # a union branch that got deeper explains the input better
        if len(union) > 1:
            errors.append(_Error(loc, _union_message(union)))
        elif union:
            errors.append(_Error(*_message(loc, union[0])))
        errors += [_Error(*_message(loc, detail)) for in_union, detail in details if not in_union]
    return errors


def _strip_tags(loc: Loc, data: Any, missing: bool) -> tuple[Loc, bool]:
    """Drop the segments pydantic adds for union branches (`list[str]`, `literal['all']`)."""
    kept: list[str | int] = []
    tagged = False
    node = data
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        if isinstance(node, Mapping) and (part in node or (last and missing)):
            kept.append(part)
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int):
            kept.append(part)
            node = node[part] if part < len(node) else None
        else:
            tagged = True
    return tuple(kept), tagged


def _message(loc: Loc, detail: ErrorDetails) -> tuple[Loc, str]:
    kind, ctx, value = detail["type"], detail.get("ctx", {}), detail["input"]
    if kind == "missing":
        return loc[:-1], f"missing required key {loc[-1]!r}"
    if kind == "extra_forbidden":
        return loc, _unknown_key(str(loc[-1]), _fields_at(loc[:-1]))
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return loc, "must not be empty"
    bound = _BOUNDS.get(kind)
    if bound is not None:
        word, key = bound
        return loc, f"must be {word} {ctx[key]}, got {_shown(value)}"
    if kind == "string_pattern_mismatch":
        field = _field_at(loc)
        wanted = field.description if field and field.description else ctx["pattern"]
        return loc, f"expected {wanted}, got {_shown(value)}"
    if kind == "value_error":
        reason = str(ctx.get("error", detail["msg"]))
        return loc, f"{reason}, got {_shown(value)}" if reason.startswith("expected") else reason
    expected = _expected(detail)
    if expected is not None:
        return loc, f"expected {expected}, got {_shown(value)}"
    return loc, detail["msg"][:1].lower() + detail["msg"][1:]


_BOUNDS = {
    "greater_than_equal": ("at least", "ge"),
    "greater_than": ("more than", "gt"),
    "less_than_equal": ("at most", "le"),
    "less_than": ("less than", "lt"),
}

_TYPES = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _expected(detail: ErrorDetails) -> str | None:
    if detail["type"] == "literal_error":
        # pydantic writes the choices as "'cpu', 'cuda' or 'metal'"
        choices = re.split(r", | or ", str(detail.get("ctx", {})["expected"]))
        if len(choices) == 1:
            return choices[0]
        return "one of: " + ", ".join(choice.strip("'") for choice in choices)
    return _TYPES.get(detail["type"])


def _union_message(details: list[ErrorDetails]) -> str:
    wanted = [_expected(detail) or detail["msg"] for detail in details]
    return f"expected {' or '.join(dict.fromkeys(wanted))}, got {_shown(details[0]['input'])}"


def _shown(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    return str(value)


def _unknown_key(key: str, fields: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, fields, n=1)
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}?"
    return f"unknown key {key!r}; expected one of: {', '.join(fields)}"


# --- walking the models alongside the YAML -------------------------------------------------


def _fields_at(loc: Loc) -> list[str]:
    model = _model_at(loc)
    return list(model.model_fields) if model else []


def _field_at(loc: Loc) -> FieldInfo | None:
    model = _model_at(loc[:-1])
    return model.model_fields.get(str(loc[-1])) if model else None


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model class that validates the mapping at `loc`, if any."""
    candidates: list[Any] = [Cluster]
    for part in loc:
        candidates = [
            inner for outer in candidates for inner in _children(outer, part) if inner is not None
        ]
    models = [c for c in _flatten(candidates) if isinstance(c, type) and issubclass(c, BaseModel)]
    return models[0] if models else None


def _children(annotation: Any, part: str | int) -> Iterator[Any]:
    for option in _flatten([annotation]):
        if isinstance(part, int) and typing.get_origin(option) is list:
            yield typing.get_args(option)[0]
        elif isinstance(option, type) and issubclass(option, BaseModel):
            field = option.model_fields.get(str(part))
            yield field.annotation if field else None


def _flatten(annotations: list[Any]) -> list[Any]:
    """Unions and Optionals opened into their members."""
    flat = []
    for annotation in annotations:
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            flat += _flatten(list(typing.get_args(annotation)))
        else:
            flat.append(annotation)
    return flat
