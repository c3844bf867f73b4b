#!/usr/bin/env python3
"""llama.cpp's intermediate tensors for a few tokens, read through ggml's eval callback.

What it does: loads a GGUF with llama-cpp-python's low-level API, sets the context's
cb_eval (ggml's scheduler calls it after each graph node is computed), evaluates the
given token ids as one batch from position 0 and writes every contiguous f32 node to an
.npz under the node's name (inp_embd / embd, norm-L, attn_norm-L, Vcur-L, kqv_out-L,
attn_out-L, ffn_inp-L, ffn_norm-L, ffn_gate-L, ffn_up-L, ffn_swiglu-L, ffn_out-L,
l_out-L, result_norm, result_output ...; a name seen again gets "#2", "#3"), plus the
logits as "__logits" and the node list (name, op, shape) in a text file beside it.

This is how finch's llamacpp numerics were compared with llama.cpp operation by
operation: with finch's corresponding buffers written from src/model/forward.c in a
throwaway build, the first tensor whose bits differ names the operation (for tokens 1
and 27017 of SmolLM2 it was attn_norm-0, the RMSNorm's rounding, and ffn_swiglu-0,
ggml's exp approximation). tests/kernels/test_kernels.c's swiglu_llamacpp values were
read from ffn_gate-L, ffn_up-L and ffn_swiglu-L of token 504.

What it does not do: it reads only f32 tensors laid out contiguously (views, permuted
tensors and f16 cache views are listed but not saved) and only from CPU buffers.

Run (from the repository root, in the venv that has llama_cpp):
    python3 tests/reference/dump_llamacpp_tensors.py --tokens 1 --out /tmp/lc_1.npz
"""
import argparse
import ctypes
import os

import numpy as np

import llama_cpp

GGML_TYPE_F32 = 0
DEFAULT_MODEL = os.path.join(os.environ.get("FINCH_CACHE", os.path.expanduser("~/.cache/finch")),
                             "SmolLM2-135M-Instruct.Q4_1.gguf")


class GgmlTensor(ctypes.Structure):
    """struct ggml_tensor as ggml.h of the installed llama-cpp-python declares it
    (GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64, GGML_MAX_SRC 10, GGML_MAX_NAME 64)."""
    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p),
                ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int),
                ("op_params", ctypes.c_int32 * 16), ("flags", ctypes.c_int32),
                ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p),
                ("name", ctypes.c_char * 64), ("extra", ctypes.c_void_p),
                ("padding", ctypes.c_char * 8)]


def dump(model_path, tokens, n_threads, flash_attn=-1):
    saved, nodes = {}, []

    def on_node(ptr, ask, user_data):
        if ask:
            return True  # every node
        t = GgmlTensor.from_address(ptr)
        name, ne, nb = t.name.decode(), list(t.ne), list(t.nb)
        n = ne[0] * ne[1] * ne[2] * ne[3]
        contiguous = (nb[0] == 4 and nb[1] == 4 * ne[0] and nb[2] == nb[1] * ne[1]
                      and nb[3] == nb[2] * ne[2])
        keep = t.type == GGML_TYPE_F32 and t.data and contiguous
        nodes.append((name, t.op, ne, bool(keep)))
        if keep:
            key, k = name, 1
            while key in saved:
                k += 1
                key = "%s#%d" % (name, k)
            saved[key] = np.ctypeslib.as_array((ctypes.c_float * n).from_address(t.data)).copy()
        return True

    callback = llama_cpp.ggml_backend_sched_eval_callback(on_node)
    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(model_path.encode(),
                                                 llama_cpp.llama_model_default_params())
    assert model, model_path
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = 512
    cp.n_threads = cp.n_threads_batch = n_threads
    cp.cb_eval = callback
    cp.flash_attn_type = flash_attn  # -1 auto (on for the CPU), 0 off, 1 on
    ctx = llama_cpp.llama_init_from_model(model, cp)
    ids = (llama_cpp.llama_token * len(tokens))(*tokens)
    rc = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(ids, len(tokens)))
    assert rc == 0, rc
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
    saved["__logits"] = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx),
                                              shape=(n_vocab,)).copy()
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    return saved, nodes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--tokens", type=int, nargs="+", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--flash-attn", choices=["auto", "off", "on"], default="auto",
                    help="llama.cpp's flash attention (llama_cpp.Llama's default is off)")
    ap.add_argument("--out", required=True, help="the .npz to write")
    args = ap.parse_args()
    saved, nodes = dump(args.model, args.tokens, args.threads,
                        {"auto": -1, "off": 0, "on": 1}[args.flash_attn])
    np.savez(args.out, **saved)
    with open(args.out + ".nodes.txt", "w") as f:
        for name, op, ne, keep in nodes:
            f.write("%s op=%d ne=%s%s\n" % (name, op, ne, "" if keep else " (not saved)"))
    print("%s: %d tensors; system: %s" % (args.out, len(saved),
                                          llama_cpp.llama_print_system_info().decode().strip()))


if __name__ == "__main__":
    main()
