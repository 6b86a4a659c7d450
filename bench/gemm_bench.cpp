#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
// Fused 4-bit GEMV/GEMM at Llama shapes: GB/s of weight bytes and GFLOP/s, beside the machine's read
// bandwidth and (bfloat16) the vdpbf16ps and AMX-BF16 throughput ceilings measured in the same run. GEMV
// cycles through distinct matrices totalling >= 256 MiB so every call reads DRAM, not cache.
#include <benchmark/benchmark.h>
#include <immintrin.h>
#include <omp.h>

#include <chrono>
#include <random>
#include <vector>

#include "kernels/cpu/gemm4.h"
#include "kernels/cpu/read_bandwidth.h"
#include "nibble/quant_type.h"

using namespace nibble;
using namespace nibble::kernels;

namespace {

double probe_bandwidth() {
  static const double bw = measure_read_bandwidth();
  return bw;
}

// The machine's vdpbf16ps ceiling on all threads: 8 independent accumulators with operands the compiler
// cannot fold (an empty asm makes them opaque each iteration). 64 FLOP per instruction.
__attribute__((target("avx512f,avx512bw,avx512bf16"), noinline)) double dp_loop(long n) {
  __m512 a[8];
  for (auto& v : a) v = _mm512_setzero_ps();
  __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80), y = (__m512bh)_mm512_set1_epi16(0x3f81);
  for (long i = 0; i < n; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) a[j] = _mm512_dpbf16_ps(a[j], x, y);
    __asm__ volatile("" : "+v"(x), "+v"(y));
  }
  float s = 0;
  for (auto& v : a) s += _mm512_reduce_add_ps(v);
  return s;
}

double probe_bf16_peak_gflops() {
  static const double peak = [] {
    if (!gemm_path_available(GemmPath::Avx512, DType::BFloat16)) return 0.0;
    const long n = 20'000'000;
    double sink = 0;
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel reduction(+ : sink)
    sink += dp_loop(n);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    benchmark::DoNotOptimize(sink);
    return 8.0 * static_cast<double>(n) * omp_get_max_threads() * 64.0 / s / 1e9;
  }();
  return peak;
}

// The machine's AMX-BF16 ceiling on all threads: four independent 16x16 accumulators fed from L1-resident
// tiles (the 2x2 register blocking of the AMX GEMM), 16 * 16 * 32 * 2 FLOP per TDPBF16PS.
struct alignas(64) AmxConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

__attribute__((target("amx-tile,amx-bf16"), noinline)) void amx_loop(long n) {
  AmxConfig cfg;
  for (int i = 0; i < 8; ++i) {
    cfg.rows[i] = 16;
    cfg.colsb[i] = 64;
  }
  _tile_loadconfig(&cfg);
  alignas(64) static thread_local uint16_t a[2][16][32], b[2][16][32];
  for (auto* m : {&a, &b})
    for (auto& t : *m)
      for (auto& r : t)
        for (auto& e : r) e = 0x3f80;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (long i = 0; i < n; ++i) {
    _tile_loadd(4, a[0], 64);
    _tile_loadd(5, a[1], 64);
    _tile_loadd(6, b[0], 64);
    _tile_loadd(7, b[1], 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  alignas(64) float c[16][16];
  _tile_stored(0, c, 64);
  _tile_release();
  benchmark::DoNotOptimize(c);
}

double probe_amx_peak_gflops() {
  static const double peak = [] {
    if (!gemm_path_available(GemmPath::Amx, DType::BFloat16)) return 0.0;
    const long n = 2'000'000;
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel
    amx_loop(n);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return 4.0 * static_cast<double>(n) * omp_get_max_threads() * 16 * 16 * 32 * 2 / s / 1e9;
  }();
  return peak;
}

// Random packed weights and statistics with the layout quantize_4bit produces (values do not affect speed).
struct Matrix {
  std::vector<uint8_t> packed, absmax_q;
  std::vector<float> absmax, absmax2, code2;
  Q4Weights w;
  size_t bytes = 0;
  Matrix(int64_t N, int64_t K, QuantType qt, bool dq, uint64_t seed) {
    std::mt19937_64 rng(seed);
    const int64_t nb = N * K / 64;
    packed.resize(static_cast<size_t>(N * K / 2));
    for (auto& b : packed) b = static_cast<uint8_t>(rng());
    w.packed = packed.data();
    w.N = N;
    w.K = K;
    w.blocksize = 64;
    w.code = code_table(qt).data();
    bytes = packed.size();
    if (dq) {
      absmax_q.resize(static_cast<size_t>(nb));
      for (auto& b : absmax_q) b = static_cast<uint8_t>(rng());
      absmax2.assign(static_cast<size_t>((nb + 255) / 256), 0.01f);
      code2.resize(256);
      for (int i = 0; i < 256; ++i) code2[static_cast<size_t>(i)] = (i - 128) / 128.0f;
      w.absmax_q = absmax_q.data();
      w.absmax2 = absmax2.data();
      w.code2 = code2.data();
      w.offset = 0.02f;
      bytes += absmax_q.size() + absmax2.size() * 4;
    } else {
      absmax.assign(static_cast<size_t>(nb), 0.02f);
      w.absmax = absmax.data();
      bytes += absmax.size() * 4;
    }
  }
};

// args: N, K, M, quant (0 nf4, 1 fp4), double quant, compute (0 f32, 1 bf16, 2 f16), path (0 auto, 1 avx2,
// 2 auto in row-invariant mode: batched decode's, where M = 1 takes the multi-token kernel)
void BM_Gemm4(benchmark::State& state) {
  const int64_t N = state.range(0), K = state.range(1), M = state.range(2);
  const GemmPath path = state.range(6) == 1 ? GemmPath::Avx2 : GemmPath::Auto;
  const RowInvariantScope invariant(state.range(6) == 2);
  const QuantType qt = state.range(3) == 0 ? QuantType::NF4 : QuantType::FP4;
  const bool dq = state.range(4) != 0;
  const DType cd = state.range(5) == 0   ? DType::Float32
                   : state.range(5) == 1 ? DType::BFloat16
                                         : DType::Float16;
  const double bw = probe_bandwidth();
  const size_t one = static_cast<size_t>(N * K / 2);
  const size_t copies =
      M == 1 || state.range(6) == 2 ? std::max<size_t>(1, (size_t{256} << 20) / one + 1) : 1;
  std::vector<Matrix> mats;
  for (size_t i = 0; i < copies; ++i) mats.emplace_back(N, K, qt, dq, i + 1);
  std::vector<float> x(static_cast<size_t>(M * K), 0.5f), y(static_cast<size_t>(M * N));
  size_t i = 0;
  for (auto _ : state) {
    gemm_4bit(mats[i].w, x.data(), M, y.data(), cd, path);
    benchmark::DoNotOptimize(y.data());
    i = (i + 1) % mats.size();
  }
  const double iters = static_cast<double>(state.iterations());
  state.counters["weight_GB/s"] =
      benchmark::Counter(iters * static_cast<double>(mats[0].bytes) / 1e9, benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(iters * 2.0 * static_cast<double>(M * N * K) / 1e9, benchmark::Counter::kIsRate);
  // tokens (rows of x) per second: with M > 1 one read of the weights serves M tokens
  state.counters["tokens/s"] =
      benchmark::Counter(iters * static_cast<double>(M), benchmark::Counter::kIsRate);
  state.counters["probe_GB/s"] = bw / 1e9;
  if (cd == DType::BFloat16) {
    state.counters["bf16_peak_GFLOP/s"] = probe_bf16_peak_gflops();
    if (const double amx = probe_amx_peak_gflops(); amx > 0) state.counters["amx_peak_GFLOP/s"] = amx;
  }
  state.SetLabel(gemm_path_name(path == GemmPath::Auto ? gemm_auto_path(mats[0].w, M, cd) : path, cd) + " " +
                 std::string(quant_type_name(qt)) + (dq ? "+dq" : "") +
                 (state.range(6) == 2 ? " row-invariant" : "") + " working set " +
                 std::to_string(copies * mats[0].bytes >> 20) + " MiB");
}

void shapes(benchmark::internal::Benchmark* b) {
  for (auto [N, K] : {std::pair<int64_t, int64_t>{4096, 4096}, {11008, 4096}, {4096, 11008}, {14336, 4096}})
    for (int64_t M : {1, 16, 512})
      for (int64_t cd : {0, 1, 2}) b->Args({N, K, M, 0, 1, cd, 0});
  // small batches (concurrent requests decoded together): tokens/s against M = 1
  for (int64_t M : {2, 4, 8})
    for (int64_t cd : {1, 2}) b->Args({4096, 4096, M, 0, 1, cd, 0});
  // batched decode (the server): row-invariant mode at M = 1 .. 16, against plain M = 1 above
  for (int64_t M : {1, 2, 4, 8, 16}) b->Args({4096, 4096, M, 0, 1, 1, 2});
  // quant type / double quant variations at one shape
  for (int64_t q : {0, 1})
    for (int64_t dq : {0, 1}) b->Args({4096, 4096, 1, q, dq, 1, 0});
  // the AVX2 path (CPUs without AVX-512), where this CPU can run it
  if (gemm_path_available(GemmPath::Avx2, DType::Float32)) {
    for (int64_t M : {1, 16, 512})
      for (int64_t cd : {0, 1, 2}) b->Args({4096, 4096, M, 0, 1, cd, 1});
    // its prompt GEMM (kAvx2PanelMinTokens and up) against the fused kernel the same M takes in row-invariant
    // mode: where the panel pays for decoding every weight once per call
    for (int64_t M : {8, 16, 32, 64})
      for (int64_t mode : {0, 2}) b->Args({4096, 4096, M, 0, 1, 1, mode});
  }
}
BENCHMARK(BM_Gemm4)->Apply(shapes)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
