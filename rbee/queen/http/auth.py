"""Who is calling the queen: API keys, for what (scope) and how fast (requests and tokens/min),
and the check of a bearer credential (`Authenticator`) that the front door and the status
page's login share.

Scopes, least privilege first: `inference` calls the OpenAI routes and the jobs; `plan` plans
and reads the control plane's state (for CI on pull requests: it changes nothing, and gets no
inference, no logs and no keys); `admin` calls everything.

A key is shown once, when it is made; the queen's SQLite keeps only its sha256 (keys are 256
random bits, so a fast hash is enough: there is nothing to guess). Lookups on the hot path hit
an in-memory map of hash → key, refreshed whenever a key is made or revoked.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from rbee.errors import RbeeError
from rbee.wire import ApiKey, KeyScope

__all__ = ["OPEN", "PREFIX", "Authenticator", "Keys", "Limiter", "Need", "Principal", "Scope"]

Scope = KeyScope
#: What a route asks of its caller (`rbee.queen.http.front` says which route asks what).
Need = Literal["open", "inference", "plan", "admin"]
#: The needs a key of each scope meets (the cluster token meets every one).
_MEETS: dict[Scope, frozenset[Need]] = {
    "inference": frozenset({"open", "inference"}),
    "plan": frozenset({"open", "plan"}),
    "admin": frozenset({"open", "inference", "plan", "admin"}),
}
#: What every rbee key starts with (secret scanners can look for it).
PREFIX = "rbee_"


class Limiter:
    """Token buckets per key: `rpm` requests and `tpm` tokens a minute, bursts up to a minute's
    worth. Tokens are known only after an answer, so a request is admitted while the token
    bucket is above zero and its tokens are taken afterwards (the bucket may go below zero)."""

    def __init__(
        self, rpm: int | None, tpm: int | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._clock = clock
        self._requests = float(rpm or 0)
        self._tokens = float(tpm or 0)
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        elapsed, self._at = now - self._at, now
        if self.rpm:
            self._requests = min(float(self.rpm), self._requests + elapsed * self.rpm / 60)
        if self.tpm:
            self._tokens = min(float(self.tpm), self._tokens + elapsed * self.tpm / 60)

    def admit(self) -> float | None:
        """None when a request may go now (and counts it), else seconds until one may."""
        self._refill()
        waits = []
        if self.rpm and self._requests < 1:
            waits.append((1 - self._requests) * 60 / self.rpm)
        if self.tpm and self._tokens <= 0:
            waits.append((1 - self._tokens) * 60 / self.tpm)
        if waits:
            return max(waits)
        if self.rpm:
            self._requests -= 1
        return None

    def spend(self, tokens: int) -> None:
        """Take the tokens an answer used."""
        if self.tpm:
            self._refill()
            self._tokens -= tokens


@dataclass
class Principal:
    """Who is calling: a key, the cluster token (`cluster`), or anyone on a route that is open
    to all (`open`: /health, the status page's login form)."""

    name: str
    scope: Scope | Literal["cluster", "open"]
    limiter: Limiter | None = field(default=None, repr=False)

    def may(self, needed: Need) -> bool:
        if self.scope == "open" or self.scope == "cluster":
            return True
        return needed in _MEETS[self.scope]

    def over_limit(self) -> tuple[str, int] | None:
        """Whether a request of this key may go now (it is counted if so); else the message
        and the `Retry-After` seconds of its 429."""
        wait_s = self.limiter.admit() if self.limiter is not None else None
        if wait_s is None:
            return None
        message = f"key {self.name!r} is over its rate limit; retry in {wait_s:.1f} s"
        return message, max(1, round(wait_s + 0.5))

    def spend(self, tokens: int) -> None:
        """Take the tokens an answer used from this key's `tpm` (if it has limits)."""
        if self.limiter is not None:
            self.limiter.spend(tokens)


class Keys:
    """The queen's API keys, in its SQLite (`api_keys`, made by `Store`)."""

    def __init__(self, db: sqlite3.Connection, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock
        self._by_hash: dict[str, Principal] = {}
        self._load()

    def _load(self) -> None:
        rows = self._db.execute(
            "SELECT hash, name, scope, rpm, tpm FROM api_keys WHERE revoked_at IS NULL"
        ).fetchall()
        previous = {p.name: p for p in self._by_hash.values()}
        self._by_hash = {}
        for digest, name, scope, rpm, tpm in rows:
            old = previous.get(name)
            limiter = old.limiter if old and old.scope == scope else None
            if rpm or tpm:
                if limiter is None or (limiter.rpm, limiter.tpm) != (rpm, tpm):
                    limiter = Limiter(rpm, tpm)
            else:
                limiter = None
            self._by_hash[digest] = Principal(name, scope, limiter)

    @property
    def exist(self) -> bool:
        """Whether any key is live: from then on every route but /health needs one."""
        return bool(self._by_hash)

    def lookup(self, secret: str) -> Principal | None:
        return self._by_hash.get(_digest(secret))

    def create(
        self, name: str, scope: Scope, rpm: int | None = None, tpm: int | None = None
    ) -> tuple[ApiKey, str]:
        """A new key: its record and the secret, which nothing keeps."""
        secret = PREFIX + secrets.token_urlsafe(32)
        try:
            self._db.execute(
                "INSERT INTO api_keys (name, hash, prefix, scope, rpm, tpm, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, _digest(secret), secret[:12], scope, rpm, tpm, self._clock()),
            )
        except sqlite3.IntegrityError:
            raise RbeeError(
                f"a key named {name!r} exists already",
                hint="revoke it first (`rbee key revoke NAME`) or choose another name",
            ) from None
        self._load()
        key = self.get(name)
        assert key is not None
        return key, secret

    def get(self, name: str) -> ApiKey | None:
        return next((k for k in self.list() if k.name == name), None)

    def list(self) -> list[ApiKey]:
        rows = self._db.execute(
            "SELECT name, prefix, scope, rpm, tpm, created_at FROM api_keys "
            "WHERE revoked_at IS NULL ORDER BY name"
        ).fetchall()
        return [
            ApiKey(name=n, prefix=p, scope=s, rpm=r, tpm=t, created_at=c)
            for n, p, s, r, t, c in rows
        ]

    def revoke(self, name: str) -> ApiKey:
        key = self.get(name)
        if key is None:
            raise RbeeError(f"no key named {name!r}", hint="`rbee key list` shows the keys")
        # The row stays (with its hash nulled) so that history can still name the key.
        self._db.execute(
            "UPDATE api_keys SET revoked_at = ?, hash = NULL WHERE name = ? AND revoked_at IS NULL",
            (self._clock(), name),
        )
        self._load()
        return key


#: Anyone, on a route open to all.
OPEN = Principal("anyone", "open")
_CLUSTER = Principal("cluster-token", "cluster")


class Authenticator:
    """Who a bearer credential is: an API key (`keys`) or the cluster `token`, which opens
    every route (it is the operator's)."""

    def __init__(self, keys: Keys, token: str) -> None:
        self._keys = keys
        self._token = f"Bearer {token}".encode()

    def authenticate(self, authorization: bytes | None, needed: Need) -> Principal | int:
        """Who sent an `Authorization` header, or the HTTP status that refuses them (401
        unknown, 403 a key whose scope does not meet `needed`)."""
        if needed == "open":
            return OPEN
        if authorization is not None:
            if hmac.compare_digest(authorization, self._token):
                return _CLUSTER
            if authorization[:7].lower() == b"bearer ":
                found = self._keys.lookup(authorization[7:].decode("latin-1").strip())
                if found is not None:
                    return found if found.may(needed) else 403
        return 401

    def check(self, secret: str) -> Principal | int:
        """Who `secret` (an API key or the cluster token) is on the admin routes, or the HTTP
        status that refuses it (401 unknown, 403 an inference or plan key)."""
        return self.authenticate(b"Bearer " + secret.encode(), "admin")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
