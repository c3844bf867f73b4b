"""Makes tests/fixtures/nf4/bnb_nf4.safetensors with bitsandbytes itself (its CPU path):
NF4 quantization of a few weights, with and without double quantization, and the values
bitsandbytes dequantizes them to. tests/format/test_nf4.c checks finch against them.

Needs torch >= 2.4 and bitsandbytes (PyPI; made with torch 2.5.1 and bitsandbytes 0.50.2):
    python3 -m venv /tmp/bnbvenv && /tmp/bnbvenv/bin/pip install torch==2.5.1 bitsandbytes==0.50.2 safetensors
    /tmp/bnbvenv/bin/python tests/reference/make_nf4_fixtures.py

bitsandbytes registers two CPU implementations of its 8-bit blockwise quantizer (the
double quantization's step): the torch one of backends/default (torch.bucketize on the
code's midpoints, the rule of its CUDA kernel) and its native library's, which looks the
nearest code up in a 65536-entry table and so picks a neighbour for about 1 value in 500.
quantize_4bit itself has only the torch implementation on CPU. The script records both
double quantizations: "dq" made with the exact rule (finch must reproduce its bytes) and
"dqlib" made by the native library (finch must dequantize it to bitsandbytes' values).
"""
import json
import os
import sys

import torch

captured = {}
_register = torch.library.register_kernel


def _capture(op, device_types, *args, **kwargs):
    def wrap(fn):
        captured[(op, device_types)] = fn
        return _register(op, device_types, *args, **kwargs)(fn)

    return wrap


torch.library.register_kernel = _capture
import bitsandbytes as bnb  # noqa: E402
import bitsandbytes.functional as F  # noqa: E402

torch.library.register_kernel = _register
from safetensors.torch import save_file  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "nf4", "bnb_nf4.safetensors")
exact_blockwise = captured[("bitsandbytes::quantize_blockwise", "default")]


def cases():
    g = torch.Generator().manual_seed(12)
    yield "small", torch.randn(8, 128, generator=g) * 0.05
    # 288 blocks: a whole group of 256 and a partial one of 32
    w = torch.randn(36, 512, generator=g) * 0.02
    w[3, 64:128] = 0.0  # an all-zero block
    w[5, 7] = 1.5  # an outlier
    yield "mixed", w
    # values exactly on NF4 midpoints (times the absmax 1): ties go to the lower code
    code = F.get_4bit_type("nf4", device="cpu").float()
    mids = (code[:-1] + code[1:]) / 2
    t = torch.zeros(4, 64)
    t[:, 0] = 1.0
    t[0, 1:16] = mids
    t[1, 1:16] = -mids
    t[2, 1:] = torch.rand(63, generator=g) * 2 - 1
    t[3, 1:] = torch.nextafter(mids.repeat(5)[:63], torch.tensor(2.0))
    yield "ties", t
    # a bf16 weight (quantized after conversion to f32, as finch does)
    yield "bf16", (torch.randn(32, 192, generator=g) * 0.03).to(torch.bfloat16)
    # long rows (24 blocks each), an offset off zero
    yield "big", torch.randn(3, 1536, generator=g) * 0.04 + 0.001


def main():
    out = {
        "nf4_code": F.get_4bit_type("nf4", device="cpu").float().contiguous(),
        "dynamic_map": F.create_dynamic_map().float().contiguous(),
    }
    names = []
    for name, W in cases():
        names.append(name)
        out[f"{name}.input"] = W.contiguous()
        q, st = F.quantize_4bit(W, blocksize=64, compress_statistics=False, quant_type="nf4")
        out[f"{name}.packed"] = q.reshape(-1).contiguous()
        out[f"{name}.absmax"] = st.absmax.contiguous()
        st.dtype = torch.float32  # dequantize to f32 (a bf16 weight's would be rounded)
        out[f"{name}.dequant"] = F.dequantize_4bit(q, st).contiguous()
        # double quantization as quantize_4bit(compress_statistics=True) does it, with the
        # exact 8-bit rule
        absmax = st.absmax.clone()
        offset = absmax.mean()
        q8, nested = exact_blockwise(absmax - offset, F.create_dynamic_map(), 256)
        state2 = F.QuantState(absmax=nested, code=F.create_dynamic_map(), blocksize=256, dtype=torch.float32)
        sd = F.QuantState(absmax=q8, shape=W.shape, dtype=torch.float32, blocksize=64,
                          code=F.get_4bit_type("nf4", device="cpu"), quant_type="nf4", offset=offset, state2=state2)
        out[f"{name}.dq.absmax"] = q8.contiguous()
        out[f"{name}.dq.nested_absmax"] = nested.contiguous()
        out[f"{name}.dq.offset"] = offset.reshape(1).contiguous()
        out[f"{name}.dq.dequant"] = F.dequantize_4bit(q, sd).contiguous()
        # bitsandbytes' own quantize_4bit on CPU (native 8-bit step)
        q2, st2 = F.quantize_4bit(W, blocksize=64, compress_statistics=True, quant_type="nf4")
        assert torch.equal(q2, q)
        out[f"{name}.dqlib.absmax"] = st2.absmax.contiguous()
        out[f"{name}.dqlib.nested_absmax"] = st2.state2.absmax.contiguous()
        out[f"{name}.dqlib.offset"] = st2.offset.reshape(1).contiguous()
        st2.dtype = torch.float32
        out[f"{name}.dqlib.dequant"] = F.dequantize_4bit(q2, st2).contiguous()
        assert torch.equal(st2.offset, offset)
        diff = int((st2.absmax != q8).sum())
        print(f"{name}: {tuple(W.shape)} {W.dtype}, {st.absmax.numel()} blocks; native 8-bit "
              f"step differs from the exact rule on {diff} absmax codes", file=sys.stderr)
    meta = {"cases": ",".join(names), "torch": torch.__version__, "bitsandbytes": bnb.__version__}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(out, OUT, metadata=meta)
    print(json.dumps(meta), os.path.getsize(OUT), file=sys.stderr)


if __name__ == "__main__":
    main()
