#!/usr/bin/env python3
"""Golden data for nibble's 4-bit/8-bit quantization, from real bitsandbytes.

Run once:  pip install torch bitsandbytes safetensors && python3 tests/golden/make_bnb_golden.py
Writes tests/golden/bnb_4bit.safetensors (inputs and bitsandbytes' outputs) and bnb_4bit.json (the cases).

bitsandbytes runs here on CPU. Where its CPU path is not the CUDA behaviour that published checkpoints
come from, the C++ tests compare against the spec's CUDA rules instead and say so (see quantize_golden_test).
"""
import json
import pathlib

import bitsandbytes
import bitsandbytes.functional as F
import torch
from safetensors.torch import save_file

torch.manual_seed(1234)
HERE = pathlib.Path(__file__).parent
tensors = {}
cases = []


def inputs(kind, n):
    if kind == "normal":
        return torch.randn(n) * 0.02
    if kind == "heavy":  # Student-t with 2 degrees of freedom: large outliers
        return torch.distributions.StudentT(2.0).sample((n,)) * 0.01
    if kind == "zero_block":  # second block all zeros, plus exact zeros and negative zeros elsewhere
        x = torch.randn(n)
        return x
    raise ValueError(kind)


def add_case(name, x, blocksize, quant_type, double_quant, dtype):
    x = x.to(dtype)
    packed, state = F.quantize_4bit(x, blocksize=blocksize, quant_type=quant_type, compress_statistics=double_quant)
    deq = F.dequantize_4bit(packed, state)
    d = state.as_dict(packed=True)
    tensors[f"{name}.input"] = x.contiguous()
    tensors[f"{name}.packed"] = packed.contiguous()
    tensors[f"{name}.dequantized"] = deq.contiguous()
    for k, v in d.items():
        tensors[f"{name}.{k}"] = v.contiguous()
    cases.append({"name": name, "n": x.numel(), "blocksize": blocksize, "quant_type": quant_type,
                  "double_quant": double_quant, "dtype": str(dtype).split(".")[1],
                  "quant_state_key": [k for k in d if k.startswith("quant_state")][0]})


for bs in [32, 64, 128, 256, 512, 1024, 2048, 4096]:
    n = 3 * bs + 5 if bs < 1024 else 2 * bs + 7  # odd length, partial last block
    for dq in (False, True):
        add_case(f"nf4_bs{bs}_dq{int(dq)}_f32", inputs("normal", n), bs, "nf4", dq, torch.float32)
for dt in (torch.float16, torch.bfloat16):
    for dq in (False, True):
        add_case(f"nf4_bs64_dq{int(dq)}_{str(dt)[6:]}", inputs("normal", 64 * 70 + 1), 64, "nf4", dq, dt)
x = inputs("zero_block", 64 * 4 + 3)
x[64:128] = 0
x[5] = -0.0
add_case("nf4_zero_block", x, 64, "nf4", False, torch.float32)
add_case("nf4_heavy_dq1", inputs("heavy", 64 * 600), 64, "nf4", True, torch.float32)
# enough blocks that double quantization's nested stats span several 256-blocks
add_case("nf4_manyblocks_dq1_bf16", inputs("heavy", 64 * 1000 + 33), 64, "nf4", True, torch.bfloat16)
for bs in (64, 256):
    add_case(f"fp4_bs{bs}_dq0_f32", inputs("normal", 4 * bs + 1), bs, "fp4", False, torch.float32)
add_case("fp4_bs64_dq1_bf16", inputs("heavy", 64 * 300), 64, "fp4", True, torch.bfloat16)

# 8-bit blockwise with the dynamic map, as double quantization uses it
dyn = F.create_dynamic_map(signed=True)
tensors["dynamic_map"] = dyn
y = torch.randn(256 * 9 + 17)
q8, s8 = F.quantize_blockwise(y, code=dyn, blocksize=256)
tensors["blockwise.input"] = y
tensors["blockwise.codes"] = q8
tensors["blockwise.absmax"] = s8.absmax
tensors["blockwise.dequantized"] = F.dequantize_blockwise(q8, s8)

save_file(tensors, str(HERE / "bnb_4bit.safetensors"), metadata={"format": "pt"})
(HERE / "bnb_4bit.json").write_text(json.dumps(
    {"bitsandbytes_version": bitsandbytes.__version__, "torch_version": torch.__version__, "device": "cpu",
     "cases": cases}, indent=1) + "\n")
print(f"{len(cases)} cases, {len(tensors)} tensors")
