"""Malformed cluster files for the bad-input sweep (issue 11).

`mutations(examples)` breaks each example one way at a time, grouped by kind; `whole_files()`
adds files that are broken as a whole (empty, huge, deeply nested, undecodable). Every one is
invalid by construction: the sweep asserts that each fails, so a mutation that slipped into a
valid file fails the sweep rather than passing it.
"""

from __future__ import annotations

import copy
import functools
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from rbee.config.schema import cluster_schema

__all__ = [
    "MARKUP",
    "SCHEMA",
    "UNKNOWN_KEY",
    "VARIABLE",
    "Loc",
    "Malformed",
    "at",
    "dotted",
    "dumped",
    "mutations",
    "whole_files",
]

Loc = tuple[str | int, ...]
Edit = Callable[[Any], None]

SCHEMA = cluster_schema()
UNKNOWN_KEY = "not_a_field"
#: A `${VAR}` with no default: the sweep sets these, so that only the mutation breaks a file.
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: The name of the case whose wrong value reads as console markup (rich's `[/red]`).
MARKUP = "a value that reads as console markup"
_BAD_PORTS = (0, -1, 65536, 99999)
_BAD_DURATIONS = ("soon", "0s", "-1s", "2d", "25h", 0, -5)
_BAD_QUEEN_URLS = (
    "ftp://127.0.0.1:7833",
    "http://",
    "127.0.0.1:7833",
    "http://[::1",
    "http://127.0.0.1:port",
    "not a url",
    "",
)
_BAD_SOURCES = (
    "ftp://example.com/m.gguf",
    "s3://bucket/m.gguf",
    "hf://org/repo",
    "hf://org/repo/m.bin",
    "hf://org/repo/m-00002-of-00003.gguf",
    "file://",
    "m.gguf",
)
_BAD_WHEELS = ("ftp://example.com/llama.whl", "https://example.com/llama.tar.gz", "llama.whl")
#: (deployment field, bad value): counts out of range and the like.
_BAD_COUNTS = (
    ("replicas", -1),
    ("slots", 0),
    ("slots", -1),
    ("slots", 65),
    ("ctx_size", 0),
    ("ctx_size", 127),
    ("ctx_size", -4096),
)
_BAD_SERVING_COUNTS = (("attempts", 0), ("attempts", 11), ("max_queue", -1))
_KEY_VALUE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_]\w*):(?P<value> +[^#\s].*)$")


@dataclass(frozen=True)
class Malformed:
    """One malformed cluster file: its kind, a name saying what was broken, its bytes."""

    kind: str
    name: str
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


def mutations(examples: dict[str, str]) -> list[Malformed]:
    """Each example broken one way at a time; `examples` maps a name to the YAML text."""
    found = []
    for example, text in examples.items():
        for kind, breaks in _KINDS.items():
            found += [
                Malformed(kind, f"{example}: {name}", content) for name, content in breaks(text)
            ]
    return found


# --- mutations of the parsed example, dumped back to YAML ------------------------------------


def _load(text: str) -> Any:
    """A fresh copy of `text` parsed (round-trip): parsed once, copied for each edit."""
    return copy.deepcopy(_parsed(text))


@functools.cache
def _parsed(text: str) -> Any:
    return YAML(typ="rt").load(text)


def dumped(data: Any) -> str:
    """YAML text of `data` (comments of a round-tripped example kept)."""
    out = io.StringIO()
    YAML(typ="rt").dump(data, out)
    return out.getvalue()


def _edited(text: str, edit: Edit) -> bytes:
    data = _load(text)
    edit(data)
    return dumped(data).encode()


def at(data: Any, loc: Loc) -> Any:
    """The value at `loc` in `data`."""
    for part in loc:
        data = data[part]
    return data


def _setter(loc: Loc, value: Any) -> Edit:
    def edit(data: Any) -> None:
        at(data, loc[:-1])[loc[-1]] = value

    return edit


def dotted(loc: Loc) -> str:
    """`hives[1].port`, as the loader names a location."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _leaves(node: Any, loc: Loc = ()) -> Iterator[tuple[Loc, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*loc, key))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _leaves(item, (*loc, index))
    else:
        yield loc, node


def _mappings(node: Any, loc: Loc = ()) -> Iterator[Loc]:
    if isinstance(node, dict):
        yield loc
        for key, value in node.items():
            yield from _mappings(value, (*loc, key))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _mappings(item, (*loc, index))


def _wrong_types(text: str) -> Iterator[tuple[str, bytes]]:
    data = _load(text)
    for loc, value in _leaves(data):
        wrong = "maybe" if isinstance(value, bool) else "many" if isinstance(value, int) else 12345
        for bad in (wrong, {UNKNOWN_KEY: 1}):
            yield f"{dotted(loc)} = {bad!r}", _edited(text, _setter(loc, bad))
    for loc in _mappings(data):
        if loc:
            yield f"{dotted(loc)} = a list", _edited(text, _setter(loc, [1, 2]))


def _ports_out_of_range(text: str) -> Iterator[tuple[str, bytes]]:
    data = _load(text)
    for bad in _BAD_PORTS:
        for index, hive in enumerate(data.get("hives", [])):
            yield (
                f"hives[{index}].port = {bad}",
                _edited(text, _setter(("hives", index, "port"), bad)),
            )
            if "ssh" in hive:
                loc: Loc = ("hives", index, "ssh", "port")
                yield f"{dotted(loc)} = {bad}", _edited(text, _setter(loc, bad))
        url = re.sub(r":\d+$", "", data["queen"]["url"]) + f":{bad}"
        yield f"queen.url = {url}", _edited(text, _setter(("queen", "url"), url))
        for index, _ in enumerate(data.get("models", [])):
            source = f"https://example.com:{bad}/m.gguf"
            yield (
                f"models[{index}].source = {source}",
                _edited(
                    text,
                    _setter(("models", index), {"name": "m", "source": source, "sha256": "0" * 64}),
                ),
            )
        wheel = {"name": "w", "url": f"https://example.com:{bad}/llama.whl", "sha256": "0" * 64}
        yield (
            f"worker_binaries[0].url port {bad}",
            _edited(text, _setter(("worker_binaries", 0), wheel)),
        )


def _duplicate_names(text: str) -> Iterator[tuple[str, bytes]]:
    for section in ("hives", "models", "worker_binaries", "deployments"):

        def edit(data: Any, section: str = section) -> None:
            data[section].append(_load(dumped(data[section][0])))

        yield f"{section}[0] twice", _edited(text, edit)


def _unknown_references(text: str) -> Iterator[tuple[str, bytes]]:
    data = _load(text)
    for index, deployment in enumerate(data["deployments"]):
        here: Loc = ("deployments", index)
        yield (
            f"deployments[{index}].model",
            _edited(text, _setter((*here, "model"), "no-such-model")),
        )
        yield (
            f"deployments[{index}].worker",
            _edited(text, _setter((*here, "worker"), "no-such-worker")),
        )
        for position, _ in enumerate(deployment.get("hives", [])):
            loc = (*here, "hives", position)
            yield dotted(loc), _edited(text, _setter(loc, "no-such-hive"))
        preferring = {"routing": "prefer_hive", "prefer_hive": "no-such-hive"}
        yield (
            f"deployments[{index}].serving.prefer_hive",
            _edited(text, _setter((*here, "serving"), preferring)),
        )


def _bad_urls(text: str) -> Iterator[tuple[str, bytes]]:
    data = _load(text)
    for url in _BAD_QUEEN_URLS:
        yield f"queen.url = {url!r}", _edited(text, _setter(("queen", "url"), url))
    for index, _ in enumerate(data["models"]):
        for source in _BAD_SOURCES:
            loc: Loc = ("models", index, "source")
            yield f"{dotted(loc)} = {source!r}", _edited(text, _setter(loc, source))
    for url in _BAD_WHEELS:
        wheel = {"name": "w", "url": url, "sha256": "0" * 64}
        yield (
            f"worker_binaries[0].url = {url!r}",
            _edited(text, _setter(("worker_binaries", 0), wheel)),
        )


def _bad_durations(text: str) -> Iterator[tuple[str, bytes]]:
    fields = ("connect_timeout", "first_byte_timeout", "idle_timeout", "queue_timeout")
    for bad in _BAD_DURATIONS:
        for field in fields:
            yield (
                f"deployments[0].serving.{field} = {bad!r}",
                _edited(text, _setter(("deployments", 0, "serving"), {field: bad})),
            )
        yield (
            f"self_heal.interval = {bad!r}",
            _edited(text, _setter(("self_heal",), {"interval": bad})),
        )


def _bad_counts(text: str) -> Iterator[tuple[str, bytes]]:
    for field, bad in _BAD_COUNTS:
        loc: Loc = ("deployments", 0, field)
        yield f"{dotted(loc)} = {bad}", _edited(text, _setter(loc, bad))
    for field, bad in _BAD_SERVING_COUNTS:
        yield (
            f"deployments[0].serving.{field} = {bad}",
            _edited(text, _setter(("deployments", 0, "serving"), {field: bad})),
        )
    for bad in (0, -1):
        yield (
            f"self_heal.max_per_hour = {bad}",
            _edited(text, _setter(("self_heal",), {"max_per_hour": bad})),
        )


def _unknown_keys(text: str) -> Iterator[tuple[str, bytes]]:
    data = _load(text)
    for loc in _mappings(data):
        yield (
            f"{dotted(loc) or 'top level'}: {UNKNOWN_KEY}",
            _edited(text, _setter((*loc, UNKNOWN_KEY), 1)),
        )
        for key in at(data, loc):

            def misspell(data: Any, loc: Loc = loc, key: str = key) -> None:
                mapping: CommentedMap = at(data, loc)
                position = list(mapping).index(key)
                mapping.insert(position, key + "s", mapping.pop(key))

            yield f"{dotted((*loc, key))} misspelled", _edited(text, misspell)


def _missing_keys(text: str) -> Iterator[tuple[str, bytes]]:
    data = _load(text)
    for section in ("hives", "models", "worker_binaries", "deployments"):
        item = SCHEMA["properties"][section]["items"]["$ref"].rsplit("/", 1)[-1]
        for key in SCHEMA["$defs"][item]["required"]:
            for index, _ in enumerate(data[section]):

                def drop(data: Any, loc: Loc = (section, index), key: str = key) -> None:
                    del at(data, loc)[key]

                yield f"{section}[{index}] without {key}", _edited(text, drop)


# --- mutations of the example's text: YAML that does not parse --------------------------------


def _syntax_errors(text: str) -> Iterator[tuple[str, bytes]]:
    lines = text.split("\n")

    def changed(number: int, *replacement: str) -> bytes:
        return "\n".join([*lines[:number], *replacement, *lines[number + 1 :]]).encode()

    previous: re.Match[str] | None = None
    for number, line in enumerate(lines):
        where = f"line {number + 1}"
        pair = _KEY_VALUE.match(line)
        if line.startswith(" ") and line.strip() and not line.lstrip().startswith("#"):
            yield f"{where}: tab indentation", changed(number, "\t" + line.lstrip(" "))
        if pair:
            key = f"{pair['indent']}{pair['key']}:"
            yield f"{where}: unclosed [", changed(number, f"{key} [unclosed, flow")
            yield f"{where}: unclosed {{", changed(number, f"{key} {{unclosed: flow")
            yield f"{where}: unclosed quote", changed(number, f'{key} "unclosed')
            yield f"{where}: key twice", changed(number, line, line)
            if previous and previous["indent"] == pair["indent"]:
                yield f"{where}: indented one space more", changed(number, " " + line)
        previous = pair if line.strip() and not line.lstrip().startswith("#") else previous
    yield "a reserved indicator first", ("@oops\n" + text).encode()
    yield "a stray closing bracket last", (text + "]\n").encode()
    yield "a second document", (text + "---\n" + text).encode()
    yield "text after the document end", (text + "...\nmore: 1\n").encode()
    yield "an undefined alias", (text + "prune: *nowhere\n").encode()


_KINDS: dict[str, Callable[[str], Iterator[tuple[str, bytes]]]] = {
    "wrong_type": _wrong_types,
    "port_out_of_range": _ports_out_of_range,
    "duplicate_name": _duplicate_names,
    "unknown_reference": _unknown_references,
    "bad_url": _bad_urls,
    "bad_duration": _bad_durations,
    "bad_count": _bad_counts,
    "unknown_key": _unknown_keys,
    "missing_key": _missing_keys,
    "yaml_syntax": _syntax_errors,
}


# --- files broken as a whole -------------------------------------------------------------------


def whole_files(example: str) -> list[Malformed]:
    """Files that are wrong as a whole, some built around the `example` text."""

    def with_port(port: str) -> str:
        return example.replace("host: localhost", f"host: localhost\n    port: {port}")

    hives = "".join(f"  - name: h\n    host: 10.0.{i // 256}.{i % 256}\n" for i in range(5000))
    laughs = "".join(
        f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]\n" for n in range(1, 10)
    )  # 9**9 leaves when expanded
    cases = {
        "empty": {
            "no bytes": "",
            "a blank line": "\n",
            "only a comment": "# nothing here\n",
            "null": "null\n",
            "an empty document": "---\n",
        },
        "not_a_mapping": {
            "a list": "- version: 1\n",
            "an empty list": "[]\n",
            "a number": "42\n",
            "a string": "'cluster'\n",
            "true": "true\n",
        },
        "huge": {
            "a 10 MB string": "queen:\n  url: http://" + "a" * 10_000_000 + "\n",
            "a 900 kB string, under the limit": "queen:\n  url: ftp://" + "a" * 900_000 + "\n",
            "over 1 MB of comments": example + "#" * 1_000_000 + "\n",
            "5,000 hives with one name": f"hives:\n{hives}",
            "5,000 undefined hives in a deployment": example.replace(
                "hives: [local]", "hives: [" + ", ".join(f"h{i}" for i in range(5000)) + "]"
            ),
        },
        "deep_nesting": {
            "10,000 nested flow lists": "hives: " + "[" * 10_000 + "]" * 10_000 + "\n",
            "10,000 nested flow mappings": "queen: " + "{a: " * 10_000 + "1" + "}" * 10_000,
            "10,000 nested block lists": "hives:\n" + "- " * 10_000 + "x\n",
            "500 nested block mappings": "".join(f"{'  ' * i}k{i}:\n" for i in range(500)),
            "10,000 unclosed flow lists": "hives: " + "[" * 10_000 + "\n",
            "an alias bomb under an unknown key": laughs,
            "an alias bomb as the hives": laughs + "hives: *l9\n",
        },
        "bad_scalar": {
            "a port of 5,000 digits": with_port("9" * 5000),
            "a hex port of 5,000 digits": with_port("0x" + "f" * 5000),
            "a port that is not a number": with_port(".nan"),
            "a date that does not exist": example.replace("host: localhost", "host: 2001-13-01"),
            "an int tag on a word": example.replace("replicas: 1", "replicas: !!int many"),
            "an empty float tag": example.replace("replicas: 1", "replicas: !!float"),
            "a bool tag on a word": example + "peer_fetch: !!bool maybe\n",
            "an omap where a mapping goes": example + f"self_heal: !!omap [{UNKNOWN_KEY}: 1]\n",
            "a control character": example.replace("host: localhost", "host: local\x07host"),
            "a NUL byte": example.replace("host: localhost", "host: local\x00host"),
            MARKUP: example + 'prune: "[/red]"\n',
            "a key with a line break": example + '"bad\\nkey": 1\n',
            "a key with a line separator": example + '"bad\\u2028key": 1\n',
            "a number as a key": example + "1: 2\n",
            "a list as a key": example + "? [a]\n: 2\n",
            "version as a string": example.replace("version: 1", "version: '1'"),
            "an infinite duration": example + "self_heal: {interval: .inf}\n",
        },
    }
    found = [
        Malformed(kind, name, text.encode())
        for kind, named in cases.items()
        for name, text in named.items()
    ]
    encoded = example.replace("host: localhost", "host: caf\u00e9").encode("latin-1")
    found += [
        Malformed("bad_scalar", "Latin-1 bytes", encoded),
        Malformed("bad_scalar", "a byte that is never UTF-8", example.encode() + b"x: \xff\n"),
    ]
    return found
