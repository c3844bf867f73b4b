#!/usr/bin/env python3
"""Writes the GGUF fixtures of finch's format tests with the PyPI `gguf` package.

Outputs, in tests/fixtures/gguf/ (all small, committed):

  all_types.gguf          one key/value pair of every value type (arrays of ints, floats,
                          strings and bools included) and one tensor of each storage type
                          finch reads: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K,
                          Q3_K, Q4_K, Q5_K, Q6_K, plus 1-, 3- and 4-dimensional tensors.
  all_types.<tensor>.f32  the gguf package's dequantization of each tensor
                          (gguf.quants.dequantize), raw little-endian f32.
  aligned64.gguf          two tensors with general.alignment = 64.
  quant_input.f32         a fixed f32 input (16 blocks of 32: random, tiny, huge, zero,
                          constant, rounding-tie and fp16-subnormal-scale blocks) and
  quant_input.<type>      its quantization by the gguf package for q8_0, q4_0, q4_1, q5_0,
                          q5_1, bf16, f16 (raw bytes).
  conv_input.f32          special values for the half-precision conversions (zeros, inf,
  conv_input.f16/.bf16    nan, subnormals, overflow, rounding ties) and their conversions.
  versions.json           the gguf and numpy versions and the seed.

It also writes the seed corpus of the GGUF fuzz target, tests/fuzz/corpus/gguf/: small
valid files and a few broken ones.

The C tests (tests/format/test_gguf_read.c, test_quantize.c, test_gguf_roundtrip.c)
hard-code the key/value pairs and tensor list below; change both together.

K-quants: the gguf package can dequantize Q2_K..Q6_K but not quantize them, so their
blocks are random bytes with the fp16 scales (d, dmin) overwritten by sane finite values.

Run: python3 tests/reference/make_gguf_fixtures.py   (from the repository root or anywhere)
"""
import importlib.metadata
import json
import os
import struct
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q, GGUFValueType as V
from gguf.quants import dequantize, quantize

SEED = 20240601
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "gguf")
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus", "gguf")

# Byte offsets of the fp16 scales inside each K-quant block (FORMATS.md 2.5-2.8).
K_SCALE_OFFSETS = {
    Q.Q2_K: (80, 82),  # d, dmin last
    Q.Q3_K: (108,),    # d last
    Q.Q4_K: (0, 2),    # d, dmin first
    Q.Q5_K: (0, 2),
    Q.Q6_K: (208,),    # d last
}


def f16_bits_to_f32(bits):
    return np.array([bits], dtype=np.uint16).view(np.float16).astype(np.float32)[0]


def f32_from_bits(bits):
    return np.array(bits, dtype=np.uint32).view(np.float32)


def add_kvs(w):
    """The key/value pairs of all_types.gguf, in file order (general.architecture is first,
    written by the GGUFWriter constructor). test_gguf_read.c checks each one."""
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_float32("test.f32", 3.140625)
    w.add_bool("test.bool_true", True)
    w.add_bool("test.bool_false", False)
    w.add_string("test.string", "h\u00e9llo, gguf \u2713")
    w.add_key_value("test.string_empty", "", V.STRING)
    w.add_uint64("test.u64", 2**63 + 5)
    w.add_int64("test.i64", -(2**62) - 7)
    w.add_float64("test.f64", 2.718281828459045)
    w.add_key_value("test.arr_u8", [0, 1, 255], V.ARRAY, V.UINT8)
    w.add_key_value("test.arr_i16", [-5, 300], V.ARRAY, V.INT16)
    w.add_key_value("test.arr_i32", [1, -2, 2147483647, -2147483648], V.ARRAY, V.INT32)
    w.add_key_value("test.arr_u64", [2**64 - 1], V.ARRAY, V.UINT64)
    w.add_key_value("test.arr_i64", [-1, 2**40], V.ARRAY, V.INT64)
    w.add_key_value("test.arr_f32", [0.5, -1.25, 1024.0625], V.ARRAY, V.FLOAT32)
    w.add_key_value("test.arr_f64", [0.1, -2.5], V.ARRAY, V.FLOAT64)
    w.add_key_value("test.arr_bool", [True, False, True], V.ARRAY, V.BOOL)
    w.add_key_value("test.arr_str", ["alpha", "", "\u00fcn\u00ef", "a b c"], V.ARRAY, V.STRING)
    w.add_uint32("general.quantization_version", 2)


def make_tensors(rng):
    """(name, ggml type, numpy shape, raw bytes) for all_types.gguf, in file order."""
    out = []

    def plain(name, qtype, x):
        q = quantize(x, qtype)
        out.append((name, qtype, x.shape, np.ascontiguousarray(q).view(np.uint8).tobytes()))

    plain("tensor.f32", Q.F32, rng.standard_normal((3, 8)).astype(np.float32))

    x = rng.standard_normal((2, 16)).astype(np.float32)
    x.flat[0:6] = [np.inf, -np.inf, np.nan, 6e-8, -0.0, 65504.0]
    plain("tensor.f16", Q.F16, x)

    x = rng.standard_normal((2, 16)).astype(np.float32)
    x.flat[0:5] = [np.inf, -np.inf, np.nan, 1e-40, -0.0]
    plain("tensor.bf16", Q.BF16, x)

    plain("tensor.q8_0", Q.Q8_0, (0.1 * rng.standard_normal((2, 64))).astype(np.float32))
    x = rng.standard_normal((2, 64)).astype(np.float32)
    x[0, :32] = 0.0  # a zero block: d = 0
    plain("tensor.q4_0", Q.Q4_0, x)
    plain("tensor.q4_1", Q.Q4_1, rng.standard_normal((3, 32)).astype(np.float32))
    plain("tensor.q5_0", Q.Q5_0, rng.standard_normal((2, 64)).astype(np.float32))
    plain("tensor.q5_1", Q.Q5_1, (3 + rng.standard_normal((2, 64))).astype(np.float32))

    for qtype in (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K):
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        n_blocks = 2
        b = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
        for blk in range(n_blocks):
            for k, off in enumerate(K_SCALE_OFFSETS[qtype]):
                v = np.float16(rng.uniform(0.001, 0.1) * (1.0 if k == 0 else 0.5))  # dmin smaller
                b[blk, off:off + 2] = np.frombuffer(v.tobytes(), dtype=np.uint8)
        name = "tensor." + qtype.name.lower()
        out.append((name, qtype, (n_blocks, block), b.tobytes()))

    plain("tensor.1d", Q.F32, rng.standard_normal((5,)).astype(np.float32))
    plain("tensor.3d", Q.F32, rng.standard_normal((2, 3, 4)).astype(np.float32))
    plain("tensor.4d", Q.F16, rng.standard_normal((1, 2, 3, 8)).astype(np.float32))
    return out


def write_gguf(path, kvs, tensors, alignment=None):
    w = gguf.GGUFWriter(path, arch="finchtest")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    kvs(w)
    for name, qtype, shape, raw in tensors:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        row_bytes = shape[-1] // block * size
        data = np.frombuffer(raw, dtype=np.uint8).reshape((*shape[:-1], row_bytes))
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def dequant_bytes(qtype, shape, raw):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    data = np.frombuffer(raw, dtype=np.uint8).reshape((-1, shape[-1] // block * size))
    return np.ascontiguousarray(dequantize(data, qtype), dtype="<f4")


def quant_input(rng):
    """16 blocks of 32 floats chosen to reach every branch of the 32-element quantizers."""
    blocks = [rng.standard_normal(32)]
    blocks.append(1e-3 * rng.standard_normal(32))
    blocks.append(300 * rng.standard_normal(32))
    blocks.append(np.zeros(32))                                   # d = 0
    blocks.append(np.full(32, 0.75))                              # max == min
    ties = np.arange(32) - 15.5                                   # x.5 values
    ties[0] = 127.0                                               # d = 1 for q8_0
    blocks.append(ties)
    neg = rng.uniform(-4, 4, 32)
    neg[7] = -5.0                                                 # signed extreme < 0
    blocks.append(neg)
    blocks.append(1e-6 * rng.standard_normal(32))                 # fp16-subnormal scales
    blocks.append(0.25 * (np.arange(32) % 16 - 8))                # exact Q4_0 grid
    eq = rng.standard_normal(32)
    eq[3], eq[20] = 2.0, -2.0                                     # |max| tie: first wins
    blocks.append(eq)
    for _ in range(6):
        blocks.append(rng.standard_normal(32) * rng.uniform(0.01, 10))
    return np.concatenate(blocks).astype(np.float32)


def conv_input(rng):
    """Special values for f32 -> f16 and f32 -> bf16 conversion. Only quiet NaNs: for a
    signalling NaN numpy keeps the truncated payload (0x7F800001 -> 0x7C01) where ggml's
    portable conversion gives 0x7E00; finch does as ggml (test_quantize.c checks it by
    hand)."""
    bits = [
        0x00000000, 0x80000000, 0x3F800000, 0xBF800000,   # 0, -0, 1, -1
        0x477FE000, 0x477FEFFF, 0x477FF000, 0x7149F2CA,   # 65504, <65520, 65520 (tie), 1e30
        0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000,   # inf, -inf, nan, -nan
        0x33800000, 0x33000000, 0x33C00000, 0x33000001,   # 2^-24, 2^-25 (tie), 3*2^-25, >2^-25
        0x38800000, 0x387FC000, 0x387FE000, 0x3F801000,   # 2^-14, tie between f16 subnormals
        0x3F803000, 0x3F801001,                           # f16 ties at 1 + 2^-11 (*1, *3), above
        0x3F808000, 0x3F818000, 0x3F808001,               # bf16 ties at 1 + 2^-8 (*1, *3), above
        0x7F7FFFFF, 0x00000001, 0x00018000, 0x00028000,   # FLT_MAX, f32 subnormals (bf16 ties)
        0xC2C80000, 0x3DCCCCCD,                           # -100, 0.1
    ]
    x = f32_from_bits(bits)
    return np.concatenate([x, rng.standard_normal(32).astype(np.float32)])


def write_raw(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(bytes(data))


def corpus(tensors):
    """Small seeds for the fuzzer: valid files that reach every reader branch, and broken
    ones. Each stays under a few kB."""
    os.makedirs(CORPUS, exist_ok=True)

    def small_kvs(w):
        w.add_uint32("general.alignment", 32)
        w.add_string("general.name", "seed")
        w.add_float32("t.f", 1.5)
        w.add_bool("t.b", True)
        w.add_key_value("t.as", ["a", "bc"], V.ARRAY, V.STRING)
        w.add_key_value("t.ai", [1, 2, 3], V.ARRAY, V.INT32)
        w.add_key_value("t.ab", [True, False], V.ARRAY, V.BOOL)
        w.add_int64("t.i", -3)
        w.add_float64("t.d", 0.25)

    by_name = {t[0]: t for t in tensors}
    seeds = {
        "plain.gguf": ["tensor.f32", "tensor.f16", "tensor.bf16", "tensor.3d"],
        "quant32.gguf": ["tensor.q8_0", "tensor.q4_0", "tensor.q4_1", "tensor.q5_0", "tensor.q5_1"],
        "kquant_a.gguf": ["tensor.q2_k", "tensor.q3_k", "tensor.q4_k"],
        "kquant_b.gguf": ["tensor.q5_k", "tensor.q6_k", "tensor.1d"],
    }
    for fname, names in seeds.items():
        sel = []
        for n in names:
            name, qtype, shape, raw = by_name[n]
            if len(shape) == 2 and shape[0] > 1:  # one row keeps the seeds small
                block, size = gguf.GGML_QUANT_SIZES[qtype]
                raw = raw[: shape[-1] // block * size]
                shape = (1, shape[-1])
            sel.append((name, qtype, shape, raw))
        write_gguf(os.path.join(CORPUS, fname), small_kvs, sel)

    # types that are valid in files but are not weights (no dequantizer in finch)
    ints = [("i8", Q.I8, (1, 8), np.arange(8, dtype=np.int8).tobytes()),
            ("i32", Q.I32, (1, 4), np.arange(4, dtype=np.int32).tobytes()),
            ("f64", Q.F64, (1, 2), np.array([0.5, -1.0]).tobytes())]
    write_gguf(os.path.join(CORPUS, "int_types.gguf"), small_kvs, ints)

    with open(os.path.join(CORPUS, "plain.gguf"), "rb") as f:
        valid = f.read()
    broken = {
        "truncated.gguf": valid[: len(valid) // 3],
        "version1.gguf": valid[:4] + struct.pack("<I", 1) + valid[8:],
        "huge_counts.gguf": valid[:8] + struct.pack("<QQ", 2**60, 2**60) + valid[24:],
        "kv_only.gguf": b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 3) + b"a.b"
        + struct.pack("<IIQ", V.ARRAY, V.ARRAY, 1),
        "empty.gguf": b"",
    }
    for fname, data in broken.items():
        with open(os.path.join(CORPUS, fname), "wb") as f:
            f.write(data)


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(SEED)

    tensors = make_tensors(rng)
    write_gguf(os.path.join(OUT, "all_types.gguf"), add_kvs, tensors)
    for name, qtype, shape, raw in tensors:
        write_raw(f"all_types.{name}.f32", dequant_bytes(qtype, shape, raw).tobytes())

    def no_kvs(w):
        pass
    a64 = [t for t in tensors if t[0] in ("tensor.f32", "tensor.q8_0")]
    write_gguf(os.path.join(OUT, "aligned64.gguf"), no_kvs, a64, alignment=64)

    x = quant_input(rng)
    write_raw("quant_input.f32", x.astype("<f4").tobytes())
    for qtype in (Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.BF16, Q.F16):
        with np.errstate(all="ignore"):
            q = quantize(x, qtype)
        q = np.ascontiguousarray(q).view(np.uint8)
        write_raw(f"quant_input.{qtype.name.lower()}", q.tobytes())

    c = conv_input(rng)
    write_raw("conv_input.f32", c.astype("<f4").tobytes())
    with np.errstate(all="ignore"):
        write_raw("conv_input.f16", quantize(c, Q.F16).view(np.uint8).tobytes())
        write_raw("conv_input.bf16", quantize(c, Q.BF16).view(np.uint8).tobytes())

    with open(os.path.join(OUT, "versions.json"), "w") as f:
        json.dump({"generator": "tests/reference/make_gguf_fixtures.py",
                   "gguf": importlib.metadata.version("gguf"),
                   "numpy": np.__version__, "python": sys.version.split()[0], "seed": SEED},
                  f, indent=2)
        f.write("\n")

    corpus(tensors)


if __name__ == "__main__":
    main()
