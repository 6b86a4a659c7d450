#!/usr/bin/env bash
# Fuzzes each libFuzzer target of the "fuzz" preset over its committed corpus for a bounded time; any crash,
# sanitizer report, leak, timeout, out-of-memory or non-nibble exception fails (non-zero exit). New inputs go to
# a scratch directory, so the committed corpus is not modified.
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default 45 s, every target in fuzz/corpus/)
# To grow the committed corpus after a campaign: build/fuzz/fuzz_T -merge=1 fuzz/corpus/T NEW_INPUTS_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-45}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for d in fuzz/corpus/*/; do targets+=("$(basename "$d")"); done
fi
for t in "${targets[@]}"; do
  dict=fuzz/json.dict
  [ -f fuzz/"$t".dict ] && dict=fuzz/"$t".dict
  work=$(mktemp -d)
  echo "-- fuzz_$t: ${seconds}s over fuzz/corpus/$t ($(ls fuzz/corpus/"$t" | wc -l) inputs)"
  if ! build/fuzz/fuzz_"$t" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -dict="$dict" \
      -artifact_prefix="$work/" -print_final_stats=1 "$work" fuzz/corpus/"$t" >"$work/log" 2>&1; then
    tail -n 60 "$work/log"
    for a in "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-*; do
      [ -e "$a" ] && { echo "artifact $a:"; head -c 2000 "$a" | od -c | head -n 40; }
    done
    echo "fuzz_$t FAILED (log and artifacts in $work)"
    exit 1
  fi
  grep -E "^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss_mb)" "$work/log" || tail -n 3 "$work/log"
  rm -rf "$work"
done
