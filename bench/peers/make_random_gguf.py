#!/usr/bin/env python3
"""Write a GGUF of a random Llama model, the peer of `nibble bench --synthetic llama-7b --layers N`.

The shape is tools/nibble/bench.cpp's "llama-7b" (hidden 4096, intermediate 11008, 32 heads, 32 kv heads,
vocab 32000, rope theta 10000, rms eps 1e-5), with a chosen number of layers. Like nibble's RandomSource, the
norm weights are ones and every matrix is random with std 0.02 (normal here, uniform there: the speed of a
matmul does not depend on the values). Matrices are written as F16 (norms F32, as llama.cpp's converter does),
ready for llama-quantize. The vocab is a dummy SentencePiece ("llama") one laid out like Llama 2's: <unk>,
<s>, </s>, the 256 byte tokens <0x00>..<0xFF>, then distinct filler pieces up to the vocab size, enough for
llama.cpp to load it (llama-bench feeds random token ids and never tokenizes text).

Needs numpy, pyyaml and sentencepiece (imported by gguf-py) and llama.cpp's gguf-py on PYTHONPATH:
  PYTHONPATH=$LLAMA_DIR/gguf-py python3 make_random_gguf.py --layers 4 -o /tmp/llama7b-l4-f16.gguf
"""

import argparse
import sys

import numpy as np

try:
    import gguf
except ImportError:
    sys.exit("make_random_gguf.py: cannot import gguf; put llama.cpp's gguf-py on PYTHONPATH "
             "(and pip install numpy pyyaml sentencepiece)")

SHAPES = {  # the same table as tools/nibble/bench.cpp (hidden, intermediate, heads, kv heads, layers, vocab, theta)
    "llama-7b": (4096, 11008, 32, 32, 32, 32000, 10000.0),
    "llama-13b": (5120, 13824, 40, 40, 40, 32000, 10000.0),
    "tinyllama-1.1b": (2048, 5632, 32, 4, 22, 32000, 10000.0),
}


def dummy_vocab(n):
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    if n < len(tokens):
        raise SystemExit(f"vocab {n} smaller than the {len(tokens)} special + byte tokens")
    tokens += [f"\u2581t{i}" for i in range(n - len(tokens))]
    types += [gguf.TokenType.NORMAL] * (n - len(types))
    scores = [0.0] * 259 + [-float(i) for i in range(n - 259)]
    return tokens, scores, types


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", required=True, help="GGUF file to write")
    ap.add_argument("--shape", default="llama-7b", choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, default=4, help="num_hidden_layers (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--f32", action="store_true", help="matrices in F32 instead of F16")
    a = ap.parse_args()

    H, I, NQ, NKV, _, V, theta = SHAPES[a.shape]
    L = a.layers
    D = H // NQ
    mat_dtype = np.float32 if a.f32 else np.float16
    rng = np.random.default_rng(a.seed)

    # tensors in llama.cpp's names; numpy shapes are HF's (out, in), stored by gguf-py as ggml ne = (in, out)
    plan = [("token_embd.weight", (V, H))]
    for i in range(L):
        p = f"blk.{i}."
        plan += [
            (p + "attn_norm.weight", (H,)),
            (p + "attn_q.weight", (NQ * D, H)),
            (p + "attn_k.weight", (NKV * D, H)),
            (p + "attn_v.weight", (NKV * D, H)),
            (p + "attn_output.weight", (H, NQ * D)),
            (p + "ffn_norm.weight", (H,)),
            (p + "ffn_gate.weight", (I, H)),
            (p + "ffn_up.weight", (I, H)),
            (p + "ffn_down.weight", (H, I)),
        ]
    plan += [("output_norm.weight", (H,)), ("output.weight", (V, H))]

    w = gguf.GGUFWriter(a.output, "llama")
    w.add_name(f"random {a.shape} {L} layers")
    w.add_context_length(4096)
    w.add_embedding_length(H)
    w.add_block_count(L)
    w.add_feed_forward_length(I)
    w.add_head_count(NQ)
    w.add_head_count_kv(NKV)
    w.add_rope_dimension_count(D)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(V)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if a.f32 else gguf.LlamaFileType.MOSTLY_F16)
    tokens, scores, types = dummy_vocab(V)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)

    def dtype_of(shape):
        return np.dtype(np.float32) if len(shape) == 1 else np.dtype(mat_dtype)

    for name, shape in plan:
        dt = dtype_of(shape)
        w.add_tensor_info(name, shape, dt, int(np.prod(shape)) * dt.itemsize)
    # stream the tensors one at a time: the whole model never sits in memory
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape in plan:
        if len(shape) == 1:
            t = np.ones(shape, dtype=np.float32)
        else:
            t = rng.standard_normal(shape, dtype=np.float32)
            t *= 0.02
            t = t.astype(mat_dtype)
        w.write_tensor_data(t)
    w.close()
    n_params = sum(int(np.prod(s)) for _, s in plan)
    print(f"{a.output}: {a.shape}, {L} layers, {n_params / 1e9:.3f} B parameters")


if __name__ == "__main__":
    main()
