#!/usr/bin/env python3
"""A bnb-4bit checkpoint with bnb_4bit_compute_dtype=float16, and transformers' own float16 logits, for nibble.

Run once (after make_checkpoint_golden.py, whose seeded random tiny Llama `tiny-llama-fp32` it starts from):
  pip install torch transformers bitsandbytes accelerate safetensors
  python3 tests/golden/make_fp16_compute_golden.py

What a user with this configuration gets: the float32 checkpoint loaded by transformers with
  BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                     bnb_4bit_compute_dtype=torch.float16), dtype=torch.float16
so the linears are quantized from float16 weights and everything else (embedding, norms, lm_head, the
residual stream) is float16 too; save_pretrained writes it to checkpoints/tiny-llama-bnb-nf4-dq-fp16/.
Everything runs on the CPU (bitsandbytes 0.50 has a CPU backend for 4-bit; torch's float16 CPU ops cover a
Llama forward). logits.safetensors there holds
  input_ids             int32 [12]
  logits                float32 [12, 256]: the float16 logits of that quantized model's forward (exact copy)
  logits_float32_model  float32 [12, 256]: the same saved checkpoint reloaded, its float16 parameters upcast to
                        float32 and every Linear4bit's compute_dtype set to float32 -- the same packed weights,
                        float32 arithmetic everywhere (bitsandbytes still dequantizes to the weights' float16
                        quant_state.dtype before the float32 matmul)
  logits_float16_linears float32 [12, 256]: that float32 model with only the Linear4bit layers' compute_dtype
                        float16 (bitsandbytes' Linear4bit casts x to float16, multiplies by the float16 weight
                        and casts the float16 result back): nibble's own arithmetic for float16 compute, where the
                        residual stream, norms, attention and lm_head stay float32
versions.json beside it records the versions that made it and the measurements behind the C++ test's bounds
(tests/models/fp16_compute_golden_test.cpp): how far apart these logits are, how far float16 rounding flips
move them (20 runs with the embedding perturbed by 3e-7 relative), and what wrong float16 arithmetic (x or y
not rounded to float16), emulated in float64, gives.
"""
import json
import pathlib
import types

import bitsandbytes
import bitsandbytes.functional as F
import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

CKPTS = pathlib.Path(__file__).parent / "checkpoints"
SRC = CKPTS / "tiny-llama-fp32"
OUT = CKPTS / "tiny-llama-bnb-nf4-dq-fp16"
ids = torch.tensor([[1, 17, 99, 200, 3, 45, 45, 250, 12, 7, 64, 128]])  # as make_checkpoint_golden.py

q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                       bnb_4bit_compute_dtype=torch.float16)
qm = AutoModelForCausalLM.from_pretrained(SRC, quantization_config=q, dtype=torch.float16)
assert qm.model.embed_tokens.weight.dtype == torch.float16 and qm.lm_head.weight.dtype == torch.float16
qm.save_pretrained(OUT)
with torch.no_grad():
    logits16 = qm(ids).logits[0]
assert logits16.dtype == torch.float16

# The saved checkpoint, reloaded the way it will be read: the float16 result must not depend on the round trip.
re16 = AutoModelForCausalLM.from_pretrained(OUT, dtype=torch.float16)
with torch.no_grad():
    assert torch.equal(re16(ids).logits[0], logits16), "reloaded checkpoint gives other float16 logits"

# transformers 5.24 keeps a pre-quantized checkpoint's float16 non-quantized parameters even with
# dtype=torch.float32, so they are upcast here (exactly) by hand.
re32 = AutoModelForCausalLM.from_pretrained(OUT, dtype=torch.float32)
for p in re32.parameters():
    if not isinstance(p, bitsandbytes.nn.Params4bit):
        p.data = p.data.to(torch.float32)
linears = [mod for mod in re32.modules() if isinstance(mod, bitsandbytes.nn.Linear4bit)]
assert len(linears) == 14, len(linears)


def run32(compute_dtype):
    for mod in linears:
        mod.compute_dtype = compute_dtype
    with torch.no_grad():
        out = re32(ids).logits[0]
    assert out.dtype == torch.float32
    return out


logits32 = run32(torch.float32)
# the same float32 model with bitsandbytes' float16 compute in the 4-bit linears only: Linear4bit casts x to
# float16, multiplies by the float16-dequantized weight and casts the float16 result back to float32
logits16lin = run32(torch.float16)

save_file({"input_ids": ids[0].to(torch.int32), "logits": logits16.to(torch.float32).contiguous(),
           "logits_float32_model": logits32.contiguous(), "logits_float16_linears": logits16lin.contiguous()},
          str(OUT / "logits.safetensors"))


# --- measurements behind the C++ test's bounds (tests/models/fp16_compute_golden_test.cpp) ---
def stats(a, b):
    return {"max_abs": float((a.float() - b.float()).abs().max()),
            "rms": float((a.float() - b.float()).pow(2).mean().sqrt()),
            "argmax_agreement": int((a.argmax(-1) == b.argmax(-1)).sum())}


# Rounding flips: an equally valid float32 result that differs in the last bits (here: the embedding scaled
# by 1 + 3e-7 * noise) rounds a few activations to the neighbouring float16 value; how far that moves the
# float16-linears logits is the spread a kernel with another summation order may show.
emb = re32.model.embed_tokens.weight.data.clone()
flips = []
for seed in range(20):
    torch.manual_seed(seed)
    re32.model.embed_tokens.weight.data = emb * (1 + 3e-7 * torch.randn_like(emb))
    flips.append((stats(run32(torch.float16), logits16lin), stats(run32(torch.float32), logits32)))
re32.model.embed_tokens.weight.data = emb


# Wrong float16 arithmetic, emulated in float64 on the float16-dequantized weights: what the tight bounds
# must reject.
def emulated(round_x, round_y):
    weights = {id(m): F.dequantize_4bit(m.weight.data, m.weight.quant_state).double() for m in linears}

    def forward(self, x):
        xx = x.to(torch.float16).double() if round_x else x.double()
        y = (xx @ weights[id(self)].T).float()
        return y.to(torch.float16).float() if round_y else y

    for m in linears:
        m.forward = types.MethodType(forward, m)
    with torch.no_grad():
        out = re32(ids).logits[0]
    for m in linears:
        del m.forward
    return out


variants = {"float16 x, w and y (the right arithmetic)": emulated(True, True),
            "y not rounded to float16": emulated(True, False), "x not rounded to float16": emulated(False, True)}

info = {"torch": torch.__version__, "transformers": transformers.__version__,
        "bitsandbytes": bitsandbytes.__version__,
        "max_abs_logit": float(logits16.float().abs().max()),
        "float16_model_vs_float32_model": stats(logits16, logits32),
        "float16_linears_vs_float32_model": stats(logits16lin, logits32),
        "float16_linears_vs_float16_model": stats(logits16lin, logits16),
        "rounding_flips_float16_linears_max": {k: max(f[0][k] for f in flips) for k in ("max_abs", "rms")},
        "rounding_flips_float32_max": {k: max(f[1][k] for f in flips) for k in ("max_abs", "rms")},
        "rounding_flips_min_argmax_agreement": min(f[0]["argmax_agreement"] for f in flips),
        "emulated_vs_float16_linears": {k: stats(v, logits16lin) for k, v in variants.items()},
        "emulated_vs_float16_model": {k: stats(v, logits16) for k, v in variants.items()}}
(OUT / "versions.json").write_text(json.dumps(info, indent=1) + "\n")
print(json.dumps(info, indent=1))
