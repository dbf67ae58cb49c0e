"""Slots over llama-cpp-python: N contexts of one GGUF, each running one sequence in a thread.

The weights are mmapped once and shared by every context; llama-cpp releases the GIL while it
evaluates, so N threads generate in parallel. Chunks cross from a slot's thread to the event
loop one at a time, as llama-cpp yields them: nothing buffers a whole answer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar

import llama_cpp

from rbee.wire import WorkerArgs

__all__ = ["Engine", "Generation", "Kind", "chat_format_for", "placement", "threads_per_slot"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

Kind = Literal["chat", "completion"]

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


def threads_per_slot(threads: int | None, slots: int) -> int:
    """`--threads` when given, else the machine's cores shared evenly between the slots."""
    if threads is not None:
        return max(1, threads)
    return max(1, (os.cpu_count() or 1) // slots)


class _Cancelled:
    """A llama-cpp stopping criterion: true once the current request has been cancelled.

    Each request brings its own event, so a late `cancel()` from a finished request can never
    stop the next request on the same slot.
    """

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, input_ids: Any, logits: Any) -> bool:
        return self.event.is_set()


class _Context(llama_cpp.Llama):
    """One slot's llama context and the one thread that runs its requests, in turn.

    Every completion stops between tokens when cancelled: the chat handlers call
    `create_completion` without passing a caller's stopping criteria through, so the cancel
    check is added here, where both chat and plain completions pass. The thread lives as long
    as the slot, so a request starts without a new thread (or a new OpenMP team for llama.cpp).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cancelled = _Cancelled()
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, job: Callable[[], None]) -> None:
        """Run `job` on this slot's thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="rbee-slot", daemon=True)
            self._thread.start()
        self._jobs.put(job)

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            try:
                job()
            except Exception:
                log.exception("a slot's job failed")

    def create_completion(self, *args: Any, **kwargs: Any) -> Any:
        criteria = llama_cpp.StoppingCriteriaList([self.cancelled])
        criteria.extend(kwargs.get("stopping_criteria") or [])
        kwargs["stopping_criteria"] = criteria
        return super().create_completion(*args, **kwargs)


_END = object()


class Generation:
    """One request running on one slot: iterate it for its chunks (stream) or its one answer."""

    def __init__(self, cancel: threading.Event, loop: asyncio.AbstractEventLoop) -> None:
        self._cancel = cancel
        self._loop = loop
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._finished = False

    def push(self, item: object) -> None:
        """Hand a chunk, the end marker or an exception over from the slot's thread."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def cancel(self) -> None:
        """Stop generating after the current token (a no-op once finished)."""
        self._cancel.set()

    def __aiter__(self) -> Generation:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _END:
            self._finished = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._finished = True
            raise item
        assert isinstance(item, dict)
        return item


class Engine:
    """N llama contexts of one GGUF, handed out one request at a time, first come first served."""

    def __init__(self, config: WorkerArgs, on_change: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self._on_change = on_change
        self._free: asyncio.Queue[_Context] = asyncio.Queue()
        self._contexts: list[_Context] = []
        self._busy = 0
        self.loaded = False

    @property
    def slots_total(self) -> int:
        """Slots this worker serves (the configured count, loaded or not)."""
        return self.config.slots

    @property
    def slots_busy(self) -> int:
        """Slots running a request right now."""
        return self._busy

    async def load(self) -> None:
        """Load every context in a daemon thread (a stuck load must not hold up exit)."""
        self._contexts = await _in_daemon_thread(self._load_contexts, name="rbee-load")
        for context in self._contexts:
            self._free.put_nowait(context)
        self.loaded = True
        self._on_change()

    def _load_contexts(self) -> list[_Context]:
        config = self.config
        threads = threads_per_slot(config.threads, config.slots)
        kwargs: dict[str, Any] = {
            "model_path": config.model_path,
            "n_ctx": config.ctx_size,
            "n_threads": threads,
            "n_threads_batch": threads,
            **placement(config.device),
            "verbose": False,
        }
        first = _Context(**kwargs)
        chat_format = chat_format_for(first.metadata, config.chat_format)
        if chat_format is not None:
            first.chat_format = chat_format
            kwargs["chat_format"] = chat_format
        contexts = [first] + [_Context(**kwargs) for _ in range(config.slots - 1)]
        log.info(
            "loaded model=%s slots=%d threads_per_slot=%d chat_format=%s",
            config.model,
            config.slots,
            threads,
            first.chat_format,
        )
        return contexts

    async def start(self, kind: Kind, params: dict[str, Any], *, stream: bool) -> Generation:
        """Wait for a free slot, then start generating on that slot's thread."""
        context = await self._free.get()
        cancel = context.cancelled.event = threading.Event()
        self._busy += 1
        self._on_change()
        loop = asyncio.get_running_loop()
        generation = Generation(cancel, loop)
        put = generation.push
        args = {**params, "model": self.config.model, "stream": stream}

        def run() -> None:
            try:
                output: Any
                if kind == "chat":
                    output = context.create_chat_completion(**args)
                else:
                    output = context.create_completion(**args)
                if stream:
                    for chunk in output:
                        put(chunk)
                        if cancel.is_set():
                            break
                else:
                    put(output)
                put(_END)
            except Exception as exc:
                put(exc)
            finally:
                loop.call_soon_threadsafe(self._release, context)

        context.submit(_quiet_after_loop_closed(run))
        return generation

    def _release(self, context: _Context) -> None:
        self._busy -= 1
        self._free.put_nowait(context)
        self._on_change()

    def cancel_all(self) -> None:
        """Stop every running generation (shutdown)."""
        for context in self._contexts:
            context.cancelled.event.set()


def placement(device: str) -> dict[str, Any]:
    """llama-cpp's placement for a `--device` such as cpu, cuda:1 or metal.

    On a GPU every layer is offloaded to that one GPU (no split across GPUs). A hive pins a
    `cuda:N` worker with CUDA_VISIBLE_DEVICES=N, so its GPU is the only one it sees: index 0.
    """
    if device == "cpu":
        return {"n_gpu_layers": 0}
    _, _, index = device.partition(":")
    pinned = "CUDA_VISIBLE_DEVICES" in os.environ
    main_gpu = 0 if pinned or not index.isdigit() else int(index)
    return {
        "n_gpu_layers": -1,
        "main_gpu": main_gpu,
        "split_mode": llama_cpp.LLAMA_SPLIT_MODE_NONE,
    }


def _quiet_after_loop_closed(work: Callable[[], None]) -> Callable[[], None]:
    """A thread body that ends silently when the event loop it reports to has closed."""

    def body() -> None:
        try:
            work()
        except RuntimeError:
            log.debug("event loop closed before a slot thread finished")

    return body


async def _in_daemon_thread(work: Callable[[], _T], *, name: str) -> _T:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def deliver(result: _T | BaseException) -> None:
        if future.done():
            return
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

    def body() -> None:
        outcome: _T | BaseException
        try:
            outcome = work()
        except BaseException as exc:
            outcome = exc
        loop.call_soon_threadsafe(deliver, outcome)

    threading.Thread(target=_quiet_after_loop_closed(body), name=name, daemon=True).start()
    return await future
