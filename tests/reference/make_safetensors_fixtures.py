#!/usr/bin/env python3
"""Writes tests/fixtures/safetensors/ with the PyPI `safetensors` package (0.8.0 was used).

  basic.safetensors    one tensor per dtype (F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL U16
                       U32 U64 F8_E4M3 F8_E5M2), a 0-d scalar, an empty [0, 3] tensor,
                       metadata {"format": "pt"}
  meta.safetensors     one tensor, several metadata pairs (non-ASCII included)
  adapter_model.safetensors  a PEFT-style LoRA adapter (FORMATS.md 2.1b key names)
  empty.safetensors    no tensors at all
  expected.json        for each file: metadata and, per tensor, dtype, shape, the raw bytes
                       (hex) and, for numeric dtypes, the values as numbers

  --verify             reads finch_written.safetensors (written by test_safetensors_roundtrip
                       with FINCH_WRITE_FIXTURES=1) with the package, checks it holds exactly
                       basic.safetensors's tensors and metadata, and records the verdict in
                       finch_written.check.json, which the C test requires.

Usage: python3 tests/reference/make_safetensors_fixtures.py [--verify]
"""
import json
import os
import sys

import numpy as np
import safetensors
from safetensors import TensorSpec, deserialize, serialize_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "safetensors")

# safetensors dtype string -> (package TensorSpec dtype, numpy storage dtype)
DT = {
    "F64": ("float64", np.float64), "F32": ("float32", np.float32),
    "F16": ("float16", np.float16), "BF16": ("bfloat16", np.uint16),
    "I64": ("int64", np.int64), "I32": ("int32", np.int32), "I16": ("int16", np.int16),
    "I8": ("int8", np.int8), "U8": ("uint8", np.uint8), "BOOL": ("bool", np.bool_),
    "U16": ("uint16", np.uint16), "U32": ("uint32", np.uint32), "U64": ("uint64", np.uint64),
    "F8_E4M3": ("float8_e4m3fn", np.uint8), "F8_E5M2": ("float8_e5m2", np.uint8),
}


def bf16_bits(x):
    """float32 values (exactly representable in bf16) -> their bf16 bit patterns."""
    return (np.asarray(x, np.float32).view(np.uint32) >> 16).astype(np.uint16)


def values_of(dt, arr):
    if dt == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32).astype(np.float64).ravel().tolist()
    if dt.startswith("F8"):
        return None  # raw bytes only
    if dt == "BOOL":
        return [int(v) for v in arr.ravel()]
    if dt in ("I64", "U64"):
        return [str(int(v)) for v in arr.ravel()]  # exact, as strings
    return arr.astype(np.float64).ravel().tolist()


def save(path, tensors, metadata):
    """tensors: {name: (dtype string, numpy array)}"""
    keep = []
    specs = {}
    for name, (dt, arr) in tensors.items():
        arr = np.array(arr, order="C", copy=True)
        keep.append(arr)
        specs[name] = TensorSpec(dtype=DT[dt][0], shape=list(arr.shape),
                                 data_ptr=arr.ctypes.data, data_len=arr.nbytes)
    serialize_file(specs, path, metadata=metadata)
    return {
        "metadata": metadata or {},
        "tensors": {
            name: {"dtype": dt, "shape": list(arr.shape), "hex": arr.tobytes().hex(),
                   "values": values_of(dt, arr)}
            for name, (dt, arr) in tensors.items()
        },
    }


def make():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(5)
    # floats on a 1/8 grid, exactly representable in f16 and bf16
    grid = lambda n: (rng.integers(-64, 64, n) / 8.0)
    basic = {
        "f64": ("F64", (rng.standard_normal((2, 3))).astype(np.float64)),
        "f32": ("F32", grid(4).astype(np.float32)),
        "f16": ("F16", grid(6).reshape(3, 2).astype(np.float16)),
        "bf16": ("BF16", bf16_bits(grid(5))),
        "i64": ("I64", np.array([-(2**62) - 7, 2**40 + 3], np.int64)),
        "i32": ("I32", np.array([[-5, 7], [2**31 - 1, -(2**31)]], np.int32)),
        "i16": ("I16", np.array([-32768, 1, 32767], np.int16)),
        "i8": ("I8", np.array([-128, -1, 0, 127], np.int8)),
        "u8": ("U8", np.array([0, 128, 255], np.uint8)),
        "mask": ("BOOL", np.array([True, False, False, True])),
        "u16": ("U16", np.array([65535, 2], np.uint16)),
        "u32": ("U32", np.array([4000000000], np.uint32)),
        "u64": ("U64", np.array([2**63 + 5], np.uint64)),
        "f8_e4m3": ("F8_E4M3", np.array([0x38, 0xC0, 0x7E], np.uint8)),
        "f8_e5m2": ("F8_E5M2", np.array([0x3C, 0x80], np.uint8)),
        "scalar": ("F32", np.array(2.5, np.float32)),
        "empty": ("F32", np.zeros((0, 3), np.float32)),
        "nested.layer.0.weight": ("F16", grid(8).reshape(2, 2, 2).astype(np.float16)),
    }
    expected = {"package": "safetensors " + safetensors.__version__}
    expected["basic.safetensors"] = save(os.path.join(OUT, "basic.safetensors"), basic, {"format": "pt"})
    meta = {"format": "pt", "author": "finch tests", "unicode": "naïve — ✓", "empty": "",
            "json_like": "{\"a\": [1, 2]}"}
    expected["meta.safetensors"] = save(os.path.join(OUT, "meta.safetensors"),
                                        {"w": ("F32", grid(3).astype(np.float32))}, meta)
    r, hidden = 4, 16
    adapter = {}
    for layer in range(2):
        for proj in ("q_proj", "v_proj"):
            base = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            adapter[base + ".lora_A.weight"] = ("F32", (rng.standard_normal((r, hidden)) * 0.1).astype(np.float32))
            adapter[base + ".lora_B.weight"] = ("F32", (rng.standard_normal((hidden, r)) * 0.1).astype(np.float32))
    expected["adapter_model.safetensors"] = save(os.path.join(OUT, "adapter_model.safetensors"), adapter,
                                                 {"format": "pt"})
    expected["empty.safetensors"] = save(os.path.join(OUT, "empty.safetensors"), {}, None)
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")


def verify():
    def load(name):
        with open(os.path.join(OUT, name), "rb") as f:
            data = f.read()
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
        tensors = {n: (d["dtype"], list(d["shape"]), bytes(d["data"]).hex()) for n, d in deserialize(data)}
        return data, header.get("__metadata__", {}), tensors

    verdict = {"package": "safetensors " + safetensors.__version__, "ok": False}
    ours, ours_meta, ours_t = load("finch_written.safetensors")
    ref, ref_meta, ref_t = load("basic.safetensors")
    problems = []
    if ours_meta != ref_meta:
        problems.append(f"metadata {ours_meta} != {ref_meta}")
    if ours_t != ref_t:
        problems.append("tensors differ: " + ", ".join(sorted(set(ours_t.items()) ^ set(ref_t.items()), key=str)[:3].__str__()))
    # the package's own writer, fed the same tensors, must give the same bytes
    verdict["identical_to_package_bytes"] = ours == ref
    verdict["size"] = len(ours)
    verdict["tensors"] = len(ours_t)
    verdict["problems"] = problems
    verdict["ok"] = not problems
    with open(os.path.join(OUT, "finch_written.check.json"), "w") as f:
        json.dump(verdict, f, indent=1, sort_keys=True)
        f.write("\n")
    print(json.dumps(verdict))
    return 0 if verdict["ok"] else 1


if __name__ == "__main__":
    if "--verify" in sys.argv[1:]:
        sys.exit(verify())
    make()
