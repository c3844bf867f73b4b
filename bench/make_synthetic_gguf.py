"""Writes a LLaMA-shaped GGUF of random f16 weights for memory benchmarks at scale (QLoRA on
a 7B model: bench/README.md), with the default model's tokenizer so finch can tokenize
its data. The weights are random, so nothing is learned; shapes, types and sizes are what
matter.

    ~/.cache/finch/venv/bin/python bench/make_synthetic_gguf.py OUT.gguf [--preset 7b]

Presets: 7b (LLaMA-2-7B's shape: 32 blocks, hidden 4096, FFN 11008, 32 heads; with
SmolLM2's 49,152-token vocabulary, 6.8 B parameters, 13.6 GB), 1b (16 blocks, hidden
2048, FFN 5632, 32 / 4 heads).
"""
import argparse
import os

import numpy as np
import gguf

PRESETS = {
    "7b": dict(n_layer=32, n_embd=4096, n_ff=11008, n_head=32, n_head_kv=32),
    "1b": dict(n_layer=16, n_embd=2048, n_ff=5632, n_head=32, n_head_kv=4),
}
TOKENIZER = os.path.join(os.environ.get("FINCH_CACHE", os.path.expanduser("~/.cache/finch")),
                         "SmolLM2-135M-Instruct.Q4_1.gguf")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="7b")
    ap.add_argument("--tokenizer-from", default=TOKENIZER)
    a = ap.parse_args()
    p = PRESETS[a.preset]
    src = gguf.GGUFReader(a.tokenizer_from)
    n_vocab = len(src.fields["tokenizer.ggml.tokens"].data)
    C, F, L = p["n_embd"], p["n_ff"], p["n_layer"]
    D = C // p["n_head"]
    w = gguf.GGUFWriter(a.out, "llama")
    w.add_name(f"synthetic-{a.preset}")
    w.add_context_length(4096)
    w.add_embedding_length(C)
    w.add_block_count(L)
    w.add_feed_forward_length(F)
    w.add_head_count(p["n_head"])
    w.add_head_count_kv(p["n_head_kv"])
    w.add_rope_dimension_count(D)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(1)  # MOSTLY_F16
    w.add_vocab_size(n_vocab)
    # the tokenizer, key by key, from the default model
    for name, field in src.fields.items():
        if not name.startswith("tokenizer."):
            continue
        vt = field.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            et = field.types[1]
            if et == gguf.GGUFValueType.STRING:
                vals = [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]
            else:
                vals = [field.parts[i][0].item() for i in field.data]
            w.add_array(name, vals)
        elif vt == gguf.GGUFValueType.STRING:
            w.add_string(name, bytes(field.parts[field.data[0]]).decode("utf-8"))
        else:
            w.add_key_value(name, field.parts[field.data[0]][0].item(), vt)
    rng = np.random.default_rng(0)
    # one random pool, sliced per tensor (random content is all a memory benchmark needs)
    pool = (rng.standard_normal(64 << 20, dtype=np.float32) * 0.02).astype(np.float16)

    def tensor(rows, cols, k):
        n = rows * cols
        start = (k * 7919) % (pool.size - 1)
        reps = -(-(start + n) // pool.size)
        flat = np.tile(pool, reps)[start:start + n] if reps > 1 else pool[start:start + n]
        return flat.reshape(rows, cols)

    k = 0
    shapes = [("token_embd.weight", n_vocab, C)]
    for l in range(L):
        KD = p["n_head_kv"] * D
        shapes += [(f"blk.{l}.attn_q.weight", C, C), (f"blk.{l}.attn_k.weight", KD, C),
                   (f"blk.{l}.attn_v.weight", KD, C), (f"blk.{l}.attn_output.weight", C, C),
                   (f"blk.{l}.ffn_gate.weight", F, C), (f"blk.{l}.ffn_up.weight", F, C),
                   (f"blk.{l}.ffn_down.weight", C, F)]
    for name, rows, cols in shapes:
        w.add_tensor(name, tensor(rows, cols, k))
        k += 1
    for l in range(L):
        for n in ("attn_norm", "ffn_norm"):
            w.add_tensor(f"blk.{l}.{n}.weight", np.ones(C, dtype=np.float32))
    w.add_tensor("output_norm.weight", np.ones(C, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{a.out}: {a.preset}, {os.path.getsize(a.out) / 1e9:.1f} GB")


if __name__ == "__main__":
    main()
