#!/usr/bin/env python3
"""bnb-4bit checkpoints written by real transformers + bitsandbytes, for nibble's loader tests.

Run once:  pip install torch transformers bitsandbytes accelerate safetensors && python3 tests/golden/make_checkpoint_golden.py
A tiny random-weight Llama (seeded; not the example model's weights) is saved in float32, then loaded by
transformers with BitsAndBytesConfig (NF4 + double quant; FP4 with bfloat16 quant_storage) and saved again
with save_pretrained. For each, `logits.safetensors` holds input_ids and the logits of the dequantized
reference: the same model with every Linear4bit replaced by nn.Linear(dequantize_4bit(weight)) in float32.
Every in_features is a multiple of 64: bitsandbytes 0.50's CPU path mishandles weights whose row length is not
a multiple of the blocksize (its CPU forward raises on the absmax reshape), so such shapes are tested in C++
against nibble's own round trip instead.
"""
import json
import pathlib

import bitsandbytes
import bitsandbytes.functional as F
import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

HERE = pathlib.Path(__file__).parent / "checkpoints"
torch.manual_seed(0)

cfg = LlamaConfig(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=256, max_position_embeddings=128, rms_norm_eps=1e-6,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
model = LlamaForCausalLM(cfg).to(torch.float32)
with torch.no_grad():  # larger weights than the default init, so 4-bit error is visible in the logits
    for p in model.parameters():
        if p.dim() == 2:
            p.normal_(0, 0.1)
fp32_dir = HERE / "tiny-llama-fp32"
model.save_pretrained(fp32_dir, safe_serialization=True)

ids = torch.tensor([[1, 17, 99, 200, 3, 45, 45, 250, 12, 7, 64, 128]])


def dequantized_reference(qmodel):
    ref = LlamaForCausalLM(cfg).to(torch.float32)
    sd = {}
    for name, mod in qmodel.named_modules():
        if isinstance(mod, bitsandbytes.nn.Linear4bit):
            sd[name + ".weight"] = F.dequantize_4bit(mod.weight.data, mod.weight.quant_state).to(torch.float32)
            if mod.bias is not None:
                sd[name + ".bias"] = mod.bias.data.to(torch.float32)
    for name, p in qmodel.named_parameters():
        if name not in sd and not isinstance(p, bitsandbytes.nn.Params4bit):
            sd[name] = p.data.to(torch.float32)
    ref.load_state_dict(sd, strict=False)
    return ref


for name, q in [
    ("tiny-llama-bnb-nf4-dq", BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)),
    ("tiny-llama-bnb-fp4-bf16storage", BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4",
                                                           bnb_4bit_quant_storage=torch.bfloat16)),
]:
    qm = AutoModelForCausalLM.from_pretrained(fp32_dir, quantization_config=q, dtype=torch.float32)
    out = HERE / name
    qm.save_pretrained(out)
    with torch.no_grad():
        logits = dequantized_reference(qm)(ids).logits[0].contiguous()
    save_file({"input_ids": ids[0].to(torch.int32), "logits": logits}, str(out / "logits.safetensors"))
    (out / "info.json").write_text(json.dumps({"memory_footprint": qm.get_memory_footprint(),
                                               "num_parameters": qm.num_parameters()}) + "\n")
    print(name, "saved; transformers", transformers.__version__, "bitsandbytes", bitsandbytes.__version__)

with torch.no_grad():
    save_file({"input_ids": ids[0].to(torch.int32), "logits": model(ids).logits[0].contiguous()},
              str(fp32_dir / "logits.safetensors"))
(fp32_dir / "info.json").write_text(json.dumps({"memory_footprint": model.get_memory_footprint(),
                                                "num_parameters": model.num_parameters()}) + "\n")
