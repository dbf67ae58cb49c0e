"""Facts from GGUF headers, read from the two real models the tests ship."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rbee.catalog import ArtifactCatalog
from rbee.catalog.gguf import GgufError, read_facts
from rbee.wire import GgufFacts
from tests.fixtures.model import demo_model_path


def test_gemma_is_a_base_model_without_a_chat_template(gguf: Path) -> None:
    facts = read_facts(gguf).model_copy(
        update={"layer_bytes": None, "input_bytes": None, "output_bytes": None}
    )
    assert facts == GgufFacts(
        architecture="gemma3",
        name="Gemma 3 270m",
        parameters=268_098_176,
        quantization="Q4_K_M",
        context_length=32768,
        chat_template=False,
        # 18 layers * 1 KV head * (256 + 256) dims * 2 bytes
        kv_bytes_per_token=18_432,
        purpose="chat",
    )


def test_smollm2_has_its_chat_template() -> None:
    facts = read_facts(demo_model_path())
    assert (facts.architecture, facts.quantization, facts.context_length) == ("llama", "Q4_1", 8192)
    assert facts.chat_template
    assert facts.kv_bytes_per_token == 2 * 30 * 3 * (64 + 64)
    assert facts.describe() == "llama 135M Q4_1, ctx 8192, chat template"


def test_the_weights_of_the_blocks_input_and_output_add_up_to_the_tensor_data() -> None:
    """Checked against the gguf package's own reader on SmolLM2 (on gemma, whose 262k-token
    vocabulary that reader parses for 19 s, tests/hive/test_models.py pins the figures)."""
    path = demo_model_path()
    facts = read_facts(path)
    assert facts.layer_bytes is not None and facts.input_bytes and facts.output_bytes is not None
    layers = 30
    assert len(facts.layer_bytes) == layers and all(facts.layer_bytes)
    gguf_reader = pytest.importorskip("gguf").GGUFReader(path)
    data = path.stat().st_size - gguf_reader.data_offset
    assert sum(facts.layer_bytes) + facts.input_bytes + facts.output_bytes == data
    # Every tensor's own bytes fit in what is counted for it (the rest is alignment padding).
    own = {t.name: int(t.n_bytes) for t in gguf_reader.tensors}
    blocks = [0] * layers
    for name, size in own.items():
        if name.startswith("blk."):
            blocks[int(name.split(".")[1])] += size
    padding = [got - want for got, want in zip(facts.layer_bytes, blocks, strict=True)]
    assert all(0 <= pad < 32 * 16 for pad in padding)


def test_a_file_that_is_no_gguf_or_cut_short_is_refused(tmp_path: Path, gguf: Path) -> None:
    other = tmp_path / "other.bin"
    other.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(GgufError, match="no GGUF magic"):
        read_facts(other)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(gguf.read_bytes()[:100_000])
    with pytest.raises(GgufError, match="ends early"):
        read_facts(truncated)


def test_a_model_recorded_before_facts_existed_gets_them_when_listed(
    gguf: Path, tmp_path: Path
) -> None:
    catalog = ArtifactCatalog(tmp_path / "models")
    entry = catalog.add("gemma", gguf.as_uri())
    metadata = Path(entry.path).with_name("metadata.json")
    old = json.loads(metadata.read_text())
    del old["facts"]  # as an rbee of before this version wrote it
    metadata.write_text(json.dumps(old))
    [listed] = catalog.list()
    assert listed.facts == read_facts(gguf)
    assert json.loads(metadata.read_text())["facts"]["architecture"] == "gemma3"  # kept


def test_facts_recorded_before_rbee_read_what_a_model_is_for_are_read_again(
    embedding_gguf: Path, tmp_path: Path
) -> None:
    catalog = ArtifactCatalog(tmp_path / "models")
    entry = catalog.add("bge", embedding_gguf.as_uri())
    metadata = Path(entry.path).with_name("metadata.json")
    old = json.loads(metadata.read_text())
    del old["facts"]["purpose"]  # as an rbee of before this version wrote it
    metadata.write_text(json.dumps(old))
    [listed] = catalog.list()
    assert listed.facts is not None and listed.facts.purpose == "embedding"
    assert json.loads(metadata.read_text())["facts"]["purpose"] == "embedding"  # kept
