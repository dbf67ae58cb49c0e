"""Facts from a GGUF file's header: what the model is and what it costs to run.

Reads the header only (key/value metadata and tensor shapes), never the weights: a 40 GB file
is described in the time it takes to read its few megabytes of header.
"""

from __future__ import annotations

import math
import mmap
import re
import struct
from pathlib import Path
from typing import Any

from rbee.wire import GgufFacts, Purpose

__all__ = ["GgufError", "read_facts"]

_MAGIC = b"GGUF"
# GGUF value types: (struct format, size) for the fixed-size ones.
_FIXED = {
    0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4),
    6: ("<f", 4), 7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8),
}  # fmt: skip
_STRING, _ARRAY = 8, 9
# Where the tensor data starts: the header's end rounded up to this, unless the file says.
_ALIGNMENT = 32
_BLOCK = re.compile(r"^blk\.(\d+)\.")
# The tensors of llama.cpp's output layer (`LLM_TENSOR_OUTPUT`, `LLM_TENSOR_OUTPUT_NORM`).
_OUTPUT = ("output.", "output_norm.")
# llama.cpp's `general.file_type` (enum llama_ftype), as its quantize tool names them.
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
    38: "MXFP4_MOE",
}  # fmt: skip
# Arrays this long are skipped, not kept (a tokenizer's vocabulary, merges and scores).
_KEEP_ARRAY_MAX = 1024
# llama.cpp's `<arch>.pooling_type` (enum llama_pooling_type): mean, cls and last pool a
# sequence into one vector; rank pools it into the classifier's relevance score.
_POOLED, _RANK = frozenset({1, 2, 3}), 4
# Encoder-only architectures of llama.cpp: bidirectional attention (they cannot generate) and
# no KV cache (`llama_model::create_memory` makes none for them).
_ENCODERS = frozenset(
    {
        "bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "modern-bert",
        "neo-bert", "eurobert", "gemma-embedding",
    }
)  # fmt: skip


class GgufError(ValueError):
    """The file is not a GGUF this reader understands."""


def read_facts(path: Path) -> GgufFacts:
    """The model's facts from `path`'s header; GgufError when it is not a GGUF."""
    with path.open("rb") as handle:
        try:
            view = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            raise GgufError("not a GGUF file (it is empty)") from None
        with view:
            header = _Header(view)
            meta, parameters = header.read()
            sizes = header.tensor_sizes(_int(meta.get("general.alignment")) or _ALIGNMENT)
    arch = str(meta.get("general.architecture", ""))

    def of_arch(key: str) -> Any:
        return meta.get(f"{arch}.{key}")

    layers = _int(of_arch("block_count"))
    heads = _int(of_arch("attention.head_count"))
    kv_heads = _int(of_arch("attention.head_count_kv")) or heads
    embedding = _int(of_arch("embedding_length"))
    head_dim = embedding // heads if embedding and heads else None
    key_len = _int(of_arch("attention.key_length")) or head_dim
    value_len = _int(of_arch("attention.value_length")) or head_dim
    kv_per_token = (
        0
        if arch in _ENCODERS
        else 2 * layers * kv_heads * (key_len + value_len)  # f16: 2 bytes per value
        if layers and kv_heads and key_len and value_len
        else None
    )
    file_type = _int(meta.get("general.file_type"))
    layer_bytes, input_bytes, output_bytes = _weights(sizes, layers or 0)
    return GgufFacts(
        architecture=arch or None,
        name=str(meta["general.name"]) if "general.name" in meta else None,
        parameters=parameters,
        quantization=_FILE_TYPES.get(file_type) if file_type is not None else None,
        context_length=_int(of_arch("context_length")),
        chat_template="tokenizer.chat_template" in meta,
        kv_bytes_per_token=kv_per_token,
        purpose=_purpose(arch, of_arch("pooling_type"), of_arch("attention.causal")),
        layer_bytes=layer_bytes,
        input_bytes=input_bytes,
        output_bytes=output_bytes,
    )


def _weights(sizes: dict[str, int], layers: int) -> tuple[list[int], int, int]:
    """The weights' bytes per block (`blk.N.*`), of the input layer (every tensor outside the
    blocks and the output layer: the token embeddings, which llama.cpp keeps on the CPU) and
    of the output layer (`output.*`, `output_norm.*`; a model whose output is tied to its
    token embeddings has no `output.weight` of its own, and none is counted)."""
    blocks = [0] * layers
    input_bytes = output_bytes = 0
    for name, size in sizes.items():
        block = _BLOCK.match(name)
        if block is not None:
            index = int(block[1])
            blocks.extend([0] * (index + 1 - len(blocks)))
            blocks[index] += size
        elif name.startswith(_OUTPUT):
            output_bytes += size
        else:
            input_bytes += size
    return blocks, input_bytes, output_bytes


def _purpose(arch: str, pooling: Any, causal: Any) -> Purpose:
    """What the model is for, as llama.cpp decides how to run it: rank pooling scores a pair
    (a reranker); any other pooling, attention that is not causal, or an encoder-only
    architecture makes vectors; the rest generates text."""
    if pooling == _RANK:
        return "rerank"
    if pooling in _POOLED or causal is False or arch in _ENCODERS:
        return "embedding"
    return "chat"


class _Header:
    """A cursor over the memory-mapped file (the OS reads only the pages the header spans)."""

    def __init__(self, data: mmap.mmap) -> None:
        self._data = data
        self._at = 0
        self._offsets: dict[str, int] = {}

    def read(self) -> tuple[dict[str, Any], int]:
        if self._take(4) != _MAGIC:
            raise GgufError("not a GGUF file (no GGUF magic)")
        (version,) = self._unpack("<I", 4)
        if version < 2:
            raise GgufError(f"GGUF version {version} is too old")
        tensors, kvs = self._unpack("<QQ", 16)
        meta: dict[str, Any] = {}
        for _ in range(kvs):
            key = self._string()
            (kind,) = self._unpack("<I", 4)
            meta[key] = self._value(kind)
        parameters = 0
        for _ in range(tensors):
            name = self._string()
            (dims,) = self._unpack("<I", 4)
            shape = self._unpack(f"<{dims}Q", 8 * dims)
            _, offset = self._unpack("<IQ", 12)  # type, offset in the data
            self._offsets[name] = offset
            parameters += math.prod(shape)
        return meta, parameters

    def tensor_sizes(self, alignment: int) -> dict[str, int]:
        """Each tensor's bytes in the file (with its padding), once `read` has run: from its
        offset to the next tensor's, the last one to the end of the file. The data starts at
        the header's end rounded up to `alignment`."""
        start = -(-self._at // alignment) * alignment
        ordered = sorted(self._offsets.items(), key=lambda item: item[1])
        ends = [offset for _, offset in ordered[1:]] + [len(self._data) - start]
        return {name: end - offset for (name, offset), end in zip(ordered, ends, strict=True)}

    def _value(self, kind: int) -> Any:
        if kind in _FIXED:
            fmt, size = _FIXED[kind]
            return self._unpack(fmt, size)[0]
        if kind == _STRING:
            return self._string()
        if kind == _ARRAY:
            item, count = self._unpack("<IQ", 12)
            if count <= _KEEP_ARRAY_MAX:
                return [self._value(item) for _ in range(count)]
            if item in _FIXED:
                self._take(_FIXED[item][1] * count)
            elif item == _STRING:  # a vocabulary: 100k+ strings, skipped undecoded
                data, at = self._data, self._at
                for _ in range(count):
                    at += 8 + int.from_bytes(data[at : at + 8], "little")
                self._at = at
            else:
                for _ in range(count):
                    self._value(item)
            return None
        raise GgufError(f"unknown GGUF value type {kind}")

    def _string(self) -> str:
        (length,) = self._unpack("<Q", 8)
        return self._take(length).decode("utf-8", errors="replace")

    def _unpack(self, fmt: str, size: int) -> tuple[Any, ...]:
        return struct.unpack(fmt, self._take(size))

    def _take(self, size: int) -> bytes:
        end = self._at + size
        if end > len(self._data):
            raise GgufError("the GGUF header ends early (a truncated file?)")
        chunk = self._data[self._at : end]
        self._at = end
        return chunk


def _int(value: Any) -> int | None:
    """An integer fact; per-layer arrays (some models vary heads by layer) give their max."""
    if isinstance(value, list):
        numbers = [v for v in value if isinstance(v, int)]
        return max(numbers) if numbers else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
