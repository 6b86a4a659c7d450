#!/usr/bin/env bash
# The CUDA backend's GPU check in one call (issue 11): the CUDA tests (nibble_cuda_tests) and the bandwidth
# benchmark (nibble_cuda_bench: device read bandwidth, then gemv_4bit on Llama-7B/8B shapes per compute dtype).
# Everything printed is also written under $OUT when set, else build/cuda/check/.
#
#   scripts/cuda-check.sh            on a machine with a GPU: build the `cuda` preset's two targets (-j nproc)
#                                    unless build/cuda-bundle holds them, then run the tests and the benchmark
#   scripts/cuda-check.sh --bundle   on the build machine: build them and copy them, with the shared libraries
#                                    they load (but glibc and the driver), into build/cuda-bundle, for a GPU
#                                    machine that lacks nibble's Debian build dependencies (carry build/cuda-bundle)
#   --quick                          fewer benchmark repetitions
# On the GPU machine (device tool): carry build/cuda-bundle, run `scripts/cuda-check.sh`, timeout ~420 s. The
# bundle needs a glibc at least as new as the build machine's (Debian 12: 2.36); if it does not load, the script
# builds instead, which needs nibble's Debian -dev packages there. Estimates, not measured: the tests ~1 min,
# the benchmark ~1-2 min on an H200; a build there a few minutes on 16 cores.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/cuda/bin"
bundle=build/cuda-bundle
mode=run
quick=""
for a in "$@"; do
  case "$a" in
    --bundle) mode=bundle ;;
    --quick) quick=--quick ;;
    *) echo "usage: $0 [--bundle] [--quick]" >&2; exit 2 ;;
  esac
done

build() {
  cmake --preset cuda >/dev/null && cmake --build --preset cuda -j "$(nproc)" --target nibble_cuda_tests nibble_cuda_bench
}

if [ "$mode" = bundle ]; then
  build || exit 1
  rm -rf "$bundle" && mkdir -p "$bundle/lib"
  cp build/cuda/tests/nibble_cuda_tests build/cuda/nibble_cuda_bench "$bundle/"
  # every shared library the two load, but the C library, the loader and the driver (libcuda comes with the GPU)
  ldd "$bundle/nibble_cuda_tests" "$bundle/nibble_cuda_bench" | awk '/=> \//{print $3}' | sort -u |
    grep -Ev '/(libc|libm|libdl|librt|libpthread|ld-linux[^/]*|libcuda)\.so' | xargs -r cp -L -t "$bundle/lib"
  du -sh "$bundle"; ls "$bundle/lib"
  exit 0
fi

out="${OUT:-build/cuda/check}"
mkdir -p "$out"
log="$out/cuda-check.log"
: >"$log"
say() { echo "$*" | tee -a "$log"; }
start=$(date +%s)
say "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.memory --format=csv 2>&1 | tee -a "$log"

if [ -x "$bundle/nibble_cuda_tests" ] && [ -x "$bundle/nibble_cuda_bench" ]; then
  say "== using the prebuilt $bundle"
  export LD_LIBRARY_PATH="$PWD/$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  tests_bin="$bundle/nibble_cuda_tests"
  bench_bin="$bundle/nibble_cuda_bench"
  if ldd "$tests_bin" | grep -q "not found"; then
    ldd "$tests_bin" | tee -a "$log"
    say "the bundle does not load here: falling back to a build"
    tests_bin=""
  fi
else
  tests_bin=""
fi
if [ -z "$tests_bin" ]; then
  say "== build (cuda preset, -j$(nproc))"
  build 2>&1 | tail -20 | tee -a "$log"
  [ "${PIPESTATUS[0]}" = 0 ] || { say "build failed"; exit 1; }
  tests_bin=build/cuda/tests/nibble_cuda_tests
  bench_bin=build/cuda/nibble_cuda_bench
  say "build: $(($(date +%s) - start)) s"
fi

say "== CUDA tests"
timeout 240 "$tests_bin" --gtest_output="json:$out/cuda-tests.json" 2>&1 | tee "$out/cuda-tests.log" |
  grep -E '^\[ *(RUN|OK|FAILED|SKIPPED|PASSED) *\]|Failure|error|tolerance|differ' | grep -v '^\[ RUN' | tee -a "$log"
tests=${PIPESTATUS[0]}
say "skipped: $(grep -c '^\[  SKIPPED \] .*([0-9]* ms)$' "$out/cuda-tests.log") (on a GPU machine only DeviceResolve.CudaWithoutBackendOrDeviceIsAClearError should be)"

say "== benchmark"
timeout 300 "$bench_bin" $quick --json "$out/cuda_gemv_bench.json" 2>&1 | tee -a "$log"
bench=${PIPESTATUS[0]}
say "total: $(($(date +%s) - start)) s; tests rc=$tests, bench rc=$bench"
[ "$tests" = 0 ] && [ "$bench" = 0 ]
