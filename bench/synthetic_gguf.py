"""Write a llama-architecture GGUF with random weights, for speed checks where no real model
can be fetched (the GPU machine reaches no hub and takes 64 MiB of files).

The shape is real (TinyLlama 1.1B's by default), so tokens per second and VRAM are what a real
model of that shape costs; the text it writes is noise. Needs the `gguf` package.

    python bench/synthetic_gguf.py OUT.gguf [--layers 22 --embd 2048 --ff 5632 --vocab 32000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gguf
import numpy as np

_ARCH = "llama"


def write_model(
    path: Path,
    *,
    layers: int = 22,
    embd: int = 2048,
    ff: int = 5632,
    heads: int = 32,
    kv_heads: int = 4,
    vocab: int = 32000,
    context: int = 4096,
    seed: int = 0,
) -> Path:
    """A random-weight F16 model of this shape at `path`, with a SentencePiece-style vocab."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), _ARCH)
    writer.add_name("rbee-synthetic")
    writer.add_context_length(context)
    writer.add_embedding_length(embd)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(embd // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    _vocab(writer, vocab)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    def norm() -> np.ndarray:
        return np.ones(embd, dtype=np.float32)

    kv = kv_heads * (embd // heads)
    writer.add_tensor("token_embd.weight", weight(vocab, embd))
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", norm())
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(embd, embd))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(kv, embd))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(kv, embd))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(embd, embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", norm())
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(ff, embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(ff, embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(embd, ff))
    writer.add_tensor("output_norm.weight", norm())
    # Rows of zeros for <unk>, <s> and </s>: a logit of 0 never wins against thousands of
    # random ones, so generation runs to max_tokens instead of stopping at a random </s>.
    output = weight(vocab, embd)
    output[:3] = 0
    writer.add_tensor("output.weight", output)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _vocab(writer: gguf.GGUFWriter, size: int) -> None:
    """<unk> <s> </s>, the 256 byte tokens, then made-up pieces up to `size`."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    while len(tokens) < size:
        tokens.append(f"\u2581w{len(tokens)}")
        types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(size - 259)])
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--embd", type=int, default=2048)
    parser.add_argument("--ff", type=int, default=5632)
    parser.add_argument("--vocab", type=int, default=32000)
    args = parser.parse_args()
    write_model(args.out, layers=args.layers, embd=args.embd, ff=args.ff, vocab=args.vocab)
    print(f"{args.out}: {args.out.stat().st_size / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
