"""One llama context, every slot a sequence of one batch, one decode loop (llama-cpp-python's
low-level API).

Each step of the loop decodes one `llama_batch`: the next token of every running sequence plus
a bounded chunk of the prompts being read, so a long prompt never stalls the others for more
than one chunk. Each sequence samples with its own sampler chain. All of the worker's threads
serve the one batch, so a request alone runs at full speed. A finished sequence leaves its
tokens in its slot's KV cells: a later request whose prompt starts the same way (the next chat
turn) reuses them instead of reading them again. When another conversation needs the slot, the
finished sequence's state is saved to host memory first (`rbee.worker.prompt_cache`), and a
later request that starts the same way restores it into a free slot.

A request may carry a grammar (JSON output): its sequence samples as llama-server does, the
chain first and the grammar checking only the chosen token, the grammar over the whole
vocabulary only when that token breaks it. A request may ask for the log-probabilities of
its tokens (from the model's raw distribution, as llama-server's default). Several choices of
one prompt (`n`) are admitted together: the first reads the prompt, the others get a copy of
its KV cells and sample from the same logits.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import math
import queue
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import llama_cpp
import numpy as np
from llama_cpp import _internals, llama_chat_format
from llama_cpp._utils import suppress_stdout_stderr

from rbee.wire import PromptCacheStats
from rbee.wire.prefix import MAX_REPORTED
from rbee.worker.prompt_cache import Entry, RamCache, common

__all__ = ["Batcher", "Formatted", "Kind", "Logprob", "Request", "formatter"]

log = logging.getLogger(__name__)

Kind = Literal["chat", "completion"]
#: Prompt tokens read per step, over every sequence being admitted: the longest a running
#: stream waits for one token while a long prompt is read.
PROMPT_CHUNK = 128
_PENALTY_LAST_N = 64
#: The fewest tokens a finished sequence must hold for its state to be saved to RAM (and the
#: fewest more than a slot holds that a saved state must hold to be restored).
MIN_SAVED_TOKENS = 32
#: The most alternatives a token's log-probabilities list (OpenAI's bound for `top_logprobs`).
MAX_TOP_LOGPROBS = 20
_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


@dataclass(frozen=True)
class Logprob:
    """One generated token's log-probability and, when asked, its likeliest alternatives."""

    token: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()


@dataclass(frozen=True)
class Formatted:
    """A request made into tokens: its prompt, and what else ends it beyond max_tokens."""

    tokens: list[int]
    stop: list[str]
    stop_tokens: frozenset[int]


@dataclass
class Request:
    """One generation asked of the batcher; `emit` receives its events from the loop's thread:
    ("text", str, logprobs: list[Logprob] | None), ("done", finish_reason, prompt_tokens,
    completion_tokens, cached_tokens) or ("error", BaseException)."""

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
    #: GBNF the output must follow (None: free text).
    grammar: str | None = None
    #: Alternatives per token to report with its log-probability; None: no log-probabilities.
    logprobs: int | None = None
    #: The prompt's prefix hashes (`rbee.wire.prefix`): what its slot holds once it is read.
    prefixes: tuple[int, ...] = ()


class _Sampler:
    """A sequence's sampler chain and, for JSON output, its grammar."""

    def __init__(self, chain: Any, grammar: Any, vocab_size: int) -> None:
        self.chain = chain
        self.grammar = grammar
        self._vocab_size = vocab_size
        self._candidates = np.empty(vocab_size, dtype=_TOKEN_DATA) if grammar else None

    def sample(self, ctx: Any, at: int) -> int:
        """The next token from the logits at batch index `at`, accepted by every sampler."""
        if self.grammar is None:
            return int(llama_cpp.llama_sampler_sample(self.chain, ctx, at))  # accepts it too
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, at), (self._vocab_size,))
        token = self._choose(logits, grammar_first=False)
        if not self._allowed(token):
            token = self._choose(logits, grammar_first=True)
        llama_cpp.llama_sampler_accept(self.grammar, token)
        llama_cpp.llama_sampler_accept(self.chain, token)
        return token

    def _choose(self, logits: Any, *, grammar_first: bool) -> int:
        candidates = self._candidates
        assert candidates is not None
        candidates["id"] = np.arange(self._vocab_size, dtype=np.int32)
        candidates["logit"] = logits
        candidates["p"] = 0.0
        array = llama_cpp.llama_token_data_array(
            data=candidates.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)),
            size=self._vocab_size,
            selected=-1,
            sorted=False,
        )
        if grammar_first:
            llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(array))
        llama_cpp.llama_sampler_apply(self.chain, ctypes.byref(array))
        return int(array.data[array.selected].id)

    def _allowed(self, token: int) -> bool:
        """Whether the grammar lets `token` come next (it sets a refused token's logit to -inf)."""
        one = llama_cpp.llama_token_data(id=token, logit=1.0, p=0.0)
        array = llama_cpp.llama_token_data_array(
            data=ctypes.pointer(one), size=1, selected=-1, sorted=False
        )
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(array))
        return not math.isinf(one.logit)

    def free(self) -> None:
        llama_cpp.llama_sampler_free(self.chain)
        if self.grammar is not None:
            llama_cpp.llama_sampler_free(self.grammar)


class _Sequence:
    """A request running in slot `seq_id`. A further choice of another sequence's prompt
    (`follows` it) waits for that one to read the prompt, then starts from a copy of its cells."""

    def __init__(
        self,
        request: Request,
        seq_id: int,
        keep: int,
        sampler: _Sampler,
        follows: _Sequence | None = None,
    ) -> None:
        self.request = request
        self.seq_id = seq_id
        self.prompt = request.prompt.tokens
        self.read = keep  # prompt tokens already in the KV cells
        self.reused = keep  # of those, found in the cache
        self.pos = keep
        self.sampler = sampler
        self.follows = follows
        self.followers: list[_Sequence] = []
        self.logprobs: list[Logprob] = []
        self.generated: list[int] = []
        self.next_token: int | None = None
        self.logits_at = -1
        self.bytes = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.sent = 0

    @property
    def reading(self) -> bool:
        """Reading its prompt, or waiting for the sequence it follows to read it."""
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
        ram_budget: int = 0,
    ) -> None:
        """`ram_budget`: bytes of host memory for the states of finished sequences (0: none)."""
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
        #: The threads to decode with: the loop applies a change before its next step.
        self.threads = threads
        self._threads = threads
        params.kv_unified = False  # each sequence gets its own ctx_size cells
        with suppress_stdout_stderr(disable=log.isEnabledFor(logging.DEBUG)):
            self._ctx = llama_cpp.llama_init_from_model(model.model, params)
        if not self._ctx:
            raise RuntimeError("llama.cpp could not create the context")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(params.n_batch, 0, 1)
        self._vocab = model.vocab
        self._incoming: queue.SimpleQueue[list[Request] | None] = queue.SimpleQueue()
        self._cached: list[list[int]] = [[] for _ in range(slots)]  # tokens in each slot's KV
        self._prefixes: list[tuple[int, ...]] = [() for _ in range(slots)]  # and their hashes
        self._ram = RamCache(ram_budget)
        #: The prefix hashes the slots and the RAM cache hold (rebuilt by the loop's thread).
        self.prefixes: frozenset[int] = frozenset()
        self._free = list(range(slots))
        self._running: list[_Sequence] = []
        self._waiting: list[list[Request]] = []
        self.stats = PromptCacheStats(budget=ram_budget)
        self._thread = threading.Thread(target=self._loop, name="rbee-decode", daemon=True)
        self._thread.start()

    def submit(self, *choices: Request) -> None:
        """Queue the choices of one prompt (one for most requests); they start together as
        soon as as many slots are free."""
        if not 0 < len(choices) <= self.slots:
            raise ValueError(f"between 1 and {self.slots} choices at once")
        self._incoming.put(list(choices))

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
                    choices = self._incoming.get()
                    if choices is None:
                        return
                    self._waiting.append(choices)
                while True:
                    try:
                        choices = self._incoming.get_nowait()
                    except queue.Empty:
                        break
                    if choices is None:
                        return
                    self._waiting.append(choices)
                try:
                    if self.threads != self._threads:
                        self._threads = self.threads
                        llama_cpp.llama_set_n_threads(self._ctx, self._threads, self._threads)
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
        while self._waiting and len(self._free) >= len(self._waiting[0]):
            request, *others = self._waiting.pop(0)
            prompt = request.prompt.tokens
            if request.cancelled.is_set():
                for one in (request, *others):
                    one.emit(("done", "cancelled", len(prompt), 0, 0))
                continue
            if len(prompt) >= self.ctx_size:
                error = ValueError(
                    f"the prompt is {len(prompt)} tokens; this worker's context holds "
                    f"{self.ctx_size} per slot"
                )
                for one in (request, *others):
                    one.emit(("error", error))
                continue
            try:
                samplers = [self._sampler(one) for one in (request, *others)]
            except ValueError as exc:
                for one in (request, *others):
                    one.emit(("error", exc))
                continue
            seq_id, keep = self._slot_for(prompt)
            keep = min(keep, len(prompt) - 1)
            if not llama_cpp.llama_memory_seq_rm(self._memory, seq_id, keep, -1):
                # This cache cannot drop a tail (a recurrent model's state): start afresh.
                llama_cpp.llama_memory_seq_rm(self._memory, seq_id, -1, -1)
                keep = 0
            self._cached[seq_id] = prompt[:keep]
            self._prefixes[seq_id] = request.prefixes
            self.stats.prompt_tokens += len(prompt)
            if keep:
                self.stats.hits += 1
                self.stats.reused_tokens += keep
                log.debug("prompt cache seq=%d reused=%d of %d", seq_id, keep, len(prompt))
            else:
                self.stats.misses += 1
            leader = _Sequence(request, seq_id, keep, samplers[0])
            self._running.append(leader)
            for other, sampler in zip(others, samplers[1:], strict=True):
                slot = self._free.pop()
                self._save(slot, keep=0)
                llama_cpp.llama_memory_seq_rm(self._memory, slot, -1, -1)
                self._cached[slot] = []
                self._prefixes[slot] = ()
                follower = _Sequence(other, slot, 0, sampler, follows=leader)
                leader.followers.append(follower)
                self._running.append(follower)
            self._publish()

    def _slot_for(self, prompt: list[int]) -> tuple[int, int]:
        """Take the free slot for `prompt` and say how many of its first tokens the slot's
        cells hold: the slot that holds the longest start of it, or, when a state in RAM holds
        a start longer by `MIN_SAVED_TOKENS` at least, the slot that holds least with that
        state restored. What a slot held
        beyond what is kept is saved to RAM first."""
        seq_id = max(self._free, key=lambda s: common(self._cached[s], prompt))
        keep = common(self._cached[seq_id], prompt)
        entry, from_ram = self._ram.best(prompt)
        if entry is not None and from_ram >= keep + MIN_SAVED_TOKENS:
            seq_id = min(self._free, key=lambda s: len(self._cached[s]))
            keep = common(self._cached[seq_id], prompt)
            self._save(seq_id, keep)
            keep = from_ram if self._restore(entry, seq_id) else 0
        else:
            self._save(seq_id, keep)
        self._free.remove(seq_id)
        return seq_id, keep

    def _save(self, seq_id: int, keep: int) -> None:
        """Save slot `seq_id`'s state to RAM when what it holds is worth it and would be lost
        (most of it is not the `keep` tokens the next request reuses)."""
        tokens = self._cached[seq_id]
        if (
            not self._ram.budget
            or len(tokens) < MIN_SAVED_TOKENS
            or keep * 2 > len(tokens)
            or self._ram.covers(tokens)
        ):
            return
        size = llama_cpp.llama_state_seq_get_size(self._ctx, seq_id)
        if not 0 < size <= self._ram.budget:
            return
        state = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(self._ctx, state, size, seq_id) != size:
            return
        if self._ram.put(Entry(list(tokens), state, self._prefixes[seq_id])):
            self.stats.saved += 1

    def _restore(self, entry: Entry, seq_id: int) -> bool:
        """Load `entry`'s state into slot `seq_id` (False, the slot empty, when llama.cpp
        refuses it: a state of another shape is a miss)."""
        read = llama_cpp.llama_state_seq_set_data(self._ctx, entry.state, entry.size, seq_id)
        if read != entry.size:
            log.warning("prompt cache: a saved state did not restore (%d of %d)", read, entry.size)
            llama_cpp.llama_memory_seq_rm(self._memory, seq_id, -1, -1)
            self._cached[seq_id] = []
            return False
        self._ram.used(entry)
        self._cached[seq_id] = list(entry.tokens)
        self.stats.ram_hits += 1
        return True

    def _publish(self) -> None:
        """Refresh what the RAM cache and the slots hold, for heartbeats and `/health`."""
        stats, ram = self.stats, self._ram
        stats.entries, stats.bytes, stats.evictions = len(ram), ram.bytes, ram.evictions
        held: set[int] = set()
        for hashes in (*self._prefixes, *(entry.prefixes for entry in ram.newest_first())):
            if len(held) + len(hashes) > MAX_REPORTED:
                break
            held.update(hashes)
        self.prefixes = frozenset(held)

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
            if not sequence.reading or sequence.follows is not None or budget <= 0:
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
            self._start_followers(sequence)
            self._sample(sequence)

    def _start_followers(self, leader: _Sequence) -> None:
        """`leader` has read its prompt: its followers start from a copy of its cells (made
        before the next decode) and sample from its logits."""
        for follower in leader.followers:
            llama_cpp.llama_memory_seq_cp(self._memory, leader.seq_id, follower.seq_id, -1, -1)
            self._cached[follower.seq_id] = list(self._cached[leader.seq_id])
            self._prefixes[follower.seq_id] = self._prefixes[leader.seq_id]
            follower.read = follower.pos = leader.pos
            follower.reused = leader.reused
            follower.logits_at = leader.logits_at
            follower.follows = None
        leader.followers = []

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
        at, sequence.logits_at = sequence.logits_at, -1
        token = sequence.sampler.sample(self._ctx, at)
        request = sequence.request
        if llama_cpp.llama_vocab_is_eog(self._vocab, token) or (
            token in request.prompt.stop_tokens
        ):
            self._flush(sequence, sequence.text[sequence.sent :], final=True)
            self._finish(sequence, "stop")
            return
        if request.logprobs is not None:
            sequence.logprobs.append(self._logprob(at, token, request.logprobs))
        sequence.generated.append(token)
        sequence.text += sequence.bytes.decode(self._piece(token))
        if self._stopped_by_string(sequence):
            return
        limit = request.max_tokens
        if limit is not None and len(sequence.generated) >= limit:
            rest = sequence.text[sequence.sent :] + sequence.bytes.decode(b"", True)
            self._flush(sequence, rest, final=True)
            self._finish(sequence, "length")
            return
        if sequence.pos >= self.ctx_size:
            self._flush(sequence, sequence.text[sequence.sent :], final=True)
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

    def _flush(self, sequence: _Sequence, text: str, *, final: bool = False) -> None:
        """Send `text` with the log-probabilities of the tokens generated since the last (on
        the `final` flush, those of tokens whose text was held back too)."""
        if text or (final and sequence.logprobs):
            sequence.sent += len(text)
            logprobs = sequence.logprobs if sequence.request.logprobs is not None else None
            sequence.logprobs = []
            sequence.request.emit(("text", text, logprobs))

    def _finish(self, sequence: _Sequence, reason: str | None, *, keep_cache: bool = True) -> None:
        self._running.remove(sequence)
        sequence.sampler.free()
        if not keep_cache:
            llama_cpp.llama_memory_seq_rm(self._memory, sequence.seq_id, -1, -1)
            self._cached[sequence.seq_id] = []
            self._prefixes[sequence.seq_id] = ()
            self._publish()
        self._free.append(sequence.seq_id)
        if reason is not None:
            done = (reason, len(sequence.prompt), len(sequence.generated), sequence.reused)
            sequence.request.emit(("done", *done))

    def _piece(self, token: int) -> bytes:
        buffer = ctypes.create_string_buffer(64)
        size = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
        if size < 0:
            buffer = ctypes.create_string_buffer(-size)
            size = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, -size, 0, False)
        return buffer.raw[:size]

    def _logprob(self, at: int, token: int, top: int) -> Logprob:
        """`token`'s log-probability in the raw distribution at batch index `at`, and the `top`
        likeliest tokens' (llama-server reports the same, before any sampler)."""
        size = llama_cpp.llama_vocab_n_tokens(self._vocab)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, at), (size,))
        peak = float(logits.max())
        norm = peak + math.log(float(np.exp(logits - peak).sum()))
        best: tuple[tuple[bytes, float], ...] = ()
        if top:
            ids = np.argpartition(-logits, top)[:top]
            ids = ids[np.argsort(-logits[ids])]
            best = tuple((self._piece(int(i)), float(logits[i]) - norm) for i in ids)
        return Logprob(self._piece(token), float(logits[token]) - norm, best)

    def _sampler(self, request: Request) -> _Sampler:
        grammar = None
        if request.grammar is not None:
            grammar = llama_cpp.llama_sampler_init_grammar(
                self._vocab, request.grammar.encode(), b"root"
            )
            if not grammar:
                raise ValueError("the output's grammar cannot be parsed")
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        size = llama_cpp.llama_vocab_n_tokens(self._vocab)

        def add(sampler: Any) -> None:
            llama_cpp.llama_sampler_chain_add(chain, sampler)

        if (request.repeat_penalty, request.frequency_penalty, request.presence_penalty) != (
            1.0,
            0.0,
            0.0,
        ):
            add(
                llama_cpp.llama_sampler_init_penalties(
                    size,
                    _PENALTY_LAST_N,
                    request.repeat_penalty,
                    request.frequency_penalty,
                    request.presence_penalty,
                )
            )
        if request.temperature <= 0:
            add(llama_cpp.llama_sampler_init_greedy())
            return _Sampler(chain, grammar, size)
        if request.top_k > 0:
            add(llama_cpp.llama_sampler_init_top_k(request.top_k))
        add(llama_cpp.llama_sampler_init_top_p(request.top_p, 1))
        add(llama_cpp.llama_sampler_init_min_p(request.min_p, 1))
        add(llama_cpp.llama_sampler_init_temp(request.temperature))
        seed = request.seed if request.seed is not None else uuid.uuid4().int & 0xFFFFFFFF
        add(llama_cpp.llama_sampler_init_dist(seed))
        return _Sampler(chain, grammar, size)


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
