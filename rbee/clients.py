"""httpx clients: the keeper's for the queen (sync), the queen's for hives (async)."""

from __future__ import annotations

import contextlib
import functools
import getpass
import json
import os
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import EventSource
from pydantic import ValidationError

from rbee.errors import NotFoundError, RemoteError, UnavailableError
from rbee.wire import (
    AddModel,
    AddWorkerBinary,
    ApiKey,
    ApplyEvent,
    ApplyRecord,
    Capabilities,
    ClusterStatus,
    CreatedKey,
    DownResult,
    Health,
    HiveRecord,
    HiveState,
    LockState,
    ModelEntry,
    OperationEvent,
    OperationStarted,
    QueenArgs,
    SpawnWorker,
    WorkerBinaryEntry,
    WorkerProcess,
    WorkerView,
    apply_event,
)
from rbee.wire.jobs import JobCreated, JobEvent, JobRecord, job_event
from rbee.wire.logs import LogQuery

__all__ = ["ChatStream", "HiveClient", "QueenClient", "error_message"]


def _headers(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every client of this process. Building one reads the system's CA
    bundle (tens of ms): a plan over 100 hives spent 70 % of its time there."""
    return ssl.create_default_context()


def _holder() -> str:
    """Who is asking: user@host and pid, shown to whoever meets the apply lock."""
    return f"{getpass.getuser()}@{socket.gethostname()} (pid {os.getpid()})"


def error_message(response: httpx.Response) -> str:
    """The human message inside an error body (OpenAI-style or `{"detail": ...}`), else the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        for key in ("detail", "message", "error"):
            if key in body:
                return str(body[key])
    return response.text.strip()


def _check(response: httpx.Response, what: str) -> httpx.Response:
    if response.status_code == 404:
        raise NotFoundError(f"{what}: {error_message(response)}")
    if response.status_code in (401, 403):
        raise RemoteError(
            f"{what}: HTTP {response.status_code}: {error_message(response)}",
            status=response.status_code,
            hint="set RBEE_API_KEY to an admin key (`rbee key create NAME --scope admin`), "
            "or the YAML's queen.token to the cluster token",
        )
    if response.status_code >= 400:
        raise RemoteError(
            f"{what}: HTTP {response.status_code}: {error_message(response)}",
            status=response.status_code,
        )
    return response


def _check_unless_gone(response: httpx.Response, what: str) -> None:
    """For deletes: a 404 means already gone, which is what was wanted."""
    if response.status_code != 404:
        _check(response, what)


def _sse_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The JSON payloads of a Server-Sent Events response (OpenAI's `[DONE]` is skipped)."""
    for event in EventSource(response).iter_sse():
        if event.data and event.data != "[DONE]":
            yield json.loads(event.data)


async def _asse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    async for event in EventSource(response).aiter_sse():
        if event.data and event.data != "[DONE]":
            yield json.loads(event.data)


class HiveClient:
    """Async client for one hive (used by the queen)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=_headers(token), timeout=timeout, verify=_tls()
        )

    async def __aenter__(self) -> HiveClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def _get(self, path: str, what: str) -> Any:
        try:
            response = await self._http.get(path)
        except httpx.TransportError as exc:
            raise UnavailableError(f"hive at {self.url} is unreachable: {exc!r}") from exc
        return _check(response, what).json()

    async def health(self) -> Health:
        return Health.model_validate(await self._get("/health", "hive health"))

    async def state(self) -> HiveState:
        """Health and every listing in one request (NotFoundError from a hive older than it)."""
        return HiveState.model_validate(await self._get("/v1/state", "hive state"))

    async def capabilities(self) -> Capabilities:
        return Capabilities.model_validate(await self._get("/v1/capabilities", "capabilities"))

    async def models(self) -> list[ModelEntry]:
        return [ModelEntry.model_validate(m) for m in await self._get("/v1/models", "models")]

    async def worker_binaries(self) -> list[WorkerBinaryEntry]:
        body = await self._get("/v1/worker-binaries", "worker binaries")
        return [WorkerBinaryEntry.model_validate(b) for b in body]

    async def add_worker_binary(self, request: AddWorkerBinary) -> AsyncIterator[OperationEvent]:
        """Provision a worker binary and follow the operation's events to the end."""
        response = await self._http.post("/v1/worker-binaries", json=request.model_dump())
        async for event in self._follow(_check(response, "add worker binary")):
            yield event

    async def delete_worker_binary(self, name: str) -> None:
        response = await self._http.delete(f"/v1/worker-binaries/{name}")
        _check_unless_gone(response, f"delete worker binary {name}")

    async def _follow(self, response: httpx.Response) -> AsyncIterator[OperationEvent]:
        started = OperationStarted.model_validate(response.json())
        path = f"/v1/operations/{started.operation_id}/events"
        async with self._http.stream("GET", path, timeout=None) as stream:
            _check(stream, "operation events")
            async for event in _asse_events(stream):
                yield OperationEvent.model_validate(event)

    async def processes(self) -> list[WorkerProcess]:
        body = await self._get("/v1/worker-processes", "worker processes")
        return [WorkerProcess.model_validate(p) for p in body]

    async def add_model(self, request: AddModel) -> AsyncIterator[OperationEvent]:
        """Start a model download and follow its progress events to the end."""
        response = await self._http.post("/v1/models", json=request.model_dump())
        async for event in self._follow(_check(response, "add model")):
            yield event

    async def delete_model(self, name: str) -> None:
        response = await self._http.delete(f"/v1/models/{name}")
        _check_unless_gone(response, f"delete model {name}")

    async def spawn(self, request: SpawnWorker) -> WorkerProcess:
        response = await self._http.post("/v1/worker-processes", json=request.model_dump())
        return WorkerProcess.model_validate(_check(response, "spawn worker").json())

    async def worker_log(self, worker_id: str, lines: int = 20) -> str:
        """The last `lines` lines of a worker's log on this hive (its process may be gone)."""
        response = await self._http.get(f"/v1/worker-logs/{worker_id}", params={"lines": lines})
        return _check(response, f"log of worker {worker_id}").text

    @contextlib.asynccontextmanager
    async def log_stream(self, path: str, query: LogQuery) -> AsyncIterator[httpx.Response]:
        """The answer of one of this hive's log routes (`/v1/logs`, `/v1/worker-logs/ID`),
        its body unread: an error as the hive sent it, or the log, endless with `follow`."""
        timeout = httpx.Timeout(10.0, read=None if query.follow else 30.0)
        try:
            async with self._http.stream(
                "GET", path, params=query.params(), timeout=timeout
            ) as response:
                yield response
        except httpx.TransportError as exc:
            raise UnavailableError(f"hive at {self.url} is unreachable: {exc!r}") from exc

    async def kill(self, pid: int, grace_s: float = 5.0) -> None:
        response = await self._http.delete(
            f"/v1/worker-processes/{pid}", params={"grace": grace_s}, timeout=grace_s + 10
        )
        _check_unless_gone(response, f"stop worker pid {pid}")


class QueenClient:
    """Sync client for the queen (used by the keeper CLI)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 30.0,
        named_by: str = "queen.url",
    ) -> None:
        """`token`: the cluster token from the YAML; an API key in $RBEE_API_KEY goes first.
        `named_by`: where the URL came from, for the hint when the queen is unreachable."""
        self.url = url.rstrip("/")
        self.named_by = named_by
        credential = os.environ.get("RBEE_API_KEY") or token
        headers = {**_headers(credential), "x-rbee-holder": _holder()}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, verify=_tls()
        )

    def close(self) -> None:
        self._http.close()

    def _unreachable(self, exc: httpx.TransportError) -> UnavailableError:
        return UnavailableError(
            f"the queen at {self.url} is unreachable ({type(exc).__name__})",
            hint=f"check that it runs and that {self.named_by} is right",
        )

    def _request(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code in (401, 403):
            what = f"{what} at the queen {self.url}"
        return _check(response, what).json()

    def health(self) -> Health | None:
        """The queen's health, or None when nothing answers."""
        try:
            health = Health.model_validate(self._request("GET", "/health", "queen health"))
        except (UnavailableError, RemoteError, NotFoundError, ValidationError):
            return None
        return health if health.service == QueenArgs.SCRIPT else None

    def plan(self, cluster: dict[str, Any], **options: Any) -> dict[str, Any]:
        """Ask the queen to observe and plan; `options`: targets, refresh_only, prune."""
        body = {"cluster": cluster, **options}
        result: dict[str, Any] = self._request("POST", "/v1/plan", "plan", json=body, timeout=120)
        return result

    def apply(
        self,
        cluster: dict[str, Any] | None,
        parallelism: int,
        saved_plan: dict[str, Any] | None = None,
        **options: Any,
    ) -> Iterator[ApplyEvent]:
        """Run an apply in the queen (of `cluster`, or of a saved plan) and yield its events."""
        body = {"cluster": cluster, "plan": saved_plan, "parallelism": parallelism, **options}
        try:
            with self._http.stream("POST", "/v1/apply", json=body, timeout=None) as stream:
                if stream.status_code >= 400:
                    stream.read()
                    _check(stream, "apply")
                for event in _sse_events(stream):
                    yield apply_event(event)
        except httpx.TransportError as exc:
            raise UnavailableError(f"lost the queen at {self.url} during apply: {exc!r}") from exc

    def hives(self) -> list[HiveRecord]:
        return [HiveRecord.model_validate(h) for h in self._request("GET", "/v1/hives", "hives")]

    def hive(self, name: str, refresh: bool = False) -> HiveRecord:
        params = {"refresh": "1"} if refresh else {}
        return HiveRecord.model_validate(
            self._request("GET", f"/v1/hives/{name}", f"hive {name}", params=params)
        )

    def refresh_capabilities(self, name: str) -> HiveRecord:
        path = f"/v1/hives/{name}/refresh-capabilities"
        return HiveRecord.model_validate(
            self._request("POST", path, f"capabilities of hive {name}")
        )

    def ssh_test(self, hive: dict[str, Any]) -> dict[str, Any]:
        body = {"hive": hive}
        result: dict[str, Any] = self._request("POST", "/v1/ssh-test", "ssh test", json=body)
        return result

    def import_ssh(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("POST", "/v1/hives/import-ssh", "import ssh")
        return result

    def status(self) -> ClusterStatus:
        return ClusterStatus.model_validate(self._request("GET", "/v1/status", "status"))

    def workers(self) -> list[WorkerView]:
        body = self._request("GET", "/v1/workers", "workers")
        return [WorkerView.model_validate(w) for w in body]

    def worker(self, worker_id: str) -> WorkerView:
        body = self._request("GET", f"/v1/workers/{worker_id}", f"worker {worker_id}")
        return WorkerView.model_validate(body)

    def retire_worker(self, worker_id: str) -> WorkerView:
        """Have the queen drain the worker and then stop it; answers at once (draining)."""
        path = f"/v1/workers/{worker_id}/retire"
        return WorkerView.model_validate(self._request("POST", path, f"retire {worker_id}"))

    def down(self, cluster: dict[str, Any] | None = None) -> DownResult:
        body = {"cluster": cluster}
        return DownResult.model_validate(
            self._request("POST", "/v1/down", "down", json=body, timeout=120)
        )

    def shutdown(self) -> None:
        self._request("POST", "/v1/shutdown", "shutdown")

    def lock(self) -> LockState | None:
        """The apply lock, None when free."""
        lock = self._request("GET", "/v1/lock", "lock")["lock"]
        return None if lock is None else LockState.model_validate(lock)

    def force_unlock(self, lock_id: str) -> LockState:
        """Remove the apply lock if `lock_id` is its ID (NotFoundError otherwise); returns it."""
        body = self._request("POST", "/v1/lock/force-unlock", "force-unlock", json={"id": lock_id})
        return LockState.model_validate(body["unlocked"])

    def create_key(
        self, name: str, scope: str, *, rpm: int | None = None, tpm: int | None = None
    ) -> CreatedKey:
        body = {"name": name, "scope": scope, "rpm": rpm, "tpm": tpm}
        return CreatedKey.model_validate(
            self._request("POST", "/v1/keys", f"create key {name}", json=body)
        )

    def keys(self) -> list[ApiKey]:
        return [ApiKey.model_validate(k) for k in self._request("GET", "/v1/keys", "keys")]

    def revoke_key(self, name: str) -> ApiKey:
        return ApiKey.model_validate(
            self._request("DELETE", f"/v1/keys/{name}", f"revoke key {name}")
        )

    def history(self, limit: int = 20) -> list[ApplyRecord]:
        """The last `limit` applies, newest first."""
        body = self._request("GET", "/v1/history", "history", params={"limit": limit})
        return [ApplyRecord.model_validate(a) for a in body["applies"]]

    def logs(self, path: str, query: LogQuery) -> Iterator[str]:
        """A log through the queen (`/v1/logs/queen`, `/v1/logs/hives/NAME`,
        `/v1/logs/workers/ID`) as text as it comes; with `follow`, until the caller stops."""
        timeout = httpx.Timeout(30.0, read=None if query.follow else 60.0)
        try:
            with self._http.stream("GET", path, params=query.params(), timeout=timeout) as stream:
                if stream.status_code >= 400:
                    stream.read()
                    _check(stream, f"logs at the queen {self.url}")
                yield from stream.iter_text()
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    def submit_job(self, body: dict[str, Any]) -> JobCreated:
        """Queue an OpenAI chat or completion body (with its `priority`) as a job."""
        return JobCreated.model_validate(self._request("POST", "/v1/jobs", "submit job", json=body))

    def job(self, job_id: str) -> JobRecord:
        return JobRecord.model_validate(self._request("GET", f"/v1/jobs/{job_id}", f"job {job_id}"))

    def jobs(self, state: str | None = None, limit: int = 100) -> list[JobRecord]:
        """The newest `limit` jobs (in `state`, if given), newest first."""
        params: dict[str, Any] = {"limit": limit} | ({"state": state} if state else {})
        body = self._request("GET", "/v1/jobs", "jobs", params=params)
        return [JobRecord.model_validate(j) for j in body["jobs"]]

    def cancel_job(self, job_id: str) -> JobRecord:
        return JobRecord.model_validate(
            self._request("DELETE", f"/v1/jobs/{job_id}", f"cancel job {job_id}")
        )

    def job_events(self, job_id: str) -> Iterator[JobEvent]:
        """A job's events, from its first until it ends (done or error)."""
        path = f"/v1/jobs/{job_id}/events"
        try:
            with self._http.stream("GET", path, timeout=httpx.Timeout(30.0, read=None)) as stream:
                if stream.status_code >= 400:
                    stream.read()
                    _check(stream, f"events of job {job_id}")
                for event in _sse_events(stream):
                    yield job_event(event)
        except httpx.TransportError as exc:
            raise UnavailableError(f"lost the queen at {self.url}: {exc!r}") from exc

    @contextlib.contextmanager
    def chat_stream(self, body: dict[str, Any]) -> Iterator[ChatStream]:
        """Stream a chat completion; the chunks arrive as the worker makes them."""
        try:
            with self._http.stream(
                "POST", "/v1/chat/completions", json={**body, "stream": True}, timeout=None
            ) as stream:
                if stream.status_code >= 400:
                    stream.read()
                    _check(stream, "inference")
                yield ChatStream(
                    worker=stream.headers.get("x-rbee-worker", "?"),
                    chunks=_sse_events(stream),
                )
        except httpx.TransportError as exc:
            raise UnavailableError(f"lost the queen at {self.url}: {exc!r}") from exc


@dataclass
class ChatStream:
    """A streamed chat completion: which worker serves it, and its OpenAI chunks."""

    worker: str
    chunks: Iterator[dict[str, Any]]
