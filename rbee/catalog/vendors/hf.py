"""`hf://ORG/REPO/PATH.gguf[@REVISION]`: a file of a Hugging Face Hub model repository.

huggingface_hub resolves the file (HF_ENDPOINT and HF_TOKEN honoured): the commit a revision
points to, the LFS sha256 the Hub publishes, the size and where the bytes are. The bytes come
through rbee's own ranged download (`rbee.catalog.vendors.http`), because huggingface_hub from
1.18 on starts an interrupted download over from byte 0 in every new call: a hive killed at
90 % of a 40 GB file would fetch the whole file again.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from rbee.catalog.vendors import Progress, Resolved, Sink
from rbee.catalog.vendors.http import download
from rbee.defaults import SPLIT_GGUF
from rbee.errors import NotFoundError, RbeeError, UnavailableError

__all__ = ["HfSource", "HfVendor", "parse_hf_source"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DEFAULT_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class HfSource:
    repo: str
    filename: str
    revision: str | None

    def __str__(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        return f"hf://{self.repo}/{self.filename}{at}"


def parse_hf_source(source: str) -> HfSource:
    """`hf://ORG/REPO/PATH[@REVISION]` → repo, file, revision; ValueError when malformed."""
    if not source.startswith("hf://"):
        raise ValueError("expected hf://ORG/REPO/PATH.gguf[@REVISION]")
    body, at, revision = source[len("hf://") :].partition("@")
    parts = body.split("/")
    if len(parts) < 3 or any(part in {"", ".", ".."} for part in parts):
        raise ValueError("expected hf://ORG/REPO/PATH.gguf[@REVISION]")
    if at and not revision:
        raise ValueError("the revision after '@' is empty")
    return HfSource("/".join(parts[:2]), "/".join(parts[2:]), revision or None)


class HfVendor:
    """Files of Hugging Face Hub repositories; `timeout_s` bounds each metadata request."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s

    def resolve(self, source: str) -> Resolved:
        """One HEAD to the Hub: the commit, the LFS sha256, the size and the download URL. A
        split GGUF (`…-00001-of-0000N.gguf`) resolves every part, one HEAD each."""
        try:
            hf = parse_hf_source(source)
        except ValueError as exc:
            raise RbeeError(f"invalid source {source!r}: {exc}") from None
        split = SPLIT_GGUF.match(hf.filename)
        if split is None:
            return self._resolve(hf)
        if int(split["part"]) != 1:
            raise RbeeError(f"{hf}: name the first part of a split GGUF (-00001-of-…)")
        count = int(split["count"])
        parts = [self._resolve(hf)]
        for number in range(2, count + 1):
            name = f"{split['stem']}-{number:05d}-of-{count:05d}.gguf"
            # Every part at the first part's commit, so the parts belong together.
            revision = parts[0].revision or hf.revision
            parts.append(self._resolve(HfSource(hf.repo, name, revision)))
        sizes = [p.size for p in parts]
        total = sum(s for s in sizes if s is not None) if None not in sizes else None
        return replace(parts[0], size=total, parts=tuple(parts))

    def _resolve(self, hf: HfSource) -> Resolved:
        # Imported here: a hive that serves no hf:// model never pays for the import.
        import huggingface_hub
        from huggingface_hub import errors

        endpoint = os.environ.get("HF_ENDPOINT") or _DEFAULT_ENDPOINT
        url = huggingface_hub.hf_hub_url(
            hf.repo, hf.filename, revision=hf.revision, endpoint=endpoint
        )
        try:
            meta = huggingface_hub.get_hf_file_metadata(
                url, endpoint=endpoint, timeout=self.timeout_s
            )
        except errors.GatedRepoError:
            raise RbeeError(
                f"{hf}: the repository is gated",
                hint="accept its license on the Hub and set HF_TOKEN on the hive",
            ) from None
        except errors.RepositoryNotFoundError:
            raise NotFoundError(
                f"{hf}: no repository {hf.repo} on {endpoint}",
                hint="a private repository needs HF_TOKEN on the hive",
            ) from None
        except errors.RevisionNotFoundError:
            raise NotFoundError(f"{hf}: no revision {hf.revision!r} in {hf.repo}") from None
        except errors.EntryNotFoundError:
            raise NotFoundError(f"{hf}: no file {hf.filename} in {hf.repo}") from None
        except errors.HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status in (401, 403):
                raise RbeeError(
                    f"{hf}: access denied (HTTP {status})", hint="set HF_TOKEN on the hive"
                ) from None
            raise UnavailableError(f"{hf}: the Hub answered HTTP {status}") from None
        # huggingface_hub's HTTP client raises its own transport errors (refused, timed out).
        except (errors.HTTPError, OSError) as exc:  # type: ignore[attr-defined]
            raise UnavailableError(f"{hf}: cannot reach {endpoint}: {exc}") from None
        etag = (meta.etag or "").lower()
        # The token goes to the Hub only, never to the CDN a download is redirected to.
        same_host = urlsplit(meta.location).netloc == urlsplit(endpoint).netloc
        return Resolved(
            url=meta.location,
            size=meta.size,
            sha256=etag if _SHA256.match(etag) else None,
            revision=meta.commit_hash,
            headers=_token_header() if same_host else {},
        )

    def fetch(self, resolved: Resolved, sink: Sink, progress: Progress) -> None:
        """Download from `sink.offset` on."""
        download(resolved, sink, progress)


def _token_header() -> dict[str, str]:
    """HF_TOKEN (or the token `hf auth login` saved) as a bearer header."""
    import huggingface_hub

    token = huggingface_hub.get_token()
    return {"authorization": f"Bearer {token}"} if token else {}
