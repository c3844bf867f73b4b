#!/usr/bin/env python3
"""Writes the fixtures of tests/format/test_quantize_kq.c with the PyPI `gguf` package.

finch's closed-form quantizers (q8_0, q4_0, q4_1, q5_0, q5_1, bf16, f16) must give the
package's bytes; this input adds edge cases to tests/fixtures/gguf/quant_input.f32, in rows
of 256 so that the K-quant tests read the same rows:

  quantize_edge.f32      ROWS rows of 256 f32 (little-endian), one case each (names below)
  quantize_edge.<type>   the package's quantization of them (gguf.quants.quantize), raw
  versions.json          the gguf, numpy and Python versions, the seed, the row names

The gguf package quantizes BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (and F16 through numpy's
astype); it cannot quantize Q4_K, Q5_K or Q6_K (NotImplementedError), which the C test
checks by round trip instead.

Run: /tmp/ggufvenv/bin/python tests/reference/make_quantize_fixtures.py
     (a venv with `pip install gguf numpy`; the versions used are in versions.json)
"""
import importlib.metadata
import json
import os
import platform

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf.quants import quantize

SEED = 20261206
N = 256
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "quantize")
TYPES = {"q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1, "q5_0": Q.Q5_0, "q5_1": Q.Q5_1,
         "bf16": Q.BF16, "f16": Q.F16}


def rows(rng):
    r = []
    r.append(("normal", rng.standard_normal(N)))
    r.append(("zeros", np.zeros(N)))
    # exact rounding ties: q8_0 with max 127 has d = 1, so k + 0.5 sits on a tie; q4_0 with
    # signed extreme -8 has d = 1 too; the halves land between codes for every type
    t = np.tile(np.arange(-8, 8) + 0.5, N // 16)
    t[::32] = -8.0
    t[16::64] = 127.0
    r.append(("ties", t))
    r.append(("huge", rng.standard_normal(N) * 3.0e4))
    r.append(("huge_scale_overflow", rng.standard_normal(N) * 1.0e7))  # d beyond fp16: inf
    r.append(("tiny", rng.standard_normal(N) * 1.0e-7))
    # (f32-subnormal inputs are left out: their 1 / d overflows to inf, and what the
    # package then stores depends on numpy's cast of inf and NaN to integers, which C
    # leaves undefined)
    r.append(("negative_only", -np.abs(rng.standard_normal(N)) - 0.25))
    r.append(("positive_only", np.abs(rng.standard_normal(N)) + 0.25))
    s = np.zeros(N)
    s[37] = 5.0
    s[200] = -3.0
    r.append(("spikes", s))
    a = np.full(N, 0.75)
    a[1::2] = -0.75  # equal magnitudes: the signed extreme is the first one
    r.append(("alternating", a))
    r.append(("constant", np.full(N, 0.3)))
    w = rng.standard_normal(N) * 0.02
    w[5] = 1.5  # a heavy outlier, as in real weight rows
    r.append(("outlier", w))
    return r


def main():
    rng = np.random.default_rng(SEED)
    named = rows(rng)
    x = np.stack([v for _, v in named]).astype(np.float32)
    os.makedirs(OUT, exist_ok=True)
    x.astype("<f4").tofile(os.path.join(OUT, "quantize_edge.f32"))
    for name, qt in TYPES.items():
        q = quantize(x, qt)
        np.asarray(q).tofile(os.path.join(OUT, "quantize_edge." + name))
    versions = {
        "generator": "tests/reference/make_quantize_fixtures.py",
        "gguf": importlib.metadata.version("gguf"),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "seed": SEED,
        "rows": [n for n, _ in named],
    }
    with open(os.path.join(OUT, "versions.json"), "w") as f:
        json.dump(versions, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
