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
from ruamel.yaml.composer import MaxDepthExceededError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.scalarbool import ScalarBoolean

from rbee.config.models import Cluster, Loc, check_references
from rbee.errors import ConfigError

__all__ = ["load_cluster", "load_cluster_text"]

_HINT = "see cluster.example.yaml; `rbee schema` prints the JSON Schema"
_YAML_HINT = "check the indentation and quoting around that line"
_PLAIN_KEY = re.compile(r"[A-Za-z_][\w-]*")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_FILE = "file://"
#: Far more than the schema needs (about 5 levels); deeper input would exhaust Python's stack.
_MAX_DEPTH = 64
#: A hand-written cluster YAML is kilobytes; anything larger is the wrong file, refused at once.
_MAX_CHARS = 1_000_000


def load_cluster(path: str | Path) -> Cluster:
    """Read, interpolate and validate a cluster YAML; relative `file://` sources follow the file."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file", hint="pass the cluster YAML with -f") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = _where(str(path), data[: exc.start].decode("utf-8"))
        raise ConfigError(f"{where}: not UTF-8 text") from None
    return load_cluster_text(text, str(path), file.expanduser().absolute().parent)


def load_cluster_text(text: str, filename: str, base_dir: Path) -> Cluster:
    """Validate YAML text; `filename` prefixes errors, `base_dir` anchors relative file:// paths."""
    if len(text) > _MAX_CHARS:
        raise ConfigError(
            f"{filename}:1:1: {len(text):,} characters is too large for a cluster YAML "
            f"(at most {_MAX_CHARS:,})"
        )
    root = _parse(text, filename)
    if root is None:
        raise ConfigError(
            f"{filename}:1:1: the file is empty", hint="a cluster YAML starts with `version: 1`"
        )
    unset: list[_Error] = []
    data = _interpolate(root, (), unset, {})
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
    yaml = YAML(typ="rt")
    yaml.max_depth = _MAX_DEPTH
    try:
        return yaml.load(text)
    except MaxDepthExceededError as exc:
        where = _marked(filename, exc.problem_mark)
        problem = f"nested deeper than {_MAX_DEPTH} levels"
    except MarkedYAMLError as exc:
        where = _marked(filename, exc.problem_mark or exc.context_mark)
        problem = (exc.problem or exc.context or "invalid YAML").replace("\n", "\\n")
    except ReaderError as exc:
        where = _where(filename, text[: exc.position])
        problem = f"unacceptable character #x{exc.character:04x}: {exc.reason}"
    except YAMLError as exc:
        where, problem = f"{filename}:1:1", str(exc).replace("\n", " ")
    except Exception:
        # ruamel's constructors fail unmarked on some scalars (`!!int x`, `2001-13-01`, an
        # integer of 5,000 digits); the node they were building is the last one unfinished.
        unfinished = list(yaml.constructor.recursive_objects)
        if not unfinished:
            raise
        node = unfinished[-1]
        where = _marked(filename, node.start_mark)
        problem = f"cannot read {_shown(node.value)} as {str(node.tag).rsplit(':', 1)[-1]}"
    raise ConfigError(f"{where}: invalid YAML: {problem}", hint=_YAML_HINT)


def _marked(filename: str, mark: Any) -> str:
    """`file:line:col` of a ruamel mark (0-based), the file's start when there is none."""
    return f"{filename}:{mark.line + 1}:{mark.column + 1}" if mark else f"{filename}:1:1"


def _where(filename: str, before: str) -> str:
    """`file:line:col` of the character that follows the text `before` it."""
    line = before.count("\n") + 1
    column = len(before) - before.rfind("\n")
    return f"{filename}:{line}:{column}"


def _interpolate(node: Any, loc: Loc, unset: list[_Error], seen: dict[int, Any]) -> Any:
    """Plain Python values with `${VAR}` expanded; unset variables are reported, left as written.

    A mapping or list reached again through a YAML alias is converted once (`seen`), so that
    aliases of aliases cannot blow up into an exponentially large tree.
    """
    if isinstance(node, Mapping | list) and id(node) in seen:
        return seen[id(node)]
    if isinstance(node, Mapping):
        seen[id(node)] = {
            key: _interpolate(value, (*loc, key), unset, seen) for key, value in node.items()
        }
        return seen[id(node)]
    if isinstance(node, list):
        seen[id(node)] = [
            _interpolate(item, (*loc, index), unset, seen) for index, item in enumerate(node)
        ]
        return seen[id(node)]
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
            found = node.lc.key(part)
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and part < len(node):
            found = node.lc.item(part)
        else:
            break
        if found is None:  # entries that ruamel built itself (a `!!omap`) carry no position
            break
        line, column = found
        node = node[part]
    return line + 1, column + 1


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            text += f".{part}" if text else part
        else:  # quoted, so that a key holding a line break cannot split the error's line
            text += f"[{part!r}]"
    return text


def _pydantic_errors(exc: ValidationError, data: Any) -> list[_Error]:
    """Pydantic's errors in the file's terms: union branch tags dropped, messages rewritten."""
    found: dict[Loc, list[tuple[bool, ErrorDetails]]] = {}
    for detail in exc.errors(include_url=False):
        loc, in_union = _strip_tags(detail["loc"], data, detail["type"] == "missing")
        found.setdefault(loc, []).append((in_union, detail))
    errors = []
    above = {loc[:depth] for loc in found for depth in range(len(loc))}
    for loc, details in found.items():
        union = [detail for in_union, detail in details if in_union]
        if loc in above:
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
    if isinstance(value, int) and value.bit_length() > 200:
        return "an integer too large to show"  # str() refuses one of thousands of digits
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
    """Unions and Optionals opened into their members (tagged ones too)."""
    flat = []
    for annotation in annotations:
        if typing.get_origin(annotation) is typing.Annotated:
            flat += _flatten([typing.get_args(annotation)[0]])
        elif typing.get_origin(annotation) in (typing.Union, types.UnionType):
            flat += _flatten(list(typing.get_args(annotation)))
        else:
            flat.append(annotation)
    return flat
