"""`POST /v1/embeddings` (OpenAI's shape) and `POST /v1/rerank` (the Jina/Cohere shape
llama-server serves), for a worker whose GGUF embeds or reranks (`rbee.worker.embed`).

A request to a model of the other kind (embeddings of a chat model, chat of an embedding
model: `wrong_purpose`) is a 400 naming what the model is for. Answers are serialised in a
thread: 2048 vectors of 1024 floats are tens of MB of JSON.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rbee.wire import Purpose, WorkerArgs
from rbee.worker.embed import MAX_INPUTS, BadInput, Embedded, Embedder
from rbee.worker.http import ClientGone, error, or_disconnect, parse

__all__ = ["EmbeddingRequest", "RerankRequest", "embeddings", "rerank", "wrong_purpose"]

log = logging.getLogger(__name__)

_WHAT: dict[Purpose, str] = {
    "chat": "a chat model",
    "embedding": "an embedding model",
    "rerank": "a reranker",
}
_ROUTES: dict[Purpose, str] = {
    "chat": "POST /v1/chat/completions, /v1/completions or /v1/responses",
    "embedding": "POST /v1/embeddings",
    "rerank": "POST /v1/rerank",
}
_SHAPES = "a string, a list of strings, a list of token ids or a list of token-id lists"


class EmbeddingRequest(BaseModel):
    """`POST /v1/embeddings`, OpenAI's (a field rbee does not implement is refused before
    this model reads the body: `rbee.wire.chat.unsupported_field`)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None  # the queen routes by model; this worker serves its own
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _readable(cls, value: Any) -> Any:
        """One of OpenAI's four shapes, none of it empty, at most MAX_INPUTS inputs."""
        if isinstance(value, str):
            if not value:
                raise ValueError("input: an empty string: there is nothing to embed")
            return value
        if not isinstance(value, list):
            raise ValueError(f"input: {_SHAPES} (got {type(value).__name__})")
        if not value:
            raise ValueError("input: an empty list: there is nothing to embed")
        if len(value) > MAX_INPUTS:
            raise ValueError(f"input: at most {MAX_INPUTS} inputs per request (got {len(value)})")
        if all(_token(item) for item in value):
            return value
        for index, item in enumerate(value):
            where = f"input.{index}"
            if isinstance(item, str):
                if not item:
                    raise ValueError(f"{where}: an empty string: there is nothing to embed")
            elif isinstance(item, list):
                if not item or not all(_token(t) for t in item):
                    raise ValueError(f"{where}: a token-id list must hold token ids, not empty")
            else:
                raise ValueError(f"{where}: {_SHAPES} (got {type(item).__name__})")
        if len({isinstance(item, str) for item in value}) > 1:
            raise ValueError(f"input: {_SHAPES}, not strings and lists mixed")
        return value

    @field_validator("dimensions")
    @classmethod
    def _whole(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError(
                "dimensions: not supported: a GGUF does not say which shorter sizes its model "
                "was trained to keep (Matryoshka), so rbee serves each vector whole"
            )
        return value

    def inputs(self) -> tuple[list[str] | list[list[int]], bool]:
        """The inputs as a list, and whether the request sent one alone (a string or one
        token list), which errors name `input` rather than `input.N`."""
        given = self.input
        if isinstance(given, str):
            return [given], True
        if isinstance(given[0], int):
            return [given], True
        return given, False


class RerankRequest(BaseModel):
    """`POST /v1/rerank`, as llama-server takes it (Jina's and Cohere's shape)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    query: str = Field(min_length=1)
    documents: list[str] = Field(min_length=1, max_length=MAX_INPUTS)
    top_n: int | None = Field(default=None, ge=1, description="the best this many; default all")
    return_documents: bool = False


class _Worker(Protocol):
    """What these routes use of the worker (`rbee.worker.app._Worker`)."""

    config: WorkerArgs
    engine: object
    purpose: Purpose

    def refusal(self) -> Response | None: ...

    def request_started(self) -> None: ...

    def request_finished(self) -> None: ...


def wrong_purpose(model: str, purpose: Purpose, asked: Purpose) -> JSONResponse:
    """The 400 for a request this model is not for, saying what it is for and where to go."""
    message = (
        f"the model {model!r} is {_WHAT[purpose]}: it serves {_ROUTES[purpose]}, "
        f"not {_ROUTES[asked]}"
    )
    return error(400, message, "invalid_request_error", "model_not_supported")


async def embeddings(request: Request) -> Response:
    body = await parse(request, EmbeddingRequest)
    if isinstance(body, Response):
        return body
    inputs, alone = body.inputs()
    worker: _Worker = request.app.state.worker
    answer = await _serve(
        request,
        worker,
        "embedding",
        lambda embedder: embedder.embed(inputs),
        lambda index: "input" if alone else f"input.{index}",
    )
    if isinstance(answer, Response):
        return answer
    base64_ = body.encoding_format == "base64"

    def data(index: int, row: Any) -> dict[str, Any]:
        vector = base64.b64encode(row.astype("<f4").tobytes()).decode() if base64_ else row.tolist()
        return {"object": "embedding", "index": index, "embedding": vector}

    return await _json(
        lambda: {
            "object": "list",
            "data": [data(index, row) for index, row in enumerate(answer.rows)],
            "model": worker.config.model,
            "usage": _usage(answer),
        }
    )


async def rerank(request: Request) -> Response:
    body = await parse(request, RerankRequest)
    if isinstance(body, Response):
        return body
    worker: _Worker = request.app.state.worker
    answer = await _serve(
        request,
        worker,
        "rerank",
        lambda embedder: embedder.rerank(body.query, body.documents),
        lambda index: f"documents.{index}",
    )
    if isinstance(answer, Response):
        return answer
    ranked = sorted(enumerate(answer.rows), key=lambda pair: -float(pair[1][0]))
    results = []
    for index, row in ranked[: body.top_n]:
        result: dict[str, Any] = {"index": index, "relevance_score": float(row[0])}
        if body.return_documents:
            result["document"] = {"text": body.documents[index]}
        results.append(result)
    return await _json(
        lambda: {
            "model": worker.config.model,
            "object": "list",
            "results": results,
            "usage": _usage(answer),
        }
    )


async def _serve(
    request: Request,
    worker: _Worker,
    asked: Purpose,
    work: Callable[[Embedder], Coroutine[Any, Any, Embedded]],
    name: Callable[[int], str],
) -> Embedded | Response:
    """Run `work` on the worker's embedder: its answer, or the error response."""
    embedder = worker.engine
    if not isinstance(embedder, Embedder) or embedder.purpose != asked:
        return wrong_purpose(worker.config.model, worker.purpose, asked)  # loaded or not
    refusal = worker.refusal()
    if refusal is not None:
        return refusal
    worker.request_started()
    try:
        return await or_disconnect(request, work(embedder))
    except ClientGone:
        return Response(status_code=499)
    except BadInput as exc:
        return error(
            400, f"{name(exc.index)}: {exc.reason}", "invalid_request_error", "invalid_value"
        )
    except Exception as exc:
        log.exception("embedding failed")
        return error(500, f"the model failed to read the inputs: {exc}", "server_error")
    finally:
        worker.request_finished()


def _usage(answer: Embedded) -> dict[str, int]:
    return {"prompt_tokens": answer.prompt_tokens, "total_tokens": answer.prompt_tokens}


async def _json(build: Callable[[], dict[str, Any]]) -> Response:
    """The answer built and serialised off the event loop."""
    text = await asyncio.to_thread(lambda: json.dumps(build(), separators=(",", ":")))
    return Response(text, media_type="application/json")


def _token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
