"""`rbee validate`, `rbee fmt` and `rbee schema`: the cluster YAML on its own, no queen (and
the JSON Schemas of the YAML and of JSON plans)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from rbee.cli.console import err, out
from rbee.cli.options import DEFAULT_CONFIG, ConfigFile
from rbee.errors import RbeeError

__all__ = ["fmt", "schema", "validate"]


def validate(
    file: ConfigFile = DEFAULT_CONFIG,
    env_file: Annotated[
        Path | None,
        typer.Option(
            "--env-file",
            help="KEY=VALUE lines (dotenv) that the YAML's ${VAR}s read, as a CI job's "
            "secrets would set them; checked without a queen",
        ),
    ] = None,
) -> None:
    """Check the cluster YAML without a queen: schema, references between its parts, and that
    every ${VAR} it reads is set. Every error is printed as file:line:col: field: message."""
    from rbee.config.load import load_cluster

    if env_file is not None:
        import dotenv

        if not env_file.is_file():
            raise RbeeError(f"{env_file}: no such env file")
        values = dotenv.dotenv_values(env_file)
        os.environ.update({key: value for key, value in values.items() if value is not None})
    cluster = load_cluster(file)
    sys.stdout.write(
        f"{file}: valid ({len(cluster.hives)} hives, {len(cluster.models)} models, "
        f"{len(cluster.deployments)} deployments)\n"
    )


def fmt(
    files: Annotated[
        list[Path] | None,
        typer.Argument(help="cluster YAML files (default: the -f file, cluster.yaml)"),
    ] = None,
    file: ConfigFile = DEFAULT_CONFIG,
    check: Annotated[
        bool,
        typer.Option("--check", help="change nothing; exit 1 when a file is not formatted"),
    ] = False,
) -> None:
    """Rewrite cluster YAML files in one layout, keeping their comments (for pull requests:
    `rbee fmt --check`). Invalid files are reported as validate reports them, and left as
    they are."""
    from rbee.config.fmt import formatted

    unformatted = []
    for path in files or [Path(file)]:
        text, tidy = formatted(path)
        if text == tidy:
            continue
        unformatted.append(path)
        if check:
            err.print(
                f"{path}: not formatted (run `rbee fmt {path}`)", highlight=False, soft_wrap=True
            )
        else:
            path.write_text(tidy, encoding="utf-8")
            out.print(f"{path}: formatted", highlight=False, soft_wrap=True)
    if check and unformatted:
        raise typer.Exit(1)


def schema(
    what: Annotated[
        str, typer.Argument(help="cluster (the YAML) or plan (`rbee plan --json`)")
    ] = "cluster",
) -> None:
    """Print a JSON Schema: of the cluster YAML (for editors and CI) or of JSON plans."""
    if what == "cluster":
        from rbee.config.schema import schema_text

        sys.stdout.write(schema_text())
    elif what == "plan":
        from rbee.plan.schema import plan_schema_text

        sys.stdout.write(plan_schema_text())
    else:
        raise RbeeError(f"unknown schema {what!r}", hint="choose cluster or plan")
