"""httpx clients: the keeper's for the queen (sync), the queen's for hives (async)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import getpass
import json
import os
import socket
import ssl
import weakref
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from httpx_sse import EventSource
from pydantic import ValidationError

from rbee.errors import NotFoundError, RbeeError, RemoteError, UnavailableError
from rbee.net import LOOPBACK_NAMES
from rbee.pki import Authority, Identity, Role, client_context, tls_name
from rbee.wire import (
    AddModel,
    AddWorkerBinary,
    ApiKey,
    ApplyEvent,
    ApplyRecord,
    ApplyRequest,
    Capabilities,
    ClusterStatus,
    CreatedKey,
    DownRequest,
    DownResult,
    ForceUnlock,
    Health,
    History,
    HiveRecord,
    HiveState,
    LockAnswer,
    LockState,
    ModelEntry,
    OperationEvent,
    OperationStarted,
    PlanRequest,
    QueenArgs,
    Renewal,
    RpcServerProcess,
    SpawnRequest,
    SpawnRpcServer,
    SpawnWorker,
    SshFacts,
    SshImport,
    SshTestRequest,
    Unlocked,
    WorkerBinaryEntry,
    WorkerProcess,
    WorkerView,
    apply_event,
)
from rbee.wire.chat import ChatChunk, ChatRequest
from rbee.wire.jobs import JobCreated, JobEvent, JobList, JobRecord, SubmitJob, job_event
from rbee.wire.logs import LogQuery
from rbee.wire.plan import Plan

__all__ = [
    "HIVES",
    "ChatStream",
    "HiveClient",
    "HiveTimeout",
    "QueenClient",
    "cluster_tls",
    "error_message",
    "hive_identity",
    "issue_identity",
    "queen_tls",
    "renew_worker",
    "use_identity",
]


def _headers(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}


@functools.cache
def queen_tls() -> ssl.SSLContext:
    """The TLS context of the keeper's calls to a queen: the system's CAs, and this machine's
    cluster CA when it has one (a queen serving its front door with rbee's own certificate).
    One per process: building one reads the system's CA bundle (tens of ms)."""
    context = ssl.create_default_context()
    local_ca = Path.home() / ".local" / "state" / "rbee" / "tls" / "ca.pem"
    if local_ca.is_file():
        context.load_verify_locations(local_ca)
    return context


@dataclass
class _Identity:
    context: ssl.SSLContext
    authority: Authority | None


_identity: _Identity | None = None


def use_identity(identity: Identity | Path, authority: Authority | None = None) -> ssl.SSLContext:
    """Make `identity` this process's inside the cluster: its TLS client context for hives and
    workers (returned). The queen passes its `authority` too: it issues each hive it starts
    and each worker it spawns an identity of its own, and renews them."""
    global _identity
    context = identity.client if isinstance(identity, Identity) else client_context(identity)
    _identity = _Identity(context, authority)
    return context


def issue_identity(role: Role, name: str, hosts: list[str]) -> bytes:
    """A new identity bundle from this process's authority (the queen's): for a hive it
    starts, a worker it spawns."""
    if _identity is None or _identity.authority is None:
        raise RbeeError("only the queen issues identities: this process holds no CA")
    return _identity.authority.issue(role, name, hosts)


def hive_identity(name: str, host: str) -> bytes:
    """A new identity for hive `name`: named by it, valid for its address (and loopback's)."""
    return issue_identity("hive", name, [host, *LOOPBACK_NAMES])


def cluster_tls() -> ssl.SSLContext:
    """The client context of this process's cluster identity (`use_identity`)."""
    if _identity is None:
        raise RbeeError("this process has no cluster identity to call a hive with")
    return _identity.context


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


async def renew_worker(url: str, hive: str, worker_id: str) -> None:
    """Hand a worker a renewed TLS identity from this process's authority (the queen's)."""
    name = f"{hive}/{worker_id}"
    bundle = issue_identity("worker", name, [urlsplit(url).hostname or "", *LOOPBACK_NAMES])
    async with httpx.AsyncClient(verify=cluster_tls(), timeout=10.0) as client:
        response = await client.put(
            url.rstrip("/") + "/v1/identity",
            json=Renewal(bundle=bundle.decode()).model_dump(),
            extensions={"sni_hostname": tls_name("worker", name)},
        )
    _check(response, f"renew the identity of worker {worker_id}")


class HiveTimeout:
    """How long the queen waits for a hive, by what it asks: one policy for every caller."""

    CHECK = 3.0  # is it up (health, the registry's checks)
    LISTING = 5.0  # what it holds (state, listings, a log's head)
    ACTION = 30.0  # start something (spawn, delete, a download's first answer)


class _HivePool:
    """This process's connections to its hives: one httpx client per hive and event loop, so
    calls reuse kept-alive TLS connections instead of a handshake each; `transport` replaces
    the network (tests: `httpx.ASGITransport` of a hive app)."""

    def __init__(self) -> None:
        self.transport: httpx.AsyncBaseTransport | None = None
        self._clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[tuple[str, str], httpx.AsyncClient]
        ] = weakref.WeakKeyDictionary()

    def client(self, url: str, name: str) -> httpx.AsyncClient:
        clients = self._clients.setdefault(asyncio.get_running_loop(), {})
        key = (url, name)
        if key not in clients or clients[key].is_closed:
            server_name = tls_name("hive", name)

            async def name_the_hive(request: httpx.Request) -> None:
                request.extensions["sni_hostname"] = server_name

            clients[key] = httpx.AsyncClient(
                base_url=url,
                verify=cluster_tls() if self.transport is None else False,
                transport=self.transport,
                event_hooks={"request": [name_the_hive]},
                # Idle connections are dropped before a hive's uvicorn closes them (5 s), so a
                # check never meets a connection the hive is closing.
                limits=httpx.Limits(keepalive_expiry=_HIVE_KEEPALIVE_S),
            )
        return clients[key]

    async def close(self) -> None:
        """Close this event loop's connections (a queen shutting down)."""
        for client in self._clients.pop(asyncio.get_running_loop(), {}).values():
            await client.aclose()


HIVES = _HivePool()
_HIVE_KEEPALIVE_S = 2.0


class HiveClient:
    """Async client for one hive (used by the queen), over the process's pool (`HIVES`)."""

    def __init__(self, url: str, name: str, timeout: float = HiveTimeout.LISTING) -> None:
        """Hive `name` at `url` (https://): mutual TLS with this process's identity
        (`use_identity`), and the server's certificate must be hive `name`'s (`tls_name`),
        checked before a byte of any request is sent. Each request may take `timeout`."""
        self.url = url.rstrip("/")
        self._timeout = timeout
        self._http = HIVES.client(self.url, name)

    async def __aenter__(self) -> HiveClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        """The connection stays in the pool for the next call."""

    async def _get(self, path: str, what: str) -> Any:
        try:
            response = await self._http.get(path, timeout=self._timeout)
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
        response = await self._http.post(
            "/v1/worker-binaries", json=request.model_dump(), timeout=self._timeout
        )
        async for event in self._follow(_check(response, "add worker binary")):
            yield event

    async def delete_worker_binary(self, name: str) -> None:
        response = await self._http.delete(f"/v1/worker-binaries/{name}", timeout=self._timeout)
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
        response = await self._http.post(
            "/v1/models", json=request.model_dump(), timeout=self._timeout
        )
        async for event in self._follow(_check(response, "add model")):
            yield event

    async def delete_model(self, name: str) -> None:
        response = await self._http.delete(f"/v1/models/{name}", timeout=self._timeout)
        _check_unless_gone(response, f"delete model {name}")

    async def spawn(self, request: SpawnWorker) -> WorkerProcess:
        """Start a worker; the queen gives it a TLS identity of its own, for the addresses
        the hive's workers listen on (the hive's, and loopback)."""
        hosts = [urlsplit(self.url).hostname or "", *LOOPBACK_NAMES]
        identity = issue_identity("worker", f"{request.hive}/{request.worker_id}", hosts)
        body = SpawnRequest(**request.model_dump(), tls_identity=identity.decode()).model_dump()
        response = await self._http.post("/v1/worker-processes", json=body, timeout=self._timeout)
        return WorkerProcess.model_validate(_check(response, "spawn worker").json())

    async def renew(self, bundle: bytes) -> None:
        """Hand the hive its renewed TLS identity."""
        body = Renewal(bundle=bundle.decode()).model_dump()
        _check(
            await self._http.put("/v1/identity", json=body, timeout=self._timeout),
            "renew the hive's identity",
        )

    async def worker_log(self, worker_id: str, lines: int = 20) -> str:
        """The last `lines` lines of a worker's log on this hive (its process may be gone)."""
        response = await self._http.get(
            f"/v1/worker-logs/{worker_id}", params={"lines": lines}, timeout=self._timeout
        )
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

    async def rpc_servers(self) -> list[RpcServerProcess]:
        """The hive's RPC server, when a worker of another hive spans it (one at most)."""
        listed = await self._get("/v1/rpc-servers", "list RPC servers")
        return [RpcServerProcess.model_validate(item) for item in listed]

    async def spawn_rpc_server(self, request: SpawnRpcServer) -> RpcServerProcess:
        """Start the hive's RPC server (a 409 while one runs)."""
        response = await self._http.post(
            "/v1/rpc-servers", json=request.model_dump(), timeout=self._timeout
        )
        return RpcServerProcess.model_validate(_check(response, "start RPC server").json())

    async def stop_rpc_server(self, pid: int, grace_s: float = 5.0) -> None:
        response = await self._http.delete(
            f"/v1/rpc-servers/{pid}", params={"grace": grace_s}, timeout=grace_s + 10
        )
        _check_unless_gone(response, f"stop RPC server pid {pid}")


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
            base_url=self.url, headers=headers, timeout=timeout, verify=queen_tls()
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

    def plan(self, request: PlanRequest) -> Plan:
        """Ask the queen to observe and plan."""
        body = request.model_dump(mode="json")
        return Plan.model_validate(
            self._request("POST", "/v1/plan", "plan", json=body, timeout=120)
        )

    def apply(self, request: ApplyRequest) -> Iterator[ApplyEvent]:
        """Run an apply in the queen (of a cluster, or of a saved plan) and yield its events."""
        body = request.model_dump(mode="json", exclude_none=True)
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

    def ssh_test(self, request: SshTestRequest) -> SshFacts:
        """What the queen finds when it connects to a hive over SSH."""
        body = request.model_dump(mode="json")
        return SshFacts.model_validate(self._request("POST", "/v1/ssh-test", "ssh test", json=body))

    def import_ssh(self) -> SshImport:
        """The queen's ~/.ssh/config Host entries as hive stanzas."""
        return SshImport.model_validate(self._request("POST", "/v1/hives/import-ssh", "import ssh"))

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

    def down(self, request: DownRequest) -> DownResult:
        body = request.model_dump(mode="json")
        return DownResult.model_validate(
            self._request("POST", "/v1/down", "down", json=body, timeout=120)
        )

    def shutdown(self) -> None:
        self._request("POST", "/v1/shutdown", "shutdown")

    def lock(self) -> LockState | None:
        """The apply lock, None when free."""
        return LockAnswer.model_validate(self._request("GET", "/v1/lock", "lock")).lock

    def force_unlock(self, lock_id: str) -> LockState:
        """Remove the apply lock if `lock_id` is its ID (NotFoundError otherwise); returns it."""
        body = ForceUnlock(id=lock_id).model_dump()
        answer = self._request("POST", "/v1/lock/force-unlock", "force-unlock", json=body)
        return Unlocked.model_validate(answer).unlocked

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
        return History.model_validate(body).applies

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

    def submit_job(self, job: SubmitJob) -> JobCreated:
        """Queue an OpenAI chat, completion or embeddings body (with its `priority`) as a job."""
        body = job.model_dump(mode="json", exclude_none=True)
        return JobCreated.model_validate(self._request("POST", "/v1/jobs", "submit job", json=body))

    def job(self, job_id: str) -> JobRecord:
        return JobRecord.model_validate(self._request("GET", f"/v1/jobs/{job_id}", f"job {job_id}"))

    def jobs(self, state: str | None = None, limit: int = 100) -> list[JobRecord]:
        """The newest `limit` jobs (in `state`, if given), newest first."""
        params: dict[str, Any] = {"limit": limit} | ({"state": state} if state else {})
        body = self._request("GET", "/v1/jobs", "jobs", params=params)
        return JobList.model_validate(body).jobs

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
    def chat_stream(self, request: ChatRequest) -> Iterator[ChatStream]:
        """Stream a chat completion; the chunks arrive as the worker makes them."""
        body = request.model_dump(mode="json", exclude_none=True)
        try:
            with self._http.stream(
                "POST", "/v1/chat/completions", json=body, timeout=None
            ) as stream:
                if stream.status_code >= 400:
                    stream.read()
                    _check(stream, "inference")
                yield ChatStream(
                    worker=stream.headers.get("x-rbee-worker", "?"),
                    chunks=(ChatChunk.model_validate(c) for c in _sse_events(stream)),
                )
        except httpx.TransportError as exc:
            raise UnavailableError(f"lost the queen at {self.url}: {exc!r}") from exc


@dataclass
class ChatStream:
    """A streamed chat completion: which worker serves it, and its OpenAI chunks."""

    worker: str
    chunks: Iterator[ChatChunk]
