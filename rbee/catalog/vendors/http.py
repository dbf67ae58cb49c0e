"""`https://` (and `http://`) sources, and the download every remote vendor shares.

The download streams into the catalog's sink and resumes with `Range: bytes=N-`: within one
fetch after a dropped connection (retried with backoff and jitter), and across fetches from the
bytes an interrupted one left on disk (a hive that was killed mid-download).
"""

from __future__ import annotations

import logging
import ssl

import httpx
import tenacity

from rbee.catalog.vendors import Progress, Resolved, Sink
from rbee.errors import NotFoundError, RbeeError, UnavailableError
from rbee.net import hide_url_secrets

__all__ = ["CHUNK_BYTES", "HttpVendor", "download"]

CHUNK_BYTES = 1 << 20
_ATTEMPTS = 6
_TIMEOUT = httpx.Timeout(30.0, read=60.0)
_log = logging.getLogger(__name__)


class HttpVendor:
    """Downloads a URL as it is (the cluster YAML must pin its sha256)."""

    def resolve(self, source: str) -> Resolved:
        """The URL itself: its size is learnt from the download."""
        return Resolved(url=source)

    def fetch(self, resolved: Resolved, sink: Sink, progress: Progress) -> None:
        """Download from `sink.offset` on."""
        download(resolved, sink, progress)


class _Dropped(Exception):
    """The connection broke mid-way: worth another attempt from the new offset."""


def download(resolved: Resolved, sink: Sink, progress: Progress, attempts: int = _ATTEMPTS) -> None:
    """GET `resolved.url` into `sink` from its offset; a dropped connection is retried (with
    backoff and jitter, `attempts` in all) from the bytes that arrived. Errors a person can act
    on are RbeeErrors that name the URL."""
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential_jitter(multiplier=0.5, max=10.0, jitter=0.5),
        retry=tenacity.retry_if_exception_type(_Dropped),
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                _attempt(resolved, sink, progress)
    except _Dropped as exc:
        raise UnavailableError(
            f"download of {_shown(resolved.url)} broke off {attempts} times ({exc}); "
            f"{sink.offset} bytes are kept and the next try continues from there"
        ) from None


def _attempt(resolved: Resolved, sink: Sink, progress: Progress) -> None:
    headers = dict(resolved.headers)
    headers["Accept-Encoding"] = "identity"
    start = sink.offset
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        with httpx.stream(
            "GET",
            resolved.url,
            headers=headers,
            follow_redirects=True,
            timeout=_TIMEOUT,
            verify=resolved.verify,
        ) as response:
            total = _check(response, resolved, start, sink)
            if total is not None and sink.offset == total:
                progress(total, total)
                return
            progress(sink.offset, total)
            # As received: a chunk buffered to a fixed size would be lost when the line drops.
            for chunk in response.iter_bytes():
                sink.write(chunk)
                progress(sink.offset, total)
    except (httpx.TransportError, httpx.DecodingError) as exc:
        url = _shown(resolved.url)
        if _untrusted(exc):
            raise RbeeError(
                f"{url}: the server's TLS certificate is not trusted ({exc})",
                hint="for a private CA, point SSL_CERT_FILE at its bundle in the hive's "
                "environment",
            ) from None
        _log.warning("download dropped url=%s at=%d error=%r", url, sink.offset, exc)
        raise _Dropped(repr(exc)) from exc
    if total is not None and sink.offset < total:
        raise _Dropped(f"the server closed after {sink.offset} of {total} bytes")


def _check(response: httpx.Response, resolved: Resolved, start: int, sink: Sink) -> int | None:
    """The artifact's whole size, after sorting out what the server answered to the Range."""
    status = response.status_code
    url = _shown(resolved.url)
    if status == 416 and start:
        size = response.headers.get("content-range", "").rpartition("/")[2]
        if start in (resolved.size, int(size) if size.isdigit() else None):
            return start  # everything was already there
    if status in (401, 403):
        raise RbeeError(
            f"{url}: access denied (HTTP {status})",
            hint="a gated or private file needs a token (HF_TOKEN for the Hugging Face Hub)",
        )
    if status == 404:
        raise NotFoundError(f"{url}: not found (HTTP 404)")
    if status >= 500 or status == 429:
        raise _Dropped(f"HTTP {status}")
    if status == 206:
        first, _, size = response.headers.get("content-range", "").partition("/")
        if first.split(" ")[-1].split("-")[0] != str(start):
            raise _Dropped(f"the server sent another range: {first!r}")
        return int(size) if size.isdigit() else resolved.size
    if status != 200:
        raise RbeeError(f"{url}: unexpected HTTP {status}")
    if start:
        _log.info("server ignored Range url=%s: starting over", url)
        sink.restart()
    length = response.headers.get("content-length")
    return int(length) if length and length.isdigit() else resolved.size


def _untrusted(exc: BaseException) -> bool:
    """Whether a transport error is a refused certificate (which no retry will fix)."""
    seen: BaseException | None = exc
    while seen is not None:
        # httpx passes the ssl module's error on as text only.
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(
            seen
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _shown(url: str) -> str:
    """The URL with its secrets hidden (presigned CDN URLs carry credentials in the query)."""
    return hide_url_secrets(url)
