#!/usr/bin/env python3
"""Cross-check: the plain torch loop of make_qlora_golden.py does what transformers' Trainer does.

Runs the real transformers.Trainer (sequential sampler, optim="adamw_torch") for the `adamw` and `cosine_accum` runs,
starting from the committed init_adapter, and compares its logged losses / grad norms / learning rates and its final
adapter with the committed golden data. Writes nothing into the repo; prints the largest differences and exits 1 when
they exceed float32 noise.
    python3 tests/golden/qlora/check_trainer_equivalence.py [--model DIR]
"""
import argparse
import json
import pathlib
import sys
import tempfile

import bitsandbytes
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, Trainer, TrainingArguments

HERE = pathlib.Path(__file__).resolve().parent


def load(model_dir):
    cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=cfg, dtype=torch.float32,
                                                 device_map="cpu")
    for m in model.modules():
        if isinstance(m, bitsandbytes.nn.Linear4bit) and hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
    return PeftModel.from_pretrained(model, str(HERE / "init_adapter"), is_trainable=True)


class Blocks(torch.utils.data.Dataset):
    def __init__(self, blocks):
        self.blocks = blocks

    def __len__(self):
        return self.blocks.shape[0]

    def __getitem__(self, i):
        return {"input_ids": self.blocks[i], "labels": self.blocks[i]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/work/shared/models/tinystories-656k")
    args = ap.parse_args()
    torch.set_num_threads(1)
    golden = json.loads((HERE / "golden.json").read_text())
    blocks = load_file(str(HERE / "golden.safetensors"))["train.blocks"]
    worst = 0.0
    for name in ("adamw", "cosine_accum"):
        c = golden["runs"][name]["config"]
        ref_log = golden["runs"][name]["log"]
        model = load(args.model)
        n_blocks = c["steps"] * c["batch_size"] * c["grad_accum"]
        with tempfile.TemporaryDirectory() as tmp:
            targs = TrainingArguments(
                output_dir=tmp, per_device_train_batch_size=c["batch_size"],
                gradient_accumulation_steps=c["grad_accum"], max_steps=c["steps"], learning_rate=c["lr"],
                weight_decay=c["weight_decay"], adam_beta1=c["betas"][0], adam_beta2=c["betas"][1],
                adam_epsilon=c["eps"], lr_scheduler_type=c["scheduler"], warmup_steps=c["warmup_steps"],
                max_grad_norm=c["max_grad_norm"], optim="adamw_torch", logging_steps=1, report_to=[], use_cpu=True,
                train_sampling_strategy="sequential", save_strategy="no", seed=0, dataloader_num_workers=0)
            trainer = Trainer(model=model, args=targs, train_dataset=Blocks(blocks[:n_blocks]))
            trainer.train()
            logs = [e for e in trainer.state.log_history if "loss" in e and "step" in e]
        assert len(logs) == c["steps"], logs
        print(name)
        for k, (t, r) in enumerate(zip(logs, ref_log)):
            # transformers 5.24's Trainer logs the lr that the step used (what the golden log records too)
            d_loss = abs(t["loss"] - r["loss"])
            d_norm = abs(float(t["grad_norm"]) - r["grad_norm"])
            worst = max(worst, d_loss / abs(r["loss"]), d_norm / r["grad_norm"])
            print(f"  step {r['step']}: loss {t['loss']:.7f} vs {r['loss']:.7f}  grad_norm {float(t['grad_norm']):.7f} "
                  f"vs {r['grad_norm']:.7f}  lr {t['learning_rate']} vs {r['learning_rate']}")
            assert abs(t["learning_rate"] - r["learning_rate"]) <= 1e-12 * max(1.0, r["learning_rate"]), (t, r)
        ref = load_file(str(HERE / f"{name}_adapter" / "adapter_model.safetensors"))
        init = load_file(str(HERE / "init_adapter" / "adapter_model.safetensors"))
        max_d, max_delta = 0.0, 0.0
        for n, p in model.named_parameters():
            if p.requires_grad:
                key = n.replace(".default.", ".")
                max_d = max(max_d, (p.detach() - ref[key]).abs().max().item())
                max_delta = max(max_delta, (ref[key] - init[key]).abs().max().item())
        print(f"  final adapter: max |trainer - golden| = {max_d:.3g}  (max |golden - init| = {max_delta:.3g})")
        worst = max(worst, max_d / max_delta)
    print(f"worst relative difference {worst:.3g}")
    sys.exit(0 if worst < 1e-3 else 1)


if __name__ == "__main__":
    main()
