"""`rbee job submit | get | list | cancel`: OpenAI requests the queen runs on its own and
keeps, followed by id (batch jobs wait behind every interactive request; all of them survive
a queen restart)."""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rbee.cli.console import err, out
from rbee.cli.options import DEFAULT_CONFIG, AsJson, ConfigFile
from rbee.cli.reach import connect, connect_yaml
from rbee.errors import RbeeError

if TYPE_CHECKING:
    from rbee.clients import QueenClient
    from rbee.wire.jobs import EmbeddingResult, JobRecord

__all__ = ["job_app"]

job_app = typer.Typer(
    help="Jobs: OpenAI chat, completion or embeddings requests the queen runs for you and keeps, "
    "followed by id. Interactive jobs go before batch ones, first come first served within "
    "each; queued jobs survive a queen restart.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

JobId = Annotated[str, typer.Argument(help="the job's id, as submit printed it")]
_PRIORITIES = ("batch", "interactive")
_STYLE = {
    "queued": "cyan",
    "running": "yellow",
    "done": "green",
    "failed": "red",
    "cancelled": "dim",
}


@job_app.command("submit")
def submit(
    prompt: Annotated[
        str | None, typer.Argument(help="what to ask, as one chat message (or give --body)")
    ] = None,
    file: ConfigFile = DEFAULT_CONFIG,
    model: Annotated[
        str | None, typer.Option(help="model name (default: the body's, else the first deployed)")
    ] = None,
    priority: Annotated[
        str, typer.Option(help="batch (waits behind interactive requests) or interactive")
    ] = "batch",
    body: Annotated[
        Path | None,
        typer.Option(
            "--body",
            help="an OpenAI chat (`messages`), completion (`prompt`) or embeddings (`input`) "
            "body as JSON; - reads stdin",
        ),
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(min=1, help="most tokens to generate (128 for a PROMPT)")
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="follow the job to its end, printing its text")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Queue a job and print its id; with --wait, follow it and print its answer."""
    from rbee.config.load import load_cluster
    from rbee.wire.jobs import SubmitJob

    if priority not in _PRIORITIES:
        raise RbeeError(f"unknown priority {priority!r}", hint="choose batch or interactive")
    request = _request(prompt, body)
    if max_tokens is not None:
        request["max_tokens"] = max_tokens
    cluster = load_cluster(file)
    name = model or request.get("model")
    if not name:
        if not cluster.deployments:
            raise RbeeError("no model to ask", hint="pass --model or declare a deployment")
        name = cluster.deployments[0].model
    client = connect(cluster.queen)
    created = client.submit_job(
        SubmitJob.model_validate({**request, "model": name, "priority": priority})
    )
    if wait:
        _follow(client, created.job_id, as_json)
    elif as_json:
        sys.stdout.write(created.model_dump_json(indent=2) + "\n")
    else:
        sys.stdout.write(created.job_id + "\n")
        err.print(f"[dim]queued as a {priority} job; see it with `rbee job get {created.job_id}`")


@job_app.command("get")
def get(job_id: JobId, file: ConfigFile = DEFAULT_CONFIG, as_json: AsJson = False) -> None:
    """Show a job: its state, where it runs or waits, and its answer once done (an embedding
    job's vectors one a line)."""
    from rbee.wire.jobs import EmbeddingResult

    record = connect_yaml(file).job(job_id)
    if as_json:
        sys.stdout.write(record.model_dump_json(indent=2) + "\n")
        return
    lines = [
        f"{record.job_id}  {_state(record)}  ({record.priority} {record.kind}, {record.model})",
        f"runs     {record.runs}" + (f", last on {record.worker}" if record.worker else ""),
        f"created  {_when(record.created_at)}",
    ]
    if record.started_at is not None:
        lines.append(f"started  {_when(record.started_at)}")
    if record.finished_at is not None:
        took = record.finished_at - (record.started_at or record.created_at)
        lines.append(f"ended    {_when(record.finished_at)} ({took:.1f} s)")
    if record.error:
        lines.append(f"error    {record.error}")
    for line in lines:
        out.print(line, highlight=False, soft_wrap=True)
    if isinstance(record.result, EmbeddingResult):
        _vectors(record.result)
    elif record.result is not None:
        result = record.result
        err.print(
            f"[dim]{result.completion_tokens} tokens, finish: {result.finish_reason}[/dim]",
            highlight=False,
        )
        sys.stdout.write(result.text + "\n")


@job_app.command("list")
def list_jobs(
    file: ConfigFile = DEFAULT_CONFIG,
    state: Annotated[
        str | None,
        typer.Option(help="only jobs in this state: queued, running, done, failed, cancelled"),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=1000, help="how many jobs to show")
    ] = 50,
    as_json: AsJson = False,
) -> None:
    """List the newest jobs, newest first."""
    records = connect_yaml(file).jobs(state, limit)
    if as_json:
        data = [r.model_dump(mode="json") for r in records]
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    if not records:
        out.print("no jobs" + (f" {state}" if state else ""))
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("id", "state", "priority", "model", "where", "runs", "created"):
        table.add_column(column)
    for record in records:
        where = f"#{record.position}" if record.position is not None else (record.worker or "-")
        table.add_row(
            record.job_id,
            _state(record),
            record.priority,
            record.model,
            where,
            str(record.runs),
            _when(record.created_at),
        )
    out.print(table)


@job_app.command("cancel")
def cancel(job_id: JobId, file: ConfigFile = DEFAULT_CONFIG) -> None:
    """Cancel a queued or running job (a running one's worker stops generating)."""
    record = connect_yaml(file).cancel_job(job_id)
    out.print(f"cancelled {record.job_id}", highlight=False)


def _request(prompt: str | None, body: Path | None) -> dict[str, Any]:
    """The OpenAI body: a chat of one message, or the --body file's."""
    if (prompt is None) == (body is None):
        raise RbeeError(
            "give a PROMPT or --body FILE"
            if prompt is None
            else "give a PROMPT or --body, not both",
            hint="`rbee job submit 'Name a colour'`, or `rbee job submit --body request.json`",
        )
    if prompt is not None:
        return {"messages": [{"role": "user", "content": prompt}], "max_tokens": 128}
    assert body is not None
    try:
        text = sys.stdin.read() if str(body) == "-" else body.read_text(encoding="utf-8")
    except OSError as exc:
        raise RbeeError(f"{body}: cannot read: {exc.strerror}") from None
    try:
        request = json.loads(text)
    except ValueError as exc:
        raise RbeeError(f"{body}: not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise RbeeError(f"{body}: not a JSON object", hint="an OpenAI request body is an object")
    return request


def _follow(client: QueenClient, job_id: str, as_json: bool) -> None:
    """Print a job's progress on stderr and its text on stdout as it comes, to its end."""
    from rbee.wire.jobs import (
        EmbeddingResult,
        JobAssigned,
        JobChunk,
        JobDone,
        JobError,
        JobPosition,
        JobQueued,
        chunk_text,
    )

    last: JobError | None = None
    for event in client.job_events(job_id):
        if isinstance(event, JobQueued | JobPosition):
            err.print(f"[dim]{job_id}: queued, #{event.position}[/dim]", highlight=False)
        elif isinstance(event, JobAssigned):
            err.print(f"[dim]{job_id}: running on {event.worker}[/dim]", highlight=False)
        elif isinstance(event, JobChunk) and not as_json:
            sys.stdout.write(chunk_text(event.chunk) or "")
            sys.stdout.flush()
        elif isinstance(event, JobDone) and isinstance(event.result, EmbeddingResult):
            if not as_json:
                _vectors(event.result)
        elif isinstance(event, JobError):
            last = event
    if as_json:
        sys.stdout.write(client.job(job_id).model_dump_json(indent=2) + "\n")
    else:
        sys.stdout.write("\n")
    if last is not None:
        raise RbeeError(f"job {job_id} {last.state}: {last.message}")


def _vectors(result: EmbeddingResult) -> None:
    """An embedding job's vectors on stdout, one JSON array (or base64 string) a line."""
    err.print(
        f"[dim]{len(result.data)} vectors, {result.usage.prompt_tokens} input tokens[/dim]",
        highlight=False,
    )
    for item in result.data:
        sys.stdout.write(json.dumps(item.embedding) + "\n")


def _state(record: JobRecord) -> str:
    style = _STYLE.get(record.state, "white")
    return f"[{style}]{record.state}[/{style}]"


def _when(at: float) -> str:
    return datetime.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")
