"""The worker's engine for an embedding or rerank GGUF: one llama context with embeddings on and
the GGUF's own pooling, and one thread that reads every input in batched decodes.

One thread owns the model from load to exit (it loads it, makes the context, serves, and frees
both), so the context never crosses threads and a stuck load cannot hold up the exit. Each
decode packs the inputs waiting, from every request, as sequences of one batch (one seq id
each, up to `n_batch` tokens and `SEQUENCES` sequences): a list of 16 short inputs is one
decode, and requests that arrive together share decodes. `n_ubatch == n_batch`, because a
model whose attention is not causal must see a whole input in one ubatch.

Vectors are L2-normalised, as llama-server's `/v1/embeddings` does; a reranker's row is its
classifier's raw score, as llama-server's `/v1/rerank` gives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import llama_cpp
import numpy as np
from llama_cpp import _internals
from llama_cpp._utils import suppress_stdout_stderr

from rbee.catalog.gguf import GgufError, read_facts
from rbee.wire import Purpose, WorkerArgs
from rbee.worker.engine import open_model, reporter, worker_threads

__all__ = [
    "MAX_INPUTS",
    "MAX_TOKENS",
    "BadInput",
    "EmbedStats",
    "Embedded",
    "Embedder",
    "model_purpose",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Inputs (or documents) per request at most: OpenAI's bound for `/v1/embeddings`.
MAX_INPUTS = 2048
#: Tokens per request at most, summed over its inputs: OpenAI's bound too.
MAX_TOKENS = 300_000
#: Tokens one decode reads at least (more when one input may be longer).
BATCH_TOKENS = 2048
#: Sequences one decode reads at most.
SEQUENCES = 64
#: Characters (or token ids) a request may have for its inputs to be tokenized on the event
#: loop (tens of microseconds) rather than in a thread.
_INLINE_TOKENIZE = 4096


class BadInput(ValueError):
    """An input the model cannot read; `index` says which (the route names it)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


@dataclass(frozen=True)
class Embedded:
    """A request's answer: a row per input, in order (a unit vector, or a reranker's score as
    a row of one), and the tokens read."""

    rows: list[np.ndarray]
    prompt_tokens: int


@dataclass
class EmbedStats:
    """Counters of the decode loop, for /health and tests: how well inputs are batched."""

    inputs: int = 0
    tokens: int = 0
    decodes: int = 0


@dataclass
class _Job:
    """One request's inputs in the decode loop; `deliver` gets its `Embedded` or an error
    (from the loop's thread)."""

    inputs: list[list[int]]
    deliver: Callable[[Embedded | BaseException], None]
    cancelled: threading.Event
    rows: list[np.ndarray | None] = field(default_factory=list)
    left: int = 0
    failed: bool = False

    def __post_init__(self) -> None:
        self.rows = [None] * len(self.inputs)
        self.left = len(self.inputs)


class Embedder:
    """One embedding or rerank model; `config.slots` requests at once, their inputs batched."""

    def __init__(
        self, config: WorkerArgs, purpose: Purpose, on_change: Callable[[], None] = lambda: None
    ) -> None:
        self.config = config
        self.purpose = purpose
        self._on_change = on_change
        self._requests = asyncio.Semaphore(config.slots)
        self._busy = 0
        self._incoming: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._model: _internals.LlamaModel | None = None
        # Set by the decode thread as it loads the model.
        self._n_batch = 0
        self._rank = False  # the rows are scores (rank pooling), not vectors
        self._width = 0  # floats per row
        self._memory: Any = None  # a causal model's KV cells; None for an encoder
        #: Tokens of one input at most: the context, within the positions the model has.
        self.input_tokens = 0
        self.loaded = False
        self.stats = EmbedStats()

    @property
    def slots_total(self) -> int:
        """Requests this worker serves at once (the configured count)."""
        return self.config.slots

    @property
    def slots_busy(self) -> int:
        """Requests being served right now."""
        return self._busy

    async def load(self) -> None:
        """Start the decode thread; returns once it has loaded the model (or raises why not)."""
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._thread = threading.Thread(
            target=self._serve, args=(reporter(ready),), name="rbee-embed", daemon=True
        )
        self._thread.start()
        await ready
        self.loaded = True
        self._on_change()

    async def embed(self, inputs: Sequence[str | list[int]]) -> Embedded:
        """The vectors of `inputs` (texts, or token ids as they are); BadInput names one the
        model cannot read, ValueError a request too large."""
        size = sum(len(given) for given in inputs)
        return await self._run(lambda: self._tokenize(inputs), size)

    async def rerank(self, query: str, documents: Sequence[str]) -> Embedded:
        """Each document's relevance to `query` (a row of one score each), the pair joined as
        llama-server joins it (`format_prompt_rerank`)."""
        size = len(query) * len(documents) + sum(len(document) for document in documents)
        return await self._run(lambda: self._pairs(query, documents), size)

    def close(self, timeout: float) -> None:
        """Shutdown: stop the decode thread, which frees the context and the model while the
        process is whole; one still busy after `timeout` s is left to the exit."""
        self._incoming.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    async def _run(self, tokenize: Callable[[], list[list[int]]], size: int) -> Embedded:
        """Read the inputs `tokenize` makes (`size` characters or tokens in all)."""
        await self._requests.acquire()
        self._busy += 1
        self._on_change()
        cancelled = threading.Event()
        try:
            # Tokenized in a thread, for 2048 inputs must not stall the event loop; a few
            # sentences at once: the hop to a thread would cost more than they do.
            inputs = tokenize() if size <= _INLINE_TOKENIZE else await asyncio.to_thread(tokenize)
            answer: asyncio.Future[Embedded] = asyncio.get_running_loop().create_future()
            self._incoming.put(_Job(inputs, reporter(answer), cancelled))
            return await answer
        finally:
            cancelled.set()  # a request that is gone stops being read after this decode
            self._busy -= 1
            self._requests.release()
            self._on_change()

    # Tokenizing, in a worker thread (the vocabulary is read-only: safe beside the decodes).

    def _tokenize(self, inputs: Sequence[str | list[int]]) -> list[list[int]]:
        model = self._model
        assert model is not None
        vocabulary = model.n_vocab()
        tokenized: list[list[int]] = []
        total = 0
        for index, given in enumerate(inputs):
            if isinstance(given, str):
                # Special tokens added as the model asks (BERT's [CLS] … [SEP]), as llama-server.
                tokens = model.tokenize(given.encode(), True, True)
            else:
                tokens = given
                unknown = next((t for t in tokens if not 0 <= t < vocabulary), None)
                if unknown is not None:
                    raise BadInput(
                        index, f"token {unknown} is not in the vocabulary (0 to {vocabulary - 1})"
                    )
            total += self._bounded(index, len(tokens), total)
            tokenized.append(tokens)
        return tokenized

    def _pairs(self, query: str, documents: Sequence[str]) -> list[list[int]]:
        model = self._model
        assert model is not None
        vocab = model.vocab
        template = llama_cpp.llama_model_chat_template(model.model, b"rerank")
        if template is not None:  # the GGUF says how (Qwen3-Reranker and kin)
            prompts = [
                template.decode().replace("{query}", query).replace("{document}", document)
                for document in documents
            ]
            pairs = [model.tokenize(prompt.encode(), False, True) for prompt in prompts]
        else:  # [BOS] query [EOS] [SEP] document [EOS], each if the vocabulary adds it
            eos = llama_cpp.llama_vocab_eos(vocab)
            if eos == llama_cpp.LLAMA_TOKEN_NULL:
                eos = llama_cpp.llama_vocab_sep(vocab)
            bos = _if(llama_cpp.llama_vocab_get_add_bos(vocab), llama_cpp.llama_vocab_bos(vocab))
            end = _if(llama_cpp.llama_vocab_get_add_eos(vocab), eos)
            sep = _if(llama_cpp.llama_vocab_get_add_sep(vocab), llama_cpp.llama_vocab_sep(vocab))
            head = bos + model.tokenize(query.encode(), False, False) + end + sep
            pairs = [head + model.tokenize(d.encode(), False, False) + end for d in documents]
        total = 0
        for index, tokens in enumerate(pairs):
            total += self._bounded(index, len(tokens), total)
        return pairs

    def _bounded(self, index: int, count: int, before: int) -> int:
        """`count`, the tokens of input `index`, if it fits one input and the request's total."""
        if count == 0:
            raise BadInput(index, "empty: there is nothing to read")
        if count > self.input_tokens:
            raise BadInput(
                index,
                f"{count} tokens, more than the {self.input_tokens} this model reads per input",
            )
        if before + count > MAX_TOKENS:
            raise BadInput(
                index, f"the request passes {MAX_TOKENS} tokens here: send fewer or shorter inputs"
            )
        return count

    # The decode thread from here on.

    def _serve(self, ready: Callable[[BaseException | None], None]) -> None:
        try:
            model, ctx = self._open()
        except Exception as exc:
            ready(exc)
            return
        batch = llama_cpp.llama_batch_init(self._n_batch, 0, 1)
        try:
            ready(None)
            self._loop(ctx, batch)
        finally:
            llama_cpp.llama_batch_free(batch)
            llama_cpp.llama_free(ctx)
            model.close()  # type: ignore[no-untyped-call]

    def _open(self) -> tuple[_internals.LlamaModel, Any]:
        config = self.config
        model = open_model(config)
        trained = model.n_ctx_train()
        # Position embeddings end at the trained context: no input may go past it.
        self.input_tokens = min(config.ctx_size, trained) if trained > 0 else config.ctx_size
        self._n_batch = max(self.input_tokens, BATCH_TOKENS)
        threads = worker_threads(config)
        context = llama_cpp.llama_context_default_params()
        context.n_ctx = self._n_batch
        context.n_batch = context.n_ubatch = self._n_batch
        context.n_seq_max = SEQUENCES
        context.kv_unified = True  # a causal model's cells are cleared after every decode
        context.embeddings = True
        context.n_threads = context.n_threads_batch = threads
        with suppress_stdout_stderr(disable=log.isEnabledFor(logging.DEBUG)):
            ctx = llama_cpp.llama_init_from_model(model.model, context)
        if not ctx:
            model.close()  # type: ignore[no-untyped-call]
            raise RuntimeError("llama.cpp could not create the embedding context")
        pooling = llama_cpp.llama_pooling_type(ctx)
        if pooling == llama_cpp.LLAMA_POOLING_TYPE_NONE:
            llama_cpp.llama_free(ctx)
            model.close()  # type: ignore[no-untyped-call]
            raise RuntimeError(
                "the GGUF pools no vectors (pooling type none): it gives a vector per token, "
                "which /v1/embeddings does not serve"
            )
        self._rank = pooling == llama_cpp.LLAMA_POOLING_TYPE_RANK
        self._width = (
            llama_cpp.llama_model_n_cls_out(model.model)
            if self._rank
            else llama_cpp.llama_model_n_embd_out(model.model)
        )
        self._memory = llama_cpp.llama_get_memory(ctx)  # None for an encoder (BERT): no cache
        self._model = model
        log.info(
            "loaded model=%s purpose=%s pooling=%d input_tokens=%d batch_tokens=%d threads=%d",
            config.model, self.purpose, pooling, self.input_tokens, self._n_batch, threads,
        )  # fmt: skip
        return model, ctx

    def _loop(self, ctx: Any, batch: Any) -> None:
        pending: deque[tuple[_Job, int]] = deque()
        try:
            while True:
                # Every request that came during the last decode joins the next one.
                waiting = [] if pending else [self._incoming.get()]
                with contextlib.suppress(queue.Empty):
                    while True:
                        waiting.append(self._incoming.get_nowait())
                for job in waiting:
                    if job is not None:
                        pending.extend((job, index) for index in range(len(job.inputs)))
                if None in waiting:
                    return
                self._step(ctx, batch, pending)
        finally:
            stopping = RuntimeError("the worker is stopping")
            for job in {id(job): job for job, _ in pending}.values():
                job.deliver(stopping)

    def _step(self, ctx: Any, batch: Any, pending: deque[tuple[_Job, int]]) -> None:
        """One decode of the inputs at the head of `pending`, as many as fit."""
        taken: list[tuple[_Job, int]] = []
        batch.n_tokens = 0
        while pending and len(taken) < SEQUENCES:
            job, index = pending[0]
            tokens = job.inputs[index]
            if job.cancelled.is_set() or job.failed:
                pending.popleft()
                continue
            if taken and batch.n_tokens + len(tokens) > self._n_batch:
                break
            pending.popleft()
            self._add(batch, tokens, len(taken))
            taken.append((job, index))
        if not taken:
            return
        try:
            if self._memory:
                status = llama_cpp.llama_decode(ctx, batch)
                llama_cpp.llama_memory_clear(self._memory, True)
            else:
                status = llama_cpp.llama_encode(ctx, batch)
            if status != 0:
                raise RuntimeError(f"llama.cpp failed to read the batch ({status})")
            self.stats.decodes += 1
            for seq_id, (job, index) in enumerate(taken):
                self._collect(ctx, job, index, seq_id)
        except Exception as exc:  # a failure fails its requests, never the loop
            log.exception("embedding decode failed")
            for job, _ in taken:
                if not job.failed:
                    job.failed = True
                    job.deliver(exc)

    def _add(self, batch: Any, tokens: list[int], seq_id: int) -> None:
        start = batch.n_tokens
        for position, token in enumerate(tokens):
            i = start + position
            batch.token[i] = token
            batch.pos[i] = position
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq_id
            batch.logits[i] = True  # every token is pooled
        batch.n_tokens = start + len(tokens)

    def _collect(self, ctx: Any, job: _Job, index: int, seq_id: int) -> None:
        pointer = llama_cpp.llama_get_embeddings_seq(ctx, seq_id)
        if not pointer:
            raise RuntimeError(f"llama.cpp pooled no vector for sequence {seq_id}")
        values = ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float))
        row = np.ctypeslib.as_array(values, shape=(self._width,)).copy()
        if not self._rank:
            norm = float(np.linalg.norm(row))
            row = row / norm if norm > 0 else np.zeros_like(row)  # llama.cpp's zero for zero
        job.rows[index] = row
        job.left -= 1
        self.stats.inputs += 1
        self.stats.tokens += len(job.inputs[index])
        if job.left == 0 and not job.failed:
            rows = [r for r in job.rows if r is not None]
            job.deliver(Embedded(rows, sum(len(tokens) for tokens in job.inputs)))


def _if(added: bool, token: int) -> list[int]:
    """`[token]` where the vocabulary asks for it, else nothing."""
    return [token] if added else []


def model_purpose(path: str) -> Purpose:
    """What the GGUF at `path` is for, from its header; "chat" when the header cannot be read
    (the chat engine's load then fails with llama.cpp's own reason)."""
    try:
        purpose = read_facts(Path(path)).purpose
    except (OSError, GgufError) as exc:
        log.warning("cannot read the GGUF header path=%s error=%s", path, exc)
        return "chat"
    return purpose or "chat"
