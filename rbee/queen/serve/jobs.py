"""Jobs: OpenAI requests the queen runs on its own, followed by id (`/v1/jobs`).

Order. Each model has a queue of jobs: interactive ones before batch ones, first come first
served within each. One dispatcher per model waits for a worker slot for the job at the head,
through the same admission as every OpenAI request (an interactive job waits among them, a
batch job behind them all), starts it, and takes the next. A job that comes in ahead of the
one waiting (interactive before batch) or a cancelled head is seen at once.

Running. A job calls its worker as the relay does (`Calls.attempt`: the same loop, connections,
timeouts, backoff, retry count and failure bookkeeping). A chat or completion job is always
streamed: its events are the worker's chunks. An embedding job asks `/v1/embeddings` for one
answer, which becomes its result (its vectors and usage; an answer over `MAX_EMBEDDINGS_BYTES`
fails the job). Before the worker's first byte, a failure sends it to another worker
(`serving.attempts` in all); after it, the job fails (the chunks already went to its readers).
A key's `tpm` is charged a chat or completion job's answer tokens, an embedding job's input
tokens.

Idempotency. A job sent with an `Idempotency-Key` is its owner's only job with that key: the
same request sent again (its answer was lost) gets the first job back instead of a second one,
and another request with that key is refused (`IdempotencyConflict`). The key lives as long as
the job's row.

Durability. Every job is written to its store (`JobStore`: the queen's SQLite, given by the
app) before its id is answered, and at each change of
state; the update that ends it stores its one result. A queen that starts takes over the jobs
its predecessor left: queued ones in their order, and those that were running are run again
from the start, because their result was never stored (the rule: a job running when its queen
died runs once more, and its `runs` says 2). Interactive jobs are kept as well as batch ones:
a write per change of state costs little next to a generation, and a job id once answered is
never lost.

Events. A job's events stay in memory while it lives, so a reader gets them from the start;
the last `ENDED_KEPT` ended jobs keep them too (fewer when their end events, an embedding
job's vectors, pass `ENDED_KEPT_BYTES`). Later (or after a restart) a reader gets only the
end. Results are the text and a token count, never the chunks (an embedding job's, its
vectors); ended jobs are deleted after `RETENTION_S`, and beyond the newest `KEEP_ENDED`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from rbee.config.models import Serving
from rbee.queen.serve.admission import Admission, NoWorker, QueueFull, QueueTimeout
from rbee.queen.serve.calls import AttemptFailed, Calls, Exhausted
from rbee.queen.serve.upstream import Connection, UpstreamClosed, UpstreamTimeout
from rbee.queen.serve.worker import WorkerRecord
from rbee.wire import sse
from rbee.wire.jobs import (
    ENDED,
    EmbeddingResult,
    JobAssigned,
    JobChunk,
    JobDone,
    JobError,
    JobFirstToken,
    JobPosition,
    JobQueued,
    JobRecord,
    JobResult,
    JobState,
    Priority,
    SubmitJob,
    chunk_text,
)

__all__ = [
    "IdempotencyConflict",
    "JobEnded",
    "JobRow",
    "JobStore",
    "Jobs",
    "JobsFull",
    "NoSuchJob",
    "UnknownModel",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: Jobs queued or running at most; more are refused (503) until some end.
MAX_LIVE = 10_000
#: Ended jobs whose events stay in memory for late readers, and the bytes their end events
#: may hold together (an embedding job's vectors); the oldest go first.
ENDED_KEPT = 256
ENDED_KEPT_BYTES = 64 * 1024 * 1024
#: An embedding job's answer at most (2048 vectors of 1536 floats in base64, of 384 written
#: out as JSON): a result is stored whole, in SQLite and in memory. More fails the job.
MAX_EMBEDDINGS_BYTES = 32 * 1024 * 1024
#: Ended jobs are deleted after this long, and beyond the newest KEEP_ENDED.
RETENTION_S = 24 * 3600.0
KEEP_ENDED = 10_000
PRUNE_EVERY_S = 600.0
#: How long the head job waits in admission before it asks again: it stays first among the
#: jobs, but plain requests that came meanwhile go before it.
_TURN_S = 60.0
#: How long a head job waits before it asks again when no worker serves its model yet.
_NO_WORKER_S = 0.5
_PATHS = {
    "chat": b"/v1/chat/completions",
    "completion": b"/v1/completions",
    "embedding": b"/v1/embeddings",
}
_SSE_END = b"\n\n"


@dataclass(frozen=True)
class JobRow:
    """A job's record and the OpenAI body it runs, as stored."""

    record: JobRecord
    body: dict[str, Any]


class JobStore(Protocol):
    """Where jobs last (`rbee.queen.control.job_table.JobTable`, the queen's SQLite). The
    methods block: the event loop runs each with `call`, in the order asked."""

    async def call(self, method: Callable[..., _T], *args: Any) -> _T:
        """`method(*args)` off the event loop, once the writes asked for before it ran."""
        ...

    def insert(
        self, record: JobRecord, body: dict[str, Any], idempotency_key: str | None = None
    ) -> JobRow | None:
        """Write a new job; the owner's earlier job with `idempotency_key` instead, if any."""
        ...

    def keyed(self, owner: str | None, idempotency_key: str) -> JobRow | None: ...

    def started(self, record: JobRecord) -> None: ...

    def ended(self, record: JobRecord) -> bool: ...

    def get(self, job_id: str) -> JobRecord | None: ...

    def recent(
        self, state: JobState | None, limit: int, owner: str | None = None
    ) -> list[JobRecord]: ...

    def unfinished(self) -> list[JobRow]: ...

    def prune(self, finished_before: float, keep: int) -> int: ...

    def close(self) -> None: ...


class NoSuchJob(Exception):
    """No job has this id (or it was pruned)."""


class JobEnded(Exception):
    """The job has ended already: it cannot be cancelled."""

    def __init__(self, record: JobRecord) -> None:
        super().__init__(f"job {record.job_id} has ended already ({record.state})")
        self.record = record


class JobsFull(Exception):
    """`MAX_LIVE` jobs are queued or running."""


class UnknownModel(Exception):
    """No deployment declares the model and no worker serves it."""


class IdempotencyConflict(Exception):
    """An `Idempotency-Key` sent again with another request than its job's."""

    def __init__(self, idempotency_key: str, job_id: str) -> None:
        super().__init__(
            f"the Idempotency-Key {idempotency_key!r} was sent for job {job_id} with another "
            "request: send the same request to get that job again, or a new key for a new job"
        )


class _Failed(Exception):
    """The job failed; its message says why."""


class _Feed:
    """A job's events so far, as SSE bytes, and a way to wait for what comes next."""

    def __init__(self) -> None:
        self.events: list[bytes] = []
        self.ended = False  # its last event is in
        self._changed: asyncio.Event | None = None

    def push(self, event: BaseModel, *, last: bool = False) -> None:
        self.append(_encode(event), last=last)

    def append(self, event: bytes, *, last: bool = False) -> None:
        """Add an event already written as SSE bytes."""
        self.events.append(event)
        self.ended = last
        self.poke()

    def poke(self) -> None:
        """Wake its readers (a new event, or the job's place in the queue moved)."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait(self) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        await self._changed.wait()


@dataclass(eq=False)
class _Job:
    record: JobRecord
    body: dict[str, Any]  # the OpenAI body, without `priority` and `stream`
    feed: _Feed = field(default_factory=_Feed)
    queued_at_position: int = 0  # what its `queued` event said
    task: asyncio.Task[None] | None = None
    slot: WorkerRecord | None = None  # the dispatcher's slot, until its run takes it over
    assigned_at: float = 0.0
    # Takes the tokens of its answer from its key's `tpm` (in memory: a job that a restarted
    # queen runs again is not charged twice).
    spend: Callable[[int], None] | None = None
    kept_bytes: int = 0  # its end event's, once it ended


class _Queue:
    """One model's jobs waiting for a slot: interactive ones first, FIFO within each."""

    def __init__(self) -> None:
        self._interactive: deque[_Job] = deque()
        self._batch: deque[_Job] = deque()
        self.moved = asyncio.Event()  # the head changed

    def head(self) -> _Job | None:
        queue = self._interactive or self._batch
        return queue[0] if queue else None

    def push(self, job: _Job) -> int:
        """Queue `job`; its position (1 is next)."""
        if job.record.priority == "interactive":
            self._interactive.append(job)
            self._moved(self.head() is job, self._batch)
            return len(self._interactive)
        self._batch.append(job)
        self._moved(self.head() is job, ())
        return len(self._interactive) + len(self._batch)

    def remove(self, job: _Job) -> None:
        was_head = self.head() is job
        mine = self._interactive if job.record.priority == "interactive" else self._batch
        index = mine.index(job)
        del mine[index]
        behind: Iterable[_Job] = itertools.islice(mine, index, None)
        if mine is self._interactive:
            behind = itertools.chain(behind, self._batch)
        self._moved(was_head, behind)

    def position(self, job: _Job) -> int:
        if job.record.priority == "interactive":
            return self._interactive.index(job) + 1
        return len(self._interactive) + self._batch.index(job) + 1

    def _moved(self, head_changed: bool, behind: Iterable[_Job]) -> None:
        """Wake the dispatcher when the head changed, and the readers of the jobs whose
        place moved."""
        if head_changed:
            self.moved.set()
        for job in behind:
            job.feed.poke()


class Jobs:
    """Every job of a queen: submitted, queued, run on workers, followed, cancelled."""

    def __init__(
        self,
        table: JobStore,
        admission: Admission,
        calls: Calls,
        knows_model: Callable[[str], bool],
        *,
        max_live: int = MAX_LIVE,
        retention_s: float = RETENTION_S,
        keep_ended: int = KEEP_ENDED,
    ) -> None:
        self._table = table
        self._admission = admission
        self._calls = calls
        self._knows_model = knows_model
        self._max_live = max_live
        self._retention_s = retention_s
        self._keep_ended = keep_ended
        self._live: dict[str, _Job] = {}
        self._ended: OrderedDict[str, _Job] = OrderedDict()
        self._ended_bytes = 0
        self._queues: dict[str, _Queue] = {}
        self._dispatchers: list[asyncio.Task[None]] = []

    # -- what the routes call ---------------------------------------------------------------

    async def submit(
        self,
        request: SubmitJob,
        owner: str | None = None,
        spend: Callable[[int], None] | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[JobRecord, bool]:
        """Store a new job of `owner` (a key's name) and queue it; `spend` takes its tokens
        (an answer's, an embedding job's inputs') from the key's limits. With an
        `idempotency_key` the owner used already, the job it was used for instead. The job,
        and whether it is new. Raises UnknownModel, JobsFull, IdempotencyConflict."""
        body = request.model_dump(
            exclude={"priority", "stream", "stream_options"}, exclude_none=True
        )
        if idempotency_key is not None:
            earlier = await self._table.call(self._table.keyed, owner, idempotency_key)
            if earlier is not None:
                return _again(earlier, body, request.priority, idempotency_key), False
        if not self._knows_model(request.model):
            raise UnknownModel(request.model)
        if len(self._live) >= self._max_live:
            raise JobsFull
        record = JobRecord(
            job_id=f"job-{secrets.token_hex(8)}",
            priority=request.priority,
            model=request.model,
            kind=request.kind,
            state="queued",
            runs=0,
            created_at=time.time(),
            owner=owner,
        )
        # Durable before it is answered.
        earlier = await self._table.call(self._table.insert, record, body, idempotency_key)
        if earlier is not None:  # the same key came meanwhile, and went first
            assert idempotency_key is not None
            return _again(earlier, body, request.priority, idempotency_key), False
        self._queue(_Job(record, body, spend=spend))
        log.info(
            "event=job_submitted job_id=%s model=%s priority=%s",
            record.job_id,
            record.model,
            record.priority,
        )
        return self._view(self._live[record.job_id]), True

    async def get(self, job_id: str, owner: str | None = None) -> JobRecord:
        """The job; NoSuchJob when there is none, or (`owner` given) when it is another's:
        to a key, another key's job does not exist."""
        job = self._live.get(job_id) or self._ended.get(job_id)
        record = self._view(job) if job is not None else None
        if record is None:
            record = await self._table.call(self._table.get, job_id)
        if record is None or (owner is not None and record.owner != owner):
            raise NoSuchJob(job_id)
        return record

    async def stored(
        self, state: JobState | None = None, limit: int = 100, owner: str | None = None
    ) -> list[JobRecord]:
        """The newest `limit` jobs (in `state`, of `owner`, if given), newest first; an
        embedding job without its result (its vectors: `get` gives them)."""
        records = await self._table.call(self._table.recent, state, limit, owner)
        return [
            _listed(self._view(self._live[r.job_id])) if r.job_id in self._live else r
            for r in records
        ]

    def recent(self, limit: int = 10) -> list[JobRecord]:
        """The newest `limit` jobs this queen holds in memory (every live one, and the last
        `ENDED_KEPT` that ended), newest first, without waiting for SQLite."""
        jobs = itertools.chain(self._live.values(), self._ended.values())
        newest = heapq.nlargest(limit, jobs, key=lambda job: job.record.created_at)
        return [self._view(job) for job in newest]

    async def cancel(self, job_id: str, owner: str | None = None) -> JobRecord:
        """Cancel a queued or running job (a running one's worker stops generating); NoSuchJob
        as `get` says."""
        await self.get(job_id, owner)
        job = self._live.get(job_id)
        if job is None or job.record.state in ENDED:
            raise JobEnded(await self.get(job_id))
        if job.record.state == "queued":
            self._queues[job.record.model].remove(job)
        elif job.task is not None:
            job.task.cancel()  # its connection closes: the worker stops generating
        await self._end(job, "cancelled", error="cancelled by a client")
        return job.record.model_copy()

    async def follow(self, job_id: str, owner: str | None = None) -> AsyncIterator[bytes]:
        """The job's events as SSE bytes, from its first until it ends; NoSuchJob as `get`
        says."""
        record = await self.get(job_id, owner)
        job = self._live.get(job_id) or self._ended.get(job_id)
        if job is not None:
            return self._follow(job)
        return _end_only(record)

    # -- the queen's lifespan ---------------------------------------------------------------

    async def start(self) -> None:
        """Take over the jobs a previous queen left, in their order, and start dispatching."""
        for row in await self._table.call(self._table.unfinished):
            self._queue(_Job(row.record, row.body))
        if self._live:
            log.info("event=jobs_resumed count=%d", len(self._live))

    async def prune_forever(self, every_s: float = PRUNE_EVERY_S) -> None:
        """Delete old ended jobs now and every `every_s`."""
        while True:
            cutoff = time.time() - self._retention_s
            pruned = await self._table.call(self._table.prune, cutoff, self._keep_ended)
            if pruned:
                log.info("event=jobs_pruned count=%d", pruned)
            await asyncio.sleep(every_s)

    async def close(self) -> None:
        """Stop dispatching and running, then close the store. Nothing is written: a running
        job stays `running` in the store, and the next queen runs it again."""
        tasks = [*self._dispatchers, *(j.task for j in self._live.values() if j.task)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._table.close()

    # -- inside -----------------------------------------------------------------------------

    def _view(self, job: _Job) -> JobRecord:
        if job.record.state != "queued":
            return job.record.model_copy()
        position = self._queues[job.record.model].position(job)
        return job.record.model_copy(update={"position": position})

    def _queue(self, job: _Job) -> None:
        model = job.record.model
        queue = self._queues.get(model)
        if queue is None:
            queue = self._queues[model] = _Queue()
            self._dispatchers.append(asyncio.create_task(self._dispatch(model, queue)))
        self._live[job.record.job_id] = job
        job.queued_at_position = queue.push(job)
        job.feed.push(JobQueued(position=job.queued_at_position))

    async def _dispatch(self, model: str, queue: _Queue) -> None:
        """Start `model`'s jobs in their order, each once admission gives it a slot."""
        while True:
            try:
                await self._dispatch_next(queue, model)
            except Exception:
                # A bug here would leave every job of the model waiting: log it, go on.
                log.exception("event=job_dispatch_failed model=%s", model)
                await asyncio.sleep(1.0)

    async def _dispatch_next(self, queue: _Queue, model: str) -> None:
        queue.moved.clear()
        head = queue.head()
        if head is None:
            await queue.moved.wait()
            return
        slot = await self._slot(model, head.record.priority, queue)
        if slot is None:
            return
        job = queue.head()  # the one that waited, or one that came in ahead of it since
        if job is None:
            self._admission.release(slot)
            return
        queue.remove(job)
        self._start(job, slot)

    async def _slot(self, model: str, priority: Priority, queue: _Queue) -> WorkerRecord | None:
        """A slot for the head job, or None when the head changed (or no worker serves
        `model` yet) before one came free."""
        loop = asyncio.get_running_loop()
        serving = self._admission.serving(model)
        acquire = asyncio.ensure_future(
            self._admission.acquire(model, serving, loop.time() + _TURN_S, priority=priority)
        )
        moved = asyncio.ensure_future(queue.moved.wait())
        try:
            await asyncio.wait((acquire, moved), return_when=asyncio.FIRST_COMPLETED)
        finally:
            moved.cancel()
            if not acquire.done():
                acquire.cancel()  # admission passes on a slot handed over meanwhile
        if not acquire.done():
            await asyncio.wait((acquire,))  # until its cancellation has run
        if acquire.cancelled():
            return None
        try:
            return acquire.result()
        except (NoWorker, QueueFull):
            # A worker may be loading, or re-register after a queen restart: ask again soon.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(queue.moved.wait(), _NO_WORKER_S)
            return None
        except QueueTimeout:
            return None

    def _start(self, job: _Job, slot: WorkerRecord) -> None:
        record = job.record
        record.state = "running"
        record.runs += 1
        record.started_at = time.time()
        job.slot = slot  # until the run takes it over
        self._assigned(job, slot)
        job.task = asyncio.create_task(self._run(job))
        # Given back however the task ends, even cancelled before it began.
        job.task.add_done_callback(lambda _: self._release(job))

    def _release(self, job: _Job) -> None:
        slot, job.slot = job.slot, None
        if slot is not None:
            self._admission.release(slot)

    def _assigned(self, job: _Job, slot: WorkerRecord) -> None:
        job.record.worker = slot.beat.worker_id
        job.assigned_at = time.monotonic()
        job.feed.push(JobAssigned(worker=slot.beat.worker_id, run=job.record.runs))

    async def _run(self, job: _Job) -> None:
        """Run `job` on its slot's worker (others, if it fails before its first byte) to its
        end. A cancelled task writes nothing: `cancel` has ended the job, or the queen is
        stopping and the next one runs it again."""
        record = job.record
        serving = self._admission.serving(record.model)
        embeds = record.kind == "embedding"
        body = json.dumps(job.body if embeds else {**job.body, "stream": True}).encode()
        loop = asyncio.get_running_loop()

        async def claim(tried: frozenset[str], last: AttemptFailed | None) -> WorkerRecord | None:
            if job.slot is not None:  # the first attempt: the dispatcher's slot
                slot, job.slot = job.slot, None
                return slot
            try:
                slot = await self._admission.acquire(
                    record.model,
                    serving,
                    loop.time() + serving.queue_timeout,
                    tried,
                    priority=record.priority,
                )
            except (NoWorker, QueueFull, QueueTimeout):
                return None
            self._assigned(job, slot)
            return slot

        async def call(slot: WorkerRecord) -> JobResult | EmbeddingResult:
            # Stored before the worker hears of it: `runs` never undercounts.
            await self._table.call(self._table.started, record.model_copy())
            if embeds:
                return await self._embed(job, slot, serving, body)
            return await self._generate(job, slot, serving, body)

        try:
            try:
                result = await self._calls.attempt(
                    record.model, serving, record.job_id, claim, call
                )
            except Exhausted as exhausted:
                raise _Failed(f"no worker could run the job: {exhausted.last.reason}") from None
            await self._end(job, "done", result=result)
        except _Failed as exc:
            await self._end(job, "failed", error=str(exc))
        except Exception as exc:
            log.exception("event=job_crashed job_id=%s", record.job_id)
            await self._end(job, "failed", error=f"the queen failed running the job: {exc!r}")

    @contextlib.asynccontextmanager
    async def _called(
        self, record: JobRecord, slot: WorkerRecord, serving: Serving, body: bytes
    ) -> AsyncIterator[tuple[Connection, bytes]]:
        """The job's call to `slot`'s worker: its connection and first bytes. A failure after
        them fails the job; the connection goes back however the answer ends."""
        conn, data = await self._calls.call_worker(slot, _PATHS[record.kind], body, serving)
        try:
            yield conn, data
        except (UpstreamTimeout, UpstreamClosed) as exc:
            self._calls.failed_mid_answer(record.model, slot, exc, record.job_id)
            raise _Failed(f"the worker failed mid-answer: {exc}") from None
        finally:
            self._calls.done(conn, slot)

    async def _generate(
        self, job: _Job, slot: WorkerRecord, serving: Serving, body: bytes
    ) -> JobResult:
        """Stream the job's answer from `slot`'s worker into its events; its result."""
        async with self._called(job.record, slot, serving, body) as (conn, data):
            if conn.status != 200:
                raise _Failed(_refused(conn.status, await _whole(conn, data)))
            answer = _Answer()
            job.feed.push(JobFirstToken(after_s=round(time.monotonic() - job.assigned_at, 4)))
            pending = b""
            while data:
                events, pending = _split(pending + data)
                for chunk in events:
                    answer.add(chunk)
                    job.feed.push(JobChunk(chunk=chunk))
                data = await conn.read()
            return answer.result()

    async def _embed(
        self, job: _Job, slot: WorkerRecord, serving: Serving, body: bytes
    ) -> EmbeddingResult:
        """Ask `slot`'s worker for the job's vectors, one answer not streamed; its result."""
        async with self._called(job.record, slot, serving, body) as (conn, data):
            answer = await _whole(conn, data)
            if conn.status != 200:
                raise _Failed(_refused(conn.status, answer))
            try:
                # Megabytes of floats: read off the event loop, which relays every request.
                return await asyncio.to_thread(EmbeddingResult.model_validate_json, answer)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                message = f"the worker sent a malformed embeddings answer: {where}: {first['msg']}"
                raise _Failed(message) from None

    async def _end(
        self,
        job: _Job,
        state: JobState,
        *,
        result: JobResult | EmbeddingResult | None = None,
        error: str | None = None,
    ) -> None:
        """End the job: at once in memory, then in SQLite, then in its events (so a reader
        never sees an end that a queen restart could still undo)."""
        record = job.record
        record.state = state
        record.result = result
        record.error = error
        record.finished_at = time.time()
        if job.spend is not None and result is not None:
            job.spend(_tokens(result))
        await self._table.call(self._table.ended, record.model_copy())
        end = _end_event(record)
        if isinstance(result, EmbeddingResult):  # megabytes of floats: off the event loop
            event = await asyncio.to_thread(_encode, end)
        else:
            event = _encode(end)
        del self._live[record.job_id]
        self._ended[record.job_id] = job
        job.kept_bytes = len(event)
        self._ended_bytes += job.kept_bytes
        while len(self._ended) > ENDED_KEPT or self._ended_bytes > ENDED_KEPT_BYTES:
            _, gone = self._ended.popitem(last=False)
            self._ended_bytes -= gone.kept_bytes
        job.feed.append(event, last=True)
        log.info(
            "event=job_ended job_id=%s state=%s runs=%d worker=%s",
            record.job_id,
            state,
            record.runs,
            record.worker,
        )

    async def _follow(self, job: _Job) -> AsyncIterator[bytes]:
        sent, shown = 0, job.queued_at_position
        while True:
            events = job.feed.events
            while sent < len(events):
                yield events[sent]
                sent += 1
            if job.feed.ended:
                return
            if job.record.state == "queued":
                position = self._queues[job.record.model].position(job)
                if position != shown:
                    shown = position
                    yield sse.json_event(JobPosition(position=position).model_dump())
            await job.feed.wait()


class _Answer:
    """The text of a streamed answer, gathered chunk by chunk."""

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._finish: str | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        if "error" in chunk:  # the worker failed mid-stream and said so
            error = chunk["error"]
            raise _Failed(str(error.get("message") if isinstance(error, dict) else error))
        text = chunk_text(chunk)
        if text is not None:
            self._parts.append(text)
        for choice in chunk.get("choices") or ():
            self._finish = choice.get("finish_reason") or self._finish

    def result(self) -> JobResult:
        return JobResult(
            text="".join(self._parts),
            finish_reason=self._finish,
            completion_tokens=len(self._parts),
        )


def _split(buffer: bytes) -> tuple[list[dict[str, Any]], bytes]:
    """The JSON payloads of the whole SSE events in `buffer` (OpenAI's `[DONE]` skipped), and
    what is left after the last one."""
    *whole, rest = buffer.split(_SSE_END)
    payloads = []
    for event in whole:
        for line in event.splitlines():
            if line.startswith(b"data:") and (data := line[5:].strip()) != b"[DONE]":
                try:
                    payloads.append(json.loads(data))
                except ValueError:
                    raise _Failed(f"the worker sent a malformed chunk: {data[:100]!r}") from None
    return payloads, rest


async def _whole(conn: Connection, first: bytes) -> bytes:
    """The rest of a worker's answer that began with `first`; _Failed past
    `MAX_EMBEDDINGS_BYTES` (more than any answer a job keeps)."""
    answer = bytearray(first)
    while more := await conn.read():
        answer += more
        if len(answer) > MAX_EMBEDDINGS_BYTES:
            raise _Failed(
                f"the worker's answer is over {MAX_EMBEDDINGS_BYTES // 2**20} MiB, more than a "
                "job keeps: send fewer inputs per job (or encoding_format base64, a quarter of "
                "the size), or ask /v1/embeddings"
            )
    return bytes(answer)


def _refused(status: int, body: bytes) -> str:
    return f"the worker refused the job ({status}): {_message(body)}"


def _tokens(result: JobResult | EmbeddingResult) -> int:
    """What a job's result costs its key's `tpm`: an answer's tokens, or the inputs' (an
    embedding answer has no others)."""
    if isinstance(result, EmbeddingResult):
        return result.usage.prompt_tokens
    return result.completion_tokens


def _listed(record: JobRecord) -> JobRecord:
    """`record` as a list shows it: an embedding job's vectors left out (megabytes each)."""
    if isinstance(record.result, EmbeddingResult):
        record.result = None
    return record


def _encode(event: BaseModel) -> bytes:
    return sse.json_event(event.model_dump(mode="json"))


def _message(body: bytes) -> str:
    """The message of an OpenAI-style error body, else the body."""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        return str(json.loads(body)["error"]["message"])
    return body.decode(errors="replace")[:200]


def _again(
    earlier: JobRow, body: dict[str, Any], priority: Priority, idempotency_key: str
) -> JobRecord:
    """The job an `Idempotency-Key` was used for, if it was for this very request (`stream`
    aside: a job's stream is its events)."""
    if (earlier.body, earlier.record.priority) != (body, priority):
        raise IdempotencyConflict(idempotency_key, earlier.record.job_id)
    return earlier.record


def _end_event(record: JobRecord) -> JobDone | JobError:
    if record.state == "done":
        assert record.result is not None
        return JobDone(result=record.result)
    assert record.state in ("failed", "cancelled")
    return JobError(state=record.state, message=record.error or record.state)


async def _end_only(record: JobRecord) -> AsyncIterator[bytes]:
    """A job no longer in memory: how it ended (it ended: live jobs are all in memory)."""
    if record.state in ENDED:
        yield await asyncio.to_thread(_encode, _end_event(record))  # an embedding's vectors
