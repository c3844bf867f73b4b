#!/usr/bin/env python3
"""ggml's CPU GELU and GeGLU (the f16-table ones llama.cpp runs) on every f16 input, for
finch's gelu_llamacpp / geglu_llamacpp (tests/kernels/test_kernels.c, test_gelu_llamacpp).

What it does: loads the libggml-base and libggml-cpu that llama-cpp-python installed (built
on this machine), builds a one-op ggml graph (ggml_gelu, then ggml_geglu_split with up = 1.5)
over the 65,536 f16 bit patterns taken as f32 inputs, plus inputs beyond the table's range
(|x| >= 10) and between f16 values, computes it on the CPU with one thread and writes
tests/fixtures/model/ggml_gelu.json: the 64-bit FNV-1a hash of the 65,536 GELU outputs as
little-endian f32 bytes (every NaN as 0x7fc00000), and the extra inputs with their GELU and GeGLU outputs (hex floats).

What it does not do: it does not copy ggml's table; the C test computes finch's values and
compares their hash.

Run with the venv that has llama-cpp-python:
    ~/.cache/finch/venv/bin/python tests/reference/make_gelu_llamacpp_fixture.py
"""
import ctypes
import json
import os

import numpy as np
import llama_cpp

LIB = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "model",
                   "ggml_gelu.json")
GGML_TYPE_F32 = 0


class InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p),
                ("no_alloc", ctypes.c_bool)]


def load():
    base = ctypes.CDLL(os.path.join(LIB, "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
    cpu = ctypes.CDLL(os.path.join(LIB, "libggml-cpu.so"), mode=ctypes.RTLD_GLOBAL)
    vp = ctypes.c_void_p
    base.ggml_init.restype, base.ggml_init.argtypes = vp, [InitParams]
    for name, args in [("ggml_new_tensor_1d", [vp, ctypes.c_int, ctypes.c_int64]),
                       ("ggml_gelu", [vp, vp]), ("ggml_geglu_split", [vp, vp, vp]),
                       ("ggml_new_graph", [vp]), ("ggml_get_data", [vp])]:
        getattr(base, name).restype, getattr(base, name).argtypes = vp, args
    base.ggml_build_forward_expand.argtypes = [vp, vp]
    base.ggml_free.argtypes = [vp]
    cpu.ggml_graph_compute_with_ctx.argtypes = [vp, vp, ctypes.c_int]
    return base, cpu


def run(lib, x, up=None):
    base, cpu = lib
    n = len(x)
    ctx = base.ggml_init(InitParams(16 * n + (1 << 24), None, False))

    def tensor(v):
        t = base.ggml_new_tensor_1d(ctx, GGML_TYPE_F32, n)
        ctypes.memmove(base.ggml_get_data(t), np.ascontiguousarray(v, np.float32).ctypes.data, 4 * n)
        return t
    a = tensor(x)
    y = base.ggml_gelu(ctx, a) if up is None else base.ggml_geglu_split(ctx, a, tensor(up))
    graph = base.ggml_new_graph(ctx)
    base.ggml_build_forward_expand(graph, y)
    cpu.ggml_graph_compute_with_ctx(ctx, graph, 1)
    out = np.empty(n, np.float32)
    ctypes.memmove(out.ctypes.data, base.ggml_get_data(y), 4 * n)
    base.ggml_free(ctx)
    return out


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xffffffffffffffff
    return h


def main():
    lib = load()
    x = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
    y = run(lib, x)
    y[np.isnan(y)] = np.float32("nan")  # NaN payloads are not compared: one quiet NaN
    extra = np.array([-1e30, -10.5, -10.0, -9.99951171875, -3.14159, -1e-3, -0.0, 1e-8, 0.333333,
                      0.4999, 1.0000001, 2.71828, 7.7777, 9.999, 10.0, 10.0001, 123.25],
                     np.float32)
    up = np.full_like(extra, 1.5)
    out = dict(description=__doc__.split("\n")[0], llama_cpp_python=llama_cpp.__version__,
               gelu_f16_hash="%016x" % fnv1a64(y.astype("<f4").tobytes()),
               extra_x=[float(v).hex() for v in extra], up=1.5,
               extra_gelu=[float(v).hex() for v in run(lib, extra)],
               extra_geglu=[float(v).hex() for v in run(lib, extra, up)])
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
