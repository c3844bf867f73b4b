#!/usr/bin/env python3
"""A tiny random GPT-2 saved by transformers, converted to GGUF the way llama.cpp's
convert_hf_to_gguf.py converts GPT-2, with transformers' and llama.cpp's logits.

What it does: builds a GPT2LMHeadModel (2 layers, n_embd 64, 4 heads, n_positions 64,
gelu_new, LayerNorm eps 1e-5, the head tied to wte) whose vocabulary is the byte-level BPE
tokenizer of tests/fixtures/tokenizer-hf/gpt2.tokenizer.json (398 tokens, ByteLevel
pre-tokenizer with GPT-2's regex; its two unused ids filled with [PADn] placeholders, 400), fills every parameter (biases and LayerNorm biases
included, which transformers would start at zero or one) from a seeded generator, saves it
with save_pretrained (float32 safetensors, Conv1D weights stored [in, out]) plus that
tokenizer.json and a tokenizer_config.json (<|endoftext|> as bos, eos, unk) into tests/fixtures/model/tiny_gpt2/, and converts the folder to an f32
GGUF with this script's own code following convert_hf_to_gguf.py's GPT2Model:

  general.architecture "gpt2"; gpt2.block_count, context_length (n_ctx, which GPT2Config
  keeps equal to n_positions), embedding_length, feed_forward_length (4 n_embd),
  attention.head_count, attention.layer_norm_epsilon, file_type (config.json gets n_ctx
  as the original GPT-2 configs have it); tensors with the
  "transformer." prefix dropped and mapped by gguf's tensor map (wte -> token_embd, wpe ->
  position_embd, h.N.ln_1 -> blk.N.attn_norm, attn.c_attn -> attn_qkv, attn.c_proj ->
  attn_output, ln_2 -> ffn_norm, mlp.c_fc -> ffn_up, mlp.c_proj -> ffn_down, ln_f ->
  output_norm); the Conv1D weights (c_attn, c_proj, c_fc) transposed to [out, in]; a copy
  of token_embd written as output.weight (GPT-2's head is tied to wte); the tokenizer as
  tokenizer.ggml.model "gpt2", pre "gpt-2", tokens, types (control for added special
  tokens), merges.

Reference logits for fixed token sequences (all positions) go to tiny_gpt2.f32
(little-endian float32; per sequence transformers' [n][V] then llama.cpp's [n][V] at the
offsets tiny_gpt2.json gives):
  - transformers: the float64 eager forward (model.double()) of the saved weights, stored
    as float32; the float32 forward's distance from it is recorded;
  - llama.cpp (llama-cpp-python, logits_all, f32 KV cache, one thread) on the GGUF.
tiny_gpt2_texts.json records the ids `tokenizers` gives 311 strings (edge cases of GPT-2's
pre-tokenizer and the lines of datasets/quotes/general.jsonl), which llama.cpp gives too
on the GGUF (the same vocabulary is in the folder's tokenizer.json and the GGUF).

Run with the venv of scripts/interop-env.sh (torch, transformers 4.46, gguf, tokenizers,
llama-cpp-python):
    ~/.cache/finch/venv/bin/python tests/reference/make_gpt2_fixtures.py
"""
import json
import os
import shutil

import numpy as np
import torch

import gguf
import llama_cpp
import tokenizers
import transformers
from safetensors.numpy import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.normpath(os.path.join(HERE, "..", "fixtures"))
OUT = os.path.join(FIX, "model")
NAME = "tiny_gpt2"
TOKENIZER = os.path.join(FIX, "tokenizer-hf", "gpt2.tokenizer.json")
SEED = 20261208
C, L, H, CTX = 64, 2, 4, 64
SEQUENCES = [
    dict(tag="s1", ids=[42]),
    dict(tag="s7", ids=[1, 17, 399, 0, 53, 53, 8]),
    dict(tag="s16", ids=[5, 88, 230, 61, 2, 40, 377, 13, 96, 31, 9, 270, 44, 44, 19, 164]),
    dict(tag="s40", ids=[(i * 37 + 11) % 400 for i in range(40)]),
]
# GPT-2's pre-tokenizer regex at work: contractions ('s 't 're 've 'm 'll 'd), letters,
# digits, other symbols, runs of spaces and newlines, non-ASCII letters; then the 300
# prompts + completions of datasets/quotes/general.jsonl
TEXTS = ["Hello world, the cat is singing.", " 42 apples\nand 7 pears", "don't stop",
         "it's we're they've I'm you'll he'd", "  two  spaces   three\n\n\nnewlines\t tab",
         "caf\u00e9 na\u00efve \u00fcber \u65e5\u672c\u8a9e \U0001f600!", "x=3.14; y=[1,2,3]",
         "UPPER lower MiXeD 123abc abc123 ___ ---", "<|endoftext|> is text here", " ", ""]
QUOTES = os.path.normpath(os.path.join(HERE, "..", "..", "datasets", "quotes", "general.jsonl"))


def build(vocab):
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=vocab, n_positions=CTX, n_ctx=CTX, n_embd=C, n_layer=L, n_head=H,
        activation_function="gelu_new", layer_norm_epsilon=1e-5, bos_token_id=0,
        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config)
    model.config._attn_implementation = "eager"
    rng = np.random.default_rng(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.from_numpy(rng.standard_normal(tuple(p.shape)))
            is_ln_w = (".ln_" in name or name.startswith("transformer.ln_f")) and \
                name.endswith("weight")
            p.copy_(1.0 + 0.1 * r if is_ln_w else 0.1 * r)
    return model.eval()


GGUF_STEMS = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
              "ln_2": "ffn_norm", "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}


def gguf_name(hf):
    name = hf[len("transformer."):] if hf.startswith("transformer.") else hf
    top = {"wte.weight": "token_embd.weight", "wpe.weight": "position_embd.weight",
           "ln_f.weight": "output_norm.weight", "ln_f.bias": "output_norm.bias"}
    if name in top:
        return top[name]
    _, l, rest = name.split(".", 2)
    stem, suffix = rest.rsplit(".", 1)
    return f"blk.{l}.{GGUF_STEMS[stem]}.{suffix}"


def convert(folder, path):
    """The saved folder as the GGUF convert_hf_to_gguf.py (f32) writes for it."""
    with open(os.path.join(folder, "config.json")) as f:
        hp = json.load(f)
    with open(os.path.join(folder, "tokenizer.json")) as f:
        tj = json.load(f)
    wr = gguf.GGUFWriter(path, "gpt2")
    wr.add_string("general.type", "model")
    wr.add_string("general.name", NAME)
    wr.add_block_count(hp["n_layer"])
    wr.add_context_length(hp["n_ctx"])
    wr.add_embedding_length(hp["n_embd"])
    wr.add_feed_forward_length(4 * hp["n_embd"])
    wr.add_head_count(hp["n_head"])
    wr.add_layer_norm_eps(hp["layer_norm_epsilon"])
    wr.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = tj["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    special = {a["id"] for a in tj.get("added_tokens", []) if a.get("special")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    wr.add_tokenizer_model("gpt2")
    wr.add_tokenizer_pre("gpt-2")
    wr.add_token_list(tokens)
    wr.add_token_types([3 if i in special else 5 if t.startswith("[PAD") else 1
                        for i, t in enumerate(tokens)])
    wr.add_token_merges(merges)
    wr.add_bos_token_id(hp["bos_token_id"])
    wr.add_eos_token_id(hp["eos_token_id"])
    wr.add_add_bos_token(False)
    tensors = load_file(os.path.join(folder, "model.safetensors"))
    assert "lm_head.weight" not in tensors
    for hf in sorted(tensors):
        if hf.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        arr = tensors[hf].astype(np.float32)
        if hf.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
            arr = arr.T
        name = gguf_name(hf)
        wr.add_tensor(name, np.ascontiguousarray(arr))
        if name == "token_embd.weight":
            wr.add_tensor("output.weight", np.ascontiguousarray(arr))
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
    folder = os.path.join(OUT, NAME)
    tok_path = os.path.join(folder, "tokenizer.json")
    with open(TOKENIZER) as f:
        tj = json.load(f)
    vocab = tj["model"]["vocab"]
    # ids the file skips get placeholders, as convert_hf_to_gguf.py pads them ([PADn]):
    # GGUF vocabularies are dense, and no merge can produce these strings
    used = set(vocab.values())
    for i in range(max(used) + 1):
        if i not in used:
            vocab[f"[PAD{i}]"] = i
    V = len(vocab)
    model = build(V)
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(folder, safe_serialization=True)
    for extra in ("generation_config.json",):
        if os.path.exists(os.path.join(folder, extra)):
            os.remove(os.path.join(folder, extra))
    with open(tok_path, "w") as f:
        json.dump(tj, f, ensure_ascii=False)
    # what GPT2TokenizerFast.save_pretrained writes for GPT-2: <|endoftext|> is bos, eos, unk
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(dict(add_bos_token=False, add_prefix_space=False, bos_token="<|endoftext|>",
                       eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                       model_max_length=CTX, tokenizer_class="GPT2Tokenizer",
                       clean_up_tokenization_spaces=False), f, indent=2)
        f.write("\n")
    tok = tokenizers.Tokenizer.from_file(tok_path)
    assert tok.get_vocab_size() == V
    gguf_path = os.path.join(OUT, NAME + ".gguf")
    hp = convert(folder, gguf_path)
    llm = llama_cpp.Llama(model_path=gguf_path, logits_all=True, n_ctx=CTX, n_threads=1,
                          n_threads_batch=1, seed=0, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    blob, seqs, offset = [], [], 0
    for s in SEQUENCES:
        ids, n = s["ids"], len(s["ids"])
        ref = hf_logits(model, ids, torch.float64)
        f32 = hf_logits(model, ids, torch.float32)
        llm.reset()
        llm.eval(ids)
        cpp = np.array(llm.scores[:n], dtype=np.float64)
        rec = dict(tag=s["tag"], ids=ids, hf=offset, llamacpp=offset + n * V,
                   max_abs_logit=float(np.abs(ref).max()),
                   hf_f32_vs_f64=float(np.abs(f32 - ref).max()),
                   llamacpp_vs_hf=float(np.abs(cpp - ref).max()),
                   argmax_equal=bool((cpp.argmax(1) == ref.argmax(1)).all()))
        seqs.append(rec)
        blob += [ref.astype("<f4"), cpp.astype("<f4")]
        offset += 2 * n * V
        print(NAME, {k: v for k, v in rec.items() if k != "ids"})
    lines = list(TEXTS)
    with open(QUOTES) as f:
        lines += [(lambda r: r["prompt"] + r["completion"])(json.loads(x)) for x in f]
    texts = []
    for t in lines:
        ids = tok.encode(t, add_special_tokens=False).ids
        # llama.cpp's ids on the GGUF, control tokens in the text matched (tokenizers always
        # matches its added tokens)
        cpp = llm.tokenize(t.encode(), add_bos=False, special=True) if t else []
        assert ids == cpp, (t, ids, cpp)
        texts.append(dict(text=t, ids=ids))
    del llm
    np.concatenate([b.ravel() for b in blob]).astype("<f4").tofile(
        os.path.join(OUT, NAME + ".f32"))
    manifest = dict(
        description=__doc__.split("\n")[0],
        versions=dict(torch=torch.__version__, transformers=transformers.__version__,
                      gguf=getattr(gguf, "__version__", None),
                      tokenizers=tokenizers.__version__,
                      llama_cpp_python=llama_cpp.__version__, numpy=np.__version__),
        init="numpy default_rng(seed).standard_normal per parameter in named_parameters "
             "order: weights and biases 0.1 N, LayerNorm weights 1 + 0.1 N",
        logits="little-endian float32 [n][vocab] at float offsets 'hf' (transformers, "
               "float64 eager forward) and 'llamacpp' (f32 KV cache) of the GGUF",
        name=NAME, folder=NAME, gguf=NAME + ".gguf", logits_file=NAME + ".f32", seed=SEED,
        n_vocab=V, n_embd=C, n_ff=4 * C, n_layer=L, n_head=H, n_ctx=CTX,
        eps=hp["layer_norm_epsilon"],
        n_params=int(sum(p.numel() for p in model.parameters())),
        gguf_bytes=os.path.getsize(gguf_path), sequences=seqs, texts=NAME + "_texts.json")
    with open(os.path.join(OUT, NAME + "_texts.json"), "w") as f:
        json.dump(texts, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    with open(os.path.join(OUT, NAME + ".json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
