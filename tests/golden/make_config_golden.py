#!/usr/bin/env python3
"""Golden data for nibble::BitsAndBytesConfig, from real transformers.

Run once:  pip install torch transformers && python3 tests/golden/make_config_golden.py
Writes tests/golden/bnb_config.json: for each case, the constructor kwargs (dtypes as names, which
transformers accepts), and what transformers returns: to_dict / to_diff_dict / to_json_string (both forms),
repr, is_quantizable, quantization_method, or the exception type and message.
"""
import json
import pathlib

import transformers
from transformers import BitsAndBytesConfig

CASES = [
    {},
    {"load_in_4bit": True},
    {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16",
     "bnb_4bit_use_double_quant": True},
    {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4"},
    {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "float16",
     "bnb_4bit_quant_storage": "bfloat16"},
    {"load_in_8bit": True, "llm_int8_threshold": 5.0, "llm_int8_skip_modules": ["lm_head", "proj"]},
    {"load_in_8bit": True, "llm_int8_enable_fp32_cpu_offload": True, "llm_int8_has_fp16_weight": True},
    {"load_in_4bit": True, "bnb_4bit_compute_dtype": "float32"},
    {"load_in_4bit": True, "bnb_4bit_quant_storage": "float32", "bnb_4bit_quant_type": "nf4"},
    {"load_in_4bit": True, "llm_int8_skip_modules": []},
    {"load_in_4bit": True, "llm_int8_threshold": 0.0001},
    {"load_in_4bit": True, "llm_int8_threshold": 1e20, "bnb_4bit_quant_storage": "int8"},
    {"load_in_4bit": True, "llm_int8_skip_modules": ["mlp.down_proj", "çà", "模型"]},
    # a saved quantization_config block, as from_dict sees it
    {"_load_in_4bit": True, "_load_in_8bit": False, "bnb_4bit_compute_dtype": "bfloat16",
     "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
     "llm_int8_enable_fp32_cpu_offload": False, "llm_int8_has_fp16_weight": False,
     "llm_int8_skip_modules": None, "llm_int8_threshold": 6.0, "load_in_4bit": True, "load_in_8bit": False,
     "quant_method": "bitsandbytes"},
    # errors
    {"load_in_4bit": True, "load_in_8bit": True},
    {"load_in_4bit": True, "bnb_4bit_quant_storage": "int4"},
    {"load_in_4bit": True, "bnb_4bit_compute_dtype": 3},
    {"load_in_4bit": "yes"},
    {"load_in_8bit": 1},
    {"llm_int8_threshold": 6},
    {"llm_int8_skip_modules": "lm_head"},
    {"llm_int8_enable_fp32_cpu_offload": "no"},
    {"llm_int8_has_fp16_weight": None},
    {"bnb_4bit_quant_type": 4},
    {"bnb_4bit_use_double_quant": 1},
    {"load_in_4bit": True, "some_unknown_key": 1},
]


def run(kwargs):
    out = {"kwargs": kwargs}
    try:
        cfg, unused = BitsAndBytesConfig.from_dict(dict(kwargs), return_unused_kwargs=True)
    except (ValueError, TypeError) as e:
        out["error_type"] = type(e).__name__
        out["error"] = str(e)
        return out
    out["to_dict"] = json.dumps(cfg.to_dict(), sort_keys=True)
    out["to_diff_dict"] = json.dumps(cfg.to_diff_dict(), sort_keys=True)
    out["to_json_string"] = cfg.to_json_string()
    out["to_json_string_full"] = cfg.to_json_string(use_diff=False)
    out["repr"] = repr(cfg)
    out["is_quantizable"] = bool(cfg.is_quantizable())
    out["quantization_method"] = cfg.quantization_method()
    out["class_name"] = str(cfg.__class__)
    return out


def main():
    data = {"transformers_version": transformers.__version__, "cases": [run(c) for c in CASES]}
    path = pathlib.Path(__file__).with_name("bnb_config.json")
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path} ({len(CASES)} cases)")


if __name__ == "__main__":
    main()
