#!/usr/bin/env python3
"""LLM.int8 (load_in_8bit) golden data from real bitsandbytes + transformers on the CPU, for nibble's int8 tests.

Run once (after make_checkpoint_golden.py, whose seeded random tiny Llama `checkpoints/tiny-llama-fp32` it reads):
  pip install torch transformers bitsandbytes accelerate safetensors
  python3 tests/golden/make_int8_golden.py
(made with /tmp/venv-golden: torch 2.15.0 CPU, transformers 5.24.0, bitsandbytes 0.50.2; the versions that made the
files are recorded in int8_golden.json.) Everything is seeded and single-threaded; a rerun rewrites the same bytes.

Writes
  int8_quant.safetensors       kernel-level tensors (names below), int8_golden.json["kernels"] describes them
  int8_golden.json             versions, kernel descriptions, and the example-model (tinystories-656k) results
  int8_tinystories_logits.safetensors   input_ids (I32 [6], the first golden prompt) and logits_t6 / logits_t05
                               (F32 [6, 2048]): one forward of the 8-bit model with llm_int8_threshold 6.0 / 0.5
  checkpoints/tiny-llama-bnb-int8/  tiny-llama-fp32 loaded with BitsAndBytesConfig(load_in_8bit=True) (threshold
                               6.0), saved by save_pretrained; logits.safetensors there holds input_ids (I32 [12]),
                               logits (F32 [12, 256], threshold 6.0), logits_t05 and logits_t2 (the fp32 checkpoint
                               loaded with llm_int8_threshold=0.5 / 2.0); info.json the memory footprint, greedy
                               continuations (16 new tokens, eos disabled) and each linear's outlier-column count in
                               the logits forward, per threshold. At 6.0 this random model has NO outlier column
                               (the decomposition is never exercised), at 0.5 nearly every column is one, 2.0 mixes.

int8_quant.safetensors
  1a weights: w_{f32,bf16,f16} [24, 96] in that dtype, with cb_* (I8 [24, 96]) and scb_* (F32 [24]) exactly as
     transformers' quantize-on-load computes them (Bnb8bitQuantize.convert: Int8Params(W, requires_grad=False,
     has_fp16_weights=False).to("cpu") -> Int8Params._quantize: int8_vectorwise_quant(W.to(float16))). The script
     asserts that int8_vectorwise_quant(W.to(float16)) directly, Int8Params.to("cpu"), a Linear8bitLt moved with
     .to("cpu"), and a numpy emulation of bitsandbytes' formula (below) all give the same bytes. Rows (json
     "weight_rows"):
     0 all zero, 1 float32 values that collapse onto the same float16 values (quantizing the float32 row directly
     would give another CB - asserted), 2 a single nonzero value, 3 largest magnitude negative, 4 float16
     subnormals, 5-7 exact .5 ties after scaling (SCB 127, 63.5, 127/256), 8 values where the reciprocal scale
     (below) matters, 9-23 random at several scales.
     w_overflow_f32 [2, 96] float32: a row holding 70000 (float16 inf) and one holding 65519 (rounds to 65504).
  1b activations: a1 [1, 96] / a5 [5, 96] float32 (values above 6, exactly 6.0, 5.999 which float16 rounds to
     6.0, 0.49995 which rounds to 0.5, one all-zero row in a5); for t in (0, 0.5, 6):
     ca_{a1,a5}_t{0,05,6} I8, sca_... F32, outlier_cols_... I64 (length 0 when there are none; at t = 0
     bitsandbytes returns None, json says so) = int8_vectorwise_quant(A.to(float16), t).
  1c Linear8bitLt forward (eval, float32, no_grad): lin_weight F32 [48, 96], lin_bias F32 [48], lin_cb / lin_scb,
     x1 [1, 96], x7 [7, 96] (outliers; x7 has an all-zero row), out_{x1,x7}_t{0,05,6} F32 [rows, 48].

Observations (checked by the script where it says so)
  - An all-zero row: SCB / row_stats 0, 127/0 = inf, 0*inf = NaN, and torch's NaN -> int8 conversion gives 0 on
    x86, so CB / CA is all 0 (asserted). A row whose every element is an outlier behaves the same way (its
    zeroed copy is all zero). The overflow weight row (70000 -> float16 inf) gets SCB = inf and CB all 0 (the
    inf element is inf*0 = NaN -> 0 too); 65519 rounds to 65504 and quantizes normally.
  - Quantization scale (weights and activations alike): bitsandbytes writes `A * (127.0 / row_stats)`, and torch
    evaluates a Python scalar divided by a tensor as `row_stats.reciprocal() * 127.0` (Tensor.__rtruediv__), so
    CB = round_half_even(float32(W16) * (float32(1 / SCB) * 127.0f)): TWO float32 roundings, not a correctly
    rounded 127 / SCB (/work/shared/spec/bnb-int8.md's "true float32 division" is wrong here). For 8273 of the
    31743 positive finite float16 SCB values the two scales differ by an ulp (recorded); weight row 8 is a case
    where that changes CB (0.75390625 with SCB 1.5078125: 63.499996 -> 63, a true division gives 63.5 -> 64;
    asserted). The numpy emulation with the reciprocal matches every weight and activation (asserted); exact
    .5 ties go to even.
  - The int8 matmul on this CPU: bitsandbytes registers torch._int_mm for CPU only when
    torch.backends.cpu.get_cpu_capability() == "AVX512"; elsewhere (AVX2 here) it falls back to the default
    kernel torch.matmul(A.float(), B.float().t()).to(torch.int32). Every product is at most 127*127 = 16129, so
    every partial sum of a K-long dot product is an integer of magnitude <= 16129*K, exact in float32 whenever
    16129*K <= 2^24, i.e. K <= 1040: exact for every shape here (K = 64, 96, 128, 192, 384) whatever the
    summation order (the script asserts the fallback equals an int64 matmul for the 1c shapes).
  - Dequantization on CPU: float32(acc) * (row_stats * SCB) * 6.200124e-05f (not 1/127^2), + bias, then the
    model dtype; outlier columns add X[:, cols] @ (float32(CB[:, cols]) * SCB * 7.874015718698502e-3f)^T via
    addmm. The script re-derives 1c's outputs from those formulas: 0 difference in all six cases (recorded).
  - transformers 5.24 loads the float32 checkpoint as a float32 model (dtype recorded), converts every linear
    except lm_head (untied tiny llama) / the tied lm_head (tinystories), and tinystories' perplexity window is
    one forward of BOS + 200 text tokens (max_position_embeddings 512).
  - Greedy generation: the prompt is one call (all its rows share the outlier columns), then one row per step.
    On tinystories both thresholds give the same 24-token continuations; the first prompt's leaves the float32
    golden at its 6th new token. The logits do tell the thresholds apart (json "logits_max_abs_diff").
  - After its first forward a Linear8bitLt has moved CB / SCB from weight to its MatmulLtState (weight.SCB is
    None then); the script reads SCB from wherever it is.
"""
import copy
import json
import logging
import math
import pathlib

import bitsandbytes
import bitsandbytes.functional as F
import numpy as np
import safetensors
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

torch.set_num_threads(1)
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "inputs will be cast ... to float16" on every call
HERE = pathlib.Path(__file__).parent
ROOT = HERE.parent.parent
TINY_FP32 = HERE / "checkpoints" / "tiny-llama-fp32"
TINY_INT8 = HERE / "checkpoints" / "tiny-llama-bnb-int8"
EXAMPLE = pathlib.Path("/work/shared/models/tinystories-656k")
EXAMPLE_GOLDEN = pathlib.Path("/work/shared/golden/tinystories-656k.json")
EVAL_TEXT = ROOT / "tests" / "data" / "eval_story.txt"
THRESHOLDS = [(0.0, "t0"), (0.5, "t05"), (6.0, "t6")]

gen = torch.Generator().manual_seed(1234)


def randn(*shape, scale=1.0):
    return torch.randn(*shape, generator=gen, dtype=torch.float32) * scale


def fnv1a64(t: torch.Tensor) -> str:
    data = t.contiguous().cpu().numpy().tobytes()  # little-endian on x86
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def emulate_quant(w16: torch.Tensor, true_division=False):
    """bitsandbytes' formula in numpy: SCB = max|W16|, CB = rint(float32(W16) * (float32(1 / SCB) * 127)).

    torch evaluates `127.0 / row_stats` as `row_stats.reciprocal() * 127.0` (Tensor.__rtruediv__), two float32
    roundings; true_division=True computes the correctly rounded float32(127 / SCB) instead (not what bnb does).
    """
    a = w16.to(torch.float32).numpy()
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scb = np.abs(a).max(axis=1).astype(np.float32)
        if true_division:
            scale = (np.float32(127.0) / scb).astype(np.float32)
        else:
            scale = ((np.float32(1.0) / scb).astype(np.float32) * np.float32(127.0)).astype(np.float32)
        q = np.rint((a * scale[:, None]).astype(np.float32))
    q = np.where(np.isnan(q), 0, q)
    return torch.from_numpy(q.astype(np.int8)), torch.from_numpy(scb)


def quant_three_ways(w: torch.Tensor):
    """CB, SCB of W as transformers' load_in_8bit computes them, cross-checked three other ways."""
    # transformers' Bnb8bitQuantize.convert: Int8Params(value.to("cpu"), requires_grad=False, **kwargs).to(device)
    p = bitsandbytes.nn.Int8Params(w.clone().to("cpu"), requires_grad=False, has_fp16_weights=False).to("cpu")
    cb, scb = p.CB, p.SCB
    assert p.data.dtype == torch.int8 and torch.equal(p.data, cb)
    cb2, scb2, cols = F.int8_vectorwise_quant(w.clone().to(torch.float16))
    assert cols is None
    lin = bitsandbytes.nn.Linear8bitLt(w.shape[1], w.shape[0], bias=False, has_fp16_weights=False)
    lin.weight = bitsandbytes.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
    lin = lin.to("cpu")
    cb3, scb3 = lin.weight.CB, lin.weight.SCB
    cb4, scb4 = emulate_quant(w.to(torch.float16))
    for c, s in [(cb2, scb2), (cb3, scb3), (cb4, scb4)]:
        assert torch.equal(c, cb) and c.dtype == torch.int8
        assert torch.equal(s, scb) or torch.equal(s.isinf(), scb.isinf()) and torch.equal(s[~s.isinf()], scb[~scb.isinf()])
        assert s.dtype == torch.float32
    return cb.contiguous(), scb.contiguous()


tensors = {}
kernels = {}

# ---------------------------------------------------------------- 1a weight quantization
K = 96
w = randn(24, K, scale=0.05)
rows = {}
w[0] = 0
rows[0] = "all zero"
# float32 values that differ from each other but collapse onto the same float16 values; the max element is not
# float16-representable, so quantizing the float32 row directly gives another SCB (and other CB values)
base = torch.tensor([0.1, -0.0625, 0.03, 0.07], dtype=torch.float16).to(torch.float32)
ulp = torch.tensor([2.0**-14 * 0.5, 2.0**-15, 2.0**-16, 2.0**-15])  # half an fp16 ulp at each base value
r1 = []
for j in range(K):
    b = base[j % 4]
    r1.append(float(b + (((j // 4) % 5) - 2) * 0.2 * ulp[j % 4]))
w[1] = torch.tensor(r1)
w[1, 7] = 0.1  # the float32 row max; float16 rounds it to 0.0999755859375 (2.4e-4 relatively smaller)
# float16 values whose scaled value lands on the other side of a rounding boundary with the float32 max
s32, s16 = torch.tensor(0.1), torch.tensor(0.1).to(torch.float16).float()
flips = [v for v in torch.arange(0.03, 0.09, 2.0**-14).to(torch.float16).float()
         if torch.round(v * (127.0 / s32)) != torch.round(v * (127.0 / s16))]
w[1, 8:12] = torch.stack(flips[:4])
rows[1] = "float32 values that only differ below float16 precision"
w[2] = 0
w[2, 5] = -0.037
rows[2] = "single nonzero value (negative)"
w[3, 10] = -(w[3].abs().max() + 0.05)
rows[3] = "largest magnitude is negative"
w[4] = randn(K, scale=1.5e-6)
rows[4] = "float16 subnormals"
w[5] = randn(K, scale=20.0).clamp(-120, 120)
w[5, :8] = torch.tensor([127.0, 0.5, 1.5, 2.5, -2.5, -0.5, 3.5, 126.5])
rows[5] = "SCB 127, scale 1: exact .5 ties"
w[6] = randn(K, scale=10.0).clamp(-60, 60)
w[6, :6] = torch.tensor([-63.5, 0.25, 0.75, 1.25, -1.75, 31.25])
rows[6] = "SCB 63.5 (negative max), scale 2: exact .5 ties"
w[7] = randn(K, scale=0.1).clamp(-0.45, 0.45)
w[7, :5] = torch.tensor([127 / 256, 2.0**-9, 3 * 2.0**-9, -5 * 2.0**-9, 253 * 2.0**-9])
rows[7] = "SCB 127/256, scale 256: exact .5 ties"
# SCB 1.5078125: 127 / SCB = 84.2279792..., correctly rounded 84.22798156738281, but bitsandbytes' scale is
# float32(1 / SCB) * 127 = 84.22797393798828, so 0.75390625 (exactly SCB / 2) scales to 63.499996 -> 63, where a
# true division gives 63.5 -> 64 (tie to even). More such values are searched on the float16 grid.
s8 = torch.tensor(1.5078125)
rcp8, div8 = (1.0 / s8) * 127.0, torch.tensor(np.float32(127.0) / np.float32(1.5078125))
diff8 = [v for v in torch.arange(0.01, 1.5, 2.0**-10).to(torch.float16).float()
         if torch.round(v * rcp8) != torch.round(v * div8)]
w[8] = randn(K, scale=0.3).clamp(-1.4, 1.4)
w[8, :2] = torch.tensor([1.5078125, 0.75390625])
w[8, 2:8] = torch.stack(diff8[:6]) * torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
rows[8] = "SCB 1.5078125: values where float32(1/SCB)*127 and a true division 127/SCB round differently"
for r in range(9, 24):
    w[r] *= [0.1, 1.0, 10.0, 300.0][r % 4]
rows[9] = "rows 9-23: random at scales 0.005, 0.05, 0.5, 15"

# row 1 must quantize differently from float32 directly
cb_direct = torch.round(w[1] * (127.0 / w[1].abs().max())).to(torch.int8)
cb_fp16first = emulate_quant(w[1:2].to(torch.float16))[0][0]
assert not torch.equal(cb_direct, cb_fp16first), "row 1 does not show the float16 rounding"
assert len(set(w[1].tolist())) > len(set(w[1].to(torch.float16).tolist()))

# torch's `127.0 / t` is t.reciprocal() * 127.0 for every positive finite float16 value; a true division differs
# for many of them (recorded)
all16 = torch.arange(1, 0x7C00, dtype=torch.int32).to(torch.int16).view(torch.float16).float()
torch_scale = 127.0 / all16
assert torch.equal(torch_scale, torch.from_numpy((np.float32(1.0) / all16.numpy()).astype(np.float32)
                                                 * np.float32(127.0)))
true_scale = torch.from_numpy(np.float32(127.0) / all16.numpy())
n_scale_differs = int((torch_scale != true_scale).sum())
assert n_scale_differs > 0

weight_info = {}
for dt, tag in [(torch.float32, "f32"), (torch.bfloat16, "bf16"), (torch.float16, "f16")]:
    wd = w.to(dt)
    cb, scb = quant_three_ways(wd)
    tensors[f"w_{tag}"] = wd.contiguous()
    tensors[f"cb_{tag}"] = cb
    tensors[f"scb_{tag}"] = scb
    assert torch.equal(cb[0], torch.zeros(K, dtype=torch.int8)) and scb[0] == 0
    assert cb[2, 5] == -127 and cb[2].abs().sum() == 127
    assert cb[3, 10] == -127
    weight_info[tag] = {"ties_rows_5_to_7_first_cols": cb[5:8, :8].tolist()}
assert tensors["cb_f32"][8, :2].tolist() == [127, 63]
assert not torch.equal(emulate_quant(w[8:9].to(torch.float16), true_division=True)[0], tensors["cb_f32"][8:9])
# the .5 ties, to even
assert tensors["cb_f32"][5, :8].tolist() == [127, 0, 2, 2, -2, 0, 4, 126], tensors["cb_f32"][5, :8]
assert tensors["cb_f32"][6, :6].tolist() == [-127, 0, 2, 2, -4, 62], tensors["cb_f32"][6, :6]
assert tensors["cb_f32"][7, :5].tolist() == [127, 0, 2, -2, 126], tensors["cb_f32"][7, :5]

w_over = randn(2, K, scale=100.0)
w_over[0, 3] = 70000.0
w_over[1, 9] = -65519.0
cb_o, scb_o = quant_three_ways(w_over)
assert math.isinf(scb_o[0]) and cb_o[0].abs().sum() == 0
assert scb_o[1] == 65504.0 and cb_o[1, 9] == -127
tensors["w_overflow_f32"], tensors["cb_overflow"], tensors["scb_overflow"] = w_over, cb_o, scb_o

kernels["weights"] = {
    "how": "Int8Params(W, requires_grad=False, has_fp16_weights=False).to('cpu') == "
           "int8_vectorwise_quant(W.to(float16)) == Linear8bitLt.to('cpu') (asserted)",
    "tensors": "w_{f32,bf16,f16} [24,96] -> cb_* I8 [24,96], scb_* F32 [24]; w_overflow_f32 [2,96] -> cb_overflow, "
               "scb_overflow (scb_overflow[0] = inf)",
    "weight_rows": {str(k): v for k, v in rows.items()},
    "scale": "CB = round_half_even(float32(W16) * (float32(1 / SCB) * 127)): torch evaluates 127.0 / row_stats as "
             "row_stats.reciprocal() * 127.0 (two float32 roundings), not a correctly rounded division",
    "positive_finite_float16_scb_where_true_division_differs": n_scale_differs,
    "positive_finite_float16_values": int(all16.numel()),
    "ties": weight_info,
}

# ---------------------------------------------------------------- 1b activation quantization
a1 = randn(1, K, scale=0.15)
a1[0, [3, 17, 40, 41, 60, 77, 90]] = torch.tensor([7.25, -6.0, 5.999, 0.49995, -0.5, 2.0, -13.0])
a5 = randn(5, K, scale=0.15)
a5[0, [2, 50]] = torch.tensor([9.5, 0.75])
a5[1, [2, 30, 31]] = torch.tensor([-0.3, 6.0, -5.999])
a5[2] = 0
a5[3, [64, 65, 95]] = torch.tensor([0.49995, -0.6, 3.5])
a5[4, [0, 12]] = torch.tensor([-20.0, 1.0])
tensors["a1"], tensors["a5"] = a1, a5
act_info = {}
for name, a in [("a1", a1), ("a5", a5)]:
    for t, tt in THRESHOLDS:
        a16 = a.to(torch.float16)
        ca, sca, cols = F.int8_vectorwise_quant(a16, t)
        assert torch.equal(a16, a.to(torch.float16)), "int8_vectorwise_quant did not restore its input"
        if t == 0.0:
            assert cols is None
        tensors[f"ca_{name}_{tt}"] = ca.contiguous()
        tensors[f"sca_{name}_{tt}"] = sca.contiguous()
        colsv = torch.zeros(0, dtype=torch.int64) if cols is None else cols.to(torch.int64).contiguous()
        tensors[f"outlier_cols_{name}_{tt}"] = colsv
        act_info[f"{name}_{tt}"] = {"threshold": t, "outlier_cols": None if cols is None else cols.tolist(),
                                    "row_stats": sca.tolist()}
        # emulation: outlier elements zeroed, row absmax, then per-row quantization, all outlier columns zeroed
        # when there is more than one row
        az = a16.clone()
        if t > 0:
            az[a16.abs() >= t] = 0
        cbe, rse = emulate_quant(az)
        if t > 0 and a.shape[0] > 1 and cols is not None:
            cbe[:, cols] = 0
        assert torch.equal(cbe, ca) and torch.equal(rse, sca), (name, t)
assert act_info["a5_t0"]["row_stats"][2] == 0 and tensors["ca_a5_t0"][2].abs().sum() == 0
assert 40 in act_info["a1_t6"]["outlier_cols"] and 41 in act_info["a1_t05"]["outlier_cols"]
kernels["activations"] = {
    "how": "CA, SCA, outlier_cols = int8_vectorwise_quant(A.to(float16), threshold)",
    "tensors": "a1 [1,96], a5 [5,96] F32; ca_{a1,a5}_{t0,t05,t6} I8, sca_* F32 [rows], outlier_cols_* I64 "
               "(length 0 if none; bitsandbytes returns None at threshold 0)",
    "results": act_info,
}

# ---------------------------------------------------------------- 1c Linear8bitLt forward
N = 48
lw = randn(N, K, scale=0.1)
lb = randn(N, scale=0.1)
x1 = randn(1, K, scale=0.2)
x1[0, [11, 50, 70]] = torch.tensor([7.0, 0.7, -25.0])
x7 = randn(7, K, scale=0.2)
x7[2, 5] = 8.0
x7[4, 40] = -10.0
x7[6, 77] = 6.0
x7[1, 20] = 5.999
x7[3] = 0
x7[5, 60] = 0.55
tensors.update(lin_weight=lw, lin_bias=lb, x1=x1, x7=x7)
lin_info = {}
for t, tt in THRESHOLDS:
    lin = bitsandbytes.nn.Linear8bitLt(K, N, bias=True, has_fp16_weights=False, threshold=t)
    lin.weight = bitsandbytes.nn.Int8Params(lw.clone(), requires_grad=False, has_fp16_weights=False)
    lin.bias = torch.nn.Parameter(lb.clone(), requires_grad=False)
    lin = lin.to("cpu").eval()
    cb, scb = lin.weight.CB.clone(), lin.weight.SCB.clone()
    if t == 0.0:
        tensors["lin_cb"], tensors["lin_scb"] = cb, scb
    assert torch.equal(cb, tensors["lin_cb"]) and torch.equal(scb, tensors["lin_scb"])
    for xn, x in [("x1", x1), ("x7", x7)]:
        with torch.no_grad():
            out = lin(x.clone())
            out3 = lin(x.clone()[None])[0]
        assert out.dtype == torch.float32 and torch.equal(out, out3)
        tensors[f"out_{xn}_{tt}"] = out.contiguous()
        # the spec's formulas, evaluated with torch ops
        ca, sca, cols = F.int8_vectorwise_quant(x.to(torch.float16), t)
        acc = torch.matmul(ca.float(), cb.float().t()).to(torch.int32)
        acc64 = ca.to(torch.int64) @ cb.to(torch.int64).t()
        assert torch.equal(acc.to(torch.int64), acc64), "float32 int8 matmul fallback not exact"
        ref = acc.float() * (sca[:, None] * scb[None, :]) * 6.200124e-05 + lb
        if cols is not None and cols.numel():
            sub_b = (cb[:, cols].float() * scb[:, None] * 7.874015718698502e-3).to(x.dtype)
            ref = ref.addmm(x[:, cols], sub_b.t())
        lin_info[f"{xn}_{tt}"] = {"outlier_cols": None if cols is None else cols.tolist(),
                                  "max_abs_diff_vs_formula": float((ref - out).abs().max())}
kernels["linear8bitlt"] = {
    "how": "Linear8bitLt(96, 48, bias=True, has_fp16_weights=False, threshold=t), weight Int8Params(lin_weight), "
           ".to('cpu').eval(), forward under no_grad on 2-D x (3-D [1, rows, 96] gives the same, asserted)",
    "tensors": "lin_weight F32 [48,96], lin_bias F32 [48], lin_cb I8, lin_scb F32, x1 [1,96], x7 [7,96]; "
               "out_{x1,x7}_{t0,t05,t6} F32 [rows,48]",
    "int8_linear_matmul": "torch._int_mm" if torch.backends.cpu.get_cpu_capability() == "AVX512"
    else "float32 matmul then .to(int32) (no AVX-512)",
    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    "results": lin_info,
}
save_file(tensors, str(HERE / "int8_quant.safetensors"))


# ---------------------------------------------------------------- shared model helpers
def load_8bit(path, threshold):
    q = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=threshold)
    m = AutoModelForCausalLM.from_pretrained(path, quantization_config=q, dtype=torch.float32, device_map="cpu")
    m.eval()
    assert m.dtype == torch.float32
    return m


def int8_linears(m):
    return {n: mod for n, mod in m.named_modules() if isinstance(mod, bitsandbytes.nn.Linear8bitLt)}


def count_outliers(m, threshold, fn):
    """Runs fn() and returns each 8-bit linear's number of outlier columns in its first call."""
    counts, hooks = {}, []
    for name, mod in int8_linears(m).items():
        def hook(mod, args, name=name):
            if name not in counts:
                x = args[0].reshape(-1, args[0].shape[-1]).to(torch.float16)
                counts[name] = int((x.abs() >= threshold).any(dim=0).sum())
        hooks.append(mod.register_forward_pre_hook(hook))
    out = fn()
    for h in hooks:
        h.remove()
    return out, counts


def greedy(m, ids, new, eos=True):
    gc = copy.deepcopy(m.generation_config)
    gc.do_sample = False
    gc.max_new_tokens = new
    if not eos:
        gc.eos_token_id = None
    with torch.no_grad():
        out = m.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         generation_config=gc)
    return out[0, len(ids):].tolist()


# ---------------------------------------------------------------- 2 tiny llama checkpoint
ids = [1, 17, 99, 200, 3, 45, 45, 250, 12, 7, 64, 128]  # as make_checkpoint_golden.py
tiny = {}
logits = {"input_ids": torch.tensor(ids, dtype=torch.int32)}
for t, key in [(6.0, "logits"), (0.5, "logits_t05"), (2.0, "logits_t2")]:
    m = load_8bit(TINY_FP32, t)
    converted = sorted(int8_linears(m))
    assert len(converted) == 14 and "lm_head" not in converted, converted
    if t == 6.0:
        m.save_pretrained(TINY_INT8)
    with torch.no_grad():
        lg, counts = count_outliers(m, t, lambda: m(torch.tensor([ids])).logits[0])
    logits[key] = lg.contiguous()
    tiny[f"threshold_{t}"] = {"greedy_new_ids_16_no_eos": greedy(m, ids, 16, eos=False),
                              "outlier_cols_per_linear_in_logits_forward": counts,
                              "memory_footprint": m.get_memory_footprint()}
    assert len(tiny[f"threshold_{t}"]["greedy_new_ids_16_no_eos"]) == 16
save_file(logits, str(TINY_INT8 / "logits.safetensors"))
# the saved checkpoint reloads to the same logits (pre-quantized load path)
re = AutoModelForCausalLM.from_pretrained(TINY_INT8, device_map="cpu").eval()
with torch.no_grad():
    assert torch.equal(re(torch.tensor([ids])).logits[0], logits["logits"]), "reloaded checkpoint differs"
with safetensors.safe_open(str(TINY_INT8 / "model.safetensors"), "pt") as f:
    keys = sorted(f.keys())
with torch.no_grad():
    lg32 = AutoModelForCausalLM.from_pretrained(TINY_FP32, dtype=torch.float32)(torch.tensor([ids])).logits[0]
tiny_diffs = {
    "t6_vs_t05": float((logits["logits"] - logits["logits_t05"]).abs().max()),
    "t6_vs_t2": float((logits["logits"] - logits["logits_t2"]).abs().max()),
    "t6_vs_float32_model": float((logits["logits"] - lg32).abs().max()),
    "max_abs_logit_t6": float(logits["logits"].abs().max())}
tiny_info = {"torch": torch.__version__, "transformers": transformers.__version__,
             "bitsandbytes": bitsandbytes.__version__, "input_ids": ids, "converted_modules": converted,
             "memory_footprint": tiny["threshold_6.0"]["memory_footprint"], "num_parameters": re.num_parameters(),
             "model_dtype": str(re.dtype), "saved_keys": keys, "logits_max_abs_diff": tiny_diffs,
             "thresholds": tiny}
(TINY_INT8 / "info.json").write_text(json.dumps(tiny_info, indent=1) + "\n")
print("tiny-llama-bnb-int8 done")

# ---------------------------------------------------------------- 3 example model
golden = json.loads(EXAMPLE_GOLDEN.read_text())
prompts = [c["input_ids"] for c in golden["cases"][:3]]
tok = AutoTokenizer.from_pretrained(EXAMPLE)
text_ids = tok(EVAL_TEXT.read_text(), add_special_tokens=False).input_ids
ref = AutoModelForCausalLM.from_pretrained(EXAMPLE, dtype=torch.float32).eval()
ctx = ref.config.max_position_embeddings
bos = tok.bos_token_id


def perplexity(m):
    nll, scored, windows = 0.0, 0, 0
    per = ctx - (1 if bos is not None else 0)
    for start in range(0, len(text_ids), per):
        wids = ([bos] if bos is not None else []) + text_ids[start:start + per]
        if len(wids) < 2:
            continue
        with torch.no_grad():
            lg = m(torch.tensor([wids])).logits[0].to(torch.float64)
        lp = torch.log_softmax(lg, dim=-1)
        nll -= float(lp[torch.arange(len(wids) - 1), torch.tensor(wids[1:])].sum())
        scored += len(wids) - 1
        windows += 1
    return math.exp(nll / scored), scored, windows


example = {"prompt_ids_for_logits": prompts[0], "eval_text": "tests/data/eval_story.txt",
           "eval_text_tokens": len(text_ids), "max_position_embeddings": ctx}
ppl_ref = perplexity(ref)
example["float32_model"] = {"perplexity": ppl_ref[0], "memory_footprint": ref.get_memory_footprint()}
ex_logits = {"input_ids": torch.tensor(prompts[0], dtype=torch.int32)}
ref_sd = {k: v for k, v in ref.state_dict().items()}
for t, tt in [(6.0, "t6"), (0.5, "t05")]:
    m = load_8bit(EXAMPLE, t)
    lins = int8_linears(m)
    with torch.no_grad():
        lg, counts = count_outliers(m, t, lambda: m(torch.tensor([prompts[0]])).logits[0])
    ex_logits[f"logits_{tt}"] = lg.contiguous()
    ppl, scored, windows = perplexity(m)
    sums = {}
    for name, mod in sorted(lins.items()):
        # after the first forward, Linear8bitLt.init_8bit_state has moved CB / SCB from the weight to its state
        cb, scb = mod.weight.data, mod.weight.SCB if mod.weight.SCB is not None else mod.state.SCB
        assert cb.dtype == torch.int8 and scb.dtype == torch.float32
        ecb, escb = emulate_quant(ref_sd[name + ".weight"].to(torch.float16))
        assert torch.equal(ecb, cb) and torch.equal(escb, scb), name
        sums[name + ".weight"] = fnv1a64(cb)
        sums[name + ".SCB"] = fnv1a64(scb)
    res = {"threshold": t, "converted_modules": sorted(lins),
           "not_converted_linears": sorted(n for n, mod in m.named_modules()
                                           if isinstance(mod, torch.nn.Linear) and n not in lins),
           "lm_head_tied": m.lm_head.weight is m.model.embed_tokens.weight,
           "memory_footprint": m.get_memory_footprint(),
           "perplexity": ppl, "perplexity_tokens_scored": scored, "perplexity_windows": windows,
           "greedy_24": [{"input_ids": p, "new_ids": greedy(m, p, 24)} for p in prompts],
           "outlier_cols_per_linear_in_logits_forward": counts,
           "fnv1a64": sums}
    for g in res["greedy_24"]:
        g["ended_with_eos"] = bool(g["new_ids"]) and g["new_ids"][-1] == m.generation_config.eos_token_id
    if t == 6.0:
        res["checksum_note"] = "FNV-1a 64 (offset 0xcbf29ce484222325, prime 0x100000001b3) over the raw " \
                               "little-endian bytes: CB int8 [out, in] row-major, SCB float32 [out]"
        assert res["memory_footprint"] == 1444416, res["memory_footprint"]
    example[f"threshold_{tt}"] = res
    print("example threshold", t, "perplexity", ppl, "float32", ppl_ref[0])
# quantized weights do not depend on the threshold
assert example["threshold_t6"]["fnv1a64"] == example["threshold_t05"]["fnv1a64"]
del example["threshold_t05"]["fnv1a64"]
example["threshold_t05"]["fnv1a64"] = "same as threshold_t6 (asserted)"
with torch.no_grad():
    lg32 = ref(torch.tensor([prompts[0]])).logits[0]
example["logits_max_abs_diff"] = {
    "t6_vs_t05": float((ex_logits["logits_t6"] - ex_logits["logits_t05"]).abs().max()),
    "t6_vs_float32_model": float((ex_logits["logits_t6"] - lg32).abs().max()),
    "t05_vs_float32_model": float((ex_logits["logits_t05"] - lg32).abs().max()),
    "max_abs_logit_t6": float(ex_logits["logits_t6"].abs().max())}
save_file(ex_logits, str(HERE / "int8_tinystories_logits.safetensors"))

out = {"made_by": "tests/golden/make_int8_golden.py", "torch": torch.__version__,
       "transformers": transformers.__version__, "bitsandbytes": bitsandbytes.__version__,
       "numpy": np.__version__, "kernels": kernels, "tinystories_656k": example}
(HERE / "int8_golden.json").write_text(json.dumps(out, indent=1) + "\n")
print("done")
