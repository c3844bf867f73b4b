#!/usr/bin/env python3
"""Tiny random Qwen2 and Mistral models saved by transformers, converted to GGUF the way
llama.cpp's convert_hf_to_gguf.py converts them, with transformers' and llama.cpp's logits.

What it does: builds a Qwen2ForCausalLM (q/k/v biases, GQA, tied embeddings, RoPE base
1e6) and a MistralForCausalLM (GQA, untied head, sliding_window 16) with transformers,
fills every parameter (biases included, which transformers would start at zero) from a
seeded generator, saves each with save_pretrained, and converts the saved folder to an
f32 GGUF with this script's own code following convert_hf_to_gguf.py:

  qwen2    general.architecture "qwen2" (Qwen2Model): the generic keys only (block_count,
           context_length, embedding_length, feed_forward_length, head_count(_kv),
           rope.freq_base, layer_norm_rms_epsilon, file_type); q/k rows and biases as
           Hugging Face stores them (llama.cpp runs qwen2 with NEOX, rotate-half, RoPE);
           the biases as blk.N.attn_{q,k,v}.bias; no output.weight (tied).
  mistral  general.architecture "llama" (LlamaModel registers MistralForCausalLM): the
           generic keys, key_length/value_length (config.json has head_dim), vocab_size,
           rope.dimension_count; q rows permuted per query head, k rows per KV head
           (interleaved pairs, FORMATS.md 4.1). No sliding-window key: the converter
           writes none for llama and llama.cpp's llama graph attends to every earlier
           position, so the GGUF model is full causal attention.

Each file carries the 97-token byte-level BPE vocabulary of make_tiny_model.py (qwen2 with
pre-tokenizer "qwen2") so llama.cpp and finch can load it; logits do not depend on it.

Reference logits for fixed token sequences (all positions) go to
tests/fixtures/model/tiny_qwen2_mistral.json (the manifest) and tiny_{qwen2,mistral}.f32
(little-endian float32; per sequence, transformers' [n][97] then llama.cpp's [n][97], at
the offsets the manifest gives):
  - transformers: the float64 eager forward (model.double()) of the saved weights, stored
    as float32; the float32 forward's distance from it is recorded;
  - llama.cpp (llama-cpp-python, logits_all, f32 KV cache, one thread) on the GGUF.
Mistral's sliding window (16) makes transformers attend only to the last 16 positions;
llama.cpp does not, so for the 24-token sequence the two agree on the first 16 positions
only ("hf_positions" in the manifest says how many are comparable).

Run with the venv of scripts/interop-env.sh (torch, transformers 4.46, gguf, llama-cpp-python):
    ~/.cache/finch/venv/bin/python tests/reference/make_qwen2_mistral_gguf.py
"""
import json
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf  # noqa: E402
import llama_cpp  # noqa: E402
import transformers  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from make_tiny_model import GGUF_NAMES, MERGES, tokenizer_vocab  # noqa: E402
from make_tiny_model import gguf_name as tiny_gguf_name  # noqa: E402

OUT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                    "fixtures", "model"))
V, C, F, L, H, KVH, CTX = 97, 64, 96, 2, 4, 2, 128
WINDOW = 16
SHAPE = dict(vocab_size=V, hidden_size=C, intermediate_size=F, num_hidden_layers=L,
             num_attention_heads=H, num_key_value_heads=KVH, max_position_embeddings=CTX,
             bos_token_id=1, eos_token_id=2)
MODELS = [
    dict(name="tiny_qwen2", arch="qwen2", seed=20261206, pre="qwen2",
         config=transformers.Qwen2Config(**SHAPE, rope_theta=1e6, rms_norm_eps=1e-6,
                                         tie_word_embeddings=True, use_sliding_window=False)),
    dict(name="tiny_mistral", arch="llama", seed=20261207, pre="smollm",
         config=transformers.MistralConfig(**SHAPE, rope_theta=10000.0, rms_norm_eps=1e-5,
                                           tie_word_embeddings=False, sliding_window=WINDOW)),
]
SEQUENCES = [
    dict(tag="s1", ids=[42]),
    dict(tag="s7", ids=[1, 17, 96, 0, 53, 53, 8]),
    dict(tag="s16", ids=[5, 88, 23, 61, 2, 40, 77, 13, 96, 31, 9, 70, 44, 44, 19, 64]),
    dict(tag="s24", ids=[7, 3, 91, 60, 60, 12, 35, 81, 2, 49, 18, 94, 27, 66, 5, 40,
                         11, 73, 58, 30, 1, 85, 22, 47]),
]
def build(spec):
    """The model with every parameter drawn from the seed: weights and biases 0.1 N(0, 1),
    norm weights 1 + 0.1 N(0, 1), in named_parameters order."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(spec["config"],
                                                          attn_implementation="eager")
    rng = np.random.default_rng(spec["seed"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.from_numpy(rng.standard_normal(tuple(p.shape)))
            p.copy_(1.0 + 0.1 * r if name.endswith("norm.weight") else 0.1 * r)
    return model.eval()


def gguf_name(hf):
    """make_tiny_model's tensor names, biases included (blk.N.attn_q.bias)."""
    if not hf.startswith("model.layers."):
        return tiny_gguf_name(hf)
    _, _, l, rest = hf.split(".", 3)
    stem, suffix = rest.rsplit(".", 1)
    return f"blk.{l}.{GGUF_NAMES[stem]}.{suffix}"


def interleave_rows(w, heads):
    """convert_hf_to_gguf.py's permute for llama: within each head of D rows, GGUF row 2i
    is HF row i and GGUF row 2i + 1 is HF row D/2 + i (works on weights and biases)."""
    d = w.shape[0] // heads
    return w.reshape(heads, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert(folder, path, spec):
    """The saved folder as the GGUF convert_hf_to_gguf.py (f32) writes for it."""
    with open(os.path.join(folder, "config.json")) as f:
        hp = json.load(f)
    arch = spec["arch"]
    wr = gguf.GGUFWriter(path, arch)
    wr.add_string("general.type", "model")
    wr.add_string("general.name", spec["name"])
    wr.add_block_count(hp["num_hidden_layers"])
    wr.add_context_length(hp["max_position_embeddings"])
    wr.add_embedding_length(hp["hidden_size"])
    wr.add_feed_forward_length(hp["intermediate_size"])
    wr.add_head_count(hp["num_attention_heads"])
    wr.add_head_count_kv(hp["num_key_value_heads"])
    wr.add_rope_freq_base(hp["rope_theta"])
    wr.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    if hp.get("head_dim") is not None:
        wr.add_key_length(hp["head_dim"])
        wr.add_value_length(hp["head_dim"])
    wr.add_file_type(gguf.LlamaFileType.ALL_F32)
    if arch == "llama":
        wr.add_vocab_size(hp["vocab_size"])
        wr.add_rope_dimension_count(hp.get("head_dim")
                                    or hp["hidden_size"] // hp["num_attention_heads"])
    tokens, types = tokenizer_vocab()
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre(spec["pre"])
    wr.add_token_list(tokens)
    wr.add_token_types(types)
    wr.add_token_merges(MERGES)
    wr.add_bos_token_id(hp["bos_token_id"])
    wr.add_eos_token_id(hp["eos_token_id"])
    wr.add_add_bos_token(False)
    tensors = load_file(os.path.join(folder, "model.safetensors"))
    assert ("lm_head.weight" in tensors) != hp["tie_word_embeddings"]
    for hf in sorted(tensors):
        arr = tensors[hf].astype(np.float32)
        if arch == "llama" and ".q_proj." in hf:
            arr = interleave_rows(arr, hp["num_attention_heads"])
        elif arch == "llama" and ".k_proj." in hf:
            arr = interleave_rows(arr, hp["num_key_value_heads"])
        wr.add_tensor(gguf_name(hf), np.ascontiguousarray(arr))
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()
    return hp


def hf_logits(model, ids, dtype):
    m = model.to(dtype)
    with torch.no_grad():
        out = m(torch.tensor([ids])).logits[0]
    model.float()
    return out.double().numpy()


def main():
    manifest = dict(
        description=__doc__.split("\n")[0],
        versions=dict(torch=torch.__version__, transformers=transformers.__version__,
                      gguf=getattr(gguf, "__version__", None),
                      llama_cpp_python=llama_cpp.__version__, numpy=np.__version__),
        init="numpy default_rng(seed).standard_normal per parameter in named_parameters order: "
             "weights and biases 0.1 N, norm weights 1 + 0.1 N",
        logits="little-endian float32 [n][vocab] at float offsets 'hf' (transformers, "
               "float64 eager forward) and 'llamacpp' (f32 KV cache) of the model's file",
        models=[])
    for spec in MODELS:
        model = build(spec)
        gguf_path = os.path.join(OUT, spec["name"] + ".gguf")
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            hp = convert(tmp, gguf_path, spec)
        llm = llama_cpp.Llama(model_path=gguf_path, logits_all=True, n_ctx=CTX, n_threads=1,
                              n_threads_batch=1, seed=0, verbose=False,
                              type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
        window = hp.get("sliding_window") if hp.get("use_sliding_window", True) else None
        blob, seqs = [], []
        offset = 0
        for s in SEQUENCES:
            ids, n = s["ids"], len(s["ids"])
            ref = hf_logits(model, ids, torch.float64)
            f32 = hf_logits(model, ids, torch.float32)
            llm.reset()
            llm.eval(ids)
            cpp = np.array(llm.scores[:n], dtype=np.float64)
            hf_n = min(n, window) if window else n
            # the window is what parts transformers from llama.cpp: without it they agree
            if window and n > window:
                model.config.sliding_window = None
                full = hf_logits(model, ids, torch.float64)
                model.config.sliding_window = window
                assert np.abs(full[:window] - ref[:window]).max() == 0
                assert np.abs(full[window:] - ref[window:]).max() > 1e-3
                full_vs_cpp = float(np.abs(full - cpp).max())
            rec = dict(tag=s["tag"], ids=ids, hf_positions=hf_n, hf=offset,
                       llamacpp=offset + n * V,
                       max_abs_logit=float(np.abs(ref).max()),
                       hf_f32_vs_f64=float(np.abs(f32 - ref).max()),
                       llamacpp_vs_hf=float(np.abs(cpp[:hf_n] - ref[:hf_n]).max()),
                       argmax_equal=bool((cpp[:hf_n].argmax(1) == ref[:hf_n].argmax(1)).all()))
            if window and n > window:
                rec["llamacpp_vs_hf_without_window"] = full_vs_cpp
                rec["llamacpp_vs_hf_past_window"] = float(np.abs(cpp[window:] -
                                                                 ref[window:]).max())
            seqs.append(rec)
            blob += [ref.astype("<f4"), cpp.astype("<f4")]
            offset += 2 * n * V
            print(spec["name"], {k: v for k, v in rec.items() if k != "ids"})
        del llm
        np.concatenate([b.ravel() for b in blob]).astype("<f4").tofile(
            os.path.join(OUT, spec["name"] + ".f32"))
        manifest["models"].append(dict(
            name=spec["name"], gguf=spec["name"] + ".gguf", logits=spec["name"] + ".f32",
            arch=spec["arch"], hf_architecture=hp["architectures"][0], seed=spec["seed"],
            sliding_window_hf=window, n_vocab=V, n_embd=C, n_ff=F, n_layer=L, n_head=H,
            n_head_kv=KVH, n_ctx=CTX, rope_theta=hp["rope_theta"],
            rms_eps=hp["rms_norm_eps"], tied=hp["tie_word_embeddings"],
            n_params=int(sum(p.numel() for p in model.parameters())),
            gguf_bytes=os.path.getsize(gguf_path), sequences=seqs))
    with open(os.path.join(OUT, "tiny_qwen2_mistral.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
