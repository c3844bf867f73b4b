#!/usr/bin/env python3
"""Tiny random LLaMA models as GGUF files, with PyTorch reference logits.

What it does: draws two small LLaMA-architecture models from a seeded random generator
in Hugging Face convention (q_proj/k_proj rows in rotate-half order), writes each as an
f32 GGUF file the way convert_hf_to_gguf.py would (Q/K rows permuted for interleaved
RoPE, FORMATS.md 4.1; shapes as ne = reversed torch shape, FORMATS.md 3.2; KV types of
FORMATS.md 1.8), and computes reference logits for fixed token sequences with a plain
float64 PyTorch implementation of the HF math (tiny_llama_torch.py, run with Debian's
/usr/bin/python3, which has torch). Everything lands in tests/fixtures/model/:

  tiny_llama.gguf             2 layers, untied output head
  tiny_llama_tied.gguf        1 layer, tied embeddings (no output.weight)
  tiny_llama*_sN.f32          logits [N][97] of sequence N, little-endian float32
  tiny_llama.json             the manifest: configs, seeds, sequences, file names,
                              chunk splits for incremental decoding, versions, and the
                              llama.cpp cross-check when llama-cpp-python is present

What it does not do: it writes no safetensors copy and no quantized weights. The
tokenizer it adds (a 97-token byte-level BPE vocabulary with 20 merges, pre-tokenizer
"smollm") exists so that llama.cpp and finch can load the files; the logits do not
depend on it.

Conventions: weights ~ N(0, 0.1^2), norm weights 1 + 0.1 N(0, 1), numpy
default_rng(seed) drawing tensors in the order of hf_tensor_shapes(). The reference
logits are computed on the un-permuted HF weights with rotate-half RoPE; a correct
GGUF reader with interleaved RoPE (or un-permuting at load) reproduces them.

Regenerate (from the repository root; needs python3 with gguf + numpy, and
/usr/bin/python3 with python3-torch):
    python3 tests/reference/make_tiny_model.py
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

import gguf

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.normpath(os.path.join(HERE, "..", "fixtures", "model"))
TORCH_PYTHON = os.environ.get("FINCH_TORCH_PYTHON", "/usr/bin/python3")

BASE = dict(n_vocab=97, n_embd=64, n_head=4, n_head_kv=2, head_dim=16, n_ff=96,
            rms_eps=1e-5, rope_theta=10000.0, n_ctx_train=128)
MODELS = [
    dict(BASE, name="tiny_llama", n_layer=2, tied=False, seed=20240601),
    dict(BASE, name="tiny_llama_tied", n_layer=1, tied=True, seed=20240602),
]

# Fixed token sequences; ids cover both ends of the vocabulary.
SEQUENCES = [
    dict(tag="s1", ids=[42]),
    dict(tag="s7", ids=[1, 17, 96, 0, 53, 53, 8]),
    dict(tag="s16", ids=[5, 88, 23, 61, 2, 40, 77, 13, 96, 31, 9, 70, 44, 44, 19, 64]),
]
# Strings whose llama.cpp tokenization the manifest records (tokenizer tests can use them).
TOKENIZE_SAMPLES = [
    ("the cat and the dog is singing", False),
    ("Hello, World! 42 (ok)\nnew line", False),
    ("<|im_start|>user\nhi there<|im_end|>\n", True),
    ("<|im_start|>user", False),
    ("caf\u00e9 ~ #", False),
]
# Incremental decoding must reproduce the single-call logits: [start, end) chunks.
CHUNKS = {"s1": [[0, 1]], "s7": [[0, 4], [4, 7]], "s16": [[0, 1], [1, 7], [7, 16]]}


# ---------------------------------------------------------------- tokenizer (97 tokens)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# GPT-2 byte-to-unicode alphabet: space is U+0120 ("Ġ"), newline U+010A ("Ċ"); printable
# ASCII maps to itself.
BASE_CHARS = (["\u0120", "\u010a"]
              + [chr(c) for c in range(ord("a"), ord("z") + 1)]
              + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
              + [chr(c) for c in range(ord("0"), ord("9") + 1)]
              + list(".,!?'-:;()"))
MERGES = ["\u0120 t", "h e", "\u0120t he", "i n", "e r", "a n", "\u0120 a", "o n", "r e",
          "\u0120 s", "e n", "a t", "o u", "in g", "\u0120 w", "\u0120 c", "i s",
          "\u0120a n", "\u0120an d", "\u0120 o"]


def tokenizer_vocab():
    tokens = SPECIALS + BASE_CHARS + [m.replace(" ", "") for m in MERGES]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    assert len(tokens) == BASE["n_vocab"] and len(set(tokens)) == len(tokens)
    for m in MERGES:  # every merge joins two existing tokens into an existing token
        a, b = m.split(" ")
        assert a in tokens and b in tokens and a + b in tokens
    return tokens, types


# ---------------------------------------------------------------- weights

def hf_tensor_shapes(cfg):
    """HF names and torch shapes [out, in], in the order the generator draws them."""
    C, F, V, D = cfg["n_embd"], cfg["n_ff"], cfg["n_vocab"], cfg["head_dim"]
    QD, KD = cfg["n_head"] * D, cfg["n_head_kv"] * D
    out = [("model.embed_tokens.weight", (V, C))]
    for l in range(cfg["n_layer"]):
        p = f"model.layers.{l}."
        out += [(p + "input_layernorm.weight", (C,)),
                (p + "self_attn.q_proj.weight", (QD, C)),
                (p + "self_attn.k_proj.weight", (KD, C)),
                (p + "self_attn.v_proj.weight", (KD, C)),
                (p + "self_attn.o_proj.weight", (C, QD)),
                (p + "post_attention_layernorm.weight", (C,)),
                (p + "mlp.gate_proj.weight", (F, C)),
                (p + "mlp.up_proj.weight", (F, C)),
                (p + "mlp.down_proj.weight", (C, F))]
    out.append(("model.norm.weight", (C,)))
    if not cfg["tied"]:
        out.append(("lm_head.weight", (V, C)))
    return out


def make_weights(cfg):
    rng = np.random.default_rng(cfg["seed"])
    w = {}
    for name, shape in hf_tensor_shapes(cfg):
        r = rng.standard_normal(shape)
        w[name] = (1.0 + 0.1 * r if name.endswith("norm.weight") else 0.1 * r).astype(np.float32)
    return w


def hf_to_gguf_rows(w, n_heads):
    """Reorders Q or K rows from HF (rotate-half) order to GGUF (interleaved) order.

    Within each head of hd rows: GGUF row 2i = HF row i, GGUF row 2i+1 = HF row hd/2 + i.
    """
    hd = w.shape[0] // n_heads
    src = np.empty(w.shape[0], dtype=np.int64)
    for h in range(n_heads):
        for i in range(hd // 2):
            src[h * hd + 2 * i] = h * hd + i
            src[h * hd + 2 * i + 1] = h * hd + hd // 2 + i
    return w[src]


GGUF_NAMES = {
    "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    _, _, l, rest = hf.split(".", 3)
    return f"blk.{l}.{GGUF_NAMES[rest[: -len('.weight')]]}.weight"


def write_gguf(path, cfg, w):
    wr = gguf.GGUFWriter(path, "llama")  # also writes general.architecture = "llama"
    wr.add_string("general.type", "model")
    wr.add_string("general.name", cfg["name"])
    wr.add_uint32("general.file_type", 0)  # ALL_F32
    wr.add_uint32("llama.context_length", cfg["n_ctx_train"])
    wr.add_uint32("llama.embedding_length", cfg["n_embd"])
    wr.add_uint32("llama.block_count", cfg["n_layer"])
    wr.add_uint32("llama.feed_forward_length", cfg["n_ff"])
    wr.add_uint32("llama.attention.head_count", cfg["n_head"])
    wr.add_uint32("llama.attention.head_count_kv", cfg["n_head_kv"])
    wr.add_float32("llama.rope.freq_base", cfg["rope_theta"])
    wr.add_float32("llama.attention.layer_norm_rms_epsilon", cfg["rms_eps"])
    wr.add_uint32("llama.rope.dimension_count", cfg["head_dim"])
    wr.add_uint32("llama.attention.key_length", cfg["head_dim"])
    wr.add_uint32("llama.attention.value_length", cfg["head_dim"])
    wr.add_uint32("llama.vocab_size", cfg["n_vocab"])
    tokens, types = tokenizer_vocab()
    wr.add_string("tokenizer.ggml.model", "gpt2")
    wr.add_string("tokenizer.ggml.pre", "smollm")
    wr.add_array("tokenizer.ggml.tokens", tokens)
    wr.add_array("tokenizer.ggml.token_type", types)
    wr.add_array("tokenizer.ggml.merges", MERGES)
    wr.add_uint32("tokenizer.ggml.bos_token_id", 1)
    wr.add_uint32("tokenizer.ggml.eos_token_id", 2)
    wr.add_uint32("tokenizer.ggml.unknown_token_id", 0)
    wr.add_uint32("tokenizer.ggml.padding_token_id", 2)
    wr.add_bool("tokenizer.ggml.add_bos_token", False)
    wr.add_bool("tokenizer.ggml.add_space_prefix", False)
    for hf, arr in w.items():
        if hf.endswith("q_proj.weight"):
            arr = hf_to_gguf_rows(arr, cfg["n_head"])
        elif hf.endswith("k_proj.weight"):
            arr = hf_to_gguf_rows(arr, cfg["n_head_kv"])
        wr.add_tensor(gguf_name(hf), np.ascontiguousarray(arr, dtype=np.float32))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


# ---------------------------------------------------------------- reference and checks

def torch_reference(cfg, w, outdir, tmp):
    npz = os.path.join(tmp, cfg["name"] + ".npz")
    np.savez(npz, **w)
    run_cfg = dict(cfg, sequences=[dict(ids=s["ids"], file=s["file"]) for s in cfg["sequences"]])
    cfg_path = os.path.join(tmp, cfg["name"] + ".json")
    report = os.path.join(tmp, cfg["name"] + ".report.json")
    with open(cfg_path, "w") as f:
        json.dump(run_cfg, f)
    subprocess.run([TORCH_PYTHON, os.path.join(HERE, "tiny_llama_torch.py"), "--weights", npz,
                    "--config", cfg_path, "--outdir", outdir, "--report", report], check=True)
    with open(report) as f:
        return json.load(f)


def check_gguf_roundtrip(path, cfg, w):
    """Reads the file back with gguf and checks names, shapes, types and the permutation."""
    r = gguf.GGUFReader(path)
    tensors = {t.name: t for t in r.tensors}
    assert len(tensors) == len(w), (len(tensors), len(w))
    for hf, arr in w.items():
        t = tensors[gguf_name(hf)]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(t.shape) == list(reversed(arr.shape)), (hf, t.shape, arr.shape)
        data = np.asarray(t.data).reshape(arr.shape)
        if "q_proj" in hf or "k_proj" in hf:
            heads = cfg["n_head"] if "q_proj" in hf else cfg["n_head_kv"]
            hd = arr.shape[0] // heads
            # undo: HF row h*hd + i is GGUF row h*hd + 2i; HF row h*hd + hd/2 + i is 2i+1
            back = data.reshape(heads, hd // 2, 2, -1).transpose(0, 2, 1, 3).reshape(arr.shape)
            assert np.array_equal(back, arr), hf
            assert not np.array_equal(data, arr), hf
        else:
            assert np.array_equal(data, arr), hf


def llamacpp_check(path, cfg, outdir):
    """Max |llama.cpp logits - reference| per sequence, or None without llama-cpp-python."""
    try:
        import llama_cpp
    except ImportError:
        return None
    # An f32 KV cache: llama.cpp's default f16 cache alone costs ~1e-3 in these logits.
    llm = llama_cpp.Llama(model_path=path, logits_all=True, n_ctx=128, n_threads=1,
                          n_threads_batch=1, seed=0, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    res = {"llama_cpp_python_version": llama_cpp.__version__, "kv_cache": "f32",
           "max_abs_diff": {}}
    for s in cfg["sequences"]:
        ref = np.fromfile(os.path.join(outdir, s["file"]), dtype="<f4").reshape(-1, cfg["n_vocab"])
        llm.reset()
        llm.eval(s["ids"])
        got = np.array(llm.scores[: len(s["ids"])], dtype=np.float32)
        res["max_abs_diff"][s["tag"]] = float(np.abs(got - ref).max())
    # How llama.cpp tokenizes with the tiny vocabulary (bytes with no token are dropped).
    res["tokenize"] = [
        {"text": text, "parse_special": special,
         "ids": llm.tokenize(text.encode("utf-8"), add_bos=True, special=special)}
        for text, special in TOKENIZE_SAMPLES]
    del llm
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--no-llamacpp", action="store_true", help="skip the llama.cpp cross-check")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    manifest = {
        "description": "tiny random LLaMA models (GGUF, f32) and float64 PyTorch reference "
                       "logits; made by tests/reference/make_tiny_model.py",
        "gguf_python_version": gguf.__version__ if hasattr(gguf, "__version__") else None,
        "numpy_version": np.__version__,
        "weight_init": "numpy default_rng(seed).standard_normal per tensor in HF order; "
                       "weights 0.1*N, norm weights 1 + 0.1*N",
        "logits_format": "little-endian float32, row-major [n_tokens][n_vocab]; each sequence "
                         "starts at position 0",
        "incremental": "feeding a sequence as the listed [start, end) chunks into one session "
                       "(KV cache kept between calls) must reproduce the same logits for "
                       "every position",
        "reference": "float64 PyTorch, HF convention (un-permuted Q/K, rotate-half RoPE, "
                     "inv_freq = theta^(-2i/D) in float64), stored as float32",
        "models": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for m in MODELS:
            cfg = dict(m)
            cfg["sequences"] = [dict(tag=s["tag"], ids=s["ids"], n_tokens=len(s["ids"]),
                                     file=f"{m['name']}_{s['tag']}.f32",
                                     chunks=CHUNKS[s["tag"]]) for s in SEQUENCES]
            w = make_weights(cfg)
            gguf_path = os.path.join(args.out, m["name"] + ".gguf")
            write_gguf(gguf_path, cfg, w)
            check_gguf_roundtrip(gguf_path, cfg, w)
            rep = torch_reference(cfg, w, args.out, tmp)
            manifest["torch_version"] = rep["torch_version"]
            entry = dict(cfg, gguf=os.path.basename(gguf_path),
                         n_params=int(sum(a.size for a in w.values())),
                         logits_max_abs={x["file"]: x["max_abs"] for x in rep["written"]})
            if not args.no_llamacpp:
                entry["llamacpp_check"] = llamacpp_check(gguf_path, cfg, args.out)
            manifest["models"].append(entry)
            print(f"{m['name']}: {entry['n_params']} params, "
                  f"llama.cpp check {entry.get('llamacpp_check')}", file=sys.stderr)
    with open(os.path.join(args.out, "tiny_llama.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
