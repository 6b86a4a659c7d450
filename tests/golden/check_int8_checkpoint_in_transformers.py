#!/usr/bin/env python3
"""Checks that real transformers + bitsandbytes load an 8-bit (LLM.int8) checkpoint and generate the expected ids.

  python3 tests/golden/check_int8_checkpoint_in_transformers.py CKPT_DIR EXPECTED_IDS_JSON

Meant for CTest on a checkpoint written by `nibble quantize IN OUT --load-in-8bit`:
  exit 77 (CTest's SKIP_RETURN_CODE) when torch, transformers or bitsandbytes cannot be imported;
  exit 1 with a message when loading raises, reports missing / unexpected / mismatched keys or conversion errors
         (from_pretrained(..., output_loading_info=True)), when the config has no load_in_8bit
         quantization_config, when no bitsandbytes Linear8bitLt module (with int8 weight and SCB) is present, or
         when greedy generation gives other ids (both sequences are printed);
  exit 2 on bad arguments; 0 when everything matches.
EXPECTED_IDS_JSON: {"input_ids": [...], "expected_ids": [...], "max_new_tokens": N, "stop_at_eos": true}
  expected_ids are the NEW ids only (after the prompt). stop_at_eos (default true) keeps the model's generation
  config eos handling (generation stops after emitting eos, which is then the last expected id); false disables
  eos so exactly max_new_tokens ids are generated. Greedy (do_sample=False), CPU, the checkpoint's own dtype
  and llm_int8_threshold.
Checked (tests/golden/make_int8_golden.py's checkpoint tiny-llama-bnb-int8, saved by transformers itself) to pass
there with its info.json's ids and to fail on a checkpoint missing an SCB, with a renamed key, with changed int8
weights, and on the unquantized float32 checkpoint.
"""
import json
import sys

SKIP = 77


def fail(msg):
    print("FAIL:", msg, file=sys.stderr)
    return 1


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    ckpt, spec_path = argv[1], argv[2]
    try:
        import bitsandbytes
        import torch
        from transformers import AutoModelForCausalLM
    except Exception as e:  # noqa: BLE001 - any import failure means the tooling is unavailable
        print(f"SKIP: cannot import torch/transformers/bitsandbytes: {e!r}")
        return SKIP
    import logging

    torch.set_num_threads(1)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # a float16-cast warning on every 8-bit matmul
    try:
        with open(spec_path) as f:
            spec = json.load(f)
        input_ids = [int(i) for i in spec["input_ids"]]
        expected = [int(i) for i in spec["expected_ids"]]
        max_new = int(spec["max_new_tokens"])
        stop_at_eos = bool(spec.get("stop_at_eos", True))
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"bad EXPECTED_IDS_JSON {spec_path}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2

    try:
        model, info = AutoModelForCausalLM.from_pretrained(ckpt, device_map="cpu", output_loading_info=True)
    except Exception as e:  # noqa: BLE001
        return fail(f"transformers could not load {ckpt}: {type(e).__name__}: {e}")
    problems = {k: sorted(map(str, v)) if isinstance(v, (set, list, tuple)) else v
                for k, v in info.items() if k != "skipped_pp_keys" and v}
    if problems:
        return fail(f"loading {ckpt} reported: {json.dumps(problems, indent=1, default=str)}")

    qc = getattr(model.config, "quantization_config", None)
    qd = qc.to_dict() if hasattr(qc, "to_dict") else (qc or {})
    if not qd.get("load_in_8bit"):
        return fail(f"config has no load_in_8bit quantization_config: {qd}")
    lins = {n: m for n, m in model.named_modules() if isinstance(m, bitsandbytes.nn.Linear8bitLt)}
    if not lins:
        return fail("no bitsandbytes Linear8bitLt module: the model is not 8-bit")
    for n, m in lins.items():
        scb = m.weight.SCB if m.weight.SCB is not None else m.state.SCB
        if m.weight.dtype != torch.int8 or scb is None:
            return fail(f"{n}: weight {m.weight.dtype}, SCB {None if scb is None else scb.dtype}: not an int8 linear")

    model.eval()
    gc = model.generation_config
    gc.do_sample = False
    gc.max_new_tokens = max_new
    if not stop_at_eos:
        gc.eos_token_id = None
    with torch.no_grad():
        out = model.generate(torch.tensor([input_ids]), attention_mask=torch.ones(1, len(input_ids), dtype=torch.long),
                             generation_config=gc)
    got = out[0, len(input_ids):].tolist()
    print(f"{ckpt}: {len(lins)} Linear8bitLt modules, threshold {qd.get('llm_int8_threshold')}, "
          f"dtype {model.dtype}")
    print("expected:", expected)
    print("got:     ", got)
    if got != expected:
        first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        return fail(f"greedy ids differ from position {first}")
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
