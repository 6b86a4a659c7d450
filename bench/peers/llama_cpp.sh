#!/usr/bin/env bash
# Peer benchmark: llama.cpp's llama-bench on a random Llama-2-7B-shape model with LAYERS layers, the same
# shape as `nibble bench --synthetic llama-7b --layers LAYERS` (see README.md beside this script).
#
# Environment (defaults in brackets):
#   LLAMA_DIR   built llama.cpp tree, binaries in $LLAMA_DIR/build/bin [/tmp/peer/llama.cpp]
#   LAYERS      number of transformer layers [4]
#   P N T R     llama-bench -p (prompt tokens), -n (generated tokens), -t (threads), -r (repetitions) [512 128 2 1]
#   TYPES       llama-quantize types to bench [Q4_0 IQ4_NL]
#   HEAD        stock: llama-quantize's own mix (output.weight in Q6_K, as llama.cpp users get it);
#               bf16:  --pure, every linear in TYPE and token_embd/output in BF16, like nibble's default
#                      (lm_head not quantized) [stock]
#   CACHE_DIR   where the GGUFs are made and kept [/tmp/nibble-peer-gguf]
#   PYTHON      a python with numpy, pyyaml, sentencepiece [python3]
#   KEEP_F16    1 keeps the F16 source GGUF after quantizing [0]
# Extra arguments are passed to llama-bench (e.g. -o json).
set -euo pipefail

LLAMA_DIR=${LLAMA_DIR:-/tmp/peer/llama.cpp}
LAYERS=${LAYERS:-4}
P=${P:-512}
N=${N:-128}
T=${T:-2}
R=${R:-1}
TYPES=${TYPES:-Q4_0 IQ4_NL}
HEAD=${HEAD:-stock}
CACHE_DIR=${CACHE_DIR:-/tmp/nibble-peer-gguf}
PYTHON=${PYTHON:-python3}
KEEP_F16=${KEEP_F16:-0}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=$LLAMA_DIR/build/bin
for b in llama-bench llama-quantize; do
  [[ -x $bin/$b ]] || { echo "llama_cpp.sh: no $bin/$b (build llama.cpp first, see README.md)" >&2; exit 1; }
done

case $HEAD in
  stock) qargs=(); suffix="" ;;
  bf16) qargs=(--pure --output-tensor-type bf16 --token-embedding-type bf16); suffix="-bf16head" ;;
  *) echo "llama_cpp.sh: HEAD must be stock or bf16, not '$HEAD'" >&2; exit 1 ;;
esac

mkdir -p "$CACHE_DIR"
base=$CACHE_DIR/llama7b-l$LAYERS
f16=$base-f16.gguf
made_f16=0
models=()
for type in $TYPES; do
  out=$base-$type$suffix.gguf
  if [[ ! -s $out ]]; then
    if [[ ! -s $f16 ]]; then
      echo "== making $f16" >&2
      PYTHONPATH=$LLAMA_DIR/gguf-py${PYTHONPATH:+:$PYTHONPATH} \
        "$PYTHON" "$here/make_random_gguf.py" --layers "$LAYERS" -o "$f16.tmp"
      mv "$f16.tmp" "$f16"
      made_f16=1
    fi
    echo "== quantizing to $out" >&2
    "$bin/llama-quantize" "${qargs[@]}" "$f16" "$out.tmp" "$type" "$T" > "$out.log" 2>&1 ||
      { tail -20 "$out.log" >&2; exit 1; }
    mv "$out.tmp" "$out"
  fi
  models+=(-m "$out")
done
if [[ $made_f16 == 1 && $KEEP_F16 != 1 ]]; then rm -f "$f16"; fi

echo "== llama.cpp $(cat "$LLAMA_DIR/PEER_COMMIT" 2>/dev/null || echo '(commit unknown)'), $LAYERS layers, HEAD=$HEAD" >&2
"$bin/llama-bench" "${models[@]}" -p "$P" -n "$N" -t "$T" -r "$R" "$@"
echo "== nibble's equivalent: build/release/nibble bench --synthetic llama-7b --layers $LAYERS --load-in-4bit" \
  "--quant-type nf4 --double-quant --compute-dtype bfloat16 -p $P -n $N -t $T -r $R" >&2
