#!/usr/bin/env python3
"""Golden data for nibble's QLoRA fine-tuning (issue 16), from transformers + peft + bitsandbytes on CPU.

Run once (see README.md in this folder for the package versions used):
    python3 tests/golden/qlora/make_qlora_golden.py [--model DIR] [--out DIR]

It loads tinystories-656k with an NF4 (double-quant, fp32 compute) BitsAndBytesConfig, wraps it with a peft LoRA
adapter (r=8, alpha=16, all-linear), and records: the quantized module list, one dequantized NF4 weight, the init
adapter, one SGD step (loss, every LoRA gradient, adapter after the step), a 6-step AdamW run with linear warmup
schedule and clipping, a 4-step cosine run with gradient accumulation, perplexities of tests/data/eval_story.txt with
and without the trained adapter, and greedy continuations. The training loop is a plain torch loop that does what
transformers' Trainer does per optimizer step (zero grads, loss, backward, clip_grad_norm_, optimizer.step,
scheduler.step); the README lists the differences that do not matter here.
"""
import argparse
import json
import math
import os
import pathlib
import platform
import shutil
import sys

import accelerate
import bitsandbytes
import bitsandbytes.functional as BF
import peft
import safetensors
import torch
import transformers
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, get_scheduler

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[2]
SEQ_LEN = 64
ADAPTER = "default"


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="/work/shared/models/tinystories-656k")
    ap.add_argument("--out", default=str(HERE))
    return ap.parse_args()


def load_base(model_dir):
    bnb_config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=bnb_config, dtype=torch.float32,
                                                 device_map="cpu")
    # bitsandbytes 0.50 repacks NF4 weights for an AVX512-BF16 CPU kernel (absmax rounded to bf16) in inference mode;
    # turn that off so every forward uses the reference dequantize + matmul path.
    n_off = 0
    for m in model.modules():
        if isinstance(m, bitsandbytes.nn.Linear4bit) and hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
            n_off += 1
    return model, n_off


def saved_key(param_name):
    """peft's save_pretrained key for a named parameter of the PeftModel: the adapter name is removed."""
    assert f".{ADAPTER}." in param_name, param_name
    return param_name.replace(f".{ADAPTER}.", ".")


def trainable(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def save_adapter(model, out_dir):
    out_dir = pathlib.Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    model.save_pretrained(str(out_dir))
    card = out_dir / "README.md"  # peft's generic model card: not data, and not byte-stable across versions
    if card.exists():
        card.unlink()


def total_norm(params):
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, 2.0) for g in grads]), 2.0)


def run(model, params, init_state, blocks, *, name, steps, batch_size, grad_accum, make_optimizer, scheduler_name,
        warmup, max_grad_norm):
    """One training run from the init adapter, as transformers' Trainer would do it (no shuffling)."""
    with torch.no_grad():
        for n, p in params:
            p.copy_(init_state[n])
    tensors = [p for _, p in params]
    opt = make_optimizer(tensors)
    sched = get_scheduler(scheduler_name, optimizer=opt, num_warmup_steps=warmup, num_training_steps=steps)
    model.train()
    log = []
    first_grads = None
    micro = 0
    for step in range(1, steps + 1):
        opt.zero_grad(set_to_none=True)
        losses = []
        for _ in range(grad_accum):
            batch = blocks[micro * batch_size:(micro + 1) * batch_size]
            assert batch.shape[0] == batch_size, f"{name}: ran out of distinct blocks"
            micro += 1
            loss = model(input_ids=batch, labels=batch).loss
            losses.append(loss.item())
            (loss / grad_accum if grad_accum > 1 else loss).backward()
        if max_grad_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(tensors, max_grad_norm)  # norm before clipping
        else:
            grad_norm = total_norm(tensors)  # Trainer would not clip; record the norm anyway
        if step == 1:
            first_grads = {saved_key(n): p.grad.detach().clone() for n, p in params}
        lr = opt.param_groups[0]["lr"]
        assert lr == sched.get_last_lr()[0]
        opt.step()
        sched.step()
        log.append({"step": step, "loss": sum(losses) / len(losses), "micro_losses": losses, "learning_rate": lr,
                    "grad_norm": grad_norm.item(),
                    "clipped": bool(max_grad_norm > 0 and grad_norm.item() > max_grad_norm)})
    model.eval()
    return log, first_grads


def main():
    # peft stores the resolved "all-linear" target_modules as a Python set and writes list(set) into
    # adapter_config.json; fix the string hash seed so that file is byte-identical from run to run.
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable] + sys.argv)
    args = parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # same summation order on any machine

    tok = AutoTokenizer.from_pretrained(args.model)
    model, n_avx_off = load_base(args.model)

    # --- what got quantized -----------------------------------------------------------------------------------
    quantized = [n for n, m in model.named_modules() if isinstance(m, bitsandbytes.nn.Linear4bit)]
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    not_quantized = [n for n in linears if n not in quantized]
    lm_head = model.get_output_embeddings()
    lm_head_tied = lm_head.weight is model.get_input_embeddings().weight
    assert not_quantized == ["lm_head"] and lm_head_tied and lm_head.weight.dtype == torch.float32
    assert n_avx_off == len(quantized)
    qp = model.model.layers[0].self_attn.q_proj
    ws = qp.weight.quant_state
    dequant = BF.dequantize_4bit(qp.weight.data, ws).to(torch.float32).contiguous()
    assert not getattr(ws, "packing_format_for_cpu", False)

    tensors = {"dequant.model.layers.0.self_attn.q_proj": dequant}

    # --- the quantized linears as save_pretrained writes them -------------------------------------------------
    # bitsandbytes 0.50's CPU quantize_blockwise (the double quant of absmax) picks the nearest 8-bit code through
    # a 65536-bin lookup table, not exactly: a few absmax codes differ from the CUDA rule nibble implements. The
    # C++ tests build the base from these tensors (a bnb-4bit checkpoint as stored), so they compare training,
    # not quantizers.
    base = {k: v.contiguous() for k, v in model.state_dict().items()
            if any(k.startswith(q + ".") for q in quantized)}
    save_file(base, str(out / "base_linears.safetensors"), metadata={"format": "pt"})
    with open(out / "base_quantization_config.json", "w") as f:
        json.dump(model.config.quantization_config.to_dict(), f, indent=2, sort_keys=True)

    # --- data -------------------------------------------------------------------------------------------------
    train_text = (HERE / "train.txt").read_text(encoding="utf-8")
    train_ids = torch.tensor(tok(train_text)["input_ids"], dtype=torch.int64)
    n_blocks = train_ids.numel() // SEQ_LEN
    blocks = train_ids[:n_blocks * SEQ_LEN].view(n_blocks, SEQ_LEN).contiguous()  # run_clm group_texts
    assert n_blocks >= 12, n_blocks
    tensors["train.input_ids"] = train_ids
    tensors["train.blocks"] = blocks.clone()

    # base-model loss of batch 0 (before any adapter), a forward-only check of the NF4 model
    with torch.no_grad():
        base_loss_batch0 = model(input_ids=blocks[0:2], labels=blocks[0:2]).loss.item()

    # --- adapter ----------------------------------------------------------------------------------------------
    lcfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", bias="none",
                      task_type="CAUSAL_LM")
    torch.manual_seed(0)
    model = get_peft_model(model, lcfg)
    lora_modules = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    lora_module_types = {type(m).__module__ + "." + type(m).__qualname__
                         for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    resolved_targets = sorted(model.peft_config[ADAPTER].target_modules)
    assert not any("lm_head" in n for n in lora_modules)
    scaling = {model.get_submodule(n).scaling[ADAPTER] for n in lora_modules}
    assert scaling == {2.0}, scaling
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n in lora_modules:
            w = model.get_submodule(n).lora_B[ADAPTER].weight
            w.copy_(torch.randn(w.shape, generator=gen) * 0.01)
    params = trainable(model)
    assert all((".lora_A." in n or ".lora_B." in n) for n, _ in params)
    init_state = {n: p.detach().clone() for n, p in params}
    save_adapter(model, out / "init_adapter")
    saved = load_file(str(out / "init_adapter" / "adapter_model.safetensors"))
    assert sorted(saved) == sorted(saved_key(n) for n, _ in params), (sorted(saved)[:4])
    for n, p in params:
        assert torch.equal(saved[saved_key(n)], p.detach())

    # --- run 1: one SGD step ----------------------------------------------------------------------------------
    runs = {}
    sgd_cfg = {"optimizer": "torch.optim.SGD", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0,
               "scheduler": "constant", "warmup_steps": 0, "steps": 1, "batch_size": 2, "grad_accum": 1,
               "max_grad_norm": 0.0}
    log, grads = run(model, params, init_state, blocks, name="sgd1", steps=1, batch_size=2, grad_accum=1,
                     make_optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1), scheduler_name="constant", warmup=0,
                     max_grad_norm=0.0)
    runs["sgd1"] = {"config": sgd_cfg, "log": log, "batches": [[0, 1]]}
    save_file({k: v.contiguous() for k, v in grads.items()}, str(out / "sgd1_grads.safetensors"),
              metadata={"format": "pt"})
    # The adapter after the SGD step is init + (-0.1) * grad (torch SGD: param.add_(grad, alpha=-lr)); check that
    # bitwise and do not store it (it would add 160 kB that the init adapter + grads already determine).
    for n, p in params:
        assert torch.equal(p.detach(), init_state[n].add(grads[saved_key(n)], alpha=-0.1)), n
    runs["sgd1"]["adapter_after"] = "not stored: equals init_adapter + (-0.1) * sgd1_grads, bitwise (checked)"

    # --- run 2: AdamW, linear schedule with warmup, clipping --------------------------------------------------
    adamw_cfg = {"optimizer": "torch.optim.AdamW", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8,
                 "weight_decay": 0.01, "scheduler": "linear", "warmup_steps": 2, "steps": 6, "batch_size": 2,
                 "grad_accum": 1, "max_grad_norm": 1.0}
    log, _ = run(model, params, init_state, blocks, name="adamw", steps=6, batch_size=2, grad_accum=1,
                 make_optimizer=lambda ps: torch.optim.AdamW(ps, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                                                             weight_decay=0.01),
                 scheduler_name="linear", warmup=2, max_grad_norm=1.0)
    runs["adamw"] = {"config": adamw_cfg, "log": log, "batches": [[2 * k, 2 * k + 1] for k in range(6)]}
    save_adapter(model, out / "adamw_adapter")

    # --- perplexity and greedy decoding with the adamw adapter (unmerged) and without -------------------------
    eval_text = (REPO / "tests" / "data" / "eval_story.txt").read_text(encoding="utf-8")
    eval_ids = torch.tensor([tok(eval_text)["input_ids"]], dtype=torch.int64)
    tensors["eval.input_ids"] = eval_ids[0].clone()
    prompt = "Once upon a time"
    prompt_ids = torch.tensor([tok(prompt)["input_ids"]], dtype=torch.int64)
    model.eval()

    def evaluate():
        with torch.no_grad():
            nll = model(input_ids=eval_ids, labels=eval_ids).loss.item()
            last_logits = model(input_ids=prompt_ids).logits[0, -1].contiguous()
            gen_ids = model.generate(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids),
                                     max_new_tokens=16, do_sample=False, num_beams=1)
        new = gen_ids[0, prompt_ids.shape[1]:]
        return last_logits, {"mean_nll": nll, "perplexity": math.exp(nll), "greedy_new_ids": new.tolist(),
                "greedy_text": tok.decode(gen_ids[0], skip_special_tokens=True)}

    logits_with, with_adapter = evaluate()
    with model.disable_adapter():
        logits_without, without_adapter = evaluate()
    # the 16 greedy tokens may coincide with and without this lightly trained adapter; these logits do not
    assert not torch.equal(logits_with, logits_without)
    tensors["prompt_logits.with_adapter"] = logits_with
    tensors["prompt_logits.without_adapter"] = logits_without
    evaluation = {"eval_text": "tests/data/eval_story.txt", "eval_tokens": eval_ids.shape[1],
                  "predicted_tokens": eval_ids.shape[1] - 1, "prompt": prompt, "prompt_ids": prompt_ids[0].tolist(),
                  "max_new_tokens": 16, "adapter": "adamw_adapter", "with_adapter": with_adapter,
                  "without_adapter": without_adapter,
                  "greedy_ids_identical": with_adapter["greedy_new_ids"] == without_adapter["greedy_new_ids"],
                  "prompt_logits": "golden.safetensors prompt_logits.{with,without}_adapter: logits [vocab] at the "
                                   "last prompt position, one forward of prompt_ids (BOS included)"}
    tensors["greedy.with_adapter"] = torch.tensor(with_adapter["greedy_new_ids"], dtype=torch.int64)
    tensors["greedy.without_adapter"] = torch.tensor(without_adapter["greedy_new_ids"], dtype=torch.int64)

    # --- run 3: cosine schedule, batch 1, gradient accumulation 2 ---------------------------------------------
    cos_cfg = {"optimizer": "torch.optim.AdamW", "lr": 5e-4, "betas": [0.9, 0.999], "eps": 1e-8,
               "weight_decay": 0.0, "scheduler": "cosine", "warmup_steps": 1, "steps": 4, "batch_size": 1,
               "grad_accum": 2, "max_grad_norm": 0.3}
    log, _ = run(model, params, init_state, blocks, name="cosine_accum", steps=4, batch_size=1, grad_accum=2,
                 make_optimizer=lambda ps: torch.optim.AdamW(ps, lr=5e-4, betas=(0.9, 0.999), eps=1e-8,
                                                             weight_decay=0.0),
                 scheduler_name="cosine", warmup=1, max_grad_norm=0.3)
    runs["cosine_accum"] = {"config": cos_cfg, "log": log, "micro_batches": [[[2 * k], [2 * k + 1]] for k in range(4)]}
    save_adapter(model, out / "cosine_accum_adapter")

    save_file(tensors, str(out / "golden.safetensors"), metadata={"format": "pt"})
    for name, r in runs.items():
        with open(out / f"{name}_log.jsonl", "w") as f:
            for entry in r["log"]:
                f.write(json.dumps(entry) + "\n")

    golden = {
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__,
                     "bitsandbytes": bitsandbytes.__version__, "accelerate": accelerate.__version__,
                     "safetensors": safetensors.__version__},
        "device": "cpu", "torch_threads": 1,
        "model": {"path": args.model, "quantization": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                                       "bnb_4bit_use_double_quant": True,
                                                       "bnb_4bit_compute_dtype": "float32", "dtype": "float32",
                                                       "support_avx512bf16_for_cpu": False},
                  "quantized_linears": quantized, "not_quantized_linears": not_quantized,
                  "lm_head_tied_to_embed_tokens": lm_head_tied, "lm_head_dtype": "float32",
                  "dequant_reference": {"module": "model.layers.0.self_attn.q_proj",
                                        "key": "dequant.model.layers.0.self_attn.q_proj",
                                        "shape": list(dequant.shape), "blocksize": ws.blocksize,
                                        "quant_type": ws.quant_type, "nested": ws.nested}},
        "data": {"train_text": "tests/golden/qlora/train.txt", "train_tokens": train_ids.numel(),
                 "seq_len": SEQ_LEN, "blocks": n_blocks, "dropped_tail_tokens": train_ids.numel() - n_blocks * SEQ_LEN,
                 "bos_token_id": tok.bos_token_id, "bos_added": bool(train_ids[0].item() == tok.bos_token_id)},
        "base_loss_batch0": base_loss_batch0,
        "lora": {"r": 8, "lora_alpha": 16, "scaling": 2.0, "lora_dropout": 0.0, "target_modules": "all-linear",
                 "resolved_target_modules": resolved_targets, "lora_modules": lora_modules,
                 "lora_layer_types": sorted(lora_module_types), "bias": "none",
                 "init": "torch.manual_seed(0) then get_peft_model (peft: lora_A kaiming_uniform_(a=sqrt(5)), "
                         "lora_B zeros); then every lora_B <- torch.randn(shape, generator=Generator().manual_seed(1)) "
                         "* 0.01, drawn in lora_modules order",
                 "trainable_parameters": [{"name": n, "saved_key": saved_key(n), "shape": list(p.shape)}
                                          for n, p in params]},
        "runs": runs,
        "evaluation": evaluation,
        "files": {"init_adapter": "init_adapter/", "sgd1_grads": "sgd1_grads.safetensors (keys = saved adapter keys)",
                  "adamw_adapter": "adamw_adapter/",
                  "cosine_accum_adapter": "cosine_accum_adapter/",
                  "tensors": "golden.safetensors (dequant.*, train.*, eval.input_ids, greedy.*, prompt_logits.*)"},
    }
    (out / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
    print(json.dumps({k: golden[k] for k in ("base_loss_batch0",)}), file=sys.stderr)
    for name, r in runs.items():
        for e in r["log"]:
            print(name, e, file=sys.stderr)
    print("ppl with/without adapter:", with_adapter["perplexity"], without_adapter["perplexity"], file=sys.stderr)
    print(with_adapter["greedy_text"], "|", without_adapter["greedy_text"], file=sys.stderr)


if __name__ == "__main__":
    main()
