// Quantize / dequantize throughput in GB/s of input, beside a plain memcpy of the same bytes measured in
// the same run (the machine's own ceiling for a streaming pass).
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <vector>

#include "nibble/quantize.h"

using namespace nibble;

namespace {
constexpr int64_t kRows = 4096, kCols = 4096;  // a Llama-7B q_proj: 16.8 M weights

Tensor random_weights(DType dt) {
  std::mt19937 rng(0);
  std::normal_distribution<float> nd(0.0f, 0.02f);
  std::vector<float> v(static_cast<size_t>(kRows * kCols));
  for (auto& x : v) x = nd(rng);
  return Tensor::from_vector(DType::Float32, {kRows, kCols}, v).to(dt);
}

void BM_Memcpy(benchmark::State& state) {
  const size_t bytes = static_cast<size_t>(state.range(0));
  std::vector<char> a(bytes, 1), b(bytes);
  for (auto _ : state) {
    std::memcpy(b.data(), a.data(), bytes);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(bytes));
}
BENCHMARK(BM_Memcpy)->Arg(kRows* kCols * 4)->Arg(kRows* kCols * 2)->UseRealTime();

void BM_Quantize4bit(benchmark::State& state) {
  const DType dt = state.range(0) == 0 ? DType::Float32 : DType::BFloat16;
  const QuantType qt = state.range(1) == 0 ? QuantType::NF4 : QuantType::FP4;
  const bool dq = state.range(2) != 0;
  const Tensor w = random_weights(dt);
  for (auto _ : state) {
    auto q = quantize_4bit(w, 64, qt, dq);
    benchmark::DoNotOptimize(q.packed.raw());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(w.nbytes()));
  state.SetLabel(std::string(dtype_name(dt)) + " " + std::string(quant_type_name(qt)) + (dq ? " +dq" : ""));
}
BENCHMARK(BM_Quantize4bit)
    ->Args({0, 0, 0})
    ->Args({1, 0, 0})
    ->Args({1, 0, 1})
    ->Args({1, 1, 0})
    ->Args({0, 1, 1})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

void BM_Dequantize4bit(benchmark::State& state) {
  const DType out = state.range(0) == 0 ? DType::Float32 : DType::BFloat16;
  const bool dq = state.range(1) != 0;
  const Tensor w = random_weights(DType::Float32);
  const auto q = quantize_4bit(w, 64, QuantType::NF4, dq);
  for (auto _ : state) {
    Tensor r = dequantize_4bit(q.packed, q.state, out);
    benchmark::DoNotOptimize(r.raw());
  }
  // GB/s of output written (the dense tensor a dequantize produces)
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * kRows * kCols *
                          static_cast<int64_t>(dtype_size(out)));
  state.SetLabel(std::string("nf4 -> ") + std::string(dtype_name(out)) + (dq ? " +dq" : ""));
}
BENCHMARK(BM_Dequantize4bit)
    ->Args({0, 0})
    ->Args({1, 0})
    ->Args({1, 1})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
