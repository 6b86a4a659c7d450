"""Loads a nibble-written LoRA adapter with peft over a bnb-4bit checkpoint and checks it (see peft_adapter_in_peft.sh).
Usage: peft_adapter_check.py MODEL_DIR ADAPTER_DIR TEXT_FILE NIBBLE_PPL NIBBLE_BASE_PPL"""
import json
import math
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, adapter_dir, text_file, nibble_ppl, nibble_base = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
torch.set_num_threads(1)
base = AutoModelForCausalLM.from_pretrained(model_dir, device_map="cpu")
for m in base.modules():  # bitsandbytes' reference numerics on CPUs with AVX512-BF16 too
    if hasattr(m, "support_avx512bf16_for_cpu"):
        m.support_avx512bf16_for_cpu = False
tok = AutoTokenizer.from_pretrained(model_dir)
ids = [tok.bos_token_id] + tok(open(text_file, encoding="utf-8").read(), add_special_tokens=False)["input_ids"]
x = torch.tensor([ids])


def ppl(model):
    with torch.no_grad():
        return math.exp(model(input_ids=x, labels=x).loss.item())


p_base = ppl(base)
model = PeftModel.from_pretrained(base, adapter_dir)
cfg = json.load(open(f"{adapter_dir}/adapter_config.json"))
lora_layers = [m for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {})]
assert len(lora_layers) == 14, f"expected 14 LoRA layers (all-linear), got {len(lora_layers)}"
for m in lora_layers:
    assert m.r["default"] == cfg["r"] and m.scaling["default"] == cfg["lora_alpha"] / cfg["r"], (m.r, m.scaling)
# every tensor of the file became a parameter (peft warns but does not fail on unexpected keys: check it here)
from safetensors.torch import load_file
from peft.utils import set_peft_model_state_dict

res = set_peft_model_state_dict(model, load_file(f"{adapter_dir}/adapter_model.safetensors"))
assert not res.unexpected_keys, res.unexpected_keys
missing = [k for k in res.missing_keys if "lora_" in k]
assert not missing, missing
p = ppl(model)
print(f"peft perplexity {p:.6f} (nibble {nibble_ppl:.6f}); base {p_base:.6f} (nibble {nibble_base:.6f})")
assert abs(p - nibble_ppl) <= 1e-4 * p, "perplexity with the adapter differs"
assert abs(p_base - nibble_base) <= 1e-4 * p_base, "base perplexity differs"
assert abs(p - p_base) > 1e-3 * p_base, "the adapter changed nothing"
print("ok")
