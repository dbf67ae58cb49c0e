"""The cluster YAML as pydantic models (DESIGN §2). Unknown keys are errors (`extra="forbid"`)."""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rbee.defaults import (
    BACKEND,
    CTX_SIZE,
    DEVICE,
    HIVE_PORT,
    PROMPT_CACHE,
    QUEEN_PORT,
    RPC_PORT,
    SLOTS,
    SOURCE_SCHEMES,
    Backend,
    CtxSize,
    Device,
    PromptCache,
    Slots,
    SplitMode,
    split_gguf,
)
from rbee.net import LOCAL_HOSTS, LOOPBACK, http_url, https_url

__all__ = [
    "Build",
    "Cluster",
    "Deployment",
    "Hive",
    "Model",
    "Queen",
    "QueenTls",
    "ReplicaRange",
    "SelfHeal",
    "Serving",
    "Ssh",
    "WorkerBinary",
    "check_references",
]

_HF_SOURCE = re.compile(r"^hf://[^/@]+/[^/@]+/[^@]+\.gguf(@[^@]+)?$")

Name = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
        description="a name of letters, digits, '.', '_' and '-', starting with a letter or digit",
    ),
]
Port = Annotated[int, Field(ge=1, le=65535)]


def _hex_digest(value: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise ValueError("expected 64 hexadecimal digits")
    return value.lower()


Sha256 = Annotated[str, AfterValidator(_hex_digest)]
GpuDevice = Annotated[str, Field(pattern=r"^cuda:\d+$", description="an NVIDIA GPU: cuda:N")]

_DURATION = re.compile(r"^(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(value: object) -> object:
    """A duration as seconds: a number, or a string such as `500ms`, `30s`, `2m`, `1h`."""
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match is None:
            raise ValueError("expected seconds, or a duration such as 500ms, 30s, 2m or 1h")
        return float(match["number"]) * _UNIT_S[match["unit"]]
    return value


Duration = Annotated[float, BeforeValidator(_seconds), Field(gt=0, le=86_400)]


def _url_port(value: str) -> str:
    """`value` unchanged when its port, if any, is a TCP port (1 to 65535)."""
    try:
        port = urlsplit(value).port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"the port in {value!r} is out of range (1 to 65535)")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QueenTls(_Strict):
    """TLS on the queen's front door: your certificate and key (PEM files on the queen's
    machine), or neither for rbee's own (a certificate of the cluster's CA, which the keeper on
    that machine trusts; give other clients `~/.local/state/rbee/tls/ca.pem`)."""

    cert: str | None = Field(default=None, description="certificate (chain) file")
    key: str | None = Field(default=None, description="its private key file")

    @model_validator(mode="after")
    def _both_or_neither(self) -> QueenTls:
        if (self.cert is None) != (self.key is None):
            raise ValueError("give both cert and key, or neither (rbee's own certificate)")
        return self


class Queen(_Strict):
    """Where the keeper finds the queen, and the token it sends."""

    url: str = Field(default=http_url(LOOPBACK, QUEEN_PORT), description="the queen's base URL")
    token: str | None = Field(default=None, description="bearer token; required off-loopback")
    tls: QueenTls | None = Field(
        default=None, description="serve the front door over TLS (the url is then https://)"
    )

    @model_validator(mode="after")
    def _https_with_tls(self) -> Queen:
        if self.tls is not None and not self.url.startswith("https://"):
            raise ValueError("with tls, the queen's url must be https://")
        return self

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http:// or https:// URL with a host")
        return _url_port(value).rstrip("/")

    @property
    def is_loopback(self) -> bool:
        return (urlsplit(self.url).hostname or "") in LOCAL_HOSTS


class Ssh(_Strict):
    """How the queen reaches a network hive."""

    user: str | None = None
    port: Port = 22
    key: str | None = None
    known_hosts: str | None = None


class Hive(_Strict):
    """A machine that runs workers."""

    name: Name
    host: str = Field(min_length=1)
    mode: Literal["local", "network"] | None = Field(
        default=None, description="local: child of the queen; network: reached over SSH"
    )
    port: Port = HIVE_PORT
    ssh: Ssh | None = None
    rpc_port: Port = Field(
        default=RPC_PORT,
        description="where this hive's RPC server takes the workers of other hives that span it",
    )

    @property
    def effective_mode(self) -> Literal["local", "network"]:
        if self.mode is not None:
            return self.mode
        return "local" if self.host in LOCAL_HOSTS else "network"

    @property
    def url(self) -> str:
        """Where the queen reaches the hive: mutual TLS (`rbee.pki`), on every hive."""
        return https_url(self.host, self.port)


class Model(_Strict):
    """A GGUF file and where it comes from."""

    name: Name
    source: str = Field(description="hf://ORG/REPO/FILE, https://URL or file://PATH")
    sha256: Sha256 | None = Field(
        default=None, description="64 hex digits, verified after download"
    )
    chat_format: str | None = Field(
        default=None, description="llama-cpp-python chat format when the GGUF carries no template"
    )

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in SOURCE_SCHEMES:
            known = ", ".join(f"{s}://" for s in SOURCE_SCHEMES)
            raise ValueError(f"expected a source starting with one of {known}")
        if not rest:
            raise ValueError("the source names no location after the scheme")
        if scheme == "hf" and not _HF_SOURCE.match(value):
            raise ValueError("expected hf://ORG/REPO/PATH.gguf, optionally @REVISION")
        if scheme in ("http", "https"):
            _url_port(value)
        split = split_gguf(value)
        if split is not None and int(split["part"]) != 1:
            raise ValueError("name the first part of a split GGUF (…-00001-of-…): rbee fetches all")
        return value

    @model_validator(mode="after")
    def _remote_needs_checksum(self) -> Model:
        # The Hub publishes each file's sha256; a plain URL does not, so the YAML pins it.
        if self.source.startswith(("https://", "http://")) and self.sha256 is None:
            raise ValueError(
                "an https:// source needs its sha256 (`sha256sum` of the file) in the YAML"
            )
        return self


class Build(_Strict):
    """Build a venv on each hive with llama-cpp-python compiled for the backend."""

    llama_cpp_python: str | None = Field(
        default=None,
        description='pip version specifier, e.g. "==0.3.36" (default: the version the hive has)',
    )
    cmake_args: str | None = Field(
        default=None,
        description="CMAKE_ARGS for llama.cpp (default: -DGGML_CUDA=on for cuda, "
        "-DGGML_METAL=on for metal, and -DGGML_RPC=on for every backend: `span:` needs it)",
    )

    @field_validator("llama_cpp_python")
    @classmethod
    def _specifier(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                SpecifierSet(value)
            except InvalidSpecifier:
                raise ValueError("expected a pip version specifier such as '==0.3.36'") from None
        return value


class WorkerBinary(_Strict):
    """An inference runtime (a llama-cpp-python build) for one backend."""

    name: Name
    backend: Backend = BACKEND
    build: Build | None = None
    path: str | None = Field(default=None, description="an existing Python runtime to use as is")
    url: str | None = Field(
        default=None, description="a llama-cpp-python wheel to install (https://…/NAME.whl)"
    )
    sha256: Sha256 | None = Field(default=None, description="the wheel's sha256, with `url:`")

    @field_validator("url")
    @classmethod
    def _wheel_url(cls, value: str | None) -> str | None:
        if value is not None and (
            not value.startswith(("https://", "http://")) or not value.endswith(".whl")
        ):
            raise ValueError("expected an https:// URL of a .whl file")
        return None if value is None else _url_port(value)

    @model_validator(mode="after")
    def _servable(self) -> WorkerBinary:
        given = [k for k in ("build", "path", "url") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of `build:`, `path:` or `url:`, not {' and '.join(given)}")
        if self.url is not None and self.sha256 is None:
            raise ValueError("a wheel from `url:` needs its `sha256:`")
        if self.sha256 is not None and self.url is None:
            raise ValueError("`sha256:` belongs to a wheel given by `url:`")
        if self.backend != "cpu" and not given:
            raise ValueError(
                f"a {self.backend} worker binary needs `build:` (compile llama-cpp-python for "
                "it on each hive), `url:` (a wheel built for it) or `path:` (a Python that has it)"
            )
        return self


class Serving(_Strict):
    """How the queen serves a model's requests: timeouts, retries, its queue and routing.

    Every deployment of one model shares the model's queue, so they must agree on these.
    """

    connect_timeout: Duration = Field(
        default=2.0, description="seconds to open a connection to a worker"
    )
    first_byte_timeout: Duration = Field(
        default=120.0,
        description="seconds until a worker's first byte (the whole answer when not streamed)",
    )
    idle_timeout: Duration = Field(
        default=30.0, description="seconds a stream may go quiet between chunks"
    )
    attempts: int = Field(
        default=3,
        ge=1,
        le=10,
        description="workers tried before the first byte (connect error, reset, 5xx, timeout)",
    )
    max_queue: int = Field(
        default=64, ge=0, le=100_000, description="requests waiting for a free slot; more get 503"
    )
    queue_timeout: Duration = Field(
        default=30.0, description="seconds a request waits for a free slot before a 504"
    )
    routing: Literal["prefix", "least_loaded", "round_robin", "prefer_hive"] = Field(
        default="prefix",
        description="how a free worker is chosen: the one whose prompt cache holds the longest "
        "start of the prompt, less its load (prefix: a conversation's next turn goes where its "
        "history is cached; the least loaded when none holds any); the least loaded; each in "
        "turn; or a hive's first",
    )
    prefer_hive: str | None = Field(
        default=None, description="with routing: prefer_hive, the hive tried first"
    )

    @model_validator(mode="after")
    def _preferred_hive(self) -> Serving:
        if (self.routing == "prefer_hive") != (self.prefer_hive is not None):
            raise ValueError("`routing: prefer_hive` and `prefer_hive: HIVE` go together")
        return self


def _switch(value: object) -> object:
    """`self_heal: false` (or true) is short for `self_heal: {enabled: false}`."""
    return {"enabled": value} if isinstance(value, bool) else value


class SelfHeal(_Strict):
    """How the queen keeps the last applied cluster converged between applies.

    Only healing: it starts stopped hives, re-fetches missing or damaged model files and
    respawns dead or silent workers. Deletes, prunes and YAML changes come only from apply.
    """

    enabled: bool = Field(default=True, description="heal between applies")
    interval: Duration = Field(
        default=30.0,
        description="seconds between periodic checks (missed heartbeats and hives going "
        "offline trigger a check at once)",
    )
    max_per_hour: int = Field(
        default=60, ge=1, le=100_000, description="healing actions at most per hour"
    )
    silent_after: Duration = Field(
        default=120.0,
        description="a worker its hive lists that has not heartbeated to the queen this long "
        "after it started is replaced (workers beat while they load; a queen that just "
        "started first waits one heartbeat TTL for them)",
    )


class ReplicaRange(_Strict):
    """An elastic worker count per hive: apply keeps it within `min`..`max`, the queen spawns
    workers for queued requests up to `max` and stops idle ones (`idle_ttl`) down to `min`."""

    min: int = Field(ge=0, description="workers kept running per hive, idle or not")
    max: int = Field(ge=1, description="workers at most per hive")

    @model_validator(mode="after")
    def _ordered(self) -> ReplicaRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is more than max ({self.max})")
        return self

    def __str__(self) -> str:
        return f"{self.min}..{self.max}"


def _replicas_kind(value: object) -> str:
    return "range" if isinstance(value, dict | ReplicaRange) else "fixed"


Replicas = Annotated[
    Annotated[int, Tag("fixed"), Field(ge=0)] | Annotated[ReplicaRange, Tag("range")],
    Discriminator(_replicas_kind),
]


class Deployment(_Strict):
    """How many workers of which model run on which hives."""

    name: Name | None = Field(
        default=None,
        description="names the deployment's workers (default: the model's name); needed when "
        "one model is deployed twice on a hive, e.g. on a GPU and on the CPU",
    )
    model: str
    worker: str
    hives: list[str] | Literal["all"] = "all"
    replicas: Replicas = Field(
        default=1,
        description="workers per hive: a number, or a range {min: N, max: M} the queen scales "
        "within by demand",
    )
    idle_ttl: Duration | None = Field(
        default=None,
        description="with a range of replicas: a worker idle this long is stopped (least "
        "recently used first, never below min); unset: idle workers are kept",
    )
    slots: Slots = SLOTS
    device: Device = DEVICE
    devices: list[GpuDevice] | Literal["all"] | None = Field(
        default=None,
        description="one worker per GPU on each hive (per `gpus_per_worker` GPUs): a list of "
        "cuda:N, or all of the hive's GPUs",
    )
    gpus_per_worker: int = Field(
        default=1,
        ge=1,
        le=64,
        description="with `devices:`, the GPUs of one worker: each worker takes this many of "
        "the list, in order, and the model is split over them",
    )
    split_mode: SplitMode = Field(
        default="layer",
        description="how a worker on several devices splits the model: whole layers per device, "
        "or rows of each matrix over its GPUs",
    )
    tensor_split: list[Annotated[float, Field(gt=0)]] | None = Field(
        default=None,
        description="the share of the model each device of a worker takes, one per device in "
        "the order the plan shows them (its GPUs, or its CPU, then each spanned hive's "
        "devices); default: by each device's memory",
    )
    span: list[Name] = Field(
        default_factory=list,
        description="hives whose devices (GPUs, else CPU and memory) the worker also uses, over "
        "llama.cpp's RPC: for a model bigger than one machine",
    )
    ctx_size: CtxSize = CTX_SIZE
    prompt_cache: PromptCache = ByteSize(PROMPT_CACHE)
    threads: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="threads each worker decodes with; default: a CPU worker takes its share "
        "of its hive's cores (the cores over the hive's CPU workers, as they come and go), so "
        "workers together never run more threads than the hive has cores",
    )
    serving: Serving = Field(
        default_factory=lambda: Serving(),
        description="timeouts, retries, queue and routing of the model's requests at the queen",
    )

    @property
    def key(self) -> str:
        """The name its workers and their addresses carry: `worker.HIVE.KEY[i]`."""
        return self.name or self.model

    @property
    def elastic(self) -> ReplicaRange | None:
        """The range of replicas the queen scales within; None for a fixed count."""
        return self.replicas if isinstance(self.replicas, ReplicaRange) else None

    @field_validator("idle_ttl")
    @classmethod
    def _idle_ttl_needs_a_range(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and not isinstance(info.data.get("replicas"), ReplicaRange):
            raise ValueError(
                "applies to a range of replicas only: give `replicas: {min: N, max: M}`, or drop it"
            )
        return value

    @field_validator("device")
    @classmethod
    def _one_device(cls, value: str) -> str:
        if "," in value:
            raise ValueError(
                "one device per worker here: for several GPUs per worker give "
                "`devices: [cuda:0, cuda:1]` with `gpus_per_worker: 2`"
            )
        return value

    @model_validator(mode="after")
    def _devices_or_replicas(self) -> Deployment:
        if self.devices is not None:
            given = sorted({"replicas", "device"} & self.model_fields_set)
            if given:
                raise ValueError(
                    f"`devices:` runs one worker per listed GPU: drop {' and '.join(given)}"
                )
            if isinstance(self.devices, list) and len(set(self.devices)) != len(self.devices):
                raise ValueError("`devices:` lists a GPU twice")
        return self

    @property
    def tensor_split_devices(self) -> int | None:
        """How many devices one worker uses when its hive alone decides (no `span:`): its
        GPUs, or its one device; None when it depends on the spanned hives' GPUs."""
        if self.span:
            return None
        return self.gpus_per_worker if self.devices is not None else 1


class Cluster(_Strict):
    """The whole declared cluster."""

    version: Literal[1] = 1
    queen: Queen = Queen()
    hives: list[Hive] = []
    models: list[Model] = []
    worker_binaries: list[WorkerBinary] = []
    deployments: list[Deployment] = []
    prune: bool = False
    self_heal: Annotated[SelfHeal, BeforeValidator(_switch)] = Field(
        default=SelfHeal(), description="keep the last applied cluster converged between applies"
    )
    peer_fetch: bool = Field(
        default=True,
        description="hives copy models and runtime wheels from each other over the LAN "
        "(sha256-checked) instead of each fetching from the source or compiling; false when "
        "the hives are farther from each other than from the source",
    )

    def serving(self, model: str) -> Serving | None:
        """How the queen serves `model`: its first deployment's settings (they all agree)."""
        return next((d.serving for d in self.deployments if d.model == model), None)

    def hive_names(self, deployment: Deployment) -> list[str]:
        """The hives a deployment runs on, in YAML order."""
        if deployment.hives == "all":
            return [hive.name for hive in self.hives]
        return list(deployment.hives)


Loc = tuple[str | int, ...]


def check_references(cluster: Cluster) -> list[tuple[Loc, str]]:
    """Cross-reference errors as (location in the YAML, message); empty when consistent."""
    errors: list[tuple[Loc, str]] = []
    for section in ("hives", "models", "worker_binaries"):
        seen: set[str] = set()
        for index, item in enumerate(getattr(cluster, section)):
            if item.name in seen:
                errors.append(((section, index, "name"), f"duplicate name {item.name!r}"))
            seen.add(item.name)
    models = {m.name for m in cluster.models}
    binaries = {b.name for b in cluster.worker_binaries}
    hives = {h.name for h in cluster.hives}
    pairs: set[tuple[str, str]] = set()
    serving: dict[str, Serving] = {}
    for index, deployment in enumerate(cluster.deployments):
        here: Loc = ("deployments", index)
        shared = serving.setdefault(deployment.model, deployment.serving)
        if shared != deployment.serving:
            errors.append(
                (
                    (*here, "serving"),
                    f"the deployments of model {deployment.model!r} share its queue: give them "
                    "the same `serving:` settings",
                )
            )
        if (
            deployment.serving.prefer_hive is not None
            and deployment.serving.prefer_hive not in hives
        ):
            errors.append(
                (
                    (*here, "serving", "prefer_hive"),
                    f"unknown hive {deployment.serving.prefer_hive!r}; {_known(hives)}",
                )
            )
        if deployment.model not in models:
            errors.append(
                ((*here, "model"), f"unknown model {deployment.model!r}; {_known(models)}")
            )
        if deployment.worker not in binaries:
            errors.append(
                (
                    (*here, "worker"),
                    f"unknown worker binary {deployment.worker!r}; {_known(binaries)}",
                )
            )
        if deployment.hives != "all":
            for position, hive in enumerate(deployment.hives):
                if hive not in hives:
                    errors.append(
                        ((*here, "hives", position), f"unknown hive {hive!r}; {_known(hives)}")
                    )
        errors.extend(_gpu_errors(deployment, here))
        errors.extend(_span_errors(cluster, deployment, here, hives))
        for hive in cluster.hive_names(deployment):
            if (hive, deployment.key) in pairs:
                what = "model" if deployment.name is None else "name"
                errors.append(
                    (
                        (*here, what),
                        f"deployment {deployment.key!r} is declared twice on hive {hive!r}; "
                        "give each of them its own `name:`",
                    )
                )
            pairs.add((hive, deployment.key))
    return errors


def _gpu_errors(deployment: Deployment, here: Loc) -> list[tuple[Loc, str]]:
    """`gpus_per_worker` divides `devices:`, and `tensor_split` has a share per device."""
    errors: list[tuple[Loc, str]] = []
    per = deployment.gpus_per_worker
    if deployment.devices is None and per != 1:
        errors.append(
            (
                (*here, "gpus_per_worker"),
                "takes the GPUs of `devices:`: give `devices: [cuda:0, …]` or `devices: all`",
            )
        )
    elif isinstance(deployment.devices, list) and len(deployment.devices) % per:
        errors.append(
            (
                (*here, "gpus_per_worker"),
                f"`devices:` lists {len(deployment.devices)} GPUs, not a multiple of {per} "
                f"(each worker takes {per} of them, in order)",
            )
        )
    count = deployment.tensor_split_devices
    shares = deployment.tensor_split
    if shares is not None and count is not None and len(shares) != count:
        errors.append(
            (
                (*here, "tensor_split"),
                f"{len(shares)} shares for a worker on {count} device{'s' if count > 1 else ''}: "
                "give one share per device",
            )
        )
    return errors


def _span_errors(
    cluster: Cluster, deployment: Deployment, here: Loc, hives: set[str]
) -> list[tuple[Loc, str]]:
    """A span names declared hives other than the worker's own, once each, for one worker on
    one hive."""
    if not deployment.span:
        return []
    errors: list[tuple[Loc, str]] = []
    runs_on = cluster.hive_names(deployment)
    workers = (
        len(deployment.devices) // deployment.gpus_per_worker
        if isinstance(deployment.devices, list)
        else 1  # `devices: all`: the plan checks that the hive has gpus_per_worker GPUs
        if deployment.devices == "all"
        else deployment.replicas
    )
    if workers != 1:
        errors.append(
            (
                (*here, "span"),
                "`span:` lends other hives' devices to one worker: give `replicas: 1` (or "
                "`devices:` with as many GPUs as `gpus_per_worker:`)",
            )
        )
    if len(runs_on) != 1:
        where = "`hives: all`" if deployment.hives == "all" else f"{len(runs_on)} hives"
        errors.append(
            (
                (*here, "span"),
                f"a worker that spans hives runs on one hive: give `hives: [NAME]`, not {where}",
            )
        )
    for position, hive in enumerate(deployment.span):
        if hive not in hives:
            errors.append(((*here, "span", position), f"unknown hive {hive!r}; {_known(hives)}"))
        elif hive in runs_on:
            errors.append(
                (
                    (*here, "span", position),
                    f"hive {hive!r} runs the worker itself: span only other hives",
                )
            )
        elif hive in deployment.span[:position]:
            errors.append(((*here, "span", position), f"hive {hive!r} is listed twice"))
    return errors


def _known(names: set[str]) -> str:
    return "declared: " + ", ".join(sorted(names)) if names else "none are declared"
