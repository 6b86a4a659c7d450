#!/usr/bin/env python3
"""QLoRA training speed: `nibble finetune` against transformers + peft + bitsandbytes on the same CPU (issue 16).

Issue 16's speed target: training tokens/s of nibble (bfloat16 compute, LoRA r=16 on all linears, seq 256) at
least 3x transformers + peft + bitsandbytes in the same run, at that stack's fastest CPU setting (float32
compute), on a llama-shaped random model big enough that kernels, not overheads, dominate.

What it does, in one run:
  1. builds a random Llama with transformers' `LlamaForCausalLM(config)` under a fixed seed (default: hidden 1024,
     4 layers, intermediate 2816, 16 heads, 16 kv heads, vocab 2048) and saves it as a float32 safetensors
     checkpoint in a temp dir. The vocabulary is 2048, not 32000, because `nibble finetune` reads text: the
     checkpoint takes the example model's tokenizer (tinystories-656k, vocab 2048) so both stacks train on the
     same token ids. This shrinks embed_tokens/lm_head only (lm_head 2.1M of ~54M linear parameters);
  2. trains it with transformers + peft + bitsandbytes: BitsAndBytesConfig(load_in_4bit, nf4, double quant,
     compute float32), peft LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0),
     torch.optim.AdamW(lr=2e-4), clip_grad_norm_(1.0), batch 1, seq 256, torch threads = cores; it times each step
     and reports steady-state tokens/s over the steps after --warmup; optionally (--python-bf16) the same with
     bfloat16 compute;
  3. trains the same checkpoint on the same blocks (--no-shuffle) with `nibble finetune` (same LoRA/optimizer
     settings, --threads = cores), bfloat16 compute and float32 compute; it timestamps each line nibble appends to
     its --log-jsonl (one per optimizer step, flushed) to get steady-state tokens/s after --warmup steps, and also
     prints nibble's own summary figure (all steps, load/quantize excluded);
  4. prints a table: tokens/s, ratio to the Python stack at float32, GFLOP/s and fraction of peak, CPU model.

FLOP count (frozen 4-bit base, LoRA trainable; per training token):
  base linears (all 4-bit linears + lm_head):  4 * P_lin      (forward 2*P, input gradient 2*P; no weight grads)
  LoRA, per target module (in, out):           6 * r*(in+out)  (forward 2, input grad 2, A/B weight grads 2)
  attention, per layer (causal, avg ctx T/2):  3 * 2 * 2 * hidden * (T+1)/2   (QK^T and PV forward, backward 2x)
Elementwise work (norms, RoPE, SiLU, softmax, cross-entropy, dequantization) is not counted.
Peak: this machine is an AVX2+FMA AMD Zen 3 (no AVX512, no bf16 dot instructions), so bf16 compute runs on the
fp32 FMA units: peak = cores * GHz * 32 flop/cycle (2 FMA pipes x 8 fp32 lanes x 2). GHz defaults to 3.0
(measured ~3.0-3.08 GHz with a dependent-add loop on the 2-core dev VM); set --ghz for another machine.

Measured (2-vCPU AMD EPYC Zen 3 dev VM, family 25 model 1, shared with concurrent compiles; nibble at f1367f1 +
the uncommitted finetune CLI of 2026-11-30; torch 2.15 with MKL, transformers 5.24, peft 0.21.2, bitsandbytes 0.50.2):
  --threads 1 (four runs; one core is 96 GFLOP/s peak; MKL sgemm reaches 87-88 GFLOP/s on these shapes):
    transformers+peft+bnb float32    196-280 tokens/s  (45-64 GFLOP/s, 46-66% of peak)
    transformers+peft+bnb bfloat16     7.8 tokens/s   (one run; ~30x slower than its float32)
    nibble bfloat16 compute           91-113 tokens/s  (21-26 GFLOP/s, 22-27%)  = 0.38-0.49x the Python stack
    nibble float32 compute            89-111 tokens/s  (20-25 GFLOP/s)          = 0.37-0.46x
  --threads 2, quiet machine (three runs; peak 192 GFLOP/s):
    transformers+peft+bnb float32    334-430 tokens/s  (76-98 GFLOP/s, 40-51% of peak)
    transformers+peft+bnb bfloat16     8.2 tokens/s   (~40x slower than its float32)
    nibble bfloat16 compute          163-174 tokens/s  (37-40 GFLOP/s, 19-21%)  = 0.40-0.50x the Python stack
    nibble float32 compute           158-165 tokens/s  (36-38 GFLOP/s)          = 0.38-0.48x
  With other jobs on the cores, two threads fall below one (OpenMP barriers spin-wait on a descheduled
  thread): nibble 52-80 tokens/s, the Python stack 57-113.
  2026-12-01, after the AVX2 panel GEMM (forward, input gradient without the transposed copy, LoRA weight
  gradients through gemm_dense), --threads 2, --steps 4, two adjacent runs on the same VM:
    transformers+peft+bnb float32    403-419 tokens/s
    nibble bfloat16 compute          393-418 tokens/s  (90-95 GFLOP/s, ~47-50% of peak)  = 0.94-1.04x
The 3x target cannot be met on this CPU: the Python stack already runs at ~60% of the fp32 FMA peak (its
matmuls are MKL sgemm over the dequantized float32 weight), Zen 3 has no bf16 dot-product instructions, so 3x
would take ~2x the machine's peak. Where nibble's time goes (perf, two threads, bf16, quiet; one thread in
brackets): the 4-bit forward (gemv_batch, 4 tokens per weight decode) 24% [26%], the input-gradient GEMM over
the transposed weight (dense_rows<4>) 27% [33%], dequantize_4bit_transposed 9% [9%], attention forward +
backward (scalar loops, ~3% of the FLOPs) 18% [20%], LoRA weight gradients (add_tn) 3.5% [4%], OpenMP
barrier waits 10% [-].

Usage: /tmp/venv-golden/bin/python bench/finetune_bench.py [--nibble build/release/nibble] [--steps 8]
       [--warmup 2] [--python-bf16] [--kv-heads 4] [--keep DIR]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = "/work/shared/models/tinystories-656k"


def cpu_model():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
                break
        else:
            name = "?"
        fam = mod = None
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu family") and fam is None:
                    fam = line.split(":")[1].strip()
                elif line.startswith("model\t") and mod is None:
                    mod = line.split(":")[1].strip()
        return f"{name} (family {fam} model {mod}), {os.cpu_count()} cpus"
    except OSError:
        return "?"


def make_model(out_dir, args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    cfg = LlamaConfig(vocab_size=2048, hidden_size=args.hidden, intermediate_size=args.intermediate,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, max_position_embeddings=2048, rms_norm_eps=1e-6,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    model.save_pretrained(out_dir, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if os.path.exists(os.path.join(args.tokenizer, f)):
            shutil.copy(os.path.join(args.tokenizer, f), out_dir)
    return cfg


def flops_per_token(cfg, r, T):
    h, inter, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    hd = h // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * hd
    mods = [(h, h), (h, kv), (h, kv), (h, h), (h, inter), (h, inter), (inter, h)]  # q k v o gate up down
    p_lin = L * sum(i * o for i, o in mods) + h * cfg.vocab_size  # + lm_head (frozen, full precision)
    lora = L * sum(6 * r * (i + o) for i, o in mods)
    attn = L * 3 * 2 * 2 * h * (T + 1) / 2
    return 4 * p_lin + lora + attn, p_lin


def python_blocks(model_dir, data, T, n):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    with open(data, encoding="utf-8") as f:
        ids = tok(f.read())["input_ids"]
    nblocks = len(ids) // T
    if nblocks == 0:
        sys.exit(f"{data}: fewer than {T} tokens")
    return [ids[(i % nblocks) * T:(i % nblocks + 1) * T] for i in range(n)], nblocks


def run_python(model_dir, blocks, args, compute):
    import torch
    import bitsandbytes
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.manual_seed(args.seed)
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[compute]
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=dt)
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=bnb, dtype=torch.float32,
                                                 device_map="cpu")
    n4 = sum(isinstance(m, bitsandbytes.nn.Linear4bit) for m in model.modules())
    lcfg = LoraConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=0.0, target_modules="all-linear", bias="none",
                      task_type="CAUSAL_LM")
    model = get_peft_model(model, lcfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)
    times, losses = [], []
    for b in blocks:
        x = torch.tensor([b], dtype=torch.long)
        t0 = time.perf_counter()
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        losses.append(float(loss))
        if not args.quiet:
            print(f"  python {compute} step {len(times)}: {times[-1]:.2f} s, loss {losses[-1]:.4f}",
                  file=sys.stderr)
        if args.python_time_limit and sum(times) > args.python_time_limit and len(times) > args.warmup:
            break
    del model, opt
    return times, losses, n4, sum(p.numel() for p in params)


def run_nibble(model_dir, data, out_dir, args, compute, steps):
    log = os.path.join(out_dir, f"log-{compute}.jsonl")
    if os.path.exists(log):
        os.remove(log)
    cmd = [args.nibble, "finetune", model_dir, "--data", data, "--output", os.path.join(out_dir, f"adapter-{compute}"),
           "--overwrite", "--load-in-4bit", "--quant-type", "nf4", "--double-quant", "--compute-dtype", compute,
           "--lora-r", str(args.r), "--lora-alpha", str(2 * args.r), "--lora-dropout", "0",
           "--target-modules", "all-linear", "--seq-len", str(args.seq_len), "--batch-size", "1",
           "--lr", "2e-4", "--lr-scheduler", "constant", "--max-grad-norm", "1.0", "--max-steps", str(steps),
           "--no-shuffle", "--threads", str(args.threads), "--log-jsonl", log]
    t_start = time.perf_counter()
    # OMP_NUM_THREADS too: nibble's --threads sets the thread count of loading and quantization, and the
    # training loop runs with OpenMP's default (all cores) unless the environment says otherwise
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stamps, losses, seen = [], [], 0
    # nibble appends and flushes one line per optimizer step: timestamp each as it appears (5 ms polling)
    while True:
        done = proc.poll() is not None
        if os.path.exists(log):
            with open(log) as f:
                lines = f.read().splitlines()
            for line in lines[seen:]:
                if line.endswith("}"):
                    stamps.append(time.perf_counter())
                    losses.append(json.loads(line)["loss"])
                    seen += 1
        if done:
            break
        time.sleep(0.005)
    out, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"nibble finetune failed ({proc.returncode}):\n{err}")
    summary = [l for l in err.splitlines() if "tokens/s" in l]
    reported = None
    if summary:
        s = summary[-1]
        reported = float(s[s.rindex("(") + 1:s.index(" tokens/s")])
    times = [b - a for a, b in zip(stamps, stamps[1:])]  # step 2.. (step 1 includes load and quantization)
    return times, losses, reported, summary[-1] if summary else "", time.perf_counter() - t_start


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nibble", default=os.path.join(REPO, "build/release/nibble"))
    ap.add_argument("--tokenizer", default=EXAMPLE, help="directory with the tokenizer (vocab 2048)")
    ap.add_argument("--data", default=os.path.join(REPO, "tests/data/finetune_stories.txt"))
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--intermediate", type=int, default=2816)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=16)
    ap.add_argument("--r", type=int, default=16, help="LoRA rank (alpha = 2r)")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per run (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ghz", type=float, default=3.0, help="core clock for the peak figure")
    ap.add_argument("--flops-per-cycle", type=int, default=32, help="fp32 flop/cycle/core (Zen 3 AVX2 FMA: 32)")
    ap.add_argument("--python-bf16", action="store_true", help="also time the Python stack at bfloat16 compute")
    ap.add_argument("--python-bf16-steps", type=int, default=1, help="timed bfloat16 steps (after one untimed)")
    ap.add_argument("--python-time-limit", type=float, default=0,
                    help="stop a Python run after this many seconds (0 = no limit), once past warmup")
    ap.add_argument("--no-nibble-fp32", action="store_true", help="skip nibble's float32-compute run")
    ap.add_argument("--keep", help="write the checkpoint and outputs here instead of a temp dir")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args()

    # before torch loads: bitsandbytes' CPU library has its own OpenMP runtime (the system libgomp), which
    # torch.set_num_threads does not reach
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["MKL_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    work = args.keep or tempfile.mkdtemp(prefix="nibble-ftbench-")
    os.makedirs(work, exist_ok=True)
    model_dir = os.path.join(work, "model")
    try:
        if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
            cfg = make_model(model_dir, args)
        else:
            from transformers import LlamaConfig
            cfg = LlamaConfig.from_pretrained(model_dir)
        n = args.warmup + args.steps
        blocks, nblocks = python_blocks(model_dir, args.data, args.seq_len, n)
        fpt, p_lin = flops_per_token(cfg, args.r, args.seq_len)
        peak = args.threads * args.ghz * args.flops_per_cycle
        T = args.seq_len
        print(f"model: hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, intermediate "
              f"{cfg.intermediate_size}, heads {cfg.num_attention_heads}/{cfg.num_key_value_heads} kv, vocab "
              f"{cfg.vocab_size}; linear params {p_lin / 1e6:.2f}M (incl. lm_head); data {nblocks} blocks of {T}",
              file=sys.stderr)

        rows = []  # (name, tokens/s, extra)

        def steady(times):
            return T * len(times) / sum(times) if times else float("nan")

        py_times, py_losses, n4, ntrain = run_python(model_dir, blocks, args, "float32")
        py_tps = steady(py_times[args.warmup:])
        rows.append(("transformers+peft+bnb, compute float32", py_tps,
                     f"{len(py_times) - args.warmup} steps, step-1 loss {py_losses[0]:.4f}"))
        print(f"python: {n4} Linear4bit modules, {ntrain} trainable parameters", file=sys.stderr)
        if args.python_bf16:  # ~40x slower than float32: one untimed step, then --python-bf16-steps
            t, l, _, _ = run_python(model_dir, blocks[:1 + args.python_bf16_steps], args, "bfloat16")
            rows.append(("transformers+peft+bnb, compute bfloat16", steady(t[1:]),
                         f"{len(t) - 1} steps, step-1 loss {l[0]:.4f}"))

        for compute in ["bfloat16"] + ([] if args.no_nibble_fp32 else ["float32"]):
            t, l, reported, summary, wall = run_nibble(model_dir, args.data, work, args, compute, n)
            # t[i] is the time of step i+2; skip steps 2..warmup too
            tt = t[max(0, args.warmup - 1):]
            rows.append((f"nibble finetune, compute {compute}", steady(tt),
                         f"{len(tt)} steps, step-1 loss {l[0]:.4f}; nibble's summary (all {n} steps): "
                         f"{reported:.1f} tok/s"))
            if not args.quiet:
                print(f"  {summary}", file=sys.stderr)

        print()
        print(f"CPU: {cpu_model()}; threads {args.threads}; peak assumed {peak:.0f} GFLOP/s "
              f"({args.threads} cores x {args.ghz} GHz x {args.flops_per_cycle} flop/cycle, fp32 FMA; no bf16 dot "
              f"instructions on this CPU)")
        print(f"LoRA r={args.r} alpha={2 * args.r} all-linear, seq {T}, batch 1, AdamW; "
              f"{fpt / 1e6:.1f} MFLOP per training token (4*P_lin + LoRA + causal attention)")
        print(f"{'':42} {'tokens/s':>9} {'vs py fp32':>10} {'GFLOP/s':>8} {'% peak':>7}  notes")
        for name, tps, extra in rows:
            g = tps * fpt / 1e9
            print(f"{name:42} {tps:9.1f} {tps / py_tps:9.2f}x {g:8.1f} {100 * g / peak:6.1f}%  {extra}")
        try:
            print(f"load average: {open('/proc/loadavg').read().split()[:3]}")
        except OSError:
            pass
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
