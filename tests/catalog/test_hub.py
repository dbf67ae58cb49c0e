"""hf:// models through the real huggingface_hub client, against a local Hub (HF_ENDPOINT)."""

from __future__ import annotations

import os
from pathlib import Path

import llama_cpp
import pytest

from rbee.catalog import ArtifactCatalog, ChecksumMismatchError
from rbee.catalog.gguf import read_facts
from rbee.errors import NotFoundError, RbeeError, UnavailableError
from tests.fixtures.hub import FakeHub
from tests.fixtures.synthetic_gguf import write_model

REPO = "rbee-test/tiny-GGUF"
FILE = "tiny-Q4_K_M.gguf"
SOURCE = f"hf://{REPO}/{FILE}"


@pytest.fixture
def blob(tmp_path: Path) -> Path:
    path = tmp_path / "blob.gguf"
    path.write_bytes(os.urandom(3 << 20))
    return path


@pytest.fixture
def catalog(tmp_path: Path) -> ArtifactCatalog:
    return ArtifactCatalog(tmp_path / "models")


def test_the_hubs_sha256_and_commit_are_recorded(
    hub: FakeHub, blob: Path, catalog: ArtifactCatalog
) -> None:
    served = hub.add(REPO, FILE, blob)
    entry = catalog.add("tiny", SOURCE)
    assert Path(entry.path).read_bytes() == blob.read_bytes()
    assert (entry.sha256, entry.size_bytes) == (served.sha256, served.size)
    assert entry.revision == hub.commit(REPO)
    assert hub.sent == served.size


def test_a_pinned_revision_is_honoured(
    hub: FakeHub, tmp_path: Path, catalog: ArtifactCatalog
) -> None:
    old, new = tmp_path / "old.gguf", tmp_path / "new.gguf"
    old.write_bytes(b"old weights" * 1000)
    new.write_bytes(b"new weights" * 1000)
    hub.add(REPO, FILE, new)
    hub.add(REPO, FILE, old, revision="v1")
    entry = catalog.add("tiny", f"{SOURCE}@v1")
    assert Path(entry.path).read_bytes() == old.read_bytes()
    assert entry.revision == hub.commit(REPO, "v1")


def test_a_pinned_sha256_that_differs_from_the_hubs_fails_before_any_byte(
    hub: FakeHub, blob: Path, catalog: ArtifactCatalog
) -> None:
    served = hub.add(REPO, FILE, blob)
    with pytest.raises(ChecksumMismatchError, match=f"{SOURCE} has {served.sha256}"):
        catalog.add("tiny", SOURCE, "0" * 64)
    assert hub.sent == 0
    assert catalog.list() == []


def test_a_dropped_connection_continues_where_it_stopped(
    hub: FakeHub, blob: Path, catalog: ArtifactCatalog
) -> None:
    served = hub.add(REPO, FILE, blob)
    hub.drop_after = served.size // 2
    entry = catalog.add("tiny", SOURCE)
    assert entry.sha256 == served.sha256
    ranges = [h.get("range") for method, path, h in hub.requests if path.startswith("/cdn/")]
    assert ranges == [None, f"bytes={served.size // 2}-"]
    assert hub.sent == served.size  # the second request sent only what was missing


@pytest.mark.parametrize(
    ("source", "error", "message"),
    [
        ("hf://rbee-test/nope/x.gguf", NotFoundError, "no repository rbee-test/nope"),
        (f"hf://{REPO}/missing.gguf", NotFoundError, f"no file missing.gguf in {REPO}"),
        (f"{SOURCE}@v9", NotFoundError, "no revision 'v9'"),
    ],
    ids=["repo", "file", "revision"],
)
def test_what_the_hub_lacks_is_a_clear_error(
    hub: FakeHub,
    blob: Path,
    catalog: ArtifactCatalog,
    source: str,
    error: type[RbeeError],
    message: str,
) -> None:
    hub.add(REPO, FILE, blob)
    with pytest.raises(error, match=message):
        catalog.add("tiny", source)


def test_a_gated_repo_says_to_accept_the_license_and_set_a_token(
    hub: FakeHub, blob: Path, catalog: ArtifactCatalog
) -> None:
    hub.add(REPO, FILE, blob)
    hub.gated.add(REPO)
    with pytest.raises(RbeeError, match="gated") as failure:
        catalog.add("tiny", SOURCE)
    assert failure.value.hint is not None and "HF_TOKEN" in failure.value.hint


def test_hf_token_reaches_the_hub_but_never_the_cdn(
    hub: FakeHub, blob: Path, catalog: ArtifactCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.add(REPO, FILE, blob)
    hub.private[REPO] = "hf_s3cret"
    with pytest.raises(NotFoundError):
        catalog.add("tiny", SOURCE)
    monkeypatch.setenv("HF_TOKEN", "hf_s3cret")
    catalog.add("tiny", SOURCE)
    cdn = [h for method, path, h in hub.requests if path.startswith("/cdn/")]
    assert cdn and all("authorization" not in headers for headers in cdn)


def test_an_unreachable_hub_is_transient(
    monkeypatch: pytest.MonkeyPatch, catalog: ArtifactCatalog
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(UnavailableError, match=r"cannot reach http://127\.0\.0\.1:9"):
        catalog.add("tiny", SOURCE)


def test_a_split_gguf_fetches_every_part_and_llama_cpp_loads_it(
    hub: FakeHub, tmp_path: Path, catalog: ArtifactCatalog
) -> None:
    made = tmp_path / "made"
    made.mkdir()
    first = write_model(
        made / "tiny.gguf", layers=2, embd=256, ff=512, vocab=1000, split_max_tensors=10
    )
    parts = sorted(made.glob("tiny-*-of-*.gguf"))
    assert len(parts) == 3
    served = [hub.add(REPO, part.name, part) for part in parts]
    entry = catalog.add("tiny", f"hf://{REPO}/{first.name}")
    assert Path(entry.path).name == "payload-00001-of-00003.gguf"
    for number, part in enumerate(parts, 1):
        copy = Path(entry.path).with_name(f"payload-{number:05d}-of-00003.gguf")
        assert copy.read_bytes() == part.read_bytes()
    assert entry.sha256 == served[0].sha256  # the file the source names
    assert entry.size_bytes == sum(s.size for s in served)
    assert entry.facts is not None and entry.facts.parameters == read_facts_total(parts)
    assert catalog.get("tiny") == entry
    model = llama_cpp.Llama(entry.path, n_ctx=256, verbose=False)  # finds parts 2 and 3
    assert model.create_completion("hi", max_tokens=4, temperature=0)["usage"]["completion_tokens"]


def test_a_split_gguf_must_be_named_by_its_first_part(
    hub: FakeHub, tmp_path: Path, catalog: ArtifactCatalog
) -> None:
    with pytest.raises(RbeeError, match="name the first part"):
        catalog.add("tiny", f"hf://{REPO}/tiny-00002-of-00003.gguf")


def read_facts_total(parts: list[Path]) -> int:
    return sum(read_facts(part).parameters or 0 for part in parts)
