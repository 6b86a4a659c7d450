// Fused 4-bit GEMV/GEMM at Llama shapes: GB/s of weight bytes and GFLOP/s, beside the machine's read
// bandwidth measured in the same run (counter bw_fraction = weight GB/s / probe GB/s). GEMV cycles through
// distinct matrices totalling >= 256 MiB so every call reads DRAM, not cache.
#include <benchmark/benchmark.h>

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

// args: N, K, M, quant (0 nf4, 1 fp4), double quant, compute (0 f32, 1 bf16)
void BM_Gemm4(benchmark::State& state) {
  const int64_t N = state.range(0), K = state.range(1), M = state.range(2);
  const QuantType qt = state.range(3) == 0 ? QuantType::NF4 : QuantType::FP4;
  const bool dq = state.range(4) != 0;
  const DType cd = state.range(5) == 0 ? DType::Float32 : DType::BFloat16;
  const double bw = probe_bandwidth();
  const size_t one = static_cast<size_t>(N * K / 2);
  const size_t copies = M == 1 ? std::max<size_t>(1, (size_t{256} << 20) / one + 1) : 1;
  std::vector<Matrix> mats;
  for (size_t i = 0; i < copies; ++i) mats.emplace_back(N, K, qt, dq, i + 1);
  std::vector<float> x(static_cast<size_t>(M * K), 0.5f), y(static_cast<size_t>(M * N));
  size_t i = 0;
  for (auto _ : state) {
    gemm_4bit(mats[i].w, x.data(), M, y.data(), cd);
    benchmark::DoNotOptimize(y.data());
    i = (i + 1) % mats.size();
  }
  const double iters = static_cast<double>(state.iterations());
  state.counters["weight_GB/s"] =
      benchmark::Counter(iters * static_cast<double>(mats[0].bytes) / 1e9, benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(iters * 2.0 * static_cast<double>(M * N * K) / 1e9, benchmark::Counter::kIsRate);
  state.counters["probe_GB/s"] = bw / 1e9;
  state.SetLabel(gemm_path_name(GemmPath::Auto, cd) + " " + std::string(quant_type_name(qt)) +
                 (dq ? "+dq" : "") + " working set " + std::to_string(copies * mats[0].bytes >> 20) + " MiB");
}

void shapes(benchmark::internal::Benchmark* b) {
  for (auto [N, K] : {std::pair<int64_t, int64_t>{4096, 4096}, {11008, 4096}, {4096, 11008}, {14336, 4096}})
    for (int64_t M : {1, 16, 512})
      for (int64_t cd : {0, 1}) b->Args({N, K, M, 0, 1, cd});
  // quant type / double quant variations at one shape
  for (int64_t q : {0, 1})
    for (int64_t dq : {0, 1}) b->Args({4096, 4096, 1, q, dq, 1});
}
BENCHMARK(BM_Gemm4)->Apply(shapes)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
