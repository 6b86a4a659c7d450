#!/usr/bin/env python3
"""Tiny random models of each family nibble supports, with golden logits and greedy text from transformers.

Run once (CPU is enough, about 20 s on one thread; two runs write byte-identical files):
    pip install torch transformers bitsandbytes accelerate safetensors
    python3 tests/golden/make_family_golden.py
    python3 tests/golden/make_family_golden.py --search-seeds [name ...]   # re-pick SEEDS (see there), ~20 s
Made with transformers 5.24.0, torch 2.15.0 (CPU), bitsandbytes 0.50.2; golden.json records the versions used.

For each model in MODELS, under tests/golden/checkpoints/families/<name>/:
  config.json, model.safetensors, generation_config.json  the float32 model as save_pretrained writes it
                                                         (made by AutoModelForCausalLM.from_config, seeded, then every
                                                         parameter re-drawn so nothing is a trivial 0 or 1, below)
  golden.safetensors  input_ids (I32 [24]) and logits (F32 [24, vocab]): one full float32 forward of the prompt,
                      attn_implementation="eager"
  golden.json         greedy continuation (12 new ids, transformers' generate: do_sample=False, eos disabled,
                      use_cache=True, i.e. the prompt in one call then one token per step), the same continuation
                      by a cache-free argmax loop (a full forward per step) where that differs, versions, and the
                      config facts read back from the instantiated model (layer_types, each attention module's
                      sliding_window and scaling, rope parameters and inv_freq, ...)
Sizes: hidden 32, intermediate 64, 4 heads / 2 KV heads, head_dim 8 (16 where a model tests head_dim != hidden/heads),
vocab 128, 2 layers (qwen2-sw, gemma3-text 3): model.safetensors 93-138 KB each, the whole directory ~1.6 MB of
distinct files.
    python3 tests/golden/make_family_golden.py name ...   # remake only those directories (others untouched)
For the models in BNB_4BIT also <name>-bnb-nf4/: a float32 model of the same family but with hidden 64 and
intermediate 64 (bitsandbytes 0.50's CPU 4-bit path needs every quantized in_features to be a multiple of 64), its
own seed, saved to a temporary directory (not committed), loaded by transformers with BitsAndBytesConfig(
load_in_4bit=True, nf4, compute float32) and saved with save_pretrained; its golden.* from transformers' forward of
that 4-bit model (bitsandbytes' CPU path). BNB_EXTRA adds phi3-bnb-nf4, gemma2-bnb-nf4, gemma3-text-bnb-nf4 (the
same way) and qwen3-bnb-int8 (BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0), saved as int8 weight +
SCB + weight_format; logits from transformers' forward of the 8-bit model). A family's name remakes only its float32
directory; each quantized directory is remade by naming it.

Every saved checkpoint is reloaded with from_pretrained and must reproduce the logits bit for bit (asserted).

Where a config.json is edited after save_pretrained (to look like the checkpoints on the Hub, which predate
`layer_types`, or to keep a `sliding_window` value that transformers nulls), golden.json says so under
"config_json_edits", and the reload check above runs on the edited file.
"""
import copy
import json
import pathlib
import shutil

import bitsandbytes
import safetensors.torch
import torch
import transformers
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, GenerationConfig

torch.set_num_threads(1)
OUT = pathlib.Path(__file__).parent / "checkpoints" / "families"
PROMPT = [1, 17, 99, 100, 3, 45, 45, 125, 12, 7, 64, 118, 33, 90, 5, 111, 80, 66, 17, 99, 42, 8, 50, 77]
NEW_TOKENS = 12
assert len(PROMPT) == 24 and all(0 <= t < 128 for t in PROMPT)

BASE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=8, vocab_size=128, max_position_embeddings=128, rms_norm_eps=1e-6, bos_token_id=1,
            eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)


def llama(**kw):
    return ("llama", {**BASE, **kw})


PHI3_LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.1, 1.5], "long_factor": [2.0, 5.0],
                 "partial_rotary_factor": 0.5}
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
# Seeds (SEEDS, picked by `make_family_golden.py --search-seeds`): the first of seed0, seed0+100, ..., seed0+100*(SEED_TRIES-1)
# (SEED0) whose greedy continuation (generate, as greedy_new_ids) has >= 6 distinct ids with every step's top-2 margin
# > 2e-3 (random tiny models tend to repeat one token; a small margin would make the greedy text fragile). For
# llama-tied the rule must hold for it and for every rope variant that shares its weights. A model that never meets
# it keeps seed0 and is listed in SEED_RULE_EXEMPT (make() asserts the rule for all others).
SEED0 = {"mistral-sw": 1, "qwen2-sw": 2, "qwen2-nosw": 3, "qwen3": 4, "llama-untied-bias": 5, "llama-tied": 6,
         "gemma2": 11, "phi3": 12, "qwen2-sw-bnb-nf4": 21, "qwen3-bnb-nf4": 22, "gemma": 13, "gemma3-text": 14,
         "phi3-bnb-nf4": 23, "gemma2-bnb-nf4": 24, "gemma3-text-bnb-nf4": 25, "qwen3-bnb-int8": 26,
         "qwen3-moe": 31, "qwen3-moe-sw": 32, "qwen3-moe-bnb-nf4": 33}
SEEDS = {"mistral-sw": 1, "qwen2-sw": 2, "qwen2-nosw": 3, "qwen3": 4, "llama-untied-bias": 5, "llama-tied": 6,
         "gemma2": 4111, "phi3": 12, "qwen2-sw-bnb-nf4": 121, "qwen3-bnb-nf4": 22, "gemma": 213, "gemma3-text": 114,
         "phi3-bnb-nf4": 23, "gemma2-bnb-nf4": 24, "gemma3-text-bnb-nf4": 25, "qwen3-bnb-int8": 26,
         "qwen3-moe": 31, "qwen3-moe-sw": 32, "qwen3-moe-bnb-nf4": 33}
SEED_RULE_EXEMPT = set()
SEED_RULE_MIN_DISTINCT = 6
SEED_RULE_MIN_MARGIN = 2e-3
SEED_TRIES = 50
# name -> (model_type, config kwargs, seed, what it tests)
MODELS = {
    "mistral-sw": ("mistral", {**BASE, "sliding_window": 8}, SEEDS["mistral-sw"],
                   "Mistral: sliding_window=8 on every layer, prompt 24 > 8 (keys k > q - 8 kept)"),
    "qwen2-sw": ("qwen2", {**BASE, "num_hidden_layers": 3, "use_sliding_window": True, "sliding_window": 8,
                           "max_window_layers": 1, "tie_word_embeddings": True}, SEEDS["qwen2-sw"],
                 "Qwen2: q/k/v bias; use_sliding_window with max_window_layers=1: layer 0 full, layers 1-2 slide "
                 "(window 8); layer_types removed from config.json so it must be derived"),
    "qwen2-nosw": ("qwen2", {**BASE, "use_sliding_window": False, "sliding_window": 8, "max_window_layers": 0,
                                 "tie_word_embeddings": True}, SEEDS["qwen2-nosw"],
                   "Qwen2: use_sliding_window=false with sliding_window=8 and max_window_layers=0 in config.json: "
                   "the window must be off on every layer"),
    "qwen3": ("qwen3", {**BASE, "head_dim": 16, "use_sliding_window": False, "tie_word_embeddings": True}, SEEDS["qwen3"],
              "Qwen3: q_norm/k_norm (RMSNorm per head over head_dim), head_dim 16 != hidden/heads 8, no bias"),
    "llama-untied-bias": llama(attention_bias=True, mlp_bias=True, head_dim=16, tie_word_embeddings=False) + (SEEDS["llama-untied-bias"],
                       "Llama: attention_bias and mlp_bias (all 7 projections biased), head_dim 16 != 8, untied lm_head"),
    "llama-tied": llama(tie_word_embeddings=True) + (SEEDS["llama-tied"], "Llama: tie_word_embeddings (no lm_head.weight in file)"),
    "llama3-rope": llama(tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE) + (SEEDS["llama-tied"],
                 "Llama: llama3 rope scaling with original_max_position_embeddings 16"),
    "llama3-rope-legacy": llama(tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE) + (SEEDS["llama-tied"],
                        "llama3-rope with config.json in the form of the checkpoints on the Hub (rope_theta and "
                        "rope_scaling at top level, no rope_parameters): same weights, same logits as llama3-rope"),
    "llama-yarn": llama(tie_word_embeddings=True, max_position_embeddings=64, rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                         "original_max_position_embeddings": 16}) + (SEEDS["llama-tied"],
                "Llama: yarn rope (factor 4 = max_position_embeddings 64 / original 16): frequency ramp and "
                "attention factor on cos/sin"),
    "llama-linear": llama(tie_word_embeddings=True, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}) + (SEEDS["llama-tied"],
                  "Llama: linear rope scaling (positions / 2)"),
    "llama-dynamic": llama(tie_word_embeddings=True, max_position_embeddings=16,
                           rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 3.0}) + (SEEDS["llama-tied"],
                   "Llama: dynamic NTK rope, max_position_embeddings 16 < prompt 24, so the base is rescaled"),
    "gemma2": ("gemma2", {**BASE, "tie_word_embeddings": True, "sliding_window": 8, "query_pre_attn_scalar": 24,
                          "attn_logit_softcapping": 2.0, "final_logit_softcapping": 3.0,
                          "hidden_activation": "gelu_pytorch_tanh", "bos_token_id": 2, "eos_token_id": 1}, SEEDS["gemma2"],
               "Gemma 2: embeddings * sqrt(32), RMSNorm (1+w), GeGLU tanh, pre/post feed-forward norms, "
               "query_pre_attn_scalar 24 (not head_dim), attention softcap 2 and final softcap 3 (small, so they "
               "bite), sliding window 8 on layer 0 only (layer_types removed from config.json: derived)"),
    "phi3": ("phi3", {**{k: v for k, v in BASE.items() if k != "head_dim"}, "partial_rotary_factor": 0.5}, SEEDS["phi3"],
             "Phi-3: fused qkv_proj and gate_up_proj, partial_rotary_factor 0.5 (rotary dim 4 of head_dim 8), "
             "default rope"),
    "gemma": ("gemma", {**BASE, "tie_word_embeddings": True, "hidden_act": "gelu", "bos_token_id": 2, "eos_token_id": 1},
              SEEDS["gemma"],
              "Gemma 1: embeddings * sqrt(32), RMSNorm (1+w), GeGLU with the legacy hidden_act 'gelu' in config.json "
              "(transformers runs the tanh approximation for it), attention scale head_dim**-0.5, tied"),
    "gemma3-text": ("gemma3_text", {**BASE, "num_hidden_layers": 3, "tie_word_embeddings": True, "sliding_window": 8,
                                    "sliding_window_pattern": 3, "query_pre_attn_scalar": 24, "rope_theta": 1000000.0,
                                    "rope_local_base_freq": 10000.0, "bos_token_id": 2, "eos_token_id": 1},
                    SEEDS["gemma3-text"],
                    "Gemma 3 text-only (Gemma3ForCausalLM): 3 layers sliding, sliding, full (sliding_window_pattern 3), "
                    "window 8, local layers rope base 1e4 and the full layer 1e6, q_norm/k_norm (1+w) per head "
                    "before rope, query_pre_attn_scalar 24, pre/post feed-forward norms, embeddings * sqrt(32), no "
                    "soft-capping (Gemma3TextConfig defaults), tied"),
    "qwen3-moe": ("qwen3_moe", {**BASE, "num_hidden_layers": 3, "num_experts": 4, "num_experts_per_tok": 2,
                                "moe_intermediate_size": 16, "norm_topk_prob": True, "mlp_only_layers": [1],
                                "use_sliding_window": False}, SEEDS["qwen3-moe"],
                  "Qwen3-MoE: layers 0 and 2 sparse (router over 4 experts, top 2, renormalized), layer 1 dense "
                  "(mlp_only_layers), q_norm/k_norm, head_dim 8 = hidden/heads (Qwen3MoeConfig has no head_dim "
                  "default of its own); config.json as saved (num_local_experts, transformers 5's name)"),
    "qwen3-moe-sw": ("qwen3_moe", {**BASE, "num_hidden_layers": 2, "num_experts": 8, "num_experts_per_tok": 3,
                                   "moe_intermediate_size": 16, "norm_topk_prob": False, "decoder_sparse_step": 2,
                                   "use_sliding_window": True, "sliding_window": 8}, SEEDS["qwen3-moe-sw"],
                     "Qwen3-MoE: decoder_sparse_step 2 (layer 1 sparse, layer 0 dense), top 3 of 8 experts not "
                     "renormalized, use_sliding_window with window 8 on every layer; config.json in the Hub's form "
                     "(num_experts, no num_local_experts)"),
    "phi3-longrope": ("phi3", {**{k: v for k, v in BASE.items() if k != "head_dim"}, "partial_rotary_factor": 0.5,
                               "max_position_embeddings": 64, "original_max_position_embeddings": 16,
                               "rope_parameters": PHI3_LONGROPE}, SEEDS["phi3"],
                      "Phi-3 longrope: phi3's weights, rope_type longrope with short/long factors over the 2 "
                      "frequencies of the 4 rotating dims, original_max_position_embeddings 16 < prompt 24 (long "
                      "factors), max_position_embeddings 64 (attention factor sqrt(1 + ln 4 / ln 16) on cos/sin)"),
}
# 4-bit variants only where the family's layout is new to the 4-bit loader (Qwen2's q/k/v biases beside quantized
# weights, Qwen3's q_norm/k_norm); Mistral's tensors are named and shaped as Llama's, whose bnb checkpoints
# tests/golden/checkpoints/tiny-llama-bnb-* already cover. bitsandbytes 0.50's CPU 4-bit path needs every quantized
# Linear's in_features to be a multiple of 64, which hidden 32 is not: so each 4-bit model is quantized from its own
# float32 model, the family's config with these overrides (hidden 64, intermediate 64; in_features 64 or 128),
# its own seed, saved to a temporary directory only (not committed). source -> config overrides.
BNB_4BIT = {"qwen2-sw": {"hidden_size": 64, "intermediate_size": 64, "head_dim": 16},
            "qwen3": {"hidden_size": 64, "intermediate_size": 64, "head_dim": 32}}
# Further quantized variants, each named on the command line by its own directory name: Phi-3 (fused qkv_proj and
# gate_up_proj quantized as one Linear each), Gemma 2 and Gemma 3 text (their norms and embedding scale around
# quantized projections; head_dim 16 so that o_proj's in_features 4 x 16 is 64), and Qwen3 in LLM.int8
# (load_in_8bit, threshold 6.0: int8 weight + SCB + weight_format in the file). name -> (family in MODELS, config
# overrides, "nf4" or "int8"). Phi-3 has no head_dim setting: 64 / 4 heads = 16. The Gemma ones are untied (an
# lm_head.weight in float32, not quantized: transformers keeps lm_head out of bnb): tied at hidden 64, the scaled
# embedding of the last token dominates the final state and the greedy text repeats that token (no seed in 50 met
# the seed rule: <= 4 distinct ids); the float32 gemma2 / gemma3-text directories test the tying.
BNB_EXTRA = {"phi3-bnb-nf4": ("phi3", {"hidden_size": 64, "intermediate_size": 64}, "nf4"),
             "gemma2-bnb-nf4": ("gemma2", {"hidden_size": 64, "intermediate_size": 64, "head_dim": 16,
                                           "tie_word_embeddings": False}, "nf4"),
             "gemma3-text-bnb-nf4": ("gemma3-text", {"hidden_size": 64, "intermediate_size": 64, "head_dim": 16,
                                                     "tie_word_embeddings": False}, "nf4"),
             "qwen3-bnb-int8": ("qwen3", {"hidden_size": 64, "intermediate_size": 64, "head_dim": 32}, "int8"),
             # transformers 5.24 quantizes Qwen3-MoE's attention only: its experts (3-D parameters) and router
             # stay float32 in the saved file (per-expert gate/up/down_proj.weight, as the Hub layout)
             "qwen3-moe-bnb-nf4": ("qwen3-moe", {"hidden_size": 64, "head_dim": 16},
                                   "nf4")}
# every quantized directory: name -> (family, config overrides, kind)
BNB_VARIANTS = {**{f"{n}-bnb-nf4": (n, o, "nf4") for n, o in BNB_4BIT.items()}, **BNB_EXTRA}
INT8_THRESHOLD = 6.0
# The rope variants are llama-tied's weights (same shapes, same seed) under another config: identical
# model.safetensors bytes, so git stores that blob once, and each test isolates what its config changes.
SAME_WEIGHTS_AS = {"llama3-rope": "llama-tied", "llama3-rope-legacy": "llama-tied", "llama-yarn": "llama-tied", "llama-linear": "llama-tied",
                   "llama-dynamic": "llama-tied", "phi3-longrope": "phi3"}
DEFAULT_ROPE = {"rope_type": "default", "rope_theta": 10000.0}
# Sensitivity checks, recorded in golden.json as max |logits - logits with this changed|: each feature under test
# must move the logits (far beyond the 1e-4 tolerance), or the test could pass with the feature ignored.
# name -> {label: (config.json changes, parameter change or None)}. The one exception to "far beyond": Gemma 2's
# tanh GELU vs the exact erf GELU differ by at most 5e-4 per element and the post-feed-forward RMSNorm undoes any
# weight scaling, so that contrast is only ~4e-4 in the logits (asserted > 3e-4): a 1e-4 tolerance still sees it.
CONTRAST_MIN = {"gelu_exact": 3e-4}
CONTRASTS = {
    "mistral-sw": {"no_sliding_window": ({"sliding_window": None}, None)},
    "qwen2-sw": {"use_sliding_window_false": ({"use_sliding_window": False}, None),
                 "max_window_layers_0_all_slide": ({"max_window_layers": 0}, None),
                 "qkv_bias_zeroed": ({}, lambda n: "bias" in n)},
    "qwen2-nosw": {"window_on_all_layers": ({"use_sliding_window": True}, None)},
    "qwen3": {"q_norm_k_norm_weights_one": ({}, lambda n: "q_norm" in n or "k_norm" in n)},
    "llama-untied-bias": {"biases_zeroed": ({}, lambda n: "bias" in n)},
    "llama3-rope": {"default_rope": ({"rope_parameters": DEFAULT_ROPE}, None)},
    "llama3-rope-legacy": {"default_rope": ({"rope_scaling": None, "rope_parameters": DEFAULT_ROPE}, None)},
    "llama-yarn": {"default_rope": ({"rope_parameters": DEFAULT_ROPE}, None)},
    "llama-linear": {"default_rope": ({"rope_parameters": DEFAULT_ROPE}, None)},
    "llama-dynamic": {"default_rope": ({"rope_parameters": DEFAULT_ROPE}, None)},
    "gemma2": {"all_layers_full": ({"layer_types": ["full_attention", "full_attention"]}, None),
               "no_attn_softcap": ({"attn_logit_softcapping": None}, None),
               "no_final_softcap": ({"final_logit_softcapping": None}, None),
               "query_pre_attn_scalar_8": ({"query_pre_attn_scalar": 8}, None),
               "gelu_exact": ({"hidden_activation": "gelu"}, None)},
    "phi3": {"full_rotary": ({"partial_rotary_factor": 1.0,
                              "rope_parameters": {**DEFAULT_ROPE, "partial_rotary_factor": 1.0}}, None)},
    # a third element, where present, edits the loaded model (what a C++ port could get wrong that no config
    # value switches off)
    "gemma": {"embeddings_not_scaled": ({}, None, lambda m: m.model.embed_tokens.embed_scale.fill_(1.0)),
              "norms_times_w_not_1_plus_w": ({}, None, lambda m: add_to_params(m, lambda n: "norm" in n, -1.0)),
              "gelu_exact": ({}, None, lambda m: set_act(m, torch.nn.GELU()))},
    "gemma3-text": {"local_rope_base_as_global": ({"rope_parameters": {
                        "sliding_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                        "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}}}, None),
                    "global_rope_base_as_local": ({"rope_parameters": {
                        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                        "full_attention": {"rope_type": "default", "rope_theta": 10000.0}}}, None),
                    "all_layers_full": ({"layer_types": ["full_attention"] * 3}, None),
                    "all_layers_sliding": ({"layer_types": ["sliding_attention"] * 3}, None),
                    "query_pre_attn_scalar_8": ({"query_pre_attn_scalar": 8}, None),
                    "no_q_norm_k_norm": ({}, None, lambda m: drop_qk_norm(m)),
                    "q_norm_k_norm_times_w_not_1_plus_w": ({}, None, lambda m: add_to_params(
                        m, lambda n: "q_norm" in n or "k_norm" in n, -1.0)),
                    "embeddings_not_scaled": ({}, None, lambda m: m.model.embed_tokens.embed_scale.fill_(1.0))},
    "phi3-longrope": {"default_rope": ({"rope_parameters": {**DEFAULT_ROPE, "partial_rotary_factor": 0.5}}, None),
                      "short_factors": ({"rope_parameters": {**PHI3_LONGROPE,
                                                             "long_factor": PHI3_LONGROPE["short_factor"]}}, None),
                      "attention_factor_1": ({"rope_parameters": {**PHI3_LONGROPE, "attention_factor": 1.0}}, None)},
}


def add_to_params(m, sel, delta):
    hit = 0
    with torch.no_grad():
        for n, p in m.named_parameters():
            if sel(n):
                p.add_(delta)
                hit += 1
    assert hit, "no parameter selected"


def set_act(m, act):
    for layer in m.model.layers:
        layer.mlp.act_fn = act


def drop_qk_norm(m):
    for layer in m.model.layers:
        layer.self_attn.q_norm = torch.nn.Identity()
        layer.self_attn.k_norm = torch.nn.Identity()
# config.json edits after save_pretrained: keys to delete, keys to set
CONFIG_EDITS = {
    "qwen2-sw": {"delete": ["layer_types"]},
    "qwen2-nosw": {"delete": ["layer_types"], "set": {"sliding_window": 8}},
    "gemma2": {"delete": ["layer_types"]},
    "gemma": {"set": {"hidden_act": "gelu"}},
    "qwen3-moe-sw": {"delete": ["num_local_experts"], "set": {"num_experts": 8}},
    "llama3-rope-legacy": {"delete": ["rope_parameters"],
                           "set": {"rope_theta": 10000.0,
                                   "rope_scaling": {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}}},
}


SLIDING_NOTE = ("transformers 5.24 masks a sliding layer with causal AND kv_idx > q_idx - sliding_window "
                "(masking_utils.sliding_window_overlay): query q sees keys q-W+1..q, W keys including itself; its "
                "DynamicSlidingWindowLayer cache keeps the last W-1 keys/values, so a decode step sees W-1 cached + itself")
NOTES = {
    "mistral-sw": [SLIDING_NOTE, "Mistral applies config.sliding_window on every layer (the attention modules have no "
                   "sliding_window attribute; MistralAttention passes getattr(config, 'sliding_window'))"],
    "qwen2-sw": [SLIDING_NOTE, "Qwen2Config: layer i slides iff use_sliding_window and sliding_window is not None "
                 "and i >= max_window_layers; with max_window_layers=1 of 3 layers: full, sliding, sliding",
                 "config.json written by save_pretrained carries layer_types; it was deleted here (as in Hub "
                 "checkpoints) and the reload re-derived the same layer_types"],
    "qwen2-nosw": ["Qwen2Config.__post_init__ sets sliding_window = None when use_sliding_window is false, so "
                   "save_pretrained writes sliding_window null; config.json was edited back to sliding_window 8 (as "
                   "Qwen2.5 checkpoints on the Hub carry a window with use_sliding_window false) and layer_types "
                   "deleted; max_window_layers 0 so that the window would cover every layer if it were on"],
    "qwen3": ["Qwen3 has use_sliding_window/sliding_window/max_window_layers like Qwen2; left off "
              "(use_sliding_window false), config.json kept as saved, layer_types included (all full_attention)",
              "q_norm/k_norm are RMSNorm over head_dim (16) applied per head to q and k before rope, eps rms_norm_eps"],
    "llama3-rope": ["transformers 5.24 saves rope settings as config.json rope_parameters (rope_theta inside it); "
                    "see llama3-rope-legacy for the rope_scaling + rope_theta form of Hub checkpoints"],
    "llama3-rope-legacy": ["transformers 5.24 reads the legacy form (rope_scaling dict + top-level rope_theta) into "
                           "rope_parameters; logits bit-identical to llama3-rope"],
    "llama-yarn": ["max_position_embeddings 64 = factor 4 x original 16: with 128 transformers warns that the "
                   "explicit factor (4) disagrees with 128/16 and uses the explicit factor",
                   "yarn defaults used: beta_fast 32, beta_slow 1, truncate true (correction range floor/ceil), "
                   "attention_factor 0.1*ln(factor)+1 multiplies cos and sin (rotary_emb.attention_scaling in facts)"],
    "llama-dynamic": ["dynamic NTK: each forward recomputes inv_freq for seq_len = max(position_ids)+1 when that "
                      "exceeds the longest seen so far and max_position_embeddings (16): base' = base * "
                      "((factor*seq_len/max_pos) - (factor-1))^(dim/(dim-2)). The prompt's keys are rotated with "
                      "the seq_len=24 frequencies; each decode step recomputes for 25, 26, ... (queries and the new key) but the cached "
                      "keys keep their old rotation. So generate's greedy (greedy_new_ids) differs from a cache-free "
                      "argmax loop (greedy_no_cache_new_ids, every position rotated for the full length; "
                      "greedy_no_cache_agrees false): matching transformers' text needs that stale-key behaviour. "
                      "factor 3 (not 2): with 2, on the earlier hidden-64 models, one cached step's top-2 margin was "
                      "4e-5.",
                      "the golden logits are the first forward of a freshly loaded model (the recomputed inv_freq "
                      "is module state and persists across calls)"],
    "gemma2": [SLIDING_NOTE, "Gemma2Config without layer_types: layer i is sliding iff (i+1) % 2 == 1, i.e. "
               "sliding, full, sliding, ... (layer_types deleted from config.json; the reload re-derived it)",
               "attention scale is query_pre_attn_scalar**-0.5 (24 here, not head_dim 8); attention scores are "
               "soft-capped cap*tanh(s/cap) after scaling, before the mask; final logits likewise",
               "transformers 5.24 cannot run Gemma 2 with sliding_window null (DynamicCache raises)",
               "tied embeddings; input embeddings multiplied by sqrt(hidden_size) cast to the compute dtype",
               "gelu_exact contrast is small (4e-4): the tanh and erf GELU differ by <= 5e-4 per element"],
    "phi3": ["transformers 5.24 writes partial_rotary_factor both at the top level of config.json and inside "
             "rope_parameters; the model reads rope_parameters['partial_rotary_factor'] (rope dim = int(8*0.5) "
             "= 4, the first 4 of each head's 8 dims rotate, rotate_half within those 4); Hub Phi-3/4 configs "
             "have it only at the top level, from where transformers copies it in"],
    "gemma": ["GemmaConfig.__post_init__ (5.24) rewrites hidden_act 'gelu' to 'gelu_pytorch_tanh' (with a warning: "
              "'a legacy value of the official releases but it is meant to target the tanh approximation'), so "
              "save_pretrained wrote 'gelu_pytorch_tanh'; config.json was edited back to hidden_act 'gelu' (as the "
              "Gemma 1 checkpoints on the Hub have it) and the reload reproduced the logits bit for bit. A C++ "
              "loader must map Gemma 1's 'gelu' to the tanh GELU (0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))))",
              "Gemma 1 reads only hidden_act (GemmaMLP: ACT2FN[config.hidden_act]); hidden_activation is not a "
              "GemmaConfig field and is ignored by the model (Gemma 2 and 3 read hidden_activation)",
              "GeGLU: down_proj(act(gate_proj(x)) * up_proj(x))",
              "embedding normalizer: GemmaTextScaledWordEmbedding multiplies the looked-up row by embed_scale = "
              "torch.tensor(hidden_size**0.5) (float32 sqrt(32) = 5.656854152679443) cast to the weight dtype; the "
              "tied lm_head uses the unscaled embedding matrix",
              "GemmaRMSNorm: x.float() * rsqrt(mean(x^2) + eps) * (1 + w.float()), cast back; weights stored as w "
              "(zero-initialised; here N(0, 0.1)); the same form for input_layernorm, post_attention_layernorm "
              "(the pre-MLP norm, Llama layout: no post-attention/feed-forward output norms) and the final norm",
              "attention scale head_dim**-0.5 (Gemma 1 has no query_pre_attn_scalar, no soft-capping, no sliding "
              "window); default rope theta 10000 on all 8 dims",
              "gelu_exact contrast (exact erf GELU in place of tanh) is only ~6e-4 (asserted > 3e-4, as for gemma2)"],
    "gemma3-text": [SLIDING_NOTE,
                    "Gemma3TextConfig: without layer_types, layer i is sliding iff (i+1) % sliding_window_pattern != 0 "
                    "(pattern default 6: five sliding then one full); made with sliding_window_pattern 3, so layers "
                    "0,1 slide (window 8) and layer 2 is full. save_pretrained writes layer_types and both "
                    "sliding_window_pattern and _sliding_window_pattern (3); config.json kept as saved",
                    "rope per layer type: Gemma3RotaryEmbedding keeps sliding_attention_inv_freq (rope_parameters"
                    "['sliding_attention']['rope_theta'] = the legacy rope_local_base_freq, default 1e4) and "
                    "full_attention_inv_freq (['full_attention']['rope_theta'] = the legacy rope_theta, default 1e6); "
                    "a legacy rope_scaling applies to full_attention only. Here 1e4 local, 1e6 global, both default "
                    "rope (attention_scaling 1) over all 8 head dims",
                    "q_norm/k_norm: Gemma3RMSNorm over head_dim (8), (1 + w) form, eps rms_norm_eps, applied per head "
                    "to q and k after the projections and before rope (as Qwen3, but with 1 + w)",
                    "attention scale query_pre_attn_scalar**-0.5 (24 here, not head_dim 8); attn_logit_softcapping "
                    "and final_logit_softcapping are None (the Gemma3TextConfig defaults): no soft-capping",
                    "layer: x + post_attention_layernorm(attn(input_layernorm(x))), then h + "
                    "post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h))); all (1 + w) RMSNorms; GeGLU with "
                    "hidden_activation gelu_pytorch_tanh",
                    "embedding normalizer as Gemma: row * float32 sqrt(hidden_size); tied lm_head unscaled",
                    "extra_checks: the same weights under a config.json in the Hub form (rope_theta, "
                    "rope_local_base_freq, rope_scaling null, sliding_window_pattern; no layer_types, no "
                    "rope_parameters) give bit-identical logits"],
    "phi3-longrope": ["longrope (_compute_longrope_parameters): inv_freq_i = 1 / (ext_i * theta^(2i/d)) with d = "
                      "rotary dim (int(8 * 0.5) = 4, so 2 factors), ext = long_factor when the sequence length "
                      "(max position id + 1) > original_max_position_embeddings (16), else short_factor",
                      "attention_factor not given, factor not given: factor = max_position_embeddings / "
                      "original_max_position_embeddings = 64/16 = 4 and attention_factor = sqrt(1 + ln(4)/ln(16)) = "
                      "sqrt(1.5) = 1.2247449, multiplying cos and sin (for short and long factors alike)",
                      "the rotary module starts with the short-factor inv_freq and switches per forward "
                      "(dynamic_rope_update -> longrope_frequency_update: torch.where(seq_len > 16, long, short)); "
                      "the 24-token prompt and every decode step (positions 24..35) use the long factors, so "
                      "generate with the cache agrees with a cache-free loop (greedy_no_cache_agrees)",
                      "Phi3ForCausalLM.prepare_inputs_for_generation drops the cache the first time the sequence "
                      "exceeds 16 while the cache holds <= 16 tokens, re-running the whole sequence with the long "
                      "factors: extra_checks runs a 10-token prompt across that boundary (generate vs cache-free)",
                      "transformers 5.24 writes original_max_position_embeddings both at the top level and inside "
                      "rope_parameters; Hub Phi-3 configs have it at the top level with rope_scaling {type: longrope "
                      "(or su), short_factor, long_factor}",
                      "weights are phi3's (same seed, identical model.safetensors)"],
}


def make_config(model_type, kw):
    return transformers.AutoConfig.for_model(model_type, **copy.deepcopy(kw))


def redraw(model, seed):
    """Every parameter drawn from a seeded normal: embeddings N(0, 0.1); other matrices N(0, 0.2); biases N(0, 0.1);
    norm weights around their identity (1 + N(0, 0.1) where the norm multiplies by w, N(0, 0.1) where Gemma
    multiplies by 1 + w). The projections get 0.2: at hidden 32 with 0.1 the blocks added little to the embedding
    and the tied models mostly repeated the last prompt token (the seed rule failed 50 seeds in a row)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.1
            if p.dim() >= 2:  # (3: Qwen3-MoE's experts, [experts, out, in])
                p.copy_(noise if "embed_tokens" in name else 2 * noise)
            elif "norm" in name:
                base = 1.0 if bool((p == 1).all()) else 0.0
                assert base == 1.0 or bool((p == 0).all()), name
                p.copy_(base + noise)
            else:
                p.copy_(noise)


def load(path, **kw):
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager", **kw)
    m.eval()
    return m


def forward_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().contiguous()


def greedy_generate(model):
    gc = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0,
                          use_cache=True, bos_token_id=None)
    model.generation_config.eos_token_id = None  # else generate takes the model's eos (2) for the None above
    with torch.no_grad():
        out = model.generate(torch.tensor([PROMPT]), generation_config=gc)
    new = out[0, len(PROMPT):].tolist()
    assert len(new) == NEW_TOKENS, new
    return new


def greedy_no_cache(model):
    ids = list(PROMPT)
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            ids.append(int(model(torch.tensor([ids]), use_cache=False).logits[0, -1].argmax()))
    return ids[len(PROMPT):]


def top2_margin(logits):
    t = logits.topk(2, dim=-1).values
    return float((t[:, 0] - t[:, 1]).min())


def config_facts(model):
    cfg = model.config
    facts = {"model_type": cfg.model_type, "architectures": type(model).__name__}
    for k in ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "vocab_size", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
              "hidden_act", "hidden_activation", "attention_bias", "mlp_bias", "sliding_window", "use_sliding_window",
              "max_window_layers", "layer_types", "query_pre_attn_scalar", "attn_logit_softcapping",
              "final_logit_softcapping", "partial_rotary_factor", "rope_parameters"]:
        if hasattr(cfg, k):
            v = getattr(cfg, k)
            facts[k] = v if not isinstance(v, dict) else dict(v)
    layers = model.model.layers
    per_layer = []
    for i, layer in enumerate(layers):
        a = layer.self_attn
        d = {"layer": i, "attention_type": getattr(layer, "attention_type", None),
             "self_attn.layer_type": getattr(a, "layer_type", None),
             "self_attn.sliding_window": getattr(a, "sliding_window", "(no attribute)"),
             "self_attn.scaling": float(a.scaling) if hasattr(a, "scaling") else None,
             "self_attn.head_dim": getattr(a, "head_dim", None)}
        if hasattr(a, "attn_logit_softcapping"):
            d["self_attn.attn_logit_softcapping"] = a.attn_logit_softcapping
        per_layer.append(d)
    facts["per_layer"] = per_layer
    rot = model.model.rotary_emb
    if hasattr(rot, "inv_freq"):
        facts["rotary_emb"] = {"rope_type": getattr(rot, "rope_type", None),
                               "attention_scaling": float(getattr(rot, "attention_scaling", 1.0)),
                               "inv_freq_at_load": [float(x) for x in rot.inv_freq]}
    else:  # one rope per layer type (Gemma 3): <type>_inv_freq, <type>_attention_scaling
        facts["rotary_emb"] = {t: {"rope_type": rot.rope_type[t],
                                   "attention_scaling": float(getattr(rot, f"{t}_attention_scaling")),
                                   "inv_freq_at_load": [float(x) for x in getattr(rot, f"{t}_inv_freq")]}
                               for t in rot.layer_types}
        for d in per_layer:
            t = d["self_attn.layer_type"]
            d["rope_theta"] = cfg.rope_parameters[t]["rope_theta"]
            d["rope_inv_freq"] = facts["rotary_emb"][t]["inv_freq_at_load"]
            d["rope_attention_scaling"] = facts["rotary_emb"][t]["attention_scaling"]
    facts["parameters"] = {n: list(p.shape) for n, p in model.named_parameters()}
    return facts


def edit_config(path, edits):
    cfgp = path / "config.json"
    c = json.loads(cfgp.read_text())
    for k in edits.get("delete", []):
        c.pop(k, None)
    c.update(edits.get("set", {}))
    cfgp.write_text(json.dumps(c, indent=2, sort_keys=True) + "\n")


def contrast(path, changes, param_sel, logits, model_fn=None):
    """max |logits - logits of the same weights with config.json `changes` applied (layer_types re-derived) or
    with the parameters named by param_sel reset (norm weights to 1, others to 0), or the loaded model edited by
    model_fn|."""
    c = json.loads((path / "config.json").read_text())
    c.pop("layer_types", None)
    c.update(copy.deepcopy(changes))
    mt = c.pop("model_type")
    cfg = transformers.AutoConfig.for_model(mt, **c)
    m = load(path, config=cfg)
    if param_sel is not None:
        hit = 0
        with torch.no_grad():
            for n, p in m.named_parameters():
                if param_sel(n):
                    p.fill_(1.0 if "norm" in n else 0.0)
                    hit += 1
        assert hit, "no parameter selected"
    if model_fn is not None:
        with torch.no_grad():
            model_fn(m)
    return float((forward_logits(m, PROMPT) - logits).abs().max())


def greedy_margins(model, new_ids):
    """top-1 minus top-2 logit at each greedy step, stepping as generate does: the prompt in one forward with a
    DynamicCache, then one token per forward. Asserts the argmax at each step is the id generate chose."""
    margins = []
    with torch.no_grad():
        out = model(torch.tensor([PROMPT]), use_cache=True)
        for tok in new_ids:
            last = out.logits[0, -1]
            t = last.topk(2).values
            assert int(last.argmax()) == tok
            margins.append(round(float(t[0] - t[1]), 6))
            out = model(torch.tensor([[tok]]), cache=out.past_key_values, use_cache=True)
    return margins


def longrope_checks(path, logits):
    """inv_freq of a fresh load (short factors) and after a 24-token forward (long factors); and a 10-token prompt
    whose greedy text crosses original_max_position_embeddings (16): generate (Phi3ForCausalLM.
    prepare_inputs_for_generation drops the cache once the sequence first exceeds 16, re-running everything with the
    long factors) against a cache-free argmax loop."""
    m = load(path)
    short = [float(x) for x in m.model.rotary_emb.inv_freq]
    forward_logits(m, PROMPT)
    long = [float(x) for x in m.model.rotary_emb.inv_freq]
    assert short != long
    p10, n = PROMPT[:10], 14
    m = load(path)
    m.generation_config.eos_token_id = None
    gc = GenerationConfig(max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0, use_cache=True,
                          bos_token_id=None)
    ids = list(p10)
    with torch.no_grad():
        gen = m.generate(torch.tensor([p10]), generation_config=gc)[0, len(p10):].tolist()
        m = load(path)
        for _ in range(n):
            ids.append(int(m(torch.tensor([ids]), use_cache=False).logits[0, -1].argmax()))
    return {"inv_freq_fresh_load_short_factors": short, "inv_freq_after_24_token_forward_long_factors": long,
            "attention_scaling": float(m.model.rotary_emb.attention_scaling),
            "short_prompt": p10, "short_prompt_generate_14_new_ids": gen,
            "short_prompt_no_cache_14_new_ids": ids[len(p10):], "short_prompt_no_cache_agrees": gen == ids[len(p10):]}


def gemma3_hub_form_checks(path, logits):
    """config.json in the form of Gemma 3 checkpoints on the Hub (top-level rope_theta, rope_local_base_freq,
    rope_scaling null, sliding_window_pattern, no layer_types or rope_parameters): same layer types, same logits."""
    import tempfile
    c = json.loads((path / "config.json").read_text())
    for k in ["rope_parameters", "layer_types", "_sliding_window_pattern"]:
        c.pop(k)
    c.update(rope_theta=1000000.0, rope_local_base_freq=10000.0, rope_scaling=None)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        shutil.copy(path / "model.safetensors", tmp / "model.safetensors")
        (tmp / "config.json").write_text(json.dumps(c, indent=2, sort_keys=True) + "\n")
        m = load(tmp)
        same = torch.equal(forward_logits(m, PROMPT), logits)
        assert same
        return {"hub_form_config_json": c, "hub_form_layer_types": m.config.layer_types,
                "hub_form_rope_parameters": m.config.rope_parameters, "hub_form_logits_bit_identical": same}


EXTRA_CHECKS = {"phi3-longrope": longrope_checks, "gemma3-text": gemma3_hub_form_checks}


def write_golden(path, logits, info):
    safetensors.torch.save_file({"input_ids": torch.tensor(PROMPT, dtype=torch.int32), "logits": logits},
                                str(path / "golden.safetensors"))
    (path / "golden.json").write_text(json.dumps(info, indent=1) + "\n")


VERSIONS = {"transformers": transformers.__version__, "torch": torch.__version__,
            "bitsandbytes": bitsandbytes.__version__}


def build(model_type, kw, seed):
    torch.manual_seed(seed)
    cfg = make_config(model_type, kw)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    redraw(model, seed)
    model.eval()
    return model


def seed_rule(gen, margins):
    return len(set(gen)) >= SEED_RULE_MIN_DISTINCT and min(margins) > SEED_RULE_MIN_MARGIN


def check_seed_rule(name, gen, margins):
    ok = seed_rule(gen, margins)
    assert ok or name in SEED_RULE_EXEMPT, (name, "seed rule not met; rerun --search-seeds", gen, margins)
    return ok


def bnb_source(qname):
    """The float32 model a quantized variant is made from: model type, config kwargs, seed."""
    fam, over, _ = BNB_VARIANTS[qname]
    mt, kw, _, _ = MODELS[fam]
    return mt, {**kw, **over}, SEEDS[qname]


def bnb_config(kind):
    if kind == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=INT8_THRESHOLD)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)


def quantize_via_tmp(name, mt, kw, seed, tmp, kind="nf4"):
    """float32 model saved to tmp (with the family's config.json edits), loaded by transformers in bnb NF4 (or
    LLM.int8 for kind "int8")."""
    src = build(mt, kw, seed)
    src.save_pretrained(tmp, safe_serialization=True)
    if CONFIG_EDITS.get(name):
        edit_config(tmp, CONFIG_EDITS[name])
    return src, load(tmp, quantization_config=bnb_config(kind))


def search_seeds(only=()):
    """Prints, for each entry of SEED0 (or those in only), the first seed0 + 100 k (k < SEED_TRIES) that meets the seed rule (see SEEDS)."""
    import tempfile
    groups = {}
    for n in MODELS:
        groups.setdefault(SAME_WEIGHTS_AS.get(n, n), []).append(n)
    for n in BNB_VARIANTS:
        groups[n] = []
    for key in SEED0:
        if only and key not in only:
            continue
        found = None
        for k in range(SEED_TRIES):
            seed = SEED0[key] + 100 * k
            results = []
            if key in BNB_VARIANTS:
                src, _, kind = BNB_VARIANTS[key]
                mt, kw, _ = bnb_source(key)
                with tempfile.TemporaryDirectory() as tmp:
                    qm = quantize_via_tmp(src, mt, kw, seed, pathlib.Path(tmp), kind)[1]
                    gen = greedy_generate(qm)
                    qm = quantize_via_tmp(src, mt, kw, seed, pathlib.Path(tmp), kind)[1]
                    results.append((gen, greedy_margins(qm, gen)))
            else:
                for n in groups[key]:
                    mt, kw, _, _ = MODELS[n]
                    gen = greedy_generate(build(mt, kw, seed))
                    results.append((gen, greedy_margins(build(mt, kw, seed), gen)))
            ok = all(seed_rule(g, m) for g, m in results)
            print(key, seed, ok, [(len(set(g)), round(min(m), 5)) for g, m in results], flush=True)
            if ok:
                found = seed
                break
        print(f"SEED {key} {found if found is not None else SEED0[key]} {'ok' if found is not None else 'EXEMPT'}",
              flush=True)


def make(name, model_type, kw, seed, what):
    path = OUT / name
    shutil.rmtree(path, ignore_errors=True)
    model = build(model_type, kw, seed)
    model.save_pretrained(path, safe_serialization=True)
    if name in SAME_WEIGHTS_AS:
        same = OUT / SAME_WEIGHTS_AS[name] / "model.safetensors"
        assert (path / "model.safetensors").read_bytes() == same.read_bytes(), name
    saved_config = json.loads((path / "config.json").read_text())
    logits = forward_logits(model, PROMPT)
    edits = CONFIG_EDITS.get(name, {})
    if edits:
        edit_config(path, edits)
    # reload (from the edited config.json, if edited): the logits must come back bit for bit, the derived
    # layer_types / sliding_window must be the ones the instantiated model had
    fresh = load(path)
    assert torch.equal(forward_logits(fresh, PROMPT), logits), name
    assert getattr(fresh.config, "layer_types", None) == getattr(model.config, "layer_types", None), name
    facts = config_facts(fresh)
    windows = [l["self_attn.sliding_window"] for l in facts["per_layer"]
               if isinstance(l["self_attn.sliding_window"], int)]
    if getattr(fresh.config, "sliding_window", None):
        windows.append(fresh.config.sliding_window)
    assert all(len(PROMPT) > w for w in windows), (name, windows)
    gen = greedy_generate(load(path))
    nocache = greedy_no_cache(load(path))
    margins = greedy_margins(load(path), gen)
    rule_met = check_seed_rule(name, gen, margins)
    if name in SAME_WEIGHTS_AS:
        assert seed == SEEDS[SAME_WEIGHTS_AS[name]], name
    contrasts = {label: contrast(path, ch, sel, logits, *fn) for label, (ch, sel, *fn) in CONTRASTS.get(name, {}).items()}
    for label, d in contrasts.items():
        assert d > CONTRAST_MIN.get(label, 1e-2), (name, label, d)
    info = {
        "name": name, "tests": what, "seed": seed, "seed_rule_met": rule_met, "same_weights_as": SAME_WEIGHTS_AS.get(name), "versions": VERSIONS,
        "prompt": PROMPT, "greedy_new_ids": gen,
        "greedy_settings": "model.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=None, "
                           "use_cache=True): the prompt in one forward, then one token per step with the KV cache",
        "greedy_no_cache_new_ids": nocache,
        "greedy_no_cache_agrees": nocache == gen,
        "eos_in_greedy": kw.get("eos_token_id") in gen,
        "logits_min_top2_margin": top2_margin(logits),
        "greedy_step_top2_margins": margins,
        "max_abs_logit_change_if": contrasts,
        "logits_absmax": float(logits.abs().max()),
        "config_json_as_saved_by_transformers": saved_config,
        "config_json_edits": edits,
        "rope_key_in_config_json": [k for k in ("rope_parameters", "rope_scaling", "rope_theta") if k in saved_config],
        "facts_from_instantiated_model": facts,
        "sliding_windows_used": sorted(set(windows)),
        "prompt_longer_than_every_window": True,
        "notes": NOTES.get(name, []),
    }
    if name in EXTRA_CHECKS:
        info["extra_checks"] = EXTRA_CHECKS[name](path, logits)
    write_golden(path, logits, info)
    print(f"{name}: greedy {gen} nocache_agrees={nocache == gen} margin={info['logits_min_top2_margin']:.4f}")


def int8_outlier_counts(model, ids):
    """Per Linear8bitLt, how many input columns bitsandbytes treats as outliers in one forward of ids (columns of
    the float16-cast input with some |x| >= threshold: int8_vectorwise_quant's rule), and that forward's logits."""
    counts, hooks = {}, []
    for n, m in model.named_modules():
        if isinstance(m, bitsandbytes.nn.Linear8bitLt):
            def pre(mod, inp, n=n):
                a = inp[0].reshape(-1, inp[0].shape[-1]).to(torch.float16)
                counts[n] = int((a.abs() >= mod.state.threshold).any(dim=0).sum())
            hooks.append(m.register_forward_pre_hook(pre))
    logits = forward_logits(model, ids)
    for h in hooks:
        h.remove()
    return counts, logits


# the golden.json format of these is kept as first committed (the later variants add shapes and more)
BNB_FORMAT_V1 = {"qwen2-sw-bnb-nf4", "qwen3-bnb-nf4"}


def make_bnb(qname):
    """<qname>/: the family's float32 model with BNB_VARIANTS' overrides, its own seed, saved to a temporary
    directory only, loaded by transformers in bnb NF4 (or LLM.int8) and saved with save_pretrained; golden logits
    and greedy ids from transformers' forward of that quantized model (bitsandbytes' CPU path)."""
    import tempfile
    name, over, kind = BNB_VARIANTS[qname]
    qpath = OUT / qname
    shutil.rmtree(qpath, ignore_errors=True)
    smt, skw, sseed = bnb_source(qname)
    with tempfile.TemporaryDirectory() as tmp:
        src, qm = quantize_via_tmp(name, smt, skw, sseed, pathlib.Path(tmp), kind)
        src_logits = forward_logits(src, PROMPT)
        qm.save_pretrained(qpath)
    qlogits = forward_logits(qm, PROMPT)
    qre = load(qpath)
    if kind == "int8":
        outliers, relogits = int8_outlier_counts(qre, PROMPT)
    else:
        relogits = forward_logits(qre, PROMPT)
    assert torch.equal(relogits, qlogits), qname
    qgen = greedy_generate(load(qpath))
    qmargins = greedy_margins(load(qpath), qgen)
    qrule = check_seed_rule(qname, qgen, qmargins)
    cls = bitsandbytes.nn.Linear8bitLt if kind == "int8" else bitsandbytes.nn.Linear4bit
    mods = {n: m for n, m in qm.named_modules() if isinstance(m, cls)}
    in_features = {n: m.in_features for n, m in mods.items()}
    assert in_features and all(f % 64 == 0 for f in in_features.values()), in_features
    if qname in BNB_FORMAT_V1:
        qinfo = {"name": qname, "tests": f"a {name}-like model (the {name} config with {over}, so that "
                 "every quantized in_features is a multiple of 64) loaded by transformers with BitsAndBytesConfig("
                 "load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_compute_dtype=float32) and saved; logits "
                 "are transformers' forward of the 4-bit model on CPU",
                 "source_float32": {"like": name, "model_type": smt, "config_overrides": over,
                                    "seed": sseed, "config_json_edits": CONFIG_EDITS.get(name, {}),
                                    "committed": False},
                 "seed": sseed, "seed_rule_met": qrule, "versions": VERSIONS,
                 "prompt": PROMPT, "greedy_new_ids": qgen, "logits_min_top2_margin": top2_margin(qlogits),
                 "greedy_step_top2_margins": qmargins,
                 "max_abs_diff_vs_float32_logits": float((qlogits - src_logits).abs().max()),
                 "quantized_modules": sorted(in_features),
                 "config_json": "as save_pretrained wrote it from the 4-bit model (no edits; derived layer_types "
                                "included)"}
    else:
        how = ("BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=6.0)" if kind == "int8" else
               "BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_compute_dtype=float32)")
        qinfo = {"name": qname, "tests": f"a {name}-like model (the {name} config with {over}, so that "
                 f"every quantized in_features is a multiple of 64) loaded by transformers with {how} and saved "
                 f"with save_pretrained; logits are transformers' forward of the {kind} model on CPU",
                 "quantization": kind,
                 "source_float32": {"like": name, "model_type": smt, "config_overrides": over,
                                    "seed": sseed, "config_json_edits": CONFIG_EDITS.get(name, {}),
                                    "committed": False,
                                    "remake": f"make_family_golden.py {qname} (build() of MODELS['{name}'] with "
                                              "the overrides and this seed, saved to a temporary directory, the "
                                              "family's config_json_edits applied, then from_pretrained with the "
                                              "quantization config)"},
                 "seed": sseed, "seed_rule_met": qrule, "versions": VERSIONS,
                 "prompt": PROMPT, "greedy_new_ids": qgen, "logits_min_top2_margin": top2_margin(qlogits),
                 "greedy_step_top2_margins": qmargins,
                 "max_abs_diff_vs_float32_logits": float((qlogits - src_logits).abs().max()),
                 "quantized_modules": sorted(in_features),
                 "quantized_module_shapes": {n: [m.out_features, m.in_features] for n, m in sorted(mods.items())},
                 "not_quantized": sorted(n for n, m in qm.named_modules()
                                         if isinstance(m, torch.nn.Linear) and not isinstance(m, cls)),
                 "tensors_in_model_safetensors": {
                     k: [str(v.dtype).replace("torch.", ""), list(v.shape)]
                     for k, v in sorted(safetensors.torch.load_file(str(qpath / "model.safetensors")).items())},
                 "config_json": "as save_pretrained wrote it from the quantized model (no edits; derived "
                                "layer_types included)"}
        if kind == "int8":
            qinfo["int8_threshold"] = INT8_THRESHOLD
            qinfo["int8_outlier_columns_in_logits_forward"] = outliers
            qinfo["int8_notes"] = [
                "the model is in eval mode, so Linear8bitLt runs bitsandbytes.matmul -> MatMul8bitLt (not the "
                "training-only MatMul8bitFp dequantize path): the input is cast to float16, int8_vectorwise_quant "
                "(threshold 6.0) marks as outlier every column holding some |x| >= 6, zeroes those entries, quantizes "
                "each row by its absmax (round(x * 127 / absmax)) and zeroes the outlier columns of the int8 rows; "
                "int8_mixed_scaled_mm: int32 matmul of the int8 rows with the int8 weight, scaled by "
                "row_absmax * SCB / 127^2, bias added, plus (outlier columns of the input) @ (those weight columns "
                "dequantized, CB * SCB / 127)^T",
                "int8_outlier_columns_in_logits_forward counts those columns per module over the 24 prompt rows"]
    write_golden(qpath, qlogits, qinfo)
    print(f"{qname}: greedy {qgen} max|dlogits|={qinfo['max_abs_diff_vs_float32_logits']:.4f}")


if __name__ == "__main__":
    import sys
    if sys.argv[1:2] == ["--search-seeds"]:
        search_seeds(sys.argv[2:])
        sys.exit(0)
    only = sys.argv[1:]  # names in MODELS or BNB_VARIANTS to remake (default: all)
    assert all(n in MODELS or n in BNB_VARIANTS for n in only), \
        "usage: make_family_golden.py [--search-seeds [name ...]] | [name ...]"
    OUT.mkdir(parents=True, exist_ok=True)
    for n, (mt, kw, seed, what) in MODELS.items():
        if not only or n in only:
            make(n, mt, kw, seed, what)
        for q, (fam, _, _) in BNB_VARIANTS.items():
            if fam == n and (not only or q in only):
                make_bnb(q)
