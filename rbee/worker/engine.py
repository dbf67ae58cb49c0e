"""The worker's engine: one GGUF, one llama context, its slots decoded as one batch.

`Engine` is what the HTTP app talks to: it formats requests (the chat format of the GGUF's
template, else by architecture), waits for a free slot, hands the request to the decode loop
(`rbee.worker.batch.Batcher`) and turns the loop's events into OpenAI chunks (`Generation`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import llama_cpp
from llama_cpp import _internals, llama_chat_format
from llama_cpp._utils import suppress_stdout_stderr

from rbee.errors import RbeeError
from rbee.pki import client_context
from rbee.wire import PromptCacheStats, WorkerArgs
from rbee.worker import cores, ggml_rpc
from rbee.worker.batch import Batcher, Formatted, Logprob, Request, formatter
from rbee.worker.grammar import SchemaError, response_grammar
from rbee.worker.llama_output import forward_llama_logs
from rbee.worker.tools import ToolUse, generic_turn, tool_use, writes_hermes
from rbee.worker.tunnel import Forwarder

__all__ = [
    "Engine",
    "Generation",
    "Kind",
    "chat_format_for",
    "open_model",
    "placement",
    "reporter",
    "worker_threads",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

Kind = Literal["chat", "completion"]  # as rbee.worker.batch.Kind

# Used only when the GGUF carries no chat template: llama-cpp would otherwise fall back to
# "llama-2", and gemma answers that prompt with nothing at all.
_ARCHITECTURE_FORMATS: tuple[tuple[str, str], ...] = (
    ("gemma", "gemma"),
    ("llama", "llama-2"),
    ("mistral", "mistral-instruct"),
    ("qwen", "qwen"),
    ("chatglm", "chatglm3"),
)


def chat_format_for(metadata: Mapping[str, str], fallback: str | None) -> str | None:
    """The chat format to force, or None to let llama-cpp use the GGUF's own template."""
    if "tokenizer.chat_template" in metadata:
        return None
    architecture = metadata.get("general.architecture", "")
    for prefix, name in _ARCHITECTURE_FORMATS:
        if architecture.startswith(prefix):
            return name
    return fallback


def worker_threads(config: WorkerArgs) -> int:
    """`--threads` when given; else, on the CPU, its share of the cores (`rbee.worker.cores`);
    else (a GPU worker, whose threads only feed the GPU) every core."""
    if config.threads is not None:
        return config.threads
    return cores.share(config) if shares_cores(config) else cores.cores()


def shares_cores(config: WorkerArgs) -> bool:
    """Whether the worker's threads follow its share of the cores as workers come and go."""
    return config.threads is None and config.device == "cpu"


_DEFAULTS: dict[Kind, dict[str, Any]] = {
    # llama-cpp-python's defaults for each call, kept so answers read as they did.
    "chat": {"temperature": 0.2, "repeat_penalty": 1.1, "max_tokens": None},
    "completion": {"temperature": 0.8, "repeat_penalty": 1.0, "max_tokens": 16},
}


class Generation:
    """One request in the batch, its `choices` sequences together: iterate it for its OpenAI
    chunks (stream) or its one answer.

    The decode loop's events cross to the event loop one at a time, as tokens come: nothing
    buffers a whole streamed answer, except one whose tool calls are read from the whole
    (`rbee.worker.tools`). A chat stream's first chunk (the assistant role) is sent with the
    first text, so a request the worker refuses (a prompt too long) is still an error before
    any chunk.
    """

    def __init__(
        self,
        kind: Kind,
        model: str,
        stream: bool,
        cancelled: threading.Event,
        include_usage: bool = False,
        *,
        choices: int = 1,
        tools: ToolUse | None = None,
    ) -> None:
        self._kind = kind
        self._model = model
        self._stream = stream
        self._include_usage = include_usage
        self._cancelled = cancelled
        self._tools = tools
        self._events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._pending: list[dict[str, Any]] = []
        self._finished = False
        self._open = choices
        self._texts: list[list[str]] = [[] for _ in range(choices)]
        self._logprobs: list[list[Logprob] | None] = [None] * choices
        self._offsets = [0] * choices  # completions' text_offset, per choice
        self._reasons: list[str | None] = [None] * choices
        self._started: set[int] = set()
        self._completion_tokens = 0
        self._cached_tokens = 0
        self._id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4()}"
        self._created = int(time.time())
        #: The prompt's tokens, known before the first chunk.
        self.prompt_tokens = 0

    def deliver(self, event: tuple[Any, ...]) -> None:
        """An event of choice `event[1]` from the decode loop (on the event loop's thread)."""
        self._events.put_nowait(event)

    def cancel(self) -> None:
        """Stop generating after the current step (a no-op once finished)."""
        self._cancelled.set()

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._pending:
            return self._pending.pop(0)
        if self._finished:
            raise StopAsyncIteration
        if not self._stream:
            return await self._whole()
        while not (chunks := self._chunks(await self._events.get())):
            pass
        self._pending = chunks[1:]
        return chunks[0]

    def _chunks(self, event: tuple[Any, ...]) -> list[dict[str, Any]]:
        """The chunks one event of the decode loop makes (none while tool calls are read)."""
        kind, index = event[0], event[1]
        if kind == "error":
            self._finished = True
            raise event[2]
        chunks = []
        if index not in self._started and self._kind == "chat":
            chunks.append(self._chunk(index, {"role": "assistant"}))
        self._started.add(index)
        if kind == "text":
            _, _, text, logprobs = event
            if self._tools is not None:
                self._texts[index].append(text)
            else:
                chunks.append(self._chunk(index, text, logprobs=logprobs))
            return chunks
        _, _, reason, prompt_tokens, completion_tokens, cached = event
        self._completion_tokens += completion_tokens
        self._cached_tokens = max(self._cached_tokens, cached)
        if self._tools is not None:
            content, calls = self._tools.parse("".join(self._texts[index]))
            reason = "tool_calls" if calls and reason == "stop" else reason
            if content:
                chunks.append(self._chunk(index, content))
            for number, call in enumerate(calls):
                head = {**call, "function": {**call["function"], "arguments": ""}}
                arguments = {"function": {"arguments": call["function"]["arguments"]}}
                chunks.append(self._chunk(index, {"tool_calls": [{"index": number, **head}]}))
                chunks.append(self._chunk(index, {"tool_calls": [{"index": number, **arguments}]}))
        chunks.append(self._chunk(index, None, reason))
        self._open -= 1
        if self._open == 0:
            self._finished = True
            if self._include_usage:
                # OpenAI's `stream_options.include_usage`: a last chunk, no choices, the usage.
                chunk = "chat.completion.chunk" if self._kind == "chat" else "text_completion"
                usage = self._body(chunk, [])
                usage["usage"] = _usage(prompt_tokens, self._completion_tokens, self._cached_tokens)
                chunks.append(usage)
        return chunks

    async def _whole(self) -> dict[str, Any]:
        prompt_tokens = 0
        while self._open:
            event = await self._events.get()
            kind, index = event[0], event[1]
            if kind == "error":
                self._finished = True
                raise event[2]
            if kind == "text":
                self._texts[index].append(event[2])
                if event[3] is not None:
                    self._logprobs[index] = (self._logprobs[index] or []) + event[3]
                continue
            _, _, self._reasons[index], prompt_tokens, completion_tokens, cached = event
            self._completion_tokens += completion_tokens
            self._cached_tokens = max(self._cached_tokens, cached)
            self._open -= 1
        self._finished = True
        chat = self._kind == "chat"
        answer = self._body(
            "chat.completion" if chat else "text_completion",
            [self._choice(i) for i in range(len(self._texts))],
        )
        answer["usage"] = _usage(prompt_tokens, self._completion_tokens, self._cached_tokens)
        return answer

    def _choice(self, index: int) -> dict[str, Any]:
        """Choice `index` of a whole answer."""
        text, reason = "".join(self._texts[index]), self._reasons[index]
        logprobs = self._logprobs_of(index, self._logprobs[index])
        if self._kind != "chat":
            return _choice(index, reason, logprobs, text=text)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if self._tools is not None:
            message["content"], calls = self._tools.parse(text)
            if calls:
                message["tool_calls"] = calls
                reason = "tool_calls" if reason == "stop" else reason
        return _choice(index, reason, logprobs, message=message)

    def _chunk(
        self,
        index: int,
        content: str | dict[str, Any] | None,
        reason: str | None = None,
        logprobs: list[Logprob] | None = None,
    ) -> dict[str, Any]:
        listed = self._logprobs_of(index, logprobs)
        if self._kind != "chat":
            text = content if isinstance(content, str) else ""
            return self._body("text_completion", [_choice(index, reason, listed, text=text)])
        delta = {"content": content} if isinstance(content, str) else content or {}
        return self._body("chat.completion.chunk", [_choice(index, reason, listed, delta=delta)])

    def _logprobs_of(self, index: int, logprobs: list[Logprob] | None) -> dict[str, Any] | None:
        """OpenAI's `logprobs` of a choice for these tokens: chat's or completions' shape."""
        if logprobs is None:
            return None
        if self._kind == "chat":
            return {"content": [_chat_logprob(one) for one in logprobs], "refusal": None}
        offsets = []
        for one in logprobs:
            offsets.append(self._offsets[index])
            self._offsets[index] += len(_text(one.token))
        return {
            "tokens": [_text(one.token) for one in logprobs],
            "token_logprobs": [one.logprob for one in logprobs],
            "top_logprobs": [{_text(t): lp for t, lp in one.top} for one in logprobs],
            "text_offset": offsets,
        }

    def _body(self, object_: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        """An OpenAI answer or chunk of this generation."""
        return {
            "id": self._id,
            "object": object_,
            "created": self._created,
            "model": self._model,
            "choices": choices,
        }


def _choice(
    index: int, reason: str | None, logprobs: dict[str, Any] | None, **fields: Any
) -> dict[str, Any]:
    return {"index": index, "logprobs": logprobs, "finish_reason": reason, **fields}


def _text(token: bytes) -> str:
    return token.decode("utf-8", "replace")


def _chat_logprob(one: Logprob) -> dict[str, Any]:
    def entry(token: bytes, logprob: float) -> dict[str, Any]:
        return {"token": _text(token), "logprob": logprob, "bytes": list(token)}

    return {**entry(one.token, one.logprob), "top_logprobs": [entry(t, lp) for t, lp in one.top]}


def _usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    """OpenAI's usage, with the prompt tokens found in the prompt cache (not read again)."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


class Engine:
    """One model, one context, `slots` sequences decoded as one batch (`rbee.worker.batch`)."""

    def __init__(self, config: WorkerArgs, on_change: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self._on_change = on_change
        self._slots = asyncio.Semaphore(config.slots)
        self._claiming = asyncio.Lock()  # one request at a time takes its slots: no deadlock
        self._busy = 0
        self._batcher: Batcher | None = None
        self._model: _internals.LlamaModel | None = None
        self._formatter: Any = None
        self._running: set[threading.Event] = set()
        self._hermes = False  # the GGUF's template writes Hermes tool calls (rbee.worker.tools)
        self._longest_token: int | None = None  # bytes of the vocabulary's longest token
        self.loaded = False

    @property
    def slots_total(self) -> int:
        """Slots this worker serves (the configured count, loaded or not)."""
        return self.config.slots

    @property
    def slots_busy(self) -> int:
        """Slots running a request right now."""
        return self._busy

    @property
    def stats(self) -> PromptCacheStats:
        """The prompt cache's counters."""
        if self._batcher is None:
            return PromptCacheStats(budget=self.config.prompt_cache)
        return self._batcher.stats

    @property
    def threads(self) -> int | None:
        """The threads decoding the batch now (None before the model is loaded)."""
        return self._batcher.threads if self._batcher else None

    def share_cores(self) -> None:
        """Decode with the worker's share of the cores as it is now (`rbee.worker.cores`);
        blocking (it lists processes): run it in a thread."""
        if self._batcher is not None and shares_cores(self.config):
            threads = cores.share(self.config)
            if threads != self._batcher.threads:
                log.info(
                    "threads=%d previous=%d (a share of the cores)", threads, self._batcher.threads
                )
                self._batcher.threads = threads

    @property
    def prefixes(self) -> list[int]:
        """The prefix hashes of what the prompt cache holds (`rbee.wire.prefix`)."""
        return sorted(self._batcher.prefixes) if self._batcher else []

    async def load(self) -> None:
        """Load the model and make the context in a daemon thread (a stuck load must not hold
        up exit)."""
        await _in_daemon_thread(self._load, name="rbee-load")
        self.loaded = True
        self._on_change()

    def _load(self) -> None:
        config = self.config
        model = open_model(config)
        metadata = model.metadata()
        chosen = chat_format_for(metadata, config.chat_format)
        self._formatter = formatter(model, metadata, chosen)
        self._hermes = isinstance(
            self._formatter, llama_chat_format.Jinja2ChatFormatter
        ) and writes_hermes(metadata.get("tokenizer.chat_template"))
        threads = worker_threads(config)
        self._batcher = Batcher(
            model, config.slots, config.ctx_size, threads, ram_budget=config.prompt_cache
        )
        self._model = model
        log.info(
            "loaded model=%s slots=%d threads=%d chat_format=%s",
            config.model, config.slots, threads, chosen or "gguf template",
        )  # fmt: skip

    def _format(self, kind: Kind, params: dict[str, Any]) -> tuple[Formatted, _Constraint]:
        """The prompt's tokens and what constrains the answer (a grammar, tool calls)."""
        assert self._model is not None
        user_stop = params.get("stop") or []
        stop = [user_stop] if isinstance(user_stop, str) else list(user_stop)
        constraint = _constraint(params, hermes=self._hermes)
        if kind == "completion":
            text = params["prompt"].encode()
            self._fits(text)
            tokens = self._model.tokenize(text, True, True) if text else [self._model.token_bos()]
            return Formatted(tokens, stop, frozenset()), constraint
        messages = params["messages"]
        tools = constraint.tools
        if not self._hermes:
            messages = [generic_turn(message) for message in messages]
        if tools is not None and not tools.hermes:
            messages = _with_system(messages, tools.instructions)
        given = {"tools": tools.tools} if tools is not None and tools.hermes else {}
        result = self._formatter(messages=messages, **given)
        text = result.prompt.encode()
        self._fits(text)
        tokens = self._model.tokenize(text, not result.added_special, True)
        more = (
            result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
        )
        # A GGUF template's formatter names its end tokens (beyond the vocabulary's EOG).
        ends = frozenset(getattr(self._formatter, "stop_token_ids", None) or ())
        return Formatted(tokens, stop + more, ends), constraint

    def _fits(self, text: bytes) -> None:
        """Refuse, before tokenizing it, a prompt too long for a slot whatever its tokens: no
        token covers more bytes than the vocabulary's longest, so more bytes than that many
        times the context are more tokens than it holds."""
        ctx_size = self.config.ctx_size
        if len(text) <= ctx_size:
            return
        if self._longest_token is None:  # once, and only for a worker given long prompts
            assert self._model is not None
            vocab = range(self._model.n_vocab())
            self._longest_token = max(len(self._model.token_to_piece(t)) for t in vocab)
        if len(text) > ctx_size * self._longest_token:
            raise ValueError(
                f"the prompt is {len(text)} bytes, more than this worker's context holds "
                f"({ctx_size} tokens per slot, {self._longest_token} bytes at most each)"
            )

    async def start(
        self,
        kind: Kind,
        params: dict[str, Any],
        *,
        stream: bool,
        include_usage: bool = False,
        choices: int = 1,
        prefixes: tuple[int, ...] = (),
    ) -> Generation:
        """Wait for `choices` free slots, then put the request into the batch. The prompt is
        formatted and tokenized in a thread: a long one must not stall the event loop (every
        stream)."""
        assert self._batcher is not None
        if choices > self.config.slots:
            raise ValueError(f"n: at most {self.config.slots}, the slots this worker serves")
        async with self._claiming:
            for _ in range(choices):
                await self._slots.acquire()
                self._busy += 1
        self._on_change()
        try:
            prompt, constraint = await asyncio.to_thread(self._format, kind, params)
        except BaseException:
            for _ in range(choices):
                self._release()
            raise
        cancelled = threading.Event()
        generation = Generation(
            kind,
            self.config.model,
            stream,
            cancelled,
            include_usage,
            choices=choices,
            tools=constraint.tools,
        )
        generation.prompt_tokens = len(prompt.tokens)
        loop = asyncio.get_running_loop()
        self._running.add(cancelled)
        left = [choices]

        def deliver(event: tuple[Any, ...]) -> None:
            generation.deliver(event)
            if event[0] != "text":
                self._release()
                left[0] -= 1
                if not left[0]:
                    self._running.discard(cancelled)

        def emitter(index: int) -> Callable[[tuple[Any, ...]], None]:
            def emit(event: tuple[Any, ...]) -> None:
                with contextlib.suppress(RuntimeError):  # the event loop closed first (exit)
                    loop.call_soon_threadsafe(deliver, (event[0], index, *event[1:]))

            return emit

        defaults = _DEFAULTS[kind]
        if constraint.grammar is not None:
            # A repeat penalty weighs on the quotes, colons and braces JSON repeats by nature:
            # it keeps a model from closing what it opened (llama-server applies none).
            defaults = {**defaults, "repeat_penalty": 1.0}
        merged = {**defaults, **{k: v for k, v in params.items() if v is not None}}
        seed = merged.get("seed")
        self._batcher.submit(
            *(
                Request(
                    prompt=prompt,
                    max_tokens=merged["max_tokens"],
                    temperature=float(merged["temperature"]),
                    top_p=float(merged.get("top_p", 0.95)),
                    top_k=int(merged.get("top_k", 40)),
                    min_p=float(merged.get("min_p", 0.05)),
                    repeat_penalty=float(merged["repeat_penalty"]),
                    frequency_penalty=float(merged.get("frequency_penalty", 0.0)),
                    presence_penalty=float(merged.get("presence_penalty", 0.0)),
                    seed=None if seed is None else seed + index,
                    emit=emitter(index),
                    cancelled=cancelled,
                    grammar=constraint.grammar,
                    logprobs=merged.get("logprobs"),
                    prefixes=prefixes,
                )
                for index in range(choices)
            )
        )
        return generation

    def _release(self) -> None:
        self._busy -= 1
        self._slots.release()
        self._on_change()

    def close(self, timeout: float) -> None:
        """Shutdown: stop every running generation and the decode loop, then free the context
        and the model while the process is whole (freed at interpreter exit instead, llama.cpp
        would log into a half torn-down Python). A loop still busy after `timeout` s keeps
        both: the process exits around it."""
        for cancelled in list(self._running):
            cancelled.set()
        if self._batcher is None or self._model is None:
            return
        self._batcher.close()
        if self._batcher.join(timeout):
            self._model.close()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class _Constraint:
    """What holds an answer to a form: a grammar, and for tool calls how to read it back."""

    grammar: str | None = None
    tools: ToolUse | None = None


def _constraint(params: Mapping[str, Any], *, hermes: bool) -> _Constraint:
    """The constraint `response_format`, `tools` and `tool_choice` ask for (a ValueError
    names what cannot be enforced)."""
    response_format = params.get("response_format")
    try:
        grammar = response_grammar(response_format)
    except SchemaError as exc:
        raise ValueError(str(exc)) from None
    schema = None
    if grammar is not None and response_format is not None:
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema", {"type": "object"})
    tools = tool_use(
        params.get("tools"),
        params.get("tool_choice"),
        params.get("parallel_tool_calls"),
        schema,
        hermes=hermes,
    )
    if tools is not None:
        return _Constraint(tools.grammar, tools)
    return _Constraint(grammar)


def _with_system(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """`messages` with `text` ending the system message (one first when there is none)."""
    if messages and messages[0]["role"] in ("system", "developer"):
        first = messages[0]
        return [{**first, "content": f"{first['content']}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def open_model(config: WorkerArgs) -> _internals.LlamaModel:
    """The worker's GGUF, loaded where its flags say (`placement`), llama.cpp's logs sent to
    ours. A worker that spans other hives first adds their RPC servers, through tunnels, as
    devices of this process."""
    forward_llama_logs()
    if config.rpc:
        for endpoint in _span(config):
            ggml_rpc.add_server(endpoint)
    params = llama_cpp.llama_model_default_params()
    for key, value in placement(config).items():
        setattr(params, key, value)
    with suppress_stdout_stderr(disable=log.isEnabledFor(logging.DEBUG)):
        return _internals.LlamaModel(path_model=config.model_path, params=params, verbose=False)


def placement(config: WorkerArgs) -> dict[str, Any]:
    """llama-cpp's model parameters for where the worker's flags put its layers.

    On one GPU every layer is offloaded to it. A hive pins a `cuda:N` worker with
    CUDA_VISIBLE_DEVICES=N (several GPUs: `N,M`), so it sees its own GPUs alone, numbered from
    0. Several devices (GPUs, RPC servers) split the model as `--split-mode` and
    `--tensor-split` say (the split the plan showed); `--gpu-layers` keeps the first layers
    on this machine's CPU, and a CPU worker that spans keeps its output layer there too.
    """
    devices = [] if config.device in ("cpu", "metal") else config.device.split(",")
    params: dict[str, Any] = {"n_gpu_layers": 0 if config.device == "cpu" else -1}
    if len(devices) == 1 and not config.rpc:
        _, _, index = devices[0].partition(":")
        pinned = "CUDA_VISIBLE_DEVICES" in os.environ
        params["main_gpu"] = 0 if pinned or not index.isdigit() else int(index)
        params["split_mode"] = llama_cpp.LLAMA_SPLIT_MODE_NONE
        return params
    if config.rpc or len(devices) > 1:
        params["n_gpu_layers"] = -1
        mode = config.split_mode or "layer"
        params["split_mode"] = (
            llama_cpp.LLAMA_SPLIT_MODE_ROW if mode == "row" else llama_cpp.LLAMA_SPLIT_MODE_LAYER
        )
    if config.gpu_layers is not None:
        params["n_gpu_layers"] = config.gpu_layers
    if config.rpc and config.device == "cpu":
        params["tensor_buft_overrides"] = _output_on_this_cpu()
    if config.tensor_split:
        shares = [float(share) for share in config.tensor_split.split(",")]
        # llama.cpp reads up to its maximum of devices from this pointer: the array is
        # padded to that length and kept alive with the module (the model is loaded once).
        array = (ctypes.c_float * llama_cpp.LLAMA_MAX_DEVICES)(*shares)
        _kept.append(array)
        params["tensor_split"] = ctypes.cast(array, ctypes.POINTER(ctypes.c_float))
    return params


class _BuftOverride(ctypes.Structure):
    """llama.cpp's `llama_model_tensor_buft_override`: tensors whose name matches `pattern`
    go to buffer type `buft`."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def _output_on_this_cpu() -> ctypes.c_void_p:
    """A CPU worker that spans keeps the output layer on its own CPU (llama.cpp would put it on
    the last RPC device): per token only the last block's hidden state crosses the network,
    not the logits over the whole vocabulary (1 MB for a 262k-token vocabulary). A model with
    tied embeddings names its output `token_embd` (the input's, already on this CPU)."""
    cpu = ggml_rpc.host_buffer_type()
    overrides = (_BuftOverride * 2)(
        _BuftOverride(rb"^(output|output_norm|token_embd)\.", cpu), _BuftOverride(None, None)
    )
    _kept.append(overrides)
    return ctypes.cast(overrides, ctypes.c_void_p)


_kept: list[Any] = []
_tunnels: list[Forwarder] = []


def _span(config: WorkerArgs) -> list[str]:
    """A tunnel to each RPC server the worker spans (`--rpc HIVE@HOST:PORT,...`): the local
    endpoints llama.cpp's RPC client connects to. The worker must hold a TLS identity: the
    tunnels present it."""
    if config.identity is None:
        raise RbeeError("a worker that spans other hives needs --identity (its tunnels use it)")
    context = client_context(Path(config.identity))
    endpoints = []
    for server in (config.rpc or "").split(","):
        hive, _, address = server.partition("@")
        host, _, port = address.rpartition(":")
        tunnel = Forwarder(hive, (host.strip("[]"), int(port)), context, _server_lost)
        _tunnels.append(tunnel)
        endpoints.append(tunnel.endpoint)
    return endpoints


def _server_lost(hive: str) -> None:
    """An RPC server this worker spans went away, and with it the layers it held: llama.cpp
    would abort on the next token. Exit now, so the queen restarts the worker with the
    server (self-heal) instead of a request finding it half gone."""
    log.error("the RPC server of hive %s closed its connection: exiting", hive)
    logging.shutdown()
    os._exit(3)


def reporter(future: asyncio.Future[_T]) -> Callable[[_T | BaseException], None]:
    """What a thread calls with `future`'s result, or the exception it raised; a future
    already done (its request gone) or a closed event loop (exit) drop it."""
    loop = future.get_loop()

    def settle(outcome: _T | BaseException) -> None:
        if future.done():
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    def report(outcome: _T | BaseException) -> None:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, outcome)

    return report


async def _in_daemon_thread(work: Callable[[], _T], *, name: str) -> _T:
    future: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
    report = reporter(future)

    def body() -> None:
        outcome: _T | BaseException
        try:
            outcome = work()
        except BaseException as exc:
            outcome = exc
        report(outcome)

    threading.Thread(target=body, name=name, daemon=True).start()
    return await future
