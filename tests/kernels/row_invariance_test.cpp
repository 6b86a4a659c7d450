// Batched decode (the server's continuous batching) runs several sequences' tokens through each linear layer
// in one call. A greedy response must not depend on which other requests share its steps, so every kernel
// path a decode step takes must give each row the same bits whatever the number of rows beside it (M = 1 ..
// 16, the batch sizes of a decode step), on every compute dtype, in the row-invariant mode the batched decode
// runs under (kernels::RowInvariantScope). Checked on every path this CPU has.
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "kernels/cpu/gemm4.h"
#include "nibble/quantize.h"
#include "nn/linear.h"

using namespace nibble;
using namespace nibble::kernels;

namespace {
constexpr int64_t kMaxRows = 16;

std::vector<float> random_floats(size_t n, unsigned seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<float> v(n);
  for (auto& x : v) x = scale * nd(rng);
  return v;
}

// y = f(x, M) for M rows; each row of the M-row call must equal that row computed alone, bit for bit.
template <class F>
void expect_row_invariant(int64_t N, int64_t K, F&& f, const std::string& what) {
  const RowInvariantScope scope;
  const auto x = random_floats(static_cast<size_t>(kMaxRows * K), 7, 1.0f);
  std::vector<float> alone(static_cast<size_t>(kMaxRows * N));
  for (int64_t m = 0; m < kMaxRows; ++m) f(x.data() + m * K, 1, alone.data() + m * N);
  for (int64_t M = 2; M <= kMaxRows; ++M) {
    std::vector<float> y(static_cast<size_t>(M * N));
    f(x.data(), M, y.data());
    EXPECT_EQ(std::memcmp(y.data(), alone.data(), y.size() * sizeof(float)), 0)
        << what << ": rows of an M = " << M << " call differ from the same rows computed alone";
  }
}

std::vector<GemmPath> paths_here(DType compute) {
  std::vector<GemmPath> p{GemmPath::Reference};
  for (GemmPath q : {GemmPath::Avx2, GemmPath::Avx512})
    if (gemm_path_available(q, compute)) p.push_back(q);
  return p;
}
}  // namespace

TEST(RowInvariance, FourBitEveryPathAndComputeDtype) {
  // rows split unevenly between threads, K not a power of two, one quantization block per row
  for (auto [N, K, bs] :
       {std::tuple<int64_t, int64_t, int64_t>{96, 512, 64}, {75, 1344, 64}, {21, 4096, 4096}})
    for (bool dq : {false, true}) {
      SCOPED_TRACE("N=" + std::to_string(N) + " K=" + std::to_string(K) + " blocksize " + std::to_string(bs));
      const Tensor w =
          Tensor::from_vector(DType::Float32, {N, K}, random_floats(static_cast<size_t>(N * K), 3, 0.02f));
      const Quantized4bit q = quantize_4bit(w, bs, QuantType::NF4, dq);
      const Q4Weights v = nn::q4_weights(q.packed, q.state);
      for (DType cd : {DType::Float32, DType::BFloat16, DType::Float16}) {
        for (GemmPath p : paths_here(cd)) {
          expect_row_invariant(
              N, K, [&](const float* x, int64_t M, float* y) { gemm_4bit(v, x, M, y, cd, p); },
              gemm_path_name(p, cd) + " " + std::string(dtype_name(cd)) + (dq ? " dq" : ""));
        }
        // what Linear4bit::forward picks for decode-sized batches on this CPU
        expect_row_invariant(
            N, K, [&](const float* x, int64_t M, float* y) { gemm_4bit(v, x, M, y, cd, GemmPath::Auto); },
            "auto " + std::string(dtype_name(cd)));
      }
    }
}

TEST(RowInvariance, DenseEveryPathAndWeightDtype) {
  const int64_t N = 80, K = 256;
  const Tensor w32 =
      Tensor::from_vector(DType::Float32, {N, K}, random_floats(static_cast<size_t>(N * K), 5, 0.05f));
  for (DType wdt : {DType::Float32, DType::BFloat16, DType::Float16}) {
    const Tensor w = w32.to(wdt);
    std::vector<GemmPath> paths{GemmPath::Reference, GemmPath::Auto};
    for (GemmPath p : paths) {
      expect_row_invariant(
          N, K, [&](const float* x, int64_t M, float* y) { gemm_dense(w.raw(), wdt, N, K, x, M, y, p); },
          "dense " + std::string(dtype_name(wdt)) + (p == GemmPath::Auto ? " auto" : " reference"));
    }
  }
}

TEST(RowInvariance, Int8ActivationsOptIn) {
  const int64_t N = 64, K = 512;
  const Tensor w =
      Tensor::from_vector(DType::Float32, {N, K}, random_floats(static_cast<size_t>(N * K), 9, 0.02f));
  const Quantized4bit q = quantize_4bit(w, 64, QuantType::NF4, true);
  const Q4Weights v = nn::q4_weights(q.packed, q.state);
  if (!int8_shape_ok(v)) GTEST_SKIP() << "shape not taken by the int8 kernels";
  expect_row_invariant(
      N, K, [&](const float* x, int64_t M, float* y) { gemm_4bit_int8(v, x, M, y, GemmPath::Auto); },
      gemm_int8_path_name(gemm_int8_auto_path(v)));
}

TEST(RowInvariance, ScopeNestsAndRestores) {
  EXPECT_FALSE(row_invariant());
  {
    const RowInvariantScope on;
    EXPECT_TRUE(row_invariant());
    {
      const RowInvariantScope off(false);
      EXPECT_FALSE(row_invariant());
    }
    EXPECT_TRUE(row_invariant());
  }
  EXPECT_FALSE(row_invariant());
}
