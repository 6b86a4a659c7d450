#!/usr/bin/env python3
"""Golden data for nibble's `--optim adamw_8bit`: bitsandbytes' AdamW8bit (optim_bits=8, blockwise states) run on the
CPU over four LoRA-shaped tensors, with the states after every step.

What transformers' Trainer builds for optim="adamw_8bit" / "paged_adamw_8bit" is bitsandbytes.optim.AdamW(...,
optim_bits=8) (paging only matters on CUDA). bitsandbytes keeps tensors with fewer than min_8bit_size = 4096
elements in float32 state (its 32-bit update), others in 8-bit blockwise state (blocksize 256; state1 with the
signed dynamic map, state2 with the unsigned one), re-quantized after every update by its CPU quantize_blockwise.
The tensors cover both paths and a partial last block:

  a1 (16, 320)   5120 elements  8-bit       b1 (333, 16) 5328 elements  8-bit, last block 208
  a2 (8, 64)      512 elements  32-bit      b2 (64, 8)    512 elements  32-bit

Four steps, lr 2e-3 then 1e-3, 5e-4, 2.5e-4 (set on the param group before each step, as a scheduler does), betas
(0.9, 0.999), eps 1e-8, weight_decay 0.01. Written: adamw8bit.safetensors with init.<t>, grad<step>.<t>,
param<step>.<t>, and for 8-bit tensors state1_<step>.<t> / state2_<step>.<t> (uint8) and absmax1_<step>.<t> /
absmax2_<step>.<t>; for 32-bit ones state1_<step>.<t> / state2_<step>.<t> (float32); golden.json with the
settings and versions.

Rerun: /tmp/venv-golden/bin/python tests/golden/adamw8bit/make_adamw8bit_golden.py   (torch, bitsandbytes,
safetensors; CPU only, a second)
"""
import json
import os
import sys

import torch
import bitsandbytes as bnb
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = {"a1": (16, 320), "b1": (333, 16), "a2": (8, 64), "b2": (64, 8)}
LRS = [2e-3, 1e-3, 5e-4, 2.5e-4]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else HERE
    torch.manual_seed(0)
    torch.set_num_threads(1)
    params = {k: torch.nn.Parameter(torch.randn(*s) * 0.05) for k, s in SHAPES.items()}
    tensors = {f"init.{k}": p.detach().clone() for k, p in params.items()}
    opt = bnb.optim.AdamW(list(params.values()), lr=LRS[0], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                          optim_bits=8)
    for step, lr in enumerate(LRS, start=1):
        for g in opt.param_groups:
            g["lr"] = lr
        for k, p in params.items():
            # gradients of LoRA scale, with a few large ones (outliers drive the blockwise absmax)
            g = torch.randn(*p.shape) * 0.01
            g.view(-1)[:: 97] *= 20
            p.grad = g
            tensors[f"grad{step}.{k}"] = g.clone()
        opt.step()
        for k, p in params.items():
            tensors[f"param{step}.{k}"] = p.detach().clone()
            st = opt.state[p]
            for name in ("state1", "state2", "absmax1", "absmax2"):
                if name in st:
                    tensors[f"{name}_{step}.{k}"] = st[name].detach().clone().contiguous()
    save_file(tensors, os.path.join(out, "adamw8bit.safetensors"))
    meta = {"lrs": LRS, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01, "shapes": SHAPES,
            "eight_bit": {k: opt.state[p]["state1"].dtype == torch.uint8 for k, p in params.items()},
            "versions": {"torch": torch.__version__, "bitsandbytes": bnb.__version__,
                         "python": sys.version.split()[0]}}
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
