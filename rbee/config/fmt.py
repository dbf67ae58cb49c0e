"""`rbee fmt`: the cluster YAML in one layout, its comments kept (ruamel.yaml round-trip).

The layout: 2-space indentation, list items indented under their key (`  - name: …`), lines up
to 100 columns, quotes as written, and one blank line at most between blocks. Only valid files
are formatted: a file that does not load gets the same `file:line:col` errors as validate.
"""

from __future__ import annotations

import io
from pathlib import Path

from ruamel.yaml import YAML

from rbee.config.load import load_cluster_text
from rbee.errors import ConfigError

__all__ = ["formatted"]


def formatted(path: Path) -> tuple[str, str]:
    """(the file's text, the same in rbee's layout); ConfigError when it is not a valid
    cluster YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    load_cluster_text(text, str(path), path.expanduser().absolute().parent)
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True  # "1.0" stays a string, "yes" stays a word
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 100
    root = yaml.load(text)  # loaded above: no syntax error left
    out = io.StringIO()
    yaml.dump(root, out)
    lines = out.getvalue().rstrip("\n").split("\n")
    tidy: list[str] = []
    for line in lines:
        line = line.rstrip()
        if line or (tidy and tidy[-1]):
            tidy.append(line)
    return text, "\n".join(tidy).rstrip("\n") + "\n"
