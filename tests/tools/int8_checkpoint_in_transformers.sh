#!/bin/sh
# nibble's 8-bit checkpoint in real transformers + bitsandbytes: `nibble quantize --load-in-8bit` writes the
# example model, then tests/golden/check_int8_checkpoint_in_transformers.py loads it (no missing or unexpected
# keys, Linear8bitLt modules) and checks transformers' greedy ids against the golden ones, which
# tests/models/int8_golden_test.cpp shows nibble generates too. Exit 77 (skipped) where PYTHON lacks torch,
# transformers or bitsandbytes (configure with -DNIBBLE_PYTHON=/path/to/venv/bin/python to run it).
# Usage: int8_checkpoint_in_transformers.sh NIBBLE_CLI SOURCE_DIR MODEL_DIR PYTHON
set -eu
NIBBLE=$1 SRC=$2 MODEL=$3 PY=$4
"$PY" -c "import torch, transformers, bitsandbytes" 2>/dev/null || { echo "skipped: $PY has no torch/transformers/bitsandbytes"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$NIBBLE" quantize "$MODEL" "$tmp/q8" --load-in-8bit -q
"$PY" - "$SRC/tests/golden/int8_golden.json" "$tmp/expected.json" <<'PYEOF'
import json, sys
case = json.load(open(sys.argv[1]))["tinystories_656k"]["threshold_t6"]["greedy_24"][0]
json.dump({"input_ids": case["input_ids"], "expected_ids": case["new_ids"], "max_new_tokens": 24}, open(sys.argv[2], "w"))
PYEOF
exec "$PY" "$SRC/tests/golden/check_int8_checkpoint_in_transformers.py" "$tmp/q8" "$tmp/expected.json"
