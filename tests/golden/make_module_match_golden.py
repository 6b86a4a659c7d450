#!/usr/bin/env python3
"""Which modules transformers' llm_int8_skip_modules entries skip, from transformers' own should_convert_module.

Run once: pip install transformers && python3 tests/golden/make_module_match_golden.py
Writes module_match.json: [module, entry, skipped] for module names of a llama and entries of every kind the
rule has (prefix up to a '.', regex from the start with the same boundary, plain suffix, parent names that
match nothing). tests/models/module_match_test.cpp checks nibble's module_matches against it.
"""
import json
import pathlib

import transformers
from transformers.quantizers.quantizers_utils import should_convert_module

modules = ["lm_head", "model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj",
           "model.layers.11.mlp.down_proj", "model.layers.1.mlp.gate_proj", "model.layers.10.self_attn.o_proj"]
entries = ["lm_head", "down_proj", "model.layers.1", "model.layers.1.mlp", "self_attn", "mlp", "mlp.gate",
           "model.layers.*.mlp", r"model\.layers\.1\d\.", "model.layers.[0-9].self_attn", "proj", "layers.1",
           "model", "q_proj|o_proj", "model.layers.1|lm_head", "gate_proj", "head"]
cases = [[m, e, not should_convert_module(m, [e])] for m in modules for e in entries]
out = pathlib.Path(__file__).parent / "module_match.json"
out.write_text(json.dumps({"transformers": transformers.__version__, "cases": cases}, indent=0) + "\n")
print(len(cases), "cases,", sum(c[2] for c in cases), "skipped")
