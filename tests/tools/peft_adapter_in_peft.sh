#!/bin/sh
# nibble's adapter in real peft: `nibble quantize` writes the example model as a bnb-4bit checkpoint (NF4 + double
# quant, float32 compute), `nibble finetune` trains an adapter over it, and tests/tools/peft_adapter_check.py loads
# that adapter with peft's PeftModel.from_pretrained over transformers' load of the same checkpoint: no missing or
# unexpected keys, LoRA layers with nibble's r and alpha, and the perplexity `nibble perplexity --adapter` prints,
# within 1e-4. Exit 77 (skipped) where PYTHON lacks torch, transformers, bitsandbytes or peft (configure with
# -DNIBBLE_PYTHON=/path/to/venv/bin/python to run it).
# Usage: peft_adapter_in_peft.sh NIBBLE_CLI SOURCE_DIR MODEL_DIR PYTHON
set -eu
NIBBLE=$1 SRC=$2 MODEL=$3 PY=$4
"$PY" -c "import torch, transformers, bitsandbytes, peft" 2>/dev/null || { echo "skipped: $PY has no torch/transformers/bitsandbytes/peft"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$NIBBLE" quantize "$MODEL" "$tmp/q4" --quant-type nf4 --double-quant --compute-dtype float32 -q
"$NIBBLE" finetune "$tmp/q4" --data "$SRC/tests/golden/qlora/train.txt" -o "$tmp/adapter" --target-modules all-linear \
  --lora-r 4 --lora-alpha 8 --lora-dropout 0 --seq-len 64 --batch-size 2 --lr 5e-3 --max-steps 5 -q
ppl=$("$NIBBLE" perplexity "$tmp/q4" -f "$SRC/tests/data/eval_story.txt" --adapter "$tmp/adapter" | sed -n 's/^perplexity: //p')
base=$("$NIBBLE" perplexity "$tmp/q4" -f "$SRC/tests/data/eval_story.txt" | sed -n 's/^perplexity: //p')
exec "$PY" "$SRC/tests/tools/peft_adapter_check.py" "$tmp/q4" "$tmp/adapter" "$SRC/tests/data/eval_story.txt" "$ppl" "$base"
