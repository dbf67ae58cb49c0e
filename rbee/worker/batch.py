"""One llama context, every slot a sequence of one batch, one decode loop (llama-cpp-python's
low-level API).

Each step of the loop decodes one `llama_batch`: the next token of every running sequence plus
a bounded chunk of the prompts being read, so a long prompt never stalls the others for more
than one chunk. Each sequence samples with its own sampler chain. All of the worker's threads
serve the one batch, so a request alone runs at full speed. A finished sequence leaves its
tokens in its slot's KV cells: a later request whose prompt starts the same way (the next chat
turn) reuses them instead of reading them again.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import queue
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import llama_cpp
from llama_cpp import _internals, llama_chat_format
from llama_cpp._utils import suppress_stdout_stderr

__all__ = ["Batcher", "Formatted", "Kind", "Request", "SlotStats", "formatter"]

log = logging.getLogger(__name__)

Kind = Literal["chat", "completion"]
#: Prompt tokens read per step, over every sequence being admitted: the longest a running
#: stream waits for one token while a long prompt is read.
PROMPT_CHUNK = 128
_PENALTY_LAST_N = 64


@dataclass(frozen=True)
class Formatted:
    """A request made into tokens: its prompt, and what else ends it beyond max_tokens."""

    tokens: list[int]
    stop: list[str]
    stop_tokens: frozenset[int]


@dataclass
class Request:
    """One generation asked of the batcher; `emit` receives its events from the loop's thread:
    ("text", str), ("done", finish_reason, prompt_tokens, completion_tokens) or
    ("error", BaseException)."""

    prompt: Formatted
    max_tokens: int | None
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    frequency_penalty: float
    presence_penalty: float
    seed: int | None
    emit: Callable[[tuple[Any, ...]], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class SlotStats:
    """Counters of the prompt cache, for tests and logs."""

    prompt_tokens: int = 0
    reused_tokens: int = 0
    hits: int = 0


class _Sequence:
    """A request running in slot `seq_id`."""

    def __init__(self, request: Request, seq_id: int, keep: int, sampler: Any) -> None:
        self.request = request
        self.seq_id = seq_id
        self.prompt = request.prompt.tokens
        self.read = keep  # prompt tokens already in the KV cells
        self.pos = keep
        self.sampler = sampler
        self.generated: list[int] = []
        self.next_token: int | None = None
        self.logits_at = -1
        self.bytes = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.sent = 0

    @property
    def reading(self) -> bool:
        return self.read < len(self.prompt)


class Batcher:
    """The decode loop over one context of `model` with `slots` sequences of `ctx_size` each."""

    def __init__(
        self,
        model: _internals.LlamaModel,
        slots: int,
        ctx_size: int,
        threads: int,
        *,
        chunk: int = PROMPT_CHUNK,
    ) -> None:
        self.model = model
        self.slots = slots
        self.ctx_size = ctx_size
        self.chunk = chunk
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = ctx_size * slots
        params.n_seq_max = slots
        params.n_batch = max(chunk + slots, 512)
        params.n_ubatch = params.n_batch
        # Logits are read for one token per sequence a step: the output buffer needs no room
        # for every token of a batch (262k-entry vocabularies make that hundreds of MiB).
        params.n_outputs_max = slots
        params.n_outputs_max_per_seq = 1
        params.n_threads = threads
        params.n_threads_batch = threads
        params.kv_unified = False  # each sequence gets its own ctx_size cells
        with suppress_stdout_stderr(disable=log.isEnabledFor(logging.DEBUG)):
            self._ctx = llama_cpp.llama_init_from_model(model.model, params)
        if not self._ctx:
            raise RuntimeError("llama.cpp could not create the context")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)
        self._vocab = model.vocab
        self._incoming: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self._cached: list[list[int]] = [[] for _ in range(slots)]  # tokens in each slot's KV
        self._free = list(range(slots))
        self._running: list[_Sequence] = []
        self._waiting: list[Request] = []
        self.stats = SlotStats()
        self._thread = threading.Thread(target=self._loop, name="rbee-decode", daemon=True)
        self._thread.start()

    def submit(self, request: Request) -> None:
        """Queue `request`; it starts as soon as a slot is free."""
        self._incoming.put(request)

    def close(self) -> None:
        """Stop the loop after the current step (pending requests are cancelled)."""
        self._incoming.put(None)

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the loop to end (it frees the context); whether it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # The loop's thread from here on.

    def _loop(self) -> None:
        try:
            while True:
                if not self._running and not self._waiting:
                    request = self._incoming.get()
                    if request is None:
                        return
                    self._waiting.append(request)
                while True:
                    try:
                        request = self._incoming.get_nowait()
                    except queue.Empty:
                        break
                    if request is None:
                        return
                    self._waiting.append(request)
                try:
                    self._admit()
                    self._drop_cancelled()
                    if self._running:
                        self._step()
                except Exception as exc:  # a bug must fail its requests, not hang them all
                    log.exception("decode step failed")
                    for sequence in list(self._running):
                        sequence.request.emit(("error", exc))
                        self._finish(sequence, None, keep_cache=False)
        finally:
            for sequence in self._running:
                sequence.request.emit(("error", RuntimeError("the worker is stopping")))
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)

    def _admit(self) -> None:
        while self._waiting and self._free:
            request = self._waiting.pop(0)
            if request.cancelled.is_set():
                request.emit(("done", "cancelled", len(request.prompt.tokens), 0))
                continue
            prompt = request.prompt.tokens
            if len(prompt) >= self.ctx_size:
                request.emit(
                    (
                        "error",
                        ValueError(
                            f"the prompt is {len(prompt)} tokens; this worker's context holds "
                            f"{self.ctx_size} per slot"
                        ),
                    )
                )
                continue
            # The free slot whose cached tokens share the longest start with this prompt.
            seq_id = max(self._free, key=lambda s: _common(self._cached[s], prompt))
            self._free.remove(seq_id)
            keep = min(_common(self._cached[seq_id], prompt), len(prompt) - 1)
            if not llama_cpp.llama_memory_seq_rm(self._memory, seq_id, keep, -1):
                # This cache cannot drop a tail (a recurrent model's state): start afresh.
                llama_cpp.llama_memory_seq_rm(self._memory, seq_id, -1, -1)
                keep = 0
            self._cached[seq_id] = prompt[:keep]
            self.stats.prompt_tokens += len(prompt)
            if keep:
                self.stats.hits += 1
                self.stats.reused_tokens += keep
                log.debug("prompt cache seq=%d reused=%d of %d", seq_id, keep, len(prompt))
            self._running.append(_Sequence(request, seq_id, keep, self._sampler(request)))

    def _drop_cancelled(self) -> None:
        for sequence in [s for s in self._running if s.request.cancelled.is_set()]:
            self._finish(sequence, "cancelled", keep_cache=False)

    def _step(self) -> None:
        batch = self._batch
        batch.n_tokens = 0
        for sequence in self._running:
            if not sequence.reading:
                assert sequence.next_token is not None
                sequence.logits_at = self._add(sequence.next_token, sequence, logits=True)
        budget = self.chunk
        for sequence in self._running:
            if not sequence.reading or budget <= 0:
                continue
            end = min(len(sequence.prompt), sequence.read + budget)
            for index in range(sequence.read, end):
                last = index == len(sequence.prompt) - 1
                at = self._add(sequence.prompt[index], sequence, logits=last)
                if last:
                    sequence.logits_at = at
            budget -= end - sequence.read
            sequence.read = end
        status = llama_cpp.llama_decode(self._ctx, batch)
        if status != 0:
            # No room in the KV cells (1), or aborted: every sequence of this step fails.
            error = RuntimeError(f"llama_decode failed ({status})")
            for sequence in list(self._running):
                sequence.request.emit(("error", error))
                self._finish(sequence, None, keep_cache=False)
            return
        for sequence in list(self._running):
            if sequence.reading or sequence.logits_at < 0:
                continue
            self._sample(sequence)

    def _add(self, token: int, sequence: _Sequence, *, logits: bool) -> int:
        batch = self._batch
        i = batch.n_tokens
        batch.token[i] = token
        batch.pos[i] = sequence.pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = sequence.seq_id
        batch.logits[i] = logits
        batch.n_tokens = i + 1
        sequence.pos += 1
        self._cached[sequence.seq_id].append(token)
        return int(i)

    def _sample(self, sequence: _Sequence) -> None:
        token = llama_cpp.llama_sampler_sample(sequence.sampler, self._ctx, sequence.logits_at)
        llama_cpp.llama_sampler_accept(sequence.sampler, token)
        sequence.logits_at = -1
        request = sequence.request
        if llama_cpp.llama_vocab_is_eog(self._vocab, token) or (
            token in request.prompt.stop_tokens
        ):
            self._flush(sequence, sequence.text[sequence.sent :])
            self._finish(sequence, "stop")
            return
        sequence.generated.append(token)
        sequence.text += sequence.bytes.decode(self._piece(token))
        if self._stopped_by_string(sequence):
            return
        limit = request.max_tokens
        if limit is not None and len(sequence.generated) >= limit:
            self._flush(sequence, sequence.text[sequence.sent :] + sequence.bytes.decode(b"", True))
            self._finish(sequence, "length")
            return
        if sequence.pos >= self.ctx_size:
            self._flush(sequence, sequence.text[sequence.sent :])
            self._finish(sequence, "length")
            return
        sequence.next_token = token

    def _stopped_by_string(self, sequence: _Sequence) -> bool:
        """Send what is certain not to be the start of a stop string; end at a stop string."""
        stops = sequence.request.prompt.stop
        text = sequence.text
        for stop in stops:
            found = text.find(stop, max(0, sequence.sent - len(stop) + 1))
            if found >= 0:
                self._flush(sequence, text[sequence.sent : found])
                self._finish(sequence, "stop")
                return True
        hold = max((_overlap(text, stop) for stop in stops), default=0)
        self._flush(sequence, text[sequence.sent : len(text) - hold])
        return False

    def _flush(self, sequence: _Sequence, text: str) -> None:
        if text:
            sequence.sent += len(text)
            sequence.request.emit(("text", text))

    def _finish(self, sequence: _Sequence, reason: str | None, *, keep_cache: bool = True) -> None:
        self._running.remove(sequence)
        llama_cpp.llama_sampler_free(sequence.sampler)
        if not keep_cache:
            llama_cpp.llama_memory_seq_rm(self._memory, sequence.seq_id, -1, -1)
            self._cached[sequence.seq_id] = []
        self._free.append(sequence.seq_id)
        if reason is not None:
            sequence.request.emit(("done", reason, len(sequence.prompt), len(sequence.generated)))

    def _piece(self, token: int) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        size = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
        if size < 0:
            buffer = ctypes.create_string_buffer(-size)
            size = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, -size, 0, False)
        return buffer.raw[:size]

    def _sampler(self, request: Request) -> Any:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

        def add(sampler: Any) -> None:
            llama_cpp.llama_sampler_chain_add(chain, sampler)

        if (request.repeat_penalty, request.frequency_penalty, request.presence_penalty) != (
            1.0,
            0.0,
            0.0,
        ):
            add(
                llama_cpp.llama_sampler_init_penalties(
                    llama_cpp.llama_vocab_n_tokens(self._vocab),
                    _PENALTY_LAST_N,
                    request.repeat_penalty,
                    request.frequency_penalty,
                    request.presence_penalty,
                )
            )
        if request.temperature <= 0:
            add(llama_cpp.llama_sampler_init_greedy())
            return chain
        if request.top_k > 0:
            add(llama_cpp.llama_sampler_init_top_k(request.top_k))
        add(llama_cpp.llama_sampler_init_top_p(request.top_p, 1))
        add(llama_cpp.llama_sampler_init_min_p(request.min_p, 1))
        add(llama_cpp.llama_sampler_init_temp(request.temperature))
        seed = request.seed if request.seed is not None else uuid.uuid4().int & 0xFFFFFFFF
        add(llama_cpp.llama_sampler_init_dist(seed))
        return chain


def _common(a: list[int], b: list[int]) -> int:
    """Length of the common start of two token lists."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _overlap(text: str, stop: str) -> int:
    """Length of the longest end of `text` that begins `stop` (held back: it may become it)."""
    for size in range(min(len(stop) - 1, len(text)), 0, -1):
        if stop.startswith(text[-size:]):
            return size
    return 0


def formatter(
    model: _internals.LlamaModel, metadata: dict[str, str], chat_format: str | None
) -> llama_chat_format.ChatFormatter:
    """How messages become a prompt: the named format, else the GGUF's own template (as
    llama-cpp-python's `Llama` chooses), else llama-2's."""
    if chat_format is None and "tokenizer.chat_template" in metadata:
        chat_format = llama_chat_format.guess_chat_format_from_gguf_metadata(metadata)
        if chat_format is None:
            eos, bos = model.token_eos(), model.token_bos()
            return llama_chat_format.Jinja2ChatFormatter(
                template=metadata["tokenizer.chat_template"],
                eos_token=model.token_get_text(eos) if eos != -1 else "",
                bos_token=model.token_get_text(bos) if bos != -1 else "",
                stop_token_ids=[eos],
            )
    name = (chat_format or "llama-2").replace("-", "_").replace("llama_2", "llama2")
    found = getattr(llama_chat_format, f"format_{name}", None)
    if found is None:
        raise ValueError(f"unknown chat format {chat_format!r}")
    return found  # type: ignore[no-any-return]
